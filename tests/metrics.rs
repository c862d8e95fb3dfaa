//! Prometheus metrics as an operator gets them: a real Prometheus server (Debian's
//! `prometheus`, started here on 127.0.0.1 with its own config and TSDB) scraping a real daemon
//! every second while it runs one good job on the BIOS fixture and one that fails; the counters
//! read back through Prometheus's HTTP query API. Also `fix --metrics-textfile` checked by
//! Prometheus's own parser (`promtool check metrics`), and the start-up errors of
//! `--metrics-listen`. Every process started here is killed when its guard drops.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::daemon::{free_port, good_manifest, missing_source, Daemon, SpoolRoot};
use common::{fixture, read_json};

/// A Prometheus server of our own: killed when dropped.
struct Prometheus {
    child: Option<Child>,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    /// Start `prometheus` scraping `target` every second, its TSDB under `dir`.
    fn start(dir: &Path, target: &str) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: h2k\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("the prometheus binary (scripts/setup.sh installs Debian's prometheus)");
        let p = Prometheus {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        p.wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            ureq::get(&format!("{}/-/ready", p.url))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        });
        p
    }

    /// An instant query: (labels, value) of each series.
    fn query(&self, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let mut resp = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", expr)
            .call()
            .unwrap_or_else(|e| panic!("query {expr}: {e}"));
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["status"], "success", "query {expr}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// The single value of `expr`, if it has exactly one series.
    fn one(&self, expr: &str) -> Option<f64> {
        match self.query(expr).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }

    /// What Prometheus says about its scrapes of our target (for failure messages).
    fn targets(&self) -> String {
        ureq::get(&format!("{}/api/v1/targets", self.url))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    }

    fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; targets: {}\nprometheus log:\n{}",
                self.targets(),
                common::tail(&fs::read_to_string(&self.log).unwrap_or_default(), 20)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `promtool check metrics` (Prometheus's own text-format parser and linter) on `text`.
fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), msg)
}

/// The value of one sample line `name{labels} value` of a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_real_prometheus_counts_one_good_and_one_failed_job() {
    let _vm = common::vm_lock();
    let vmdk = fixture("debian12-bios");
    let t0 = Instant::now();
    let started_unix = h2k_guest::util::unix_now();
    let root = SpoolRoot::new("h2k-metrics-test-");
    let target = format!("127.0.0.1:{}", free_port());
    let textfile = root.root.join("h2k.prom");
    let mut d = Daemon::start(
        &root,
        &[
            "--metrics-listen",
            &target,
            "--metrics-textfile",
            textfile.to_str().unwrap(),
        ],
    );
    let prom = Prometheus::start(&root.root, &target);

    // Control: before any job the target is up and both outcomes read 0.
    let before = prom.wait_for("the first scrape", Duration::from_secs(60), || {
        let v = prom.query("h2k_jobs_total");
        (v.len() == 2).then_some(v)
    });
    for (labels, v) in &before {
        assert_eq!(*v, 0.0, "{labels:?} before any job");
    }
    assert_eq!(prom.one("up{job=\"h2k\"}"), Some(1.0));
    assert_eq!(
        prom.one(&format!(
            "h2k_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        Some(1.0)
    );

    // What was scraped is OpenMetrics (Prometheus asks for it); a plain GET gets the classic
    // format. Prometheus's classic parser mistypes the OpenMetrics counters (the reason the
    // textfile is classic): promtool rejects the one and accepts the other.
    let get = |accept: Option<&str>| {
        let mut req = ureq::get(&format!("http://{target}/metrics"));
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        req.call().unwrap().body_mut().read_to_string().unwrap()
    };
    let om = get(Some("application/openmetrics-text; version=1.0.0"));
    assert!(om.ends_with("# EOF\n") && om.contains("# TYPE h2k_jobs counter"));
    let (ok, msg) = promtool_check(&om);
    assert!(!ok && msg.contains("h2k_jobs_total"), "{msg}");
    let (ok, msg) = promtool_check(&get(None));
    assert!(ok, "{msg}");

    root.drop_manifest("broken.json", &missing_source("broken"));
    root.drop_manifest("good.json", &good_manifest(&vmdk, "good"));

    // While the good job runs, the gauges read from the spool say so.
    prom.wait_for(
        "a running job in Prometheus",
        Duration::from_secs(120),
        || {
            (prom.one("h2k_jobs_running") == Some(1.0)
                && prom.one("h2k_queue_depth{directory=\"processing\"}") == Some(1.0))
            .then_some(())
        },
    );
    let t_running = t0.elapsed();
    d.wait_for("both jobs to be filed", Duration::from_secs(1500), |_| {
        if root.failed("good.json") {
            panic!(
                "the good job failed: {}",
                read_json(&root.failed_today().join("good.json.error.json"))
            );
        }
        (root.failed("broken.json") && root.processed("good.json")).then_some(())
    });
    let t_filed = t0.elapsed();

    let counts = prom.wait_for("h2k_jobs_total 1 and 1", Duration::from_secs(30), || {
        let v: BTreeMap<String, f64> = prom
            .query("h2k_jobs_total")
            .into_iter()
            .map(|(l, v)| (l["outcome"].clone(), v))
            .collect();
        (v.get("success") == Some(&1.0) && v.get("failed") == Some(&1.0)).then_some(v)
    });
    eprintln!("Prometheus: h2k_jobs_total {counts:?}");
    let report = read_json(&root.processed_today().join("good.json.report.json"));
    // Per-stage histograms: one observation of each stage of the good job's timeline (the
    // failed job ended before its pipeline started, so it has none).
    let stages: BTreeMap<String, f64> = prom
        .query("h2k_stage_duration_seconds_count")
        .into_iter()
        .map(|(l, v)| (l["stage"].clone(), v))
        .collect();
    let timeline: Vec<String> = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        stages.keys().cloned().collect::<Vec<_>>(),
        {
            let mut t = timeline.clone();
            t.sort();
            t
        },
        "{stages:?}"
    );
    assert!(stages.values().all(|&c| c == 1.0), "{stages:?}");
    for stage in ["load", "appliance", "fix", "convert"] {
        assert!(stages.contains_key(stage), "no {stage} in {stages:?}");
    }
    let convert_sum = prom
        .one("h2k_stage_duration_seconds_sum{stage=\"convert\"}")
        .unwrap();
    let convert_report = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["stage"] == "convert")
        .unwrap()["seconds"]
        .as_f64()
        .unwrap();
    assert!((convert_sum - convert_report).abs() < 1e-6);
    assert_eq!(prom.one("h2k_job_duration_seconds_count"), Some(2.0));
    // Bytes, launches, accelerator: what the report says.
    let out_bytes = report["outputs"][0]["bytes"].as_u64().unwrap();
    let out_path = PathBuf::from(report["outputs"][0]["path"].as_str().unwrap());
    assert_eq!(fs::metadata(&out_path).unwrap().len(), out_bytes);
    assert_eq!(
        prom.one("h2k_convert_written_bytes_total"),
        Some(out_bytes as f64)
    );
    let src_actual = report["sources"][0]["actual_size"].as_u64().unwrap();
    assert_eq!(
        prom.one("h2k_convert_read_bytes_total"),
        Some(src_actual as f64)
    );
    assert_eq!(
        prom.one("h2k_appliance_launches_total"),
        report["appliance"]["launches"].as_f64()
    );
    let accel = report["appliance"]["accelerator"].as_str().unwrap();
    assert_eq!(
        prom.one(&format!("h2k_accelerator{{accelerator=\"{accel}\"}}")),
        Some(1.0)
    );
    assert_eq!(prom.one("sum(h2k_accelerator)"), Some(1.0));
    let last = prom.one("h2k_last_success_timestamp_seconds").unwrap();
    assert!(
        last >= started_unix && last <= h2k_guest::util::unix_now(),
        "{last}"
    );
    assert_eq!(prom.one("h2k_jobs_running"), Some(0.0));
    assert_eq!(
        prom.one("h2k_queue_depth{directory=\"to_be_processed\"}"),
        Some(0.0)
    );
    assert_eq!(prom.one("h2k_webhook_delivery_failures_total"), Some(0.0));

    // The textfile written beside: Prometheus's parser accepts it, with the same counts.
    assert_eq!(d.stop().code(), Some(0));
    let text = fs::read_to_string(&textfile).unwrap();
    let (ok, msg) = promtool_check(&text);
    assert!(ok, "promtool check metrics: {msg}\n{text}");
    assert_eq!(
        sample(&text, "h2k_jobs_total{outcome=\"success\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "h2k_jobs_total{outcome=\"failed\"}"),
        Some(1.0)
    );
    eprintln!(
        "good job running in Prometheus after {:.1} s, both filed after {:.1} s, test {:.1} s; stages {}",
        t_running.as_secs_f64(),
        t_filed.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        common::timeline(&report).join(", ")
    );
}

#[test]
fn fix_writes_a_textfile_prometheus_parses_on_a_failing_run() {
    let t0 = Instant::now();
    let d = tempfile::tempdir().unwrap();
    let manifest = d.path().join("vm.json");
    fs::write(&manifest, missing_source("vm")).unwrap();
    let textfile = d.path().join("h2k.prom");
    let run = common::h2k([
        "fix",
        "--manifest",
        manifest.to_str().unwrap(),
        "--metrics-textfile",
        textfile.to_str().unwrap(),
    ]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    common::one_error_line(&run.stderr());
    let text = fs::read_to_string(&textfile).unwrap();
    let (ok, msg) = promtool_check(&text);
    assert!(ok, "promtool check metrics: {msg}\n{text}");
    assert_eq!(
        sample(&text, "h2k_jobs_total{outcome=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "h2k_jobs_total{outcome=\"success\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "h2k_job_duration_seconds_count"), Some(1.0));
    assert!(text.contains("# TYPE h2k_jobs_total counter"), "{text}");
    // Control: promtool is a real parser; a broken sample line fails it.
    let broken = text.replace(
        "h2k_jobs_total{outcome=\"failed\"} 1",
        "h2k_jobs_total{outcome=\"failed\" 1",
    );
    assert_ne!(broken, text);
    assert!(
        !promtool_check(&broken).0,
        "promtool accepted a broken file"
    );

    // fix --batch: every VM counted, the file rewritten after each.
    fs::write(d.path().join("vm2.json"), missing_source("vm2")).unwrap();
    let batch = d.path().join("wave.yaml");
    fs::write(&batch, "- vm.json\n- vm2.json\n").unwrap();
    let batch_file = d.path().join("batch.prom");
    let run = common::h2k([
        "fix",
        "--batch",
        batch.to_str().unwrap(),
        "--batch-report",
        d.path().join("batch-report.json").to_str().unwrap(),
        "--metrics-textfile",
        batch_file.to_str().unwrap(),
    ]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let text = fs::read_to_string(&batch_file).unwrap();
    let (ok, msg) = promtool_check(&text);
    assert!(ok, "promtool check metrics: {msg}\n{text}");
    assert_eq!(
        sample(&text, "h2k_jobs_total{outcome=\"failed\"}"),
        Some(2.0)
    );
    assert_eq!(sample(&text, "h2k_jobs_running"), Some(0.0));

    // A textfile in a directory that does not exist: refused before any work, one line.
    let run = common::h2k([
        "fix",
        "--manifest",
        manifest.to_str().unwrap(),
        "--metrics-textfile",
        "/nonexistent/dir/h2k.prom",
    ]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let line = common::one_error_line(&run.stderr());
    assert!(
        line.starts_with("h2k-guest: error: --metrics-textfile: /nonexistent/dir/h2k.prom: "),
        "{line}"
    );
    eprintln!(
        "fix --metrics-textfile test: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Run `daemon ARGS` that must fail at start: (exit code, stderr).
fn daemon_must_fail(root: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(common::bin())
        .arg("daemon")
        .arg("--dir")
        .arg(root.join("spool"))
        .arg("--output-dir")
        .arg(root.join("out"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_taken_port_or_a_bad_address_stops_the_daemon_at_start() {
    let t0 = Instant::now();
    let d = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = daemon_must_fail(d.path(), &["--metrics-listen", &addr]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        common::one_error_line(&stderr),
        format!(
            "h2k-guest: error: --metrics-listen {addr}: cannot listen: Address already in use (os error 98)"
        )
    );
    assert!(!d.path().join("spool").exists(), "the spool was touched");
    drop(taken);

    let (code, stderr) = daemon_must_fail(d.path(), &["--metrics-listen", "9464"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        common::one_error_line(&stderr)
            .starts_with("h2k-guest: error: --metrics-listen: \"9464\": expected ADDR:PORT"),
        "{stderr}"
    );
    let cfg = d.path().join("daemon.yaml");
    fs::write(&cfg, "metrics_listen: \"metrics:9464\"\n").unwrap();
    let (code, stderr) = daemon_must_fail(d.path(), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    let line = common::one_error_line(&stderr);
    assert!(
        line.starts_with(&format!(
            "h2k-guest: error: {}: metrics_listen: \"metrics:9464\": ",
            cfg.display()
        )),
        "{line}"
    );
    eprintln!("start-up error test: {:.1} s", t0.elapsed().as_secs_f64());
}

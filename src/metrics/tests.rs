use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::report::{ApplianceRecord, OutputRecord, SourceRecord, StageTiming};

/// One sample of a text exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A small reader of the text formats, strict enough to catch malformed output: every
/// sample line is `name{k="v",...} value`, and every sample belongs to a declared family.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label k=v");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .expect("quoted label value");
                    labels.insert(k.to_string(), v.to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    (types, samples)
}

/// The family a sample belongs to in `types` (histogram and counter suffixes removed).
fn family_of<'a>(types: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    if let Some((k, _)) = types.get_key_value(name) {
        return Some(k);
    }
    for suffix in ["_bucket", "_sum", "_count", "_total", "_created", "_info"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some((k, _)) = types.get_key_value(base) {
                return Some(k);
            }
        }
    }
    None
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn report_with(stages: &[(&str, f64, bool)]) -> (tempfile::TempDir, Report) {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.vmdk");
    std::fs::write(&disk, b"").unwrap();
    let manifest = dir.path().join("m.json");
    let text = format!(
        r#"{{"version": "1.0", "pipeline": {{"load": {{"source_path": "{}"}}}}}}"#,
        disk.display()
    );
    std::fs::write(&manifest, text).unwrap();
    let plan = crate::manifest::load_manifest(&manifest, Some(dir.path())).unwrap();
    let mut r = Report::new(&plan);
    for (stage, seconds, ok) in stages {
        r.timeline.push(StageTiming {
            stage: stage.to_string(),
            started_at: String::new(),
            ended_at: String::new(),
            seconds: *seconds,
            ok: *ok,
            parts: Vec::new(),
        });
    }
    r.sources.push(SourceRecord {
        id: "d0".into(),
        info: crate::load::SourceInfo {
            source: crate::load::Source::parse(&disk.display().to_string()),
            format: "vmdk".into(),
            virtual_size: 8 << 30,
            actual_size: Some(900 << 20),
            vmdk_subformat: None,
            chain: Vec::new(),
        },
        sha256: None,
    });
    r.appliance = Some(ApplianceRecord {
        accelerator: crate::accel::Accel::Tcg,
        reason: "no /dev/kvm".into(),
        launches: 1,
        launch_seconds: 20.0,
        vcpus: 1,
        memory_mib: 1024,
    });
    (dir, r)
}

#[test]
fn a_sample_takes_stages_bytes_and_the_appliance_from_the_report() {
    let (_d, mut r) = report_with(&[("load", 0.5, true), ("convert", 3.0, true)]);
    r.outputs.push(OutputRecord {
        disk_id: "d0".into(),
        path: "/o/vm.qcow2".into(),
        format: "qcow2".into(),
        compressed: false,
        bytes: 700 << 20,
        virtual_size: 8 << 30,
        check: None,
    });
    let s = JobSample::new(42.0, Some(&r));
    assert_eq!(s.seconds, 42.0);
    assert_eq!(
        s.stages,
        [("load".to_string(), 0.5), ("convert".to_string(), 3.0)]
    );
    assert_eq!(
        (s.read_bytes, s.read_virtual_bytes, s.written_bytes),
        (900 << 20, 8 << 30, 700 << 20)
    );
    assert_eq!(
        (s.appliance_launches, s.accelerator.as_deref()),
        (1, Some("tcg"))
    );
    // A job that failed before CONVERT finished read and wrote nothing by it.
    let (_d, r) = report_with(&[("load", 0.5, true), ("convert", 1.0, false)]);
    let s = JobSample::new(5.0, Some(&r));
    assert_eq!((s.read_bytes, s.written_bytes), (0, 0));
    assert_eq!(s.appliance_launches, 1);
    assert_eq!(JobSample::new(0.2, None).stages, []);
}

fn daemon_metrics() -> Metrics {
    Metrics::new(Scope::Daemon {
        queue: Box::new(|| {
            vec![
                ("to_be_processed".to_string(), 3),
                ("processing".to_string(), 1),
            ]
        }),
    })
}

#[test]
fn the_text_exposition_parses_back_to_what_was_recorded() {
    let m = daemon_metrics();
    let (_d, r) = report_with(&[
        ("sanity", 0.01, true),
        ("load", 0.4, true),
        ("convert", 2.0, true),
    ]);
    m.record(Some(JobOutcome::Success), &JobSample::new(61.0, Some(&r)));
    m.record(Some(JobOutcome::Failed), &JobSample::new(0.3, None));
    m.record_rejected();
    m.set_running(2);

    let text = m.render_text();
    let (types, samples) = parse(&text);
    for s in &samples {
        assert!(
            family_of(&types, &s.name).is_some(),
            "{} has no TYPE line in:\n{text}",
            s.name
        );
    }
    assert_eq!(types["h2k_jobs_total"], "counter");
    assert_eq!(types["h2k_stage_duration_seconds"], "histogram");
    assert_eq!(types["h2k_queue_depth"], "gauge");
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    let v = |n: &str, l: &[(&str, &str)]| value(&samples, n, l);
    assert_eq!(v("h2k_jobs_total", &[("outcome", "success")]), Some(1.0));
    assert_eq!(v("h2k_jobs_total", &[("outcome", "failed")]), Some(2.0));
    assert_eq!(v("h2k_job_duration_seconds_count", &[]), Some(2.0));
    assert_eq!(v("h2k_job_duration_seconds_sum", &[]), Some(61.3));
    assert_eq!(
        v("h2k_job_duration_seconds_bucket", &[("le", "60.0")]),
        Some(1.0),
        "the 61 s job is above the 60 s bucket:\n{text}"
    );
    assert_eq!(
        v("h2k_stage_duration_seconds_count", &[("stage", "convert")]),
        Some(1.0)
    );
    assert_eq!(
        v("h2k_stage_duration_seconds_sum", &[("stage", "load")]),
        Some(0.4)
    );
    assert_eq!(
        v("h2k_queue_depth", &[("directory", "to_be_processed")]),
        Some(3.0)
    );
    assert_eq!(
        v("h2k_queue_depth", &[("directory", "processing")]),
        Some(1.0)
    );
    assert_eq!(v("h2k_jobs_running", &[]), Some(2.0));
    assert_eq!(
        v("h2k_convert_read_bytes_total", &[]),
        Some((900u64 << 20) as f64)
    );
    assert_eq!(
        v("h2k_convert_source_virtual_bytes_total", &[]),
        Some((8u64 << 30) as f64)
    );
    assert_eq!(v("h2k_appliance_launches_total", &[]), Some(1.0));
    assert_eq!(v("h2k_accelerator", &[("accelerator", "tcg")]), Some(1.0));
    assert_eq!(v("h2k_accelerator", &[("accelerator", "kvm")]), Some(0.0));
    let last = v("h2k_last_success_timestamp_seconds", &[]).unwrap();
    assert!((last - crate::util::unix_now()).abs() < 60.0, "{last}");
    assert_eq!(
        v(
            "h2k_build_info",
            &[
                ("version", crate::version::TOOL),
                ("git_commit", crate::version::GIT_COMMIT)
            ]
        ),
        Some(1.0)
    );
    assert!(v("h2k_webhook_delivery_failures_total", &[]).is_some());

    // The OpenMetrics form has the same samples, its own family names and the EOF marker.
    let om = m.render_openmetrics();
    assert!(om.ends_with("# EOF\n"), "{om}");
    let (om_types, om_samples) = parse(&om);
    assert_eq!(om_types["h2k_jobs"], "counter");
    assert_eq!(om_samples.len(), samples.len());
    assert_eq!(
        value(&om_samples, "h2k_jobs_total", &[("outcome", "success")]),
        Some(1.0)
    );
}

#[test]
fn before_any_job_both_outcomes_read_zero_and_fix_has_no_spool_metrics() {
    let m = Metrics::new(Scope::Fix);
    let (types, samples) = parse(&m.render_text());
    assert_eq!(
        value(&samples, "h2k_jobs_total", &[("outcome", "success")]),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "h2k_jobs_total", &[("outcome", "failed")]),
        Some(0.0)
    );
    assert!(!types.contains_key("h2k_queue_depth"));
    assert!(!types.contains_key("h2k_webhook_delivery_failures_total"));
    // An interrupted job counts its launches only.
    let (_d, r) = report_with(&[("appliance", 20.0, true)]);
    m.record(None, &JobSample::new(30.0, Some(&r)));
    let (_, samples) = parse(&m.render_text());
    assert_eq!(
        value(&samples, "h2k_appliance_launches_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "h2k_job_duration_seconds_count", &[]),
        Some(0.0)
    );
}

#[test]
fn counters_and_info_become_classic_families() {
    let om = "# HELP a_things Things.\n# TYPE a_things counter\n# UNIT a_things things\na_things_total 3\n\
              # HELP b Build.\n# TYPE b info\nb_info{v=\"1\"} 1\n# TYPE c gauge\nc 2.5\n# EOF\n";
    assert_eq!(
        text::openmetrics_to_classic(om),
        "# HELP a_things_total Things.\n# TYPE a_things_total counter\na_things_total 3\n\
         # HELP b_info Build.\n# TYPE b_info gauge\nb_info{v=\"1\"} 1\n# TYPE c gauge\nc 2.5\n"
    );
}

#[test]
fn the_textfile_is_replaced_whole_and_readable_by_node_exporter() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("h2k.prom");
    let old = format!("{}# end old\n", "a 1\n".repeat(20_000));
    let new = format!("{}# end new\n", "b 2\n".repeat(20_000));
    text::write_textfile(&p, &old).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (p, stop) = (p.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let t = std::fs::read_to_string(&p).unwrap();
                assert!(
                    t.ends_with("# end old\n") || t.ends_with("# end new\n"),
                    "a reader saw a partial file ({} bytes)",
                    t.len()
                );
                reads += 1;
            }
            reads
        })
    };
    for i in 0..100 {
        text::write_textfile(&p, if i % 2 == 0 { &new } else { &old }).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(std::fs::read_to_string(&p).unwrap(), old);
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["h2k.prom"], "temp files left behind");
}

#[test]
fn bad_listen_values_are_one_line_naming_the_flag_and_value() {
    let ok = |v: &str| {
        parse_listen("--metrics-listen", v)
            .unwrap()
            .addr
            .to_string()
    };
    assert_eq!(ok("127.0.0.1:9464"), "127.0.0.1:9464");
    assert_eq!(ok("localhost:9464"), "127.0.0.1:9464");
    assert_eq!(ok(":9464"), "0.0.0.0:9464");
    assert_eq!(ok("[::1]:9464"), "[::1]:9464");
    let cases = [
        ("9464", "expected ADDR:PORT"),
        ("127.0.0.1", "expected ADDR:PORT"),
        ("127.0.0.1:http", "\"http\" is not a port number"),
        ("127.0.0.1:70000", "\"70000\" is not a port number"),
        ("127.0.0.1:0", "port 0 is not a fixed port"),
        (
            "metrics.example:9464",
            "\"metrics.example\" is not an IP address",
        ),
        ("::1:9464", "brackets"),
        ("", "expected ADDR:PORT"),
    ];
    for (v, want) in cases {
        let e = parse_listen("--metrics-listen", v).unwrap_err().to_string();
        assert!(e.starts_with(&format!("--metrics-listen: {v:?}: ")), "{e}");
        assert!(e.contains(want), "{v}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    let e = parse_listen("daemon.yaml: metrics_listen", "nope")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("daemon.yaml: metrics_listen: \"nope\""),
        "{e}"
    );
}

#[test]
fn a_textfile_path_is_checked_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let ok = check_textfile("--metrics-textfile", &d.path().join("h2k.prom")).unwrap();
    assert_eq!(ok, d.path().join("h2k.prom"));
    let e = check_textfile("--metrics-textfile", &d.path().join("no/such/h2k.prom"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("--metrics-textfile: "), "{e}");
    assert!(e.contains("no/such: No such file"), "{e}");
    let e = check_textfile("--metrics-textfile", d.path())
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("is a directory"), "{e}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_endpoint_serves_both_formats_and_a_taken_port_is_a_clear_error() {
    let m = Arc::new(daemon_metrics());
    m.record(Some(JobOutcome::Failed), &JobSample::new(1.0, None));
    let spec = parse_listen("--metrics-listen", &format!("127.0.0.1:{}", free_port())).unwrap();
    let server = MetricsServer::start(&spec, Arc::clone(&m)).unwrap();
    let url = format!("http://{}/metrics", server.addr());
    let get = |accept: Option<&str>| {
        let mut req = ureq::get(&url);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let mut resp = req.call().unwrap();
        let kind = resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        (kind, resp.body_mut().read_to_string().unwrap())
    };
    // Prometheus's own Accept header.
    let (kind, body) = get(Some(
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ));
    assert_eq!(kind, server::OPENMETRICS_TYPE);
    assert!(body.ends_with("# EOF\n"));
    let (kind, body) = get(None);
    assert_eq!(kind, server::TEXT_TYPE);
    let (_, samples) = parse(&body);
    assert_eq!(
        value(&samples, "h2k_jobs_total", &[("outcome", "failed")]),
        Some(1.0)
    );
    let missing = ureq::get(&format!("http://{}/nope", server.addr())).call();
    assert!(
        matches!(missing, Err(ureq::Error::StatusCode(404))),
        "{missing:?}"
    );

    // The same address again: refused at start, naming the flag and the address.
    let e = MetricsServer::start(&spec, Arc::clone(&m))
        .err()
        .expect("a second server on a taken port")
        .to_string();
    assert_eq!(
        e,
        format!(
            "--metrics-listen {}: cannot listen: Address already in use (os error 98)",
            spec.addr
        )
    );
    drop(server);
    // Stopped on drop: the port is free again (the accept thread may take a moment to let go).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let again = loop {
        match MetricsServer::start(&spec, Arc::clone(&m)) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("the port was not freed: {e}"),
        }
    };
    drop(again);
}

#[test]
fn openmetrics_is_served_only_when_asked_for() {
    assert!(server::wants_openmetrics(Some(
        "application/openmetrics-text; version=1.0.0"
    )));
    assert!(!server::wants_openmetrics(Some("text/plain")));
    assert!(!server::wants_openmetrics(Some(
        "application/openmetrics-text;q=0"
    )));
    assert!(!server::wants_openmetrics(None));
}

//! A batch file (the list `fix --batch FILE` reads) dropped in a real daemon's spool: split
//! into one job per VM, each filed on its own with its own report; a batch with a bad entry
//! queues nothing. The VMs' manifests name missing sources, so every job fails at once without
//! an appliance: what is tested is the splitting and filing, not the fix.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::daemon::{free_port, missing_source, Daemon, SpoolRoot};
use common::read_json;

/// The classic-text value of one series on the daemon's `/metrics`.
fn scrape(addr: &str, series: &str) -> Option<f64> {
    let text = ureq::get(&format!("http://{addr}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn visible(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_batch_dropped_in_the_spool_becomes_one_filed_job_per_vm() {
    let t0 = Instant::now();
    let root = SpoolRoot::new("h2k-spool-batch-");
    let vms = root.root.join("vms");
    fs::create_dir_all(&vms).unwrap();
    for name in ["web01.json", "web02.yaml", "db01.json"] {
        fs::write(vms.join(name), missing_source(name)).unwrap();
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::start(&root, &["-j", "2", "--metrics-listen", &addr]);
    let batch = format!(
        "# wave 1\nmanifests:\n  - {}\n  - {}\n  - {}\n",
        vms.join("web01.json").display(),
        vms.join("web02.yaml").display(),
        vms.join("db01.json").display()
    );
    root.drop_manifest("wave1.yaml", batch.as_bytes());
    d.wait_for(
        "the batch and its 3 VMs filed",
        Duration::from_secs(60),
        |_| {
            (root.processed("wave1.yaml")
                && ["web01.json", "web02.yaml", "db01.json"]
                    .iter()
                    .all(|n| root.failed(n)))
            .then_some(())
        },
    );
    // The batch's own report lists what it queued.
    let rep = read_json(&root.processed_today().join("wave1.yaml.report.json"));
    assert_eq!(rep["status"], "split", "{rep}");
    let queued: Vec<(&str, &str)> = rep["batch"]["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["entry"].as_str().unwrap(),
                v["queued_as"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        queued,
        [
            ("manifests[0]", "web01.json"),
            ("manifests[1]", "web02.yaml"),
            ("manifests[2]", "db01.json")
        ]
    );
    // Each VM is a job of its own: its own error report, saying which batch queued it.
    for name in ["web01.json", "web02.yaml", "db01.json"] {
        let e = read_json(&root.failed_today().join(format!("{name}.error.json")));
        assert_eq!(e["manifest"], name, "{e}");
        assert_eq!(e["stage"], "manifest", "{e}");
        assert!(
            e["error"].as_str().unwrap().contains("/nonexistent/"),
            "{e}"
        );
        assert_eq!(e["attempts"], 1, "{e}");
        let history: Vec<&str> = e["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        assert!(
            history
                .iter()
                .any(|h| h.contains("split from batch wave1.yaml")),
            "{history:?}"
        );
        // Filed whole: the manifest filed is the VM's, not the batch.
        let filed: Value =
            serde_yaml_ng::from_str(&fs::read_to_string(root.failed_today().join(name)).unwrap())
                .unwrap();
        assert_eq!(filed["version"], "1.0");
    }
    assert_eq!(visible(&root.tbp()), Vec::<String>::new());
    // The metrics count the three VMs, not the batch.
    assert_eq!(
        scrape(&addr, "h2k_jobs_total{outcome=\"failed\"}"),
        Some(3.0)
    );
    assert_eq!(
        scrape(&addr, "h2k_jobs_total{outcome=\"success\"}"),
        Some(0.0)
    );
    assert_eq!(d.stop().code(), Some(0));
    eprintln!(
        "spool batch split test: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn a_batch_with_a_bad_entry_is_filed_as_failed_and_queues_nothing() {
    let t0 = Instant::now();
    let root = SpoolRoot::new("h2k-spool-batch-bad-");
    let vms = root.root.join("vms");
    fs::create_dir_all(&vms).unwrap();
    fs::write(vms.join("ok.json"), missing_source("ok")).unwrap();
    fs::write(vms.join("notes.txt"), missing_source("notes")).unwrap();
    let inner = vms.join("inner.json");
    fs::write(
        &inner,
        format!("[{:?}]", vms.join("ok.json").display().to_string()),
    )
    .unwrap();
    let ok = vms.join("ok.json").display().to_string();
    let cases: [(&str, String, String); 4] = [
        (
            "relative.json",
            format!(r#"[{ok:?}, "ok.json"]"#),
            "relative.json: manifests[1]: ok.json: a relative path; a batch in the spool must list absolute paths".into(),
        ),
        (
            "missing.json",
            format!(r#"[{ok:?}, "/nonexistent/vm.json"]"#),
            "missing.json: manifests[1]: /nonexistent/vm.json: No such file or directory".into(),
        ),
        (
            "nested.json",
            format!(r#"[{ok:?}, {:?}]"#, inner.display().to_string()),
            format!(
                "nested.json: manifests[1]: {}: a batch itself; batches do not nest",
                inner.display()
            ),
        ),
        (
            "txt.json",
            format!(r#"{{"manifests": [{ok:?}, {:?}]}}"#, vms.join("notes.txt").display().to_string()),
            format!(
                "txt.json: manifests[1]: {}: the daemon takes manifests named *.json",
                vms.join("notes.txt").display()
            ),
        ),
    ];
    let mut d = Daemon::start(&root, &[]);
    for (name, text, _) in &cases {
        root.drop_manifest(name, text.as_bytes());
    }
    d.wait_for("the bad batches filed", Duration::from_secs(60), |_| {
        cases.iter().all(|(n, _, _)| root.failed(n)).then_some(())
    });
    for (name, _, want) in &cases {
        let e = read_json(&root.failed_today().join(format!("{name}.error.json")));
        let error = e["error"].as_str().unwrap();
        assert!(error.starts_with(want.as_str()), "{name}: {error}");
        assert_eq!(error.lines().count(), 1, "{error}");
        assert_eq!(e["stage"], "manifest");
    }
    // Nothing of any bad batch was queued: ok.json never ran.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!root.failed("ok.json") && !root.processed("ok.json"));
    assert_eq!(visible(&root.tbp()), Vec::<String>::new());
    assert_eq!(visible(&root.processed_today()), Vec::<String>::new());
    eprintln!("bad spool batch test: {:.1} s", t0.elapsed().as_secs_f64());
}

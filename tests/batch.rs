//! `h2k-guest fix --batch`, as a user runs it. Most cases use manifests that fail before an
//! appliance starts (a missing or junk source), so they take a second; the last one fixes two
//! real fixtures at once and needs the appliance (it holds `vm_lock`).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

mod common;
use common::{fixture, h2k, read_json, vm_lock, Run};

/// A seed-format manifest whose source does not exist.
fn missing_source(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.json"));
    fs::write(
        &p,
        json!({"version": "1.0", "pipeline": {
            "load": {"source_type": "vmdk", "source_path": format!("/nonexistent/{name}.vmdk")},
            "convert": {"output_format": "qcow2", "output_path": format!("{name}.qcow2")}}})
        .to_string(),
    )
    .unwrap();
    p
}

fn batch(args: &[&Path]) -> Run {
    let mut argv: Vec<&Path> = vec![Path::new("fix")];
    argv.extend_from_slice(args);
    h2k(argv)
}

#[test]
fn a_batch_of_failing_manifests_reports_every_vm_and_exits_1() {
    let d = tempfile::tempdir().unwrap();
    missing_source(d.path(), "vm-a");
    missing_source(d.path(), "vm-b");
    let list = d.path().join("wave1.yaml");
    fs::write(&list, "manifests:\n  - vm-a.json\n  - vm-b.json\n").unwrap();
    let out = d.path().join("out");
    let run = batch(&[
        Path::new("--batch"),
        &list,
        Path::new("-j"),
        Path::new("2"),
        Path::new("--output-dir"),
        &out,
    ]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert!(
        run.stderr().contains("h2k-guest: error: 2 of 2 failed"),
        "{}",
        run.describe()
    );
    let report_path = out.join("batch-report.json");
    assert!(run
        .stdout()
        .contains(&format!("batch report: {}", report_path.display())));
    let rep = read_json(&report_path);
    assert_eq!(
        (
            &rep["total"],
            &rep["failed"],
            &rep["succeeded"],
            &rep["jobs"]
        ),
        (&json!(2), &json!(2), &json!(0), &json!(2))
    );
    let vms = rep["vms"].as_array().unwrap();
    // In the batch file's order, whatever order they finished in.
    for (v, name) in vms.iter().zip(["vm-a", "vm-b"]) {
        assert_eq!(v["outcome"], "failed", "{v}");
        assert_eq!(v["manifest"], json!(d.path().join(format!("{name}.json"))));
        let err = v["error"].as_str().unwrap();
        assert!(err.contains(&format!("/nonexistent/{name}.vmdk")), "{err}");
        assert!(v["manifest_sha256"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
        assert!(v["duration_seconds"].as_f64().unwrap() >= 0.0);
    }
    // The table names both.
    let table = run.stdout();
    assert!(table.contains("vm-a") && table.contains("vm-b"), "{table}");
    assert!(
        table.contains("2 VMs: 0 succeeded, 2 failed, 0 skipped"),
        "{table}"
    );
}

#[test]
fn a_directory_batch_with_a_chosen_report_path() {
    let d = tempfile::tempdir().unwrap();
    let wave = d.path().join("wave");
    fs::create_dir(&wave).unwrap();
    missing_source(&wave, "one");
    missing_source(&wave, "two");
    fs::write(wave.join("notes.txt"), "not a manifest").unwrap();
    let rep_path = d.path().join("reports/wave.json");
    let run = batch(&[
        Path::new("--batch"),
        &wave,
        Path::new("--batch-report"),
        &rep_path,
    ]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert!(run.stderr().contains("2 of 2 failed"), "{}", run.describe());
    let rep = read_json(&rep_path);
    let vms: Vec<&str> = rep["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vm"].as_str().unwrap())
        .collect();
    assert_eq!(vms, ["one", "two"]);
}

#[test]
fn bad_batch_files_are_usage_errors_naming_file_and_entry() {
    let d = tempfile::tempdir().unwrap();
    missing_source(d.path(), "ok");
    let list = d.path().join("b.json");
    for (text, want) in [
        (r#"["ok.json", "gone.json"]"#, "manifests[1]: gone.json: "),
        (
            r#"["ok.json", {"path": "x"}]"#,
            "manifests[1]: expected a manifest path",
        ),
        (r#"[]"#, "no manifests in the batch"),
    ] {
        fs::write(&list, text).unwrap();
        let run = batch(&[Path::new("--batch"), &list]);
        assert_eq!(run.code(), Some(2), "{text}: {}", run.describe());
        let err = run.stderr();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(&format!("{}: ", list.display())), "{err}");
        assert!(err.contains(want), "{text}: {err}");
    }
    // --batch with --manifest is a clap usage error (exit 2).
    let run = batch(&[Path::new("--batch"), &list, Path::new("--manifest"), &list]);
    assert_eq!(run.code(), Some(2), "{}", run.describe());
}

#[test]
fn a_second_run_skips_a_vm_whose_output_and_report_match() {
    let d = tempfile::tempdir().unwrap();
    // A source that exists (junk: it fails in LOAD, before an appliance).
    fs::write(d.path().join("done.vmdk"), "not a disk").unwrap();
    let done = d.path().join("done.json");
    fs::write(
        &done,
        json!({"version": "1.0", "pipeline": {
            "load": {"source_type": "vmdk", "source_path": d.path().join("done.vmdk")},
            "convert": {"output_format": "qcow2", "output_path": "done.qcow2"}}})
        .to_string(),
    )
    .unwrap();
    missing_source(d.path(), "todo");
    let list = d.path().join("b.json");
    fs::write(&list, r#"["done.json", "todo.json"]"#).unwrap();
    let rep_path = d.path().join("batch-report.json");
    let args = [
        Path::new("--batch"),
        &list,
        Path::new("--batch-report"),
        &rep_path,
    ];
    let first = batch(&args);
    assert_eq!(first.code(), Some(1), "{}", first.describe());

    // Pretend "done" succeeded: its output, its report, and the batch report saying so.
    let out = d.path().join("done.qcow2");
    fs::write(&out, "image").unwrap();
    fs::write(
        d.path().join("done.qcow2.report.json"),
        json!({"status": "success", "outputs": [{"path": out}]}).to_string(),
    )
    .unwrap();
    let mut rep: Value = read_json(&rep_path);
    rep["vms"][0]["outcome"] = json!("success");
    fs::write(&rep_path, rep.to_string()).unwrap();

    let second = batch(&args);
    assert_eq!(second.code(), Some(1), "{}", second.describe());
    assert!(
        second.stderr().contains("1 of 2 failed"),
        "{}",
        second.describe()
    );
    let rep = read_json(&rep_path);
    assert_eq!(rep["vms"][0]["outcome"], "skipped", "{rep}");
    assert_eq!(rep["vms"][0]["outputs"], json!([out]));
    assert_eq!(rep["vms"][1]["outcome"], "failed");
    assert_eq!(rep["skipped"], 1);

    // A skipped VM stays skipped; an edited manifest runs again.
    let third = batch(&args);
    assert_eq!(
        read_json(&rep_path)["vms"][0]["outcome"],
        "skipped",
        "{}",
        third.describe()
    );
    let mut m: Value = read_json(&done);
    m["pipeline"]["convert"]["compress"] = json!(true);
    fs::write(&done, m.to_string()).unwrap();
    let fourth = batch(&args);
    let rep = read_json(&rep_path);
    assert_eq!(rep["vms"][0]["outcome"], "failed", "{}", fourth.describe());
    assert!(fourth.stderr().contains("2 of 2 failed"));
}

/// Needs the appliance (two jobs at once, each its own): run by the coordinator, not in the
/// quick suite.
#[test]
fn two_real_fixtures_at_once_then_resumed() {
    let bios = fixture("debian12-bios");
    let uefi = fixture("debian12-uefi-dracut-lvm");
    let d = tempfile::tempdir().unwrap();
    for (name, src) in [("bios", &bios), ("uefi", &uefi)] {
        fs::write(
            d.path().join(format!("{name}.json")),
            json!({"version": "1.0", "pipeline": {
                "load": {"source_type": "vmdk", "source_path": src},
                "convert": {"output_format": "qcow2", "output_path": format!("{name}.qcow2")}}})
            .to_string(),
        )
        .unwrap();
    }
    let list = d.path().join("wave.json");
    fs::write(&list, r#"["bios.json", "uefi.json"]"#).unwrap();
    let out = d.path().join("out");
    let args = [
        Path::new("--batch"),
        &list,
        Path::new("-j"),
        Path::new("2"),
        Path::new("--output-dir"),
        &out,
    ];
    let _vm = vm_lock();
    let run = batch(&args);
    assert!(run.success(), "{}", run.describe());
    eprintln!("batch of 2 at -j 2 took {:.1} s", run.seconds);
    let rep = read_json(&out.join("batch-report.json"));
    assert_eq!(rep["succeeded"], 2, "{rep}");
    for name in ["bios", "uefi"] {
        assert!(out.join(format!("{name}.qcow2")).is_file());
        assert!(out.join(format!("{name}.qcow2.report.json")).is_file());
    }
    let again = batch(&args);
    assert!(again.success(), "{}", again.describe());
    let rep = read_json(&out.join("batch-report.json"));
    assert_eq!(rep["skipped"], 2, "{rep}");
    assert!(
        again.seconds < 10.0,
        "a resumed batch runs nothing: {:.1} s",
        again.seconds
    );
}

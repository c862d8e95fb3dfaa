//! `validate --boot --probe` from the tests: run it, and say whether the guest came up whole.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{h2k, read_json, Run};

/// `validate --boot --probe --json` on `disks` (boot disk first).
pub fn probe(
    disks: &[&Path],
    bus: &str,
    macs: &[&str],
    expect: &[&str],
) -> (Run, serde_json::Value) {
    probe_logged(disks, bus, macs, expect, None)
}

/// [`probe`], keeping the serial console in `console`.
pub fn probe_logged(
    disks: &[&Path],
    bus: &str,
    macs: &[&str],
    expect: &[&str],
    console: Option<&Path>,
) -> (Run, serde_json::Value) {
    let mut args: Vec<String> = vec![
        "validate".into(),
        "--boot".into(),
        "--probe".into(),
        "--json".into(),
        "--bus".into(),
        bus.into(),
        "--timeout".into(),
        "420".into(),
    ];
    for d in &disks[1..] {
        args.push("--disk".into());
        args.push(d.display().to_string());
    }
    for m in macs {
        args.push("--mac".into());
        args.push(m.to_string());
    }
    for e in expect {
        args.push("--expect-iface".into());
        args.push(e.to_string());
    }
    if let Some(c) = console {
        args.push("--console-log".into());
        args.push(c.display().to_string());
    }
    args.push(disks[0].display().to_string());
    let start = Instant::now();
    let run = h2k(&args);
    let json: serde_json::Value = serde_json::from_str(run.stdout().trim()).unwrap_or_default();
    let multi_user = json
        .pointer("/probe/guest/multi_user_seconds")
        .map(|v| v.to_string())
        .unwrap_or_else(|| "?".into());
    let image = disks[0].file_name().unwrap().to_string_lossy().to_string();
    let wall = start.elapsed().as_secs_f64();
    eprintln!(
        "TIMING probe {image} on {bus}: {wall:.0} s, exit {:?}, multi-user after {multi_user} s",
        run.code(),
    );
    record_probe(&image, bus, wall, &multi_user, &json);
    (run, json)
}

/// One line per probe in `target/tmp/probes.tsv` (test, image, bus, result, wall seconds,
/// seconds to multi-user, failure): `scripts/test.sh` prints the table at the end, so a CI log
/// shows every control and every fixed guest with its figures.
fn record_probe(image: &str, bus: &str, wall: f64, multi_user: &str, json: &serde_json::Value) {
    use std::io::Write as _;
    let result = if json["probe"]["whole"] == true {
        "whole".to_string()
    } else if json["probe"]["reached"] == true {
        "not whole".to_string()
    } else {
        format!(
            "failed: {}",
            json["failure"]["kind"].as_str().unwrap_or("?")
        )
    };
    let problems = json["probe"]["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let test = std::env::args()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
        })
        .map(|n| n.split('-').next().unwrap_or(&n).to_string())
        .unwrap_or_default();
    let thread = std::thread::current().name().unwrap_or("?").to_string();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("probes.tsv");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(
            f,
            "{test}::{thread}\t{image}\t{bus}\t{result}\t{wall:.0}\t{multi_user}\t{}",
            problems.replace(['\t', '\n'], " ")
        );
    }
}

pub fn assert_whole(what: &str, run: &Run, json: &serde_json::Value) {
    assert!(
        run.success() && json["probe"]["whole"] == true,
        "{what}: not whole\n{}\n{}",
        run.describe(),
        serde_json::to_string_pretty(json).unwrap_or_default()
    );
}

pub fn assert_not_whole(what: &str, run: &Run, json: &serde_json::Value, because: &str) {
    assert!(
        !run.success(),
        "{what}: expected to fail the probe\n{}",
        run.describe()
    );
    let line = super::one_error_line(&run.stderr());
    assert!(
        line.contains(because),
        "{what}: the error should say {because:?}: {line}\n{}",
        serde_json::to_string_pretty(json).unwrap_or_default()
    );
}

/// The probe's record of interface `name`, if the guest had one.
pub fn interface<'a>(json: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    json.pointer("/probe/guest/interfaces")?
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
}

pub fn has_ipv4(iface: &serde_json::Value, addr: &str) -> bool {
    iface["ipv4"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a.as_str().is_some_and(|s| s.starts_with(addr)))
}

/// The unfixed guest on virtio: its initramfs has no virtio driver, so it never finds its root.
///
/// A plain boot, without the probe: the guest never reaches its userspace, so writing the probe
/// unit into it (one appliance launch, 10-20 s under TCG) would buy nothing. `_mac` is kept for
/// the callers' symmetry with [`probe`]; the NIC does not matter before the root is found.
pub fn assert_fails_on_virtio(src: &Path, _mac: &str) {
    let start = Instant::now();
    let run = h2k([
        "validate".as_ref(),
        "--boot".as_ref(),
        "--json".as_ref(),
        "--bus".as_ref(),
        "virtio".as_ref(),
        "--timeout".as_ref(),
        "420".as_ref(),
        src.as_os_str(),
    ]);
    let json: serde_json::Value = serde_json::from_str(run.stdout().trim()).unwrap_or_default();
    let image = src.file_name().unwrap().to_string_lossy().to_string();
    let wall = start.elapsed().as_secs_f64();
    record_probe(&image, "virtio (boot only)", wall, "?", &json);
    assert!(
        !run.success() && json["booted"] == false && !json["failure"].is_null(),
        "control: the unfixed guest must fail on virtio\n{}\n{json}",
        run.describe()
    );
    eprintln!(
        "control on virtio: {} after {} s",
        json["failure"]["kind"], json["failure"]["seconds"]
    );
}

pub fn fix_record<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["fixes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no {name} record in {report}"))
}

/// `h2k-guest fix SOURCE -o OUT_DIR/fixed.qcow2 EXTRA…`, which must succeed; the output and its report.
pub fn fix(source: &Path, out_dir: &Path, extra: &[&str]) -> (PathBuf, serde_json::Value) {
    let out = out_dir.join("fixed.qcow2");
    let mut args: Vec<String> = vec!["fix".into(), source.display().to_string(), "-o".into()];
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = h2k(&args);
    assert!(run.success(), "fix failed:\n{}", run.describe());
    let report = read_json(&out_dir.join("fixed.qcow2.report.json"));
    (out, report)
}

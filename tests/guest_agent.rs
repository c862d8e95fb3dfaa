//! `fix --install-guest-agent` end to end on the debian12-bios fixture, and the probe's
//! agent check (`validate --boot --probe --expect-agent`):
//! - control: the guest fixed without the agent boots whole on virtio except that no agent
//!   answers, so with --expect-agent it is not whole, for that reason alone;
//! - fixed with --install-guest-agent (and --boot-check, which then expects the agent by
//!   itself), the output probes whole with the agent's version;
//! - fixing that output again finds the agent installed (unchanged);
//! - an unreachable mirror fails the fix in one line, with no output;
//! - the source is never written.
//!
//! Needs the network (deb.debian.org, or H2K_DEBIAN_MIRROR / H2K_DEBIAN_SECURITY), an
//! appliance and QEMU; one boot at a time (`vm_lock`), each 1–2 minutes under TCG.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, h2k, read_json, sha256_file, vm_lock, Run};

const BIOS_MAC: &str = "00:50:56:8a:1b:01";
const KVM_MAC: &str = "52:54:00:4b:00:07";
const AGENT_PROBLEM: &str = "guest agent did not answer on org.qemu.guest_agent.0";

/// `validate --boot --probe --expect-agent --json` on virtio with the KVM MAC.
fn probe_expecting_agent(image: &Path) -> (Run, serde_json::Value) {
    let run = h2k([
        "validate",
        "--boot",
        "--probe",
        "--expect-agent",
        "--json",
        "--bus",
        "virtio",
        "--timeout",
        "420",
        "--mac",
        KVM_MAC,
        "--expect-iface",
        "ens192=10.0.2.15/24",
        &image.display().to_string(),
    ]);
    let json: serde_json::Value = serde_json::from_str(run.stdout().trim()).unwrap_or_default();
    eprintln!(
        "TIMING probe {}: {:.0} s, exit {:?}, agent {}",
        image.display(),
        run.seconds,
        run.code(),
        json.pointer("/probe/agent").cloned().unwrap_or_default()
    );
    (run, json)
}

fn fix(source: &Path, out: &Path, extra: &[&str]) -> Run {
    let mapping = format!("{BIOS_MAC}={KVM_MAC}");
    let mut args: Vec<String> = vec![
        "fix".into(),
        source.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--nic".into(),
        mapping,
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = h2k(&args);
    eprintln!("TIMING fix {extra:?}: {:.0} s", run.seconds);
    run
}

fn agent_record(report: &serde_json::Value) -> serde_json::Value {
    report["fixes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "guest-agent")
        .cloned()
        .unwrap_or_else(|| panic!("no guest-agent record: {report}"))
}

fn report_of(out: &Path) -> serde_json::Value {
    let mut name = out.file_name().unwrap().to_os_string();
    name.push(".report.json");
    read_json(&out.with_file_name(name))
}

#[test]
fn the_agent_installed_offline_answers_on_virtio_and_its_absence_is_not_whole() {
    let _vm = vm_lock();
    let src: PathBuf = fixture("debian12-bios");
    let sha = sha256_file(&src);
    let dir = tempfile::tempdir().unwrap();

    // Control: fixed without the agent. Whole in every other respect, not whole for the agent.
    let plain = dir.path().join("plain.qcow2");
    let run = fix(&src, &plain, &[]);
    assert!(run.success(), "fix failed:\n{}", run.describe());
    assert_eq!(agent_record(&report_of(&plain))["status"], "skipped");
    let (run, json) = probe_expecting_agent(&plain);
    assert!(!run.success(), "control must fail:\n{}", run.describe());
    assert_eq!(json["booted"], true, "{json}");
    assert_eq!(json["probe"]["reached"], true, "{json}");
    let problems = json["probe"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "only the agent is missing: {problems:?}");
    assert!(
        problems[0].as_str().unwrap().starts_with(AGENT_PROBLEM),
        "{problems:?}"
    );
    assert_eq!(json["probe"]["agent"]["expected"], true);
    assert_eq!(json["probe"]["agent"]["answered"], false);
    // The probe says why: the unit does not exist in that guest.
    assert_eq!(json["probe"]["guest"]["agent_unit"], "not-found", "{json}");
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .ends_with("(qemu-guest-agent.service in the guest: not-found)"),
        "{problems:?}"
    );
    let line = common::one_error_line(&run.stderr());
    assert!(line.contains(AGENT_PROBLEM), "{line}");

    // Installed by this run: --boot-check expects the agent without being told.
    let with_agent = dir.path().join("agent.qcow2");
    let run = fix(
        &src,
        &with_agent,
        &["--install-guest-agent", "--boot-check"],
    );
    assert!(
        run.success(),
        "fix --install-guest-agent failed:\n{}",
        run.describe()
    );
    let report = report_of(&with_agent);
    let record = agent_record(&report);
    assert_eq!(record["status"], "changed", "{record}");
    let summary = record["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("qemu-guest-agent 1:7.2")
            && summary.contains("installed with the guest's dpkg"),
        "{summary}"
    );
    assert!(
        record["files"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("+Package: qemu-guest-agent"),
        "{record}"
    );
    let boot_agent = &report["validation"][0]["probe"]["agent"];
    assert_eq!(boot_agent["expected"], true, "{report}");
    assert_eq!(boot_agent["answered"], true, "{report}");

    // The boot check's probe is the proof (a second boot would cost a minute and add nothing).
    let probe = &report["validation"][0]["probe"];
    assert_eq!(probe["whole"], true, "with the agent: not whole\n{report}");
    assert_eq!(probe["guest"]["agent_unit"], "active", "{probe}");
    let version = boot_agent["version"].as_str().unwrap_or_default();
    assert!(version.starts_with("7.2"), "qemu-ga version: {boot_agent}");

    // Fixed again: the agent is found, nothing is fetched.
    let again = dir.path().join("again.qcow2");
    let run = fix(&with_agent, &again, &["--install-guest-agent"]);
    assert!(run.success(), "{}", run.describe());
    let record = agent_record(&report_of(&again));
    assert_eq!(record["status"], "unchanged", "{record}");
    assert!(
        record["summary"]
            .as_str()
            .unwrap()
            .ends_with("already installed"),
        "{record}"
    );

    assert_eq!(sha256_file(&src), sha, "the source changed");
}

#[test]
fn an_unreachable_mirror_fails_the_fix_in_one_line_with_no_output() {
    let _vm = vm_lock();
    let src = fixture("debian12-bios");
    let sha = sha256_file(&src);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.qcow2");
    let start = std::time::Instant::now();
    let run = std::process::Command::new(common::bin())
        .args([
            "fix",
            &src.display().to_string(),
            "-o",
            &out.display().to_string(),
        ])
        .arg("--install-guest-agent")
        // Port 9 (discard) on loopback: refused at once, no waiting on the network.
        .env("H2K_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
        .env("H2K_DEBIAN_SECURITY", "http://127.0.0.1:9/debian-security")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!(
        "TIMING fix with a dead mirror: {:.0} s",
        start.elapsed().as_secs_f64()
    );
    assert!(!run.status.success(), "{stderr}");
    let line = common::one_error_line(&stderr);
    assert!(
        line.contains("guest-agent") && line.contains("apt-get update"),
        "{line}"
    );
    assert!(!out.exists(), "no output after a failed fix");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".report.json"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(sha256_file(&src), sha, "the source changed");
}

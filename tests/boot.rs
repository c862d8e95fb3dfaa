//! Real boots under QEMU (TCG on machines without working KVM) through
//! `h2k-guest validate --boot`: the VMware-style fixtures boot to `login:` on the controller
//! they were built for and fail on virtio with the console line that proves why; broken inputs
//! fail fast; QEMU never outlives the check; the source image is never written.
//!
//! Slow (each boot ~25–60 s under TCG; fixtures take minutes to build the first time). Run with
//! `cargo test --test boot -- --test-threads=1 --nocapture` to see the measured timings.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIOS: &str = "debian12-bios";
const UEFI: &str = "debian12-uefi-dracut-lvm";

/// `validate --boot --json` with the console kept in `dir`.
fn boot(image: &Path, bus: &str, timeout_s: u64, dir: &Path, extra: &[&str]) -> Run {
    let log = dir.join(format!("console-{bus}.log"));
    let timeout = timeout_s.to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "validate".as_ref(),
        "--boot".as_ref(),
        "--json".as_ref(),
        "--bus".as_ref(),
        bus.as_ref(),
        "--timeout".as_ref(),
        timeout.as_ref(),
        "--console-log".as_ref(),
        log.as_os_str(),
    ];
    args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    args.push(image.as_os_str());
    // The binary stops at --timeout; allow for QEMU start-up and the partition-table read.
    within(
        Duration::from_secs(timeout_s + 60),
        "validate --boot",
        || h2k(&args),
    )
}

fn console_tail(dir: &Path, bus: &str) -> String {
    let log = dir.join(format!("console-{bus}.log"));
    let text = std::fs::read(&log).unwrap_or_default();
    tail(&String::from_utf8_lossy(&text), 25)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("h2k-test-boot-")
        .tempdir()
        .expect("temp dir")
}

fn expect_login(name: &str, bus: &str, extra: &[&str]) -> serde_json::Value {
    let _vm = vm_lock();
    let image = fixture(name);
    let host = fixture_facts(&image)["hostname"]
        .as_str()
        .expect("hostname in the fixture's facts")
        .to_string();
    let before = sha256_file(&image);
    let dir = tempdir();
    let run = boot(&image, bus, 240, dir.path(), extra);
    assert!(
        run.success(),
        "{name} did not boot on {bus}: {}\nconsole:\n{}",
        run.describe(),
        console_tail(dir.path(), bus)
    );
    let j = run.json();
    assert_eq!(j["booted"], true, "{j:#}");
    assert_eq!(j["bus"], bus);
    assert_eq!(j["login_prompt"], format!("{host} login:"), "{j:#}");
    assert!(j["failure"].is_null(), "{j:#}");
    let secs = j["seconds_to_login"].as_f64().expect("seconds_to_login");
    eprintln!(
        "TIMING {name} on {bus} ({}, {}): login after {secs:.1} s",
        j["firmware"], j["accel"]
    );
    assert_eq!(
        sha256_file(&image),
        before,
        "{} changed during the boot check",
        image.display()
    );
    j
}

fn expect_failure(name: &str, bus: &str, timeout_s: u64) -> serde_json::Value {
    let _vm = vm_lock();
    let image = fixture(name);
    let before = sha256_file(&image);
    let dir = tempdir();
    let run = boot(&image, bus, timeout_s, dir.path(), &[]);
    assert_eq!(
        run.code(),
        Some(1),
        "{name} on {bus} should fail: {}\nconsole:\n{}",
        run.describe(),
        console_tail(dir.path(), bus)
    );
    let j = run.json();
    assert_eq!(j["booted"], false, "{j:#}");
    let f = &j["failure"];
    assert_ne!(
        f["kind"], "timeout",
        "the failure should be recognised, not timed out: {j:#}"
    );
    // One error line naming the image, the bus and what the console showed.
    let err = run.stderr();
    let line = err
        .lines()
        .find(|l| l.starts_with("h2k-guest: error:"))
        .unwrap_or_else(|| panic!("no error line: {}", run.describe()));
    assert!(line.contains(&*image.to_string_lossy()), "{line}");
    assert!(line.contains(&format!("bus {bus}")), "{line}");
    let console_line = f["console_line"].as_str().expect("console_line");
    assert!(line.contains(console_line), "{line}");
    eprintln!(
        "TIMING {name} on {bus} ({}, {}): failure recognised after {:.1} s: {} | console: {console_line:?}",
        j["firmware"],
        j["accel"],
        f["seconds"].as_f64().unwrap_or(-1.0),
        f["kind"]
    );
    assert_eq!(
        sha256_file(&image),
        before,
        "{} changed during the boot check",
        image.display()
    );
    j
}

// The BIOS fixture on pvscsi, its VMware bus, is probed whole (more than `login:`) by
// tests/whole.rs; the UEFI fixture's control on SATA is here.

#[test]
fn bios_guest_fails_on_virtio_for_want_of_its_root_device() {
    let j = expect_failure(BIOS, "virtio", 300);
    let f = &j["failure"];
    assert_eq!(f["kind"], "root-device-missing", "{j:#}");
    assert_eq!(f["device"], "/dev/sda1", "{j:#}");
    let line = f["console_line"].as_str().unwrap();
    assert!(
        line.contains("ALERT!") && line.contains("/dev/sda1 does not exist"),
        "initramfs-tools' own message: {line}"
    );
}

#[test]
fn uefi_dracut_lvm_guest_boots_on_sata_under_ovmf() {
    let j = expect_login(UEFI, "sata", &[]);
    assert_eq!(
        j["firmware"], "uefi",
        "auto finds the ESP in the GPT: {j:#}"
    );
}

#[test]
fn uefi_dracut_lvm_guest_fails_on_virtio() {
    // dracut's initqueue gives up after ~3.5 min of guest time under TCG (~4.3 min wall).
    let j = expect_failure(UEFI, "virtio", 420);
    assert_eq!(j["firmware"], "uefi", "{j:#}");
    let f = &j["failure"];
    assert!(
        f["kind"] == "root-device-missing" || f["kind"] == "emergency-shell",
        "{j:#}"
    );
    if f["kind"] == "root-device-missing" {
        assert_eq!(f["device"], "/dev/mapper/vg0-root", "{j:#}");
    }
}

#[test]
fn a_text_file_is_refused_at_once() {
    let dir = tempdir();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a disk image\n".repeat(100)).unwrap();
    let run = within(
        Duration::from_secs(10),
        "validate --boot on a text file",
        || {
            h2k([
                "validate".as_ref(),
                "--boot".as_ref(),
                "--timeout".as_ref(),
                "60".as_ref(),
                text.as_os_str(),
            ])
        },
    );
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let err = run.stderr();
    assert!(
        err.contains(&*text.to_string_lossy()) && err.contains("not a disk image"),
        "{}",
        run.describe()
    );
    // Same without --boot (qemu-img check mode).
    let run = h2k(["validate".as_ref(), text.as_os_str()]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert!(
        run.stderr().contains("not a disk image"),
        "{}",
        run.describe()
    );
}

fn blank_qcow2(dir: &Path) -> PathBuf {
    let blank = dir.join("blank.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&blank)
        .arg("100M")
        .status()
        .expect("qemu-img create");
    assert!(st.success());
    blank
}

#[test]
fn a_blank_disk_fails_quickly_with_no_bootable_device() {
    let _vm = vm_lock();
    let dir = tempdir();
    let blank = blank_qcow2(dir.path());
    let start = Instant::now();
    let run = boot(&blank, "virtio", 60, dir.path(), &[]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let j = run.json();
    assert_eq!(j["firmware"], "bios", "no partition table → BIOS: {j:#}");
    assert_eq!(j["failure"]["kind"], "no-bootable-device", "{j:#}");
    assert!(
        run.stderr().contains("No bootable device"),
        "{}",
        run.describe()
    );
    assert!(start.elapsed() < Duration::from_secs(60));
    eprintln!(
        "TIMING blank qcow2 (bios): failure recognised after {:.1} s",
        j["failure"]["seconds"].as_f64().unwrap_or(-1.0)
    );
}

#[test]
fn a_blank_disk_under_uefi_ends_in_the_uefi_shell() {
    let _vm = vm_lock();
    let dir = tempdir();
    let blank = blank_qcow2(dir.path());
    let run = boot(&blank, "virtio", 90, dir.path(), &["--firmware", "uefi"]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let j = run.json();
    assert_eq!(j["firmware"], "uefi");
    assert_eq!(j["failure"]["kind"], "firmware", "{j:#}");
    eprintln!(
        "TIMING blank qcow2 (uefi): failure recognised after {:.1} s: {}",
        j["failure"]["seconds"].as_f64().unwrap_or(-1.0),
        j["failure"]["console_line"]
    );
}

/// PIDs of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Start a boot check of the BIOS fixture, wait until the guest prints, then hit the binary
/// with `signal`; return (exit status, stderr, console log path, private TMPDIR).
fn boot_then_signal(
    signal: nix::sys::signal::Signal,
) -> (std::process::ExitStatus, String, PathBuf, tempfile::TempDir) {
    let image = fixture(BIOS);
    let dir = tempdir();
    let tmp = tempdir();
    let log = dir.path().join("console.log");
    let child = Command::new(bin())
        .args([
            "validate",
            "--boot",
            "--bus",
            "pvscsi",
            "--timeout",
            "120",
            "--console-log",
        ])
        .arg(&log)
        .arg(&image)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn h2k-guest");
    let start = Instant::now();
    while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the guest printed nothing in 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !processes_mentioning(&log.to_string_lossy()).is_empty(),
        "QEMU should be running"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).expect("kill");
    let out = child.wait_with_output().expect("wait");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        log,
        (dir, tmp).1,
    )
}

fn wait_gone(needle: &str, limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() || start.elapsed() > limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_stops_qemu_and_removes_the_overlay() {
    let _vm = vm_lock();
    let (status, stderr, log, tmp) = boot_then_signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let left = wait_gone(&log.to_string_lossy(), Duration::from_secs(5));
    assert!(left.is_empty(), "QEMU still running: {left:?}");
    // The overlay and OVMF variables live in an h2k-validate-* directory under TMPDIR.
    let leftovers: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("h2k-validate-")
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
}

#[test]
fn qemu_dies_with_a_sigkilled_parent() {
    let _vm = vm_lock();
    let (status, _, log, _tmp) = boot_then_signal(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(status.code(), None, "killed by a signal");
    let left = wait_gone(&log.to_string_lossy(), Duration::from_secs(5));
    assert!(
        left.is_empty(),
        "QEMU outlived its SIGKILLed parent: {left:?}"
    );
}

//! `workflow watch` on a spool made by hand (no daemon, no appliance).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_h2k-guest");

fn spool() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for sub in [
        "to_be_processed",
        "processing",
        "processed",
        "failed",
        ".h2k-guest/daemons",
    ] {
        std::fs::create_dir_all(d.path().join(sub)).unwrap();
    }
    d
}

#[test]
fn once_prints_one_snapshot() {
    let d = spool();
    std::fs::write(d.path().join("to_be_processed/a.json"), "{}").unwrap();
    std::fs::write(d.path().join("processing/b.json"), "{}").unwrap();
    let out = Command::new(BIN)
        .args(["workflow", "watch", "--once", "--dir"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "queue: 1 to be processed, 1 processing, 0 processed today, 0 failed today; no daemon running\n"
    );
    let out = Command::new(BIN)
        .args(["workflow", "watch", "--once", "--dir"])
        .arg(d.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such spool directory"));
}

#[test]
fn a_pipe_gets_one_line_per_change_and_sigterm_exits_143() {
    let d = spool();
    let mut child = Command::new(BIN)
        .args(["workflow", "watch", "--dir"])
        .arg(d.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.ends_with("queue: 0 to be processed, 0 processing, 0 processed today, 0 failed today; no daemon running"), "{first}");
    let t = Instant::now();
    std::fs::write(d.path().join("to_be_processed/vm.json"), "{}").unwrap();
    let second = lines.next().unwrap().unwrap();
    assert!(second.contains("queue: 1 to be processed"), "{second}");
    assert!(t.elapsed() < Duration::from_secs(3));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // Nothing changed in between: no further line.
    assert!(lines.next().is_none());
    assert_eq!(child.wait().unwrap().code(), Some(143));
}

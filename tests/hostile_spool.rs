//! Hostile spool entries and arguments against the real binary: `workflow` commands given
//! FIFOs, devices, huge files, missing directories and impossible dates, and one short-lived
//! `daemon` fed names that are too long, carry newlines or are not UTF-8, plus a FIFO and a
//! symlink to a device. Every manifest's source is missing, so no appliance is ever launched;
//! every wait is bounded.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_h2k-guest");

fn today() -> String {
    let d = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

/// A seed-format manifest whose source does not exist: fails in the manifest stage at once.
fn missing_source(tag: &str) -> Vec<u8> {
    format!(
        r#"{{"version": "1.0", "pipeline": {{"load": {{"source_type": "vmdk", "source_path": "/nonexistent/{tag}.vmdk"}},
            "convert": {{"output_format": "qcow2", "output_path": "{tag}.qcow2"}}}}}}"#
    )
    .into_bytes()
}

/// Run the binary with a deadline; (exit code, stderr).
fn run_bounded(args: &[&OsStr], timeout: Duration) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st.code().unwrap_or(-1), err);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn workflow_commands_refuse_hostile_inputs_with_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    for d in ["to_be_processed", "processing", "processed", "failed"] {
        fs::create_dir_all(spool.join(d)).unwrap();
    }
    let fifo = tmp.path().join("pipe.json");
    mkfifo(&fifo);
    let zero = tmp.path().join("zero.json");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let huge = tmp.path().join("huge.json");
    fs::write(&huge, vec![b' '; 5 << 20]).unwrap();
    let dir_json = tmp.path().join("dir.json");
    fs::create_dir(&dir_json).unwrap();
    let missing = tmp.path().join("nonexistent");
    let s = |p: &Path| p.as_os_str().to_os_string();
    let d = s(&spool);
    let m = s(&missing);
    // (args, what the one-line error must name)
    let cases: Vec<(Vec<std::ffi::OsString>, Vec<String>)> = vec![
        (
            vec![
                "workflow".into(),
                "submit".into(),
                s(&fifo),
                "--dir".into(),
                d.clone(),
            ],
            vec!["pipe.json".into(), "FIFO".into()],
        ),
        (
            vec![
                "workflow".into(),
                "submit".into(),
                s(&zero),
                "--dir".into(),
                d.clone(),
            ],
            vec!["zero.json".into(), "device".into()],
        ),
        (
            vec![
                "workflow".into(),
                "submit".into(),
                s(&huge),
                "--dir".into(),
                d.clone(),
            ],
            vec!["huge.json".into(), "4194304".into()],
        ),
        (
            vec![
                "workflow".into(),
                "submit".into(),
                s(&dir_json),
                "--dir".into(),
                d.clone(),
            ],
            vec!["dir.json".into(), "directory".into()],
        ),
        (
            vec!["workflow".into(), "queue".into(), "--dir".into(), m.clone()],
            vec![missing.display().to_string()],
        ),
        (
            vec![
                "workflow".into(),
                "status".into(),
                "--dir".into(),
                m.clone(),
            ],
            vec![missing.display().to_string()],
        ),
        (
            vec!["workflow".into(), "list".into(), "--dir".into(), m.clone()],
            vec![missing.display().to_string()],
        ),
        (
            vec![
                "workflow".into(),
                "list".into(),
                "--dir".into(),
                d.clone(),
                "--since".into(),
                "2026-13-45".into(),
            ],
            vec!["--since".into(), "2026-13-45".into()],
        ),
        (
            vec![
                "workflow".into(),
                "list".into(),
                "--dir".into(),
                d.clone(),
                "--since".into(),
                "2026-02-30".into(),
            ],
            vec!["--since".into(), "2026-02-30".into()],
        ),
    ];
    for (args, names) in &cases {
        let argv: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (code, err) = run_bounded(&argv, Duration::from_secs(10));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        for n in names {
            assert!(
                err.contains(n.as_str()),
                "{args:?}: {err:?} should name {n}"
            );
        }
    }
    // Nothing hostile was submitted.
    assert_eq!(
        fs::read_dir(spool.join("to_be_processed")).unwrap().count(),
        0
    );
    // The sane command still works on the real directory.
    let (code, err) = run_bounded(
        &[
            OsStr::new("workflow"),
            OsStr::new("queue"),
            OsStr::new("--dir"),
            &d,
        ],
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "{err}");
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }
    fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            if start.elapsed() > timeout {
                panic!("timed out waiting for {what}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `manifest` key of every error report filed today, with the report's file name.
fn filed_errors(failed_today: &Path) -> Vec<(String, String, Value)> {
    let Ok(rd) = fs::read_dir(failed_today) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let filed = name.strip_suffix(".error.json")?.to_string();
            let v: Value = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
            Some((v["manifest"].as_str()?.to_string(), filed, v))
        })
        .collect()
}

#[test]
fn the_daemon_files_hostile_entries_under_safe_names_once_without_forged_log_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let out = tmp.path().join("out");
    let tbp = spool.join("to_be_processed");
    fs::create_dir_all(&tbp).unwrap();
    let long = format!("{}.json", "l".repeat(245));
    let newline = "evil\n2026-01-01T00:00:00Z ERROR [daemon] forged.json".to_string();
    let raw: &[u8] = b"caf\xe9-latin1.json";
    // Written before the daemon starts, old enough to be taken by the start-up scan.
    fs::write(tbp.join(&long), missing_source("long")).unwrap();
    fs::write(tbp.join(&newline), missing_source("newline")).unwrap();
    fs::write(tbp.join(OsStr::from_bytes(raw)), missing_source("raw")).unwrap();
    mkfifo(&tbp.join("pipe.json"));
    std::os::unix::fs::symlink("/dev/zero", tbp.join("zero.json")).unwrap();
    fs::write(tbp.join("sane.json"), missing_source("sane")).unwrap();
    std::thread::sleep(Duration::from_millis(1200));

    let log = tmp.path().join("daemon.log");
    let child = Command::new(BIN)
        .arg("daemon")
        .arg("--dir")
        .arg(&spool)
        .arg("--output-dir")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon { child, log };
    let failed = spool.join("failed").join(today());
    d.wait_for("all six entries filed", Duration::from_secs(30), || {
        filed_errors(&failed).len() >= 6
    });
    // A few recovery rounds (every 5 s) would show a re-run or a repeated error.
    std::thread::sleep(Duration::from_secs(6));
    kill(Pid::from_raw(d.child.id() as i32), Signal::SIGTERM).unwrap();
    let mut d = d;
    let start = Instant::now();
    let status = loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");

    let errors = filed_errors(&failed);
    assert_eq!(errors.len(), 6, "{errors:#?}");
    let by_manifest = |m: &str| {
        errors
            .iter()
            .find(|(orig, _, _)| orig == m)
            .unwrap_or_else(|| panic!("{m:?} not filed: {errors:#?}"))
    };
    // Long and odd names: a short, printable name; the original kept in the report.
    for original in [long.as_str(), newline.as_str()] {
        let (_, filed, report) = by_manifest(original);
        assert!(filed.len() <= 200, "{filed}");
        assert!(!filed.chars().any(char::is_control), "{filed:?}");
        assert!(failed.join(filed).is_file(), "{filed}");
        assert_eq!(report["stage"], "manifest", "{report}");
    }
    let lossy = String::from_utf8_lossy(raw).into_owned();
    let (_, filed, _) = by_manifest(&lossy);
    assert!(failed.join(filed).is_file());
    // FIFO and device symlink: junk, filed at claim time, never opened for reading.
    for junk in ["pipe.json", "zero.json"] {
        let (_, filed, report) = by_manifest(junk);
        assert_eq!(filed, junk);
        assert_eq!(report["stage"], "claim", "{report}");
    }
    let (_, _, sane) = by_manifest("sane.json");
    assert_eq!(sane["stage"], "manifest");
    // Nothing left behind, nothing run twice.
    assert_eq!(fs::read_dir(spool.join("processing")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(&tbp).unwrap().count(), 0);
    let text = d.log_text();
    let claims = text
        .lines()
        .filter(|l| l.contains("new manifest claimed"))
        .count();
    assert_eq!(claims, 4, "{text}");
    assert!(!text.contains("cannot file"), "{text}");
    // Every line is a record of its own: nothing forged by the newline in a name.
    for line in text.lines() {
        assert!(
            line.len() > 20 && line.as_bytes()[..4].iter().all(u8::is_ascii_digit),
            "a log line that is not a record: {line:?}"
        );
        assert!(!line.starts_with("2026-01-01T00:00:00Z"), "{line:?}");
    }
    assert!(text.contains("evil\\n2026-01-01"), "{text}");
    // `workflow list` prints one row per filed job, whatever the names contain.
    let listed = Command::new(BIN)
        .args(["workflow", "list", "--failed", "--dir"])
        .arg(&spool)
        .output()
        .unwrap();
    assert!(listed.status.success());
    let rows = String::from_utf8_lossy(&listed.stdout).lines().count();
    assert_eq!(rows, 1 + 6, "{}", String::from_utf8_lossy(&listed.stdout));
}

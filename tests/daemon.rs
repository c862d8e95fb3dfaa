//! The spool-directory daemon, as a user runs it: real `h2k-guest daemon` processes on a temp
//! spool directory, manifests dropped in, `workflow` commands reading it back.
//!
//! Most cases use manifests that fail before any appliance starts (a missing source, junk), so
//! they take seconds. The crash and shutdown cases need a job that stays in `processing/` for a
//! few seconds without an appliance: an artifact manifest whose disk is a sparse raw file with a
//! wrong sha256 (the checksum is computed, then the job fails in the load stage). One case runs
//! the whole fix through the daemon on the Debian 12 fixture, with a kill -9 in the middle.
//!
//! Every daemon is killed when its guard drops, whatever happens to the test.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

mod common;
use common::{fixture, read_json, sha256_file};

const BIN: &str = env!("CARGO_BIN_EXE_h2k-guest");

/// A temp spool directory and output directory.
struct Spool {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
    out: PathBuf,
}

impl Spool {
    fn new() -> Spool {
        let tmp = tempfile::Builder::new()
            .prefix("h2k-daemon-test-")
            .tempdir()
            .unwrap();
        let root = tmp.path().to_path_buf();
        Spool {
            dir: root.join("spool"),
            out: root.join("out"),
            root,
            _tmp: tmp,
        }
    }
    fn tbp(&self) -> PathBuf {
        self.dir.join("to_be_processed")
    }
    fn processing(&self) -> PathBuf {
        self.dir.join("processing")
    }
    fn failed_today(&self) -> PathBuf {
        self.dir.join("failed").join(today())
    }
    fn processed_today(&self) -> PathBuf {
        self.dir.join("processed").join(today())
    }
    /// Drop a manifest the atomic way: write a dotfile beside it, rename it in.
    fn drop_atomic(&self, name: &str, content: &[u8]) -> PathBuf {
        let tmp = self.tbp().join(format!(".{name}.tmp"));
        fs::write(&tmp, content).unwrap();
        let dest = self.tbp().join(name);
        fs::rename(&tmp, &dest).unwrap();
        dest
    }
    /// `name` (a file, or junk such as a directory) and its error report are both in
    /// `failed/DATE/`. The report is written first (it reserves the name), so waiting on it
    /// alone races the manifest's rename.
    fn filed_as_failed(&self, name: &str) -> Option<()> {
        let day = self.failed_today();
        (day.join(name).symlink_metadata().is_ok()
            && day.join(format!("{name}.error.json")).is_file())
        .then_some(())
    }
    /// `name` and its report are both in `processed/DATE/` (the manifest arrives last).
    fn filed_as_processed(&self, name: &str) -> Option<()> {
        let day = self.processed_today();
        (day.join(name).is_file() && day.join(format!("{name}.report.json")).is_file())
            .then_some(())
    }
    fn error_json(&self, name: &str) -> Value {
        read_json(&self.failed_today().join(format!("{name}.error.json")))
    }
    fn workflow(&self, args: &[&str]) -> Output {
        let out = Command::new(BIN)
            .arg("workflow")
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "workflow {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    fn workflow_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_slice(&self.workflow(&a).stdout).unwrap()
    }
}

fn today() -> String {
    h2k_guest::daemon::spool::today()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Names of `dir` that are not dotfiles.
fn visible(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// A running daemon; killed (SIGKILL) and reaped when dropped.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(spool: &Spool, extra: &[&str]) -> Daemon {
        Daemon::start_as(spool, extra, "daemon")
    }

    fn start_as(spool: &Spool, extra: &[&str], tag: &str) -> Daemon {
        let log = spool.root.join(format!("{tag}-{}.log", rand_tag()));
        let child = Command::new(BIN)
            .arg("daemon")
            .arg("--dir")
            .arg(&spool.dir)
            .arg("--output-dir")
            .arg(&spool.out)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let d = Daemon {
            child: Some(child),
            log,
        };
        let state = spool
            .dir
            .join(".h2k-guest/daemons")
            .join(format!("{pid}.json"));
        d.wait_for("the daemon's state file", Duration::from_secs(20), || {
            state.exists().then_some(())
        });
        d.wait_for("the daemon to be ready", Duration::from_secs(20), || {
            d.log_text().contains("daemon ready").then_some(())
        });
        d
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// kill -9 and reap.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for the process to exit; its exit status.
    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            if start.elapsed() > timeout {
                panic!(
                    "daemon did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Poll `f` every 10 ms until it gives a value; panic (with the daemon's log) on timeout.
    fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; daemon log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn rand_tag() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A seed-format manifest whose source does not exist: fails in the manifest stage at once.
fn missing_source(tag: &str) -> Vec<u8> {
    format!(
        r#"{{"version": "1.0", "pipeline": {{"load": {{"source_type": "vmdk", "source_path": "/nonexistent/{tag}.vmdk"}},
            "convert": {{"output_format": "qcow2", "output_path": "{tag}.qcow2"}}}}}}"#
    )
    .into_bytes()
}

/// A sparse raw "disk" (MBR signature only) of `mib` MiB, for the slow checksum job.
fn sparse_disk(path: &Path, mib: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(&[0x55, 0xaa], 510).unwrap();
}

/// An artifact manifest whose disk checksum is wrong: the job computes the sha256 of the
/// whole disk (seconds), then fails in the load stage. No appliance.
fn slow_failing(disk: &Path) -> Vec<u8> {
    let bytes = fs::metadata(disk).unwrap().len();
    format!(
        r#"{{"manifest_version": "1.0",
            "disks": [{{"id": "d0", "source_format": "raw", "bytes": {bytes}, "local_path": "{}",
                       "checksum": "sha256:{}", "disk_type": "boot"}}],
            "output": {{"format": "qcow2"}}}}"#,
        disk.display(),
        "0".repeat(64)
    )
    .into_bytes()
}

/// Until `to_be_processed/NAME` is gone: how long it took.
fn time_until_gone(d: &Daemon, p: &Path, since: Instant) -> Duration {
    d.wait_for(
        &format!("{} to be claimed", p.display()),
        Duration::from_secs(10),
        || (!p.exists()).then(|| since.elapsed()),
    )
}

#[test]
fn a_dropped_manifest_is_picked_up_within_a_second_and_filed_with_its_error_report() {
    let sp = Spool::new();
    let d = Daemon::start(&sp, &[]);
    let mut latencies = Vec::new();

    // 1. Renamed in (IN_MOVED_TO): the documented way.
    let tmp = sp.tbp().join(".renamed.json.tmp");
    fs::write(&tmp, missing_source("renamed")).unwrap();
    let dest = sp.tbp().join("renamed.json");
    let t = Instant::now();
    fs::rename(&tmp, &dest).unwrap();
    latencies.push(("rename in", time_until_gone(&d, &dest, t)));

    // 2. Written in place and closed (IN_CLOSE_WRITE).
    let dest = sp.tbp().join("written.json");
    let t = Instant::now();
    fs::write(&dest, missing_source("written")).unwrap();
    latencies.push(("write + close", time_until_gone(&d, &dest, t)));

    // 3. `workflow submit`.
    let m = sp.root.join("submitted.json");
    fs::write(&m, missing_source("submitted")).unwrap();
    let t = Instant::now();
    let out = sp.workflow(&["submit", m.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("to_be_processed/submitted.json"));
    latencies.push((
        "`workflow submit`, the command's own run time included",
        time_until_gone(&d, &sp.tbp().join("submitted.json"), t),
    ));

    for (how, l) in &latencies {
        eprintln!("pickup latency ({how}): {:.1} ms", l.as_secs_f64() * 1000.0);
        assert!(*l < Duration::from_secs(1), "{how}: picked up after {l:?}");
    }
    for line in d
        .log_text()
        .lines()
        .filter(|l| l.contains("new manifest claimed"))
    {
        eprintln!("daemon: {line}");
    }

    for name in ["renamed", "written", "submitted"] {
        let file = format!("{name}.json");
        d.wait_for(&format!("{file} filed"), Duration::from_secs(10), || {
            sp.filed_as_failed(&file)
        });
        assert!(sp.failed_today().join(&file).is_file());
        let e = sp.error_json(&file);
        assert_eq!(e["manifest"], file.as_str());
        assert_eq!(e["stage"], "manifest");
        assert_eq!(e["status"], "failed");
        assert!(e["job_id"].as_str().unwrap().starts_with(name), "{e}");
        assert!(
            e["failed_at"].as_str().unwrap().starts_with(&today()),
            "{e}"
        );
        let err = e["error"].as_str().unwrap();
        assert!(
            err.contains(&format!("/nonexistent/{name}.vmdk")) && err.starts_with(&file),
            "{err}"
        );
        let tail = e["log_tail"].as_array().unwrap();
        assert!(
            tail.iter()
                .any(|l| l.as_str().unwrap().contains("new manifest claimed")),
            "{e}"
        );
        assert!(
            tail.iter()
                .any(|l| l.as_str().unwrap().contains(&format!("[{name}/"))),
            "{e}"
        );
    }
    assert!(visible(&sp.processing()).is_empty());
    assert!(visible(&sp.tbp()).is_empty());
    // A job that failed before writing anything leaves no empty output directory behind.
    assert!(
        visible(&sp.out.join(today())).is_empty(),
        "{:?}",
        names(&sp.out.join(today()))
    );
    // Structured lines: time, level, [job/stage], message.
    let line = d
        .log_text()
        .lines()
        .find(|l| l.contains("job failed in the manifest stage"))
        .unwrap()
        .to_string();
    assert!(line.contains(" ERROR [renamed/manifest] "), "{line}");
}

#[test]
fn manifests_waiting_at_start_up_are_taken_and_other_names_are_left_alone() {
    let sp = Spool::new();
    fs::create_dir_all(sp.tbp()).unwrap();
    for n in ["a.json", "b.yaml", "c.yml"] {
        fs::write(sp.tbp().join(n), missing_source(n)).unwrap();
    }
    let ignored = [
        ".hidden.json",
        "in-progress.json.tmp",
        "download.json.part",
        "README.txt",
    ];
    for n in ignored {
        fs::write(sp.tbp().join(n), "x").unwrap();
    }
    let d = Daemon::start(&sp, &[]);
    d.wait_for("3 manifests filed", Duration::from_secs(15), || {
        (visible(&sp.failed_today()).len() == 6).then_some(())
    });
    for n in ["a.json", "b.yaml", "c.yml"] {
        assert!(
            sp.error_json(n)["error"]
                .as_str()
                .unwrap()
                .contains("/nonexistent/"),
            "{n}"
        );
    }
    std::thread::sleep(Duration::from_secs(3)); // two rescans
    let left = names(&sp.tbp());
    for n in ignored {
        assert!(left.contains(&n.to_string()), "{n} was touched: {left:?}");
    }
    assert!(d.log_text().contains("ignoring README.txt"));
}

#[test]
fn a_manifest_still_being_written_is_not_taken() {
    let sp = Spool::new();
    let content = missing_source("slowwriter");
    let (first, rest) = content.split_at(content.len() / 2);

    // Being written when the daemon starts (and older than the settle time).
    fs::create_dir_all(sp.tbp()).unwrap();
    let p1 = sp.tbp().join("early.json");
    let mut w1 = fs::File::create(&p1).unwrap();
    w1.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let d = Daemon::start(&sp, &[]);

    // Being written while the daemon runs.
    let p2 = sp.tbp().join("late.json");
    let mut w2 = fs::File::create(&p2).unwrap();
    w2.write_all(first).unwrap();

    std::thread::sleep(Duration::from_millis(3500)); // past the settle time and a rescan
    assert!(
        p1.exists() && p2.exists(),
        "a half-written manifest was taken; log:\n{}",
        d.log_text()
    );

    for (mut w, p) in [(w1, &p1), (w2, &p2)] {
        w.write_all(rest).unwrap();
        drop(w);
        let t = Instant::now();
        let l = time_until_gone(&d, p, t);
        eprintln!(
            "{} taken {:.1} ms after its writer closed it",
            p.display(),
            l.as_secs_f64() * 1000.0
        );
    }
    for n in ["early.json", "late.json"] {
        d.wait_for(n, Duration::from_secs(10), || sp.filed_as_failed(n));
        // The whole manifest was read: the error is about the source, not the syntax.
        let e = sp.error_json(n);
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("/nonexistent/slowwriter.vmdk"),
            "{e}"
        );
    }
}

#[test]
fn junk_is_filed_as_failed_with_a_clear_error_and_the_daemon_keeps_going() {
    let sp = Spool::new();
    let d = Daemon::start(&sp, &[]);
    let junk_src = sp.root.join("junk");
    fs::create_dir_all(&junk_src).unwrap();
    // (name, how to make it, what the error must say)
    let good = junk_src.join("good.json");
    fs::write(&good, missing_source("viasymlink")).unwrap();
    let mut expected: Vec<(&str, &str)> = Vec::new();
    let mut put = |name: &'static str, bytes: &[u8], says: &'static str| {
        sp.drop_atomic(name, bytes);
        expected.push((name, says));
    };
    put(
        "malformed.json",
        b"{\"version\": \"1.0\", \"pipeline\": {",
        "invalid JSON",
    );
    put(
        "malformed.yaml",
        b"version: \"1.0\"\npipeline: [unclosed\n  - x: : y\n",
        "invalid YAML",
    );
    put(
        "unknown-version.json",
        br#"{"version": "7.3", "pipeline": {}}"#,
        "version",
    );
    put(
        "missing-source.json",
        &missing_source("missing"),
        "/nonexistent/missing.vmdk",
    );
    put("empty.json", b"", "empty");
    let mut noise = vec![0u8; 64 * 1024];
    let mut x: u32 = 0x1234_5678;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    put("binary.json", &noise, "binary");
    put("latin1.yaml", b"version: \"1.0\"\nname: caf\xe9\n", "UTF-8");

    // A 100 MB file (sparse: its size is what matters).
    let huge = sp.tbp().join(".huge.json.tmp");
    fs::File::create(&huge).unwrap().set_len(100 << 20).unwrap();
    fs::rename(&huge, sp.tbp().join("huge.json")).unwrap();
    expected.push(("huge.json", "too big for a manifest"));

    // A directory (with a manifest name and without), a symlink, a FIFO.
    fs::create_dir(sp.tbp().join("adir.json")).unwrap();
    fs::write(sp.tbp().join("adir.json").join("inside.json"), "{}").unwrap();
    expected.push(("adir.json", "a directory"));
    fs::create_dir(sp.tbp().join("plaindir")).unwrap();
    expected.push(("plaindir", "a directory"));
    std::os::unix::fs::symlink(&good, sp.tbp().join("link.json")).unwrap();
    expected.push(("link.json", "symbolic link"));
    nix::unistd::mkfifo(
        &sp.tbp().join("pipe.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    expected.push(("pipe.json", "named pipe"));

    // Unreadable (root reads it anyway: then it is just another failing manifest).
    let unreadable = sp.tbp().join(".unreadable.json.tmp");
    fs::write(&unreadable, missing_source("unreadable")).unwrap();
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).unwrap();
    fs::rename(&unreadable, sp.tbp().join("unreadable.json")).unwrap();
    let root = nix::unistd::geteuid().is_root();
    expected.push((
        "unreadable.json",
        if root {
            "/nonexistent/unreadable.vmdk"
        } else {
            "permission denied"
        },
    ));

    // And after all that, an ordinary manifest is still processed.
    std::thread::sleep(Duration::from_millis(200));
    sp.drop_atomic("after-the-junk.json", &missing_source("after"));
    expected.push(("after-the-junk.json", "/nonexistent/after.vmdk"));

    for (name, says) in &expected {
        d.wait_for(
            &format!("{name} in failed/"),
            Duration::from_secs(20),
            || sp.filed_as_failed(name),
        );
        let e = sp.error_json(name);
        let err = e["error"].as_str().unwrap();
        eprintln!("{name}: [{}] {err}", e["stage"].as_str().unwrap_or("?"));
        assert!(
            err.contains(says),
            "{name}: error {err:?} should say {says:?}"
        );
        assert!(!err.contains('\n'), "{name}: multi-line error {err:?}");
        assert!(
            sp.failed_today().join(name).symlink_metadata().is_ok(),
            "{name} not filed"
        );
    }
    // The symlink was filed as a link: its target is untouched.
    assert!(sp
        .failed_today()
        .join("link.json")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(good.is_file());
    assert!(sp
        .failed_today()
        .join("adir.json")
        .join("inside.json")
        .is_file());
    assert!(visible(&sp.tbp()).is_empty(), "{:?}", names(&sp.tbp()));
    assert!(visible(&sp.processing()).is_empty());
    // Still alive and well.
    let st = sp.workflow_json(&["status"]);
    assert_eq!(st["running"], true, "{st}");
}

#[test]
fn two_daemons_on_one_directory_never_run_a_manifest_twice() {
    let sp = Spool::new();
    let a = Daemon::start_as(&sp, &["--jobs", "2"], "a");
    let b = Daemon::start_as(&sp, &["--jobs", "2"], "b");
    let n = 40;
    for i in 0..n {
        if i % 10 == 9 {
            fs::create_dir(sp.tbp().join(format!("dir{i:02}"))).unwrap();
        } else if i % 2 == 0 {
            sp.drop_atomic(
                &format!("m{i:02}.json"),
                &missing_source(&format!("m{i:02}")),
            );
        } else {
            fs::write(
                sp.tbp().join(format!("m{i:02}.json")),
                missing_source(&format!("m{i:02}")),
            )
            .unwrap();
        }
    }
    a.wait_for("all filed", Duration::from_secs(60), || {
        (visible(&sp.failed_today()).len() == 2 * n).then_some(())
    });
    let filed = visible(&sp.failed_today());
    for i in 0..n {
        let name = if i % 10 == 9 {
            format!("dir{i:02}")
        } else {
            format!("m{i:02}.json")
        };
        assert!(
            filed.contains(&name) && filed.contains(&format!("{name}.error.json")),
            "{name} missing: {filed:?}"
        );
    }
    assert!(
        !filed.iter().any(|f| f.contains("-1")),
        "a manifest was filed twice: {filed:?}"
    );
    // Each manifest claimed exactly once across both daemons. A rejection is logged just after
    // its filing, so wait for the last of those lines too.
    let rejects = |log: &str| log.lines().filter(|l| l.contains("rejected")).count();
    a.wait_for("the rejections logged", Duration::from_secs(10), || {
        (rejects(&a.log_text()) + rejects(&b.log_text()) == n / 10).then_some(())
    });
    let (la, lb) = (a.log_text(), b.log_text());
    let claims = |log: &str| {
        log.lines()
            .filter(|l| l.contains("new manifest claimed"))
            .count()
    };
    eprintln!(
        "daemon a: {} claimed, {} rejected; daemon b: {} claimed, {} rejected",
        claims(&la),
        rejects(&la),
        claims(&lb),
        rejects(&lb)
    );
    for i in (0..n).filter(|i| i % 10 != 9) {
        let needle = format!("new manifest claimed: m{i:02}.json ");
        let count = la.matches(&needle).count() + lb.matches(&needle).count();
        assert_eq!(count, 1, "m{i:02}.json claimed {count} times");
    }
    assert_eq!(claims(&la) + claims(&lb), n - n / 10);
    assert_eq!(rejects(&la) + rejects(&lb), n / 10);
    assert!(visible(&sp.processing()).is_empty());
    let st = sp.workflow_json(&["status"]);
    assert_eq!(st["daemons"].as_array().unwrap().len(), 2, "{st}");
}

/// Start a slow job and wait until it is in processing/ and its sha256 is running.
fn start_slow_job(sp: &Spool, d: &Daemon, name: &str, mib: u64) -> PathBuf {
    let disk = sp.root.join(format!("{name}.raw"));
    sparse_disk(&disk, mib);
    sp.drop_atomic(&format!("{name}.json"), &slow_failing(&disk));
    let p = sp.processing().join(format!("{name}.json"));
    d.wait_for(
        &format!("{name} in processing/"),
        Duration::from_secs(10),
        || p.exists().then_some(()),
    );
    d.wait_for("the load stage", Duration::from_secs(20), || {
        let st = sp.workflow_json(&["status"]);
        let stage = st["daemons"][0]["jobs"][0]["stage"]
            .as_str()
            .map(String::from);
        (stage.as_deref() == Some("load")).then_some(())
    });
    p
}

fn job_dir_is_clean(dir: &Path) {
    for e in walk(dir) {
        let n = e.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !n.ends_with(".part") && !n.starts_with(".h2k-guest-"),
            "leftover {}",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                v.extend(walk(&p));
            }
            v.push(p);
        }
    }
    v
}

#[test]
fn kill_9_mid_job_then_restart_requeues_it_and_fails_it_after_max_attempts() {
    let sp = Spool::new();
    let args = ["--max-attempts", "2"];
    let mut d = Daemon::start(&sp, &args);
    let p = start_slow_job(&sp, &d, "crashy", 192);
    d.kill9();
    // Exactly where it was: in processing/, nowhere else.
    assert!(p.exists());
    assert!(visible(&sp.tbp()).is_empty() && !sp.failed_today().exists());
    let st = sp.workflow_json(&["status"]);
    assert_eq!(st["running"], false, "{st}");
    assert_eq!(st["stale"].as_array().unwrap().len(), 1, "{st}");

    // Restart: the orphan is re-queued, runs again (attempt 2), and fails on its own merits.
    let d = Daemon::start(&sp, &args);
    d.wait_for("crashy.json filed", Duration::from_secs(120), || {
        sp.filed_as_failed("crashy.json")
    });
    let log = d.log_text();
    assert!(log.contains("re-queued"), "{log}");
    assert!(log.contains("attempt 2 of 2"), "{log}");
    let e = sp.error_json("crashy.json");
    assert_eq!(e["attempts"], 2, "{e}");
    assert_eq!(e["stage"], "load", "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("checksum mismatch"),
        "{e}"
    );
    let history = e["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{e}");
    assert!(
        history[0]
            .as_str()
            .unwrap()
            .contains("died in the load stage"),
        "{e}"
    );
    assert!(visible(&sp.processing()).is_empty());
    job_dir_is_clean(&sp.out);
    drop(d);

    // With one attempt allowed, the restart gives up on it at once.
    let args = ["--max-attempts", "1"];
    let mut d = Daemon::start(&sp, &args);
    let p = start_slow_job(&sp, &d, "doomed", 192);
    d.kill9();
    assert!(p.exists());
    let t = Instant::now();
    let d = Daemon::start(&sp, &args);
    d.wait_for("doomed.json filed", Duration::from_secs(10), || {
        sp.filed_as_failed("doomed.json")
    });
    eprintln!(
        "orphan filed {:.2} s after the restart",
        t.elapsed().as_secs_f64()
    );
    let e = sp.error_json("doomed.json");
    let err = e["error"].as_str().unwrap();
    assert!(err.contains("abandoned after 1 attempt"), "{e}");
    assert_eq!(e["stage"], "load", "{e}");
    assert!(visible(&sp.processing()).is_empty());
    assert!(visible(&sp.tbp()).is_empty());
    job_dir_is_clean(&sp.out);
    // The stale state of the killed daemon is gone.
    let st = sp.workflow_json(&["status"]);
    assert!(st["stale"].as_array().unwrap().is_empty(), "{st}");
}

#[test]
fn sigterm_aborts_running_jobs_back_into_the_queue_and_exits_0() {
    let sp = Spool::new();
    let mut d = Daemon::start(&sp, &[]);
    start_slow_job(&sp, &d, "interrupted", 192);
    // Queued behind it (one job at once): must not be started after the signal.
    sp.drop_atomic("queued.json", &missing_source("queued"));
    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(120));
    eprintln!("stopped {:.1} s after SIGTERM", t.elapsed().as_secs_f64());
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        d.log_text()
    );
    let q = visible(&sp.tbp());
    assert_eq!(
        q,
        vec!["interrupted.json".to_string(), "queued.json".to_string()]
    );
    assert!(visible(&sp.processing()).is_empty());
    assert!(!sp.failed_today().exists());
    let st = sp.workflow_json(&["status"]);
    assert_eq!(st["running"], false, "{st}");
    assert!(
        st["stale"].as_array().unwrap().is_empty(),
        "a clean stop leaves no state file: {st}"
    );
    assert!(d.log_text().contains("re-queued"));
    job_dir_is_clean(&sp.out);

    // Idle daemons stop at once on SIGINT too.
    let sp2 = Spool::new();
    let mut d2 = Daemon::start(&sp2, &[]);
    let t = Instant::now();
    d2.signal(Signal::SIGINT);
    assert!(d2.wait_exit(Duration::from_secs(5)).success());
    eprintln!(
        "idle daemon stopped {:.0} ms after SIGINT",
        t.elapsed().as_secs_f64() * 1000.0
    );
}

#[test]
fn sigterm_with_on_stop_finish_lets_the_running_job_finish_then_exits_0() {
    let sp = Spool::new();
    let mut d = Daemon::start(&sp, &["--on-stop", "finish"]);
    start_slow_job(&sp, &d, "finished", 192);
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(120));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        d.log_text()
    );
    // It ran to its (failing) end and was filed, not re-queued.
    let e = sp.error_json("finished.json");
    assert!(
        e["error"].as_str().unwrap().contains("checksum mismatch"),
        "{e}"
    );
    assert!(visible(&sp.tbp()).is_empty() && visible(&sp.processing()).is_empty());
}

#[test]
fn workflow_status_queue_and_list_report_the_spool() {
    let sp = Spool::new();
    let d = Daemon::start(&sp, &["--jobs", "1"]);
    let running = start_slow_job(&sp, &d, "busy", 192);
    sp.drop_atomic("waiting.json", &missing_source("waiting"));

    let st = sp.workflow_json(&["status"]);
    assert_eq!(st["running"], true, "{st}");
    let dm = &st["daemons"][0];
    assert_eq!(dm["pid"], d.pid().as_raw(), "{st}");
    assert!(dm["started_at"].as_str().unwrap().starts_with(&today()));
    let job = &dm["jobs"][0];
    assert_eq!(job["manifest"], "busy.json", "{st}");
    assert_eq!(job["stage"], "load", "{st}");
    assert!(job["elapsed_seconds"].as_f64().is_some(), "{st}");
    let text = String::from_utf8(sp.workflow(&["status"]).stdout).unwrap();
    eprintln!("$ h2k-guest workflow status\n{text}");
    assert!(
        text.contains(&format!("pid {}", d.pid())) && text.contains("job busy: stage load"),
        "{text}"
    );

    let q = sp.workflow_json(&["queue"]);
    assert_eq!(
        (q["to_be_processed"].as_u64(), q["processing"].as_u64()),
        (Some(1), Some(1)),
        "{q}"
    );
    let text = String::from_utf8(sp.workflow(&["queue"]).stdout).unwrap();
    eprintln!("$ h2k-guest workflow queue\n{text}");
    assert!(
        text.contains("To Be Processed: 1") && text.contains("Processing: 1"),
        "{text}"
    );

    let list = sp.workflow_json(&["list"]);
    let statuses: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["processing", "queued"], "{list}");

    d.wait_for("both filed", Duration::from_secs(120), || {
        (visible(&sp.failed_today()).len() == 4).then_some(())
    });
    assert!(!running.exists());
    let q = sp.workflow_json(&["queue"]);
    assert_eq!(
        (
            q["to_be_processed"].as_u64(),
            q["processing"].as_u64(),
            q["failed_today"].as_u64()
        ),
        (Some(0), Some(0), Some(2)),
        "{q}"
    );
    let text = String::from_utf8(sp.workflow(&["list", "--failed"]).stdout).unwrap();
    eprintln!("$ h2k-guest workflow list --failed\n{text}");
    assert!(
        text.contains("busy.json")
            && text.contains("checksum mismatch")
            && text.contains("waiting.json"),
        "{text}"
    );
    let list = sp.workflow_json(&["list", "--failed", "--since", &today()]);
    let busy = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "busy.json")
        .unwrap();
    assert!(busy["duration_seconds"].as_f64().unwrap() > 0.0, "{busy}");
    assert_eq!(busy["stage"], "load");
    assert!(sp
        .workflow_json(&["list", "--processed"])
        .as_array()
        .unwrap()
        .is_empty());
    assert!(sp
        .workflow_json(&["list", "--since", "2999-01-01"])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn the_seed_configuration_file_runs_the_daemon() {
    let sp = Spool::new();
    let cfg = sp.root.join("daemon.yaml");
    let log = sp.root.join("logs/daemon.log");
    fs::write(
        &cfg,
        format!(
            "command: daemon\ndaemon: true\nmanifest_workflow_mode: true\nmanifest_workflow_dir: {}\noutput_dir: {}\nmax_concurrent_jobs: 2\nlog_file: {}\nverbose: 2\n",
            sp.dir.display(),
            sp.out.display(),
            log.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child: Some(out),
        log: log.clone(),
    };
    d.wait_for("ready", Duration::from_secs(20), || {
        d.log_text().contains("daemon ready").then_some(())
    });
    for sub in ["to_be_processed", "processing", "processed", "failed"] {
        assert!(sp.dir.join(sub).is_dir(), "{sub}");
    }
    assert!(d.log_text().contains("2 jobs at once"));
    sp.drop_atomic("cfg.json", &missing_source("cfg"));
    d.wait_for("filed", Duration::from_secs(10), || {
        sp.filed_as_failed("cfg.json")
    });
    // `workflow status --config` finds the same spool.
    let o = Command::new(BIN)
        .args(["workflow", "status", "--json", "--config"])
        .arg(&cfg)
        .env_remove("H2K_WORKFLOW_DIR")
        .output()
        .unwrap();
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["running"], true, "{st}");
    assert_eq!(st["daemons"][0]["max_concurrent_jobs"], 2);
    // verbose: 2 logs debug lines too.
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());

    // A config that is wrong says which key.
    fs::write(&cfg, "max_concurrent_jobs: lots\n").unwrap();
    let o = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("max_concurrent_jobs") && err.contains("daemon.yaml"),
        "{err}"
    );
}

/// Pids of processes whose command line mentions `path`.
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut v = Vec::new();
    for p in fs::read_dir("/proc").unwrap().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = fs::read(p.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&needle) {
            v.push(pid);
        }
    }
    v
}

#[test]
fn a_full_fix_through_the_daemon_survives_a_kill_9_in_the_middle() {
    let vmdk = fixture("debian12-bios");
    let before = sha256_file(&vmdk);
    let sp = Spool::new();
    let manifest = sp.root.join("debian12-bios-1769251638.json");
    fs::write(
        &manifest,
        format!(
            r#"{{"version": "1.0",
                "pipeline": {{
                  "load": {{"source_type": "vmdk", "source_path": "{}"}},
                  "inspect": {{"enabled": true, "detect_os": true}},
                  "fix": {{"fstab": {{"enabled": true, "mode": "stabilize-all"}}, "grub": {{"enabled": true}},
                           "initramfs": {{"enabled": true, "regenerate": true}}}},
                  "convert": {{"output_format": "qcow2", "compress": false, "output_path": "debian12-bios.qcow2"}}
                }}}}"#,
            vmdk.display()
        ),
    )
    .unwrap();
    let name = "debian12-bios-1769251638.json";
    let job_dir = sp.out.join(today()).join("debian12-bios-1769251638");

    // First attempt: killed once the appliance is up and the guest is being fixed.
    let mut d = Daemon::start(&sp, &[]);
    sp.workflow(&["submit", manifest.to_str().unwrap()]);
    let q = sp.workflow_json(&["queue"]);
    eprintln!("queue after submit: {q}");
    d.wait_for("the fix stage", Duration::from_secs(600), || {
        let st = sp.workflow_json(&["status"]);
        let stage = st["daemons"][0]["jobs"][0]["stage"]
            .as_str()
            .map(String::from);
        matches!(stage.as_deref(), Some("fix")).then_some(())
    });
    let q = sp.workflow_json(&["queue"]);
    assert_eq!(q["processing"], 1, "{q}");
    std::thread::sleep(Duration::from_secs(5));
    d.kill9();
    eprintln!("killed the daemon in the fix stage");
    // Its appliance (qemu, working on an overlay in the job directory) must not outlive it.
    let t = Instant::now();
    d.wait_for(
        "the killed daemon's qemu to exit",
        Duration::from_secs(60),
        || processes_mentioning(&job_dir).is_empty().then_some(()),
    );
    eprintln!(
        "its appliance was gone {:.1} s after the kill",
        t.elapsed().as_secs_f64()
    );
    assert!(sp.processing().join(name).exists());
    assert!(
        !job_dir.join("debian12-bios.qcow2").exists(),
        "an output under its final name after a kill"
    );
    drop(d);

    // Second attempt: the restarted daemon re-queues it and runs it to the end.
    let t = Instant::now();
    let d = Daemon::start(&sp, &[]);
    let report_path = sp.processed_today().join(format!("{name}.report.json"));
    d.wait_for("the job to be processed", Duration::from_secs(1800), || {
        if sp
            .failed_today()
            .join(format!("{name}.error.json"))
            .exists()
        {
            panic!("the job failed: {}", sp.error_json(name));
        }
        sp.filed_as_processed(name)
    });
    let wall = t.elapsed();
    let report = read_json(&report_path);
    assert_eq!(report["status"], "success", "{report}");
    assert_eq!(report["manifest"], name);
    assert_eq!(report["attempts"], 2, "{report}");
    assert!(sp.processed_today().join(name).is_file());
    let out = job_dir.join("debian12-bios.qcow2");
    assert!(
        out.is_file(),
        "no output in {}: {:?}",
        job_dir.display(),
        names(&job_dir)
    );
    assert_eq!(report["output_dir"], job_dir.display().to_string());
    job_dir_is_clean(&sp.out);
    assert_eq!(sha256_file(&vmdk), before, "the source disk changed");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&out)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    let q = sp.workflow_json(&["queue"]);
    assert_eq!(
        (q["processed_today"].as_u64(), q["processing"].as_u64()),
        (Some(1), Some(0)),
        "{q}"
    );
    let text = String::from_utf8(sp.workflow(&["list", "--processed"]).stdout).unwrap();
    eprintln!("$ h2k-guest workflow list --processed\n{text}");
    let stages = common::timeline(&report);
    eprintln!(
        "full job through the daemon: {:.1} s from restart to report ({:.1} s in the job; accelerator {}); stages: {}",
        wall.as_secs_f64(),
        report["duration_seconds"].as_f64().unwrap_or_default(),
        report["appliance"]["accelerator"],
        stages.join(", ")
    );
    for line in d.log_text().lines().filter(|l| {
        l.contains("[daemon]")
            || l.contains("/claim]")
            || l.contains("/recover]")
            || l.contains("job completed")
    }) {
        eprintln!("daemon: {line}");
    }
}

//! The systemd unit checked by systemd's own tools, and the daemon's sd_notify messages seen
//! on a socket this test owns (no appliance: the spool is empty).

use std::io::BufRead;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_h2k-guest");

fn unit_with_built_binary(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/h2k-guest.service"),
    )
    .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/h2k-guest daemon --config /etc/h2k-guest/daemon.yaml")
    );
    let p = dir.join("h2k-guest.service");
    std::fs::write(&p, unit.replace("/usr/bin/h2k-guest", BIN)).unwrap();
    p
}

#[test]
fn systemd_analyze_verifies_the_unit_and_rates_it() {
    let d = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(d.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "verify: {text}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for h2k-guest.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in {text}"));
    eprintln!("systemd-analyze security exposure: {score}");
    assert!(score <= 3.0, "exposure {score}:\n{text}");
    // Never set: QEMU's TCG JIT needs W+X memory.
    let body = std::fs::read_to_string(&unit).unwrap();
    assert!(!body
        .lines()
        .any(|l| l.starts_with("MemoryDenyWriteExecute=")));
}

struct Listener(UnixDatagram);

impl Listener {
    /// The next message, within `within`.
    fn next(&self, within: Duration) -> String {
        self.0.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.0.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Skip WATCHDOG=1 and STATUS= messages until one starting with `prefix`.
    fn until(&self, prefix: &str, within: Duration) -> (String, u32) {
        let end = Instant::now() + within;
        let mut pings = 0;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {prefix} in time");
            let m = self.next(left);
            if m.starts_with(prefix) {
                return (m, pings);
            }
            pings += u32::from(m == "WATCHDOG=1");
        }
    }
}

fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

#[test]
fn the_daemon_notifies_ready_watchdog_reload_and_stopping() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("notify.sock");
    let l = Listener(UnixDatagram::bind(&sock).unwrap());
    let config = d.path().join("daemon.yaml");
    std::fs::write(
        &config,
        "manifest_workflow_dir: spool\noutput_dir: out\nmax_concurrent_jobs: 1\n",
    )
    .unwrap();
    let log = d.path().join("daemon.log");
    let mut child = Command::new(BIN)
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--log-file")
        .arg(&log)
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (ready, _) = l.until("READY=1", Duration::from_secs(30));
    assert!(ready.contains("STATUS=0 job(s) of 1 running"), "{ready}");
    // After READY the scan is done: the spool exists.
    assert!(d.path().join("spool/to_be_processed").is_dir());
    // WATCHDOG=1 at half of 2 s.
    let t = Instant::now();
    l.until("WATCHDOG=1", Duration::from_secs(3));
    l.until("WATCHDOG=1", Duration::from_millis(1600));
    assert!(
        t.elapsed() < Duration::from_millis(2600),
        "{:?}",
        t.elapsed()
    );

    std::fs::write(
        &config,
        "manifest_workflow_dir: spool\noutput_dir: out\nmax_concurrent_jobs: 3\n",
    )
    .unwrap();
    signal(&child, nix::sys::signal::Signal::SIGHUP);
    let (reloading, _) = l.until("RELOADING=1", Duration::from_secs(5));
    assert!(reloading.contains("STATUS=reloading"), "{reloading}");
    let (ready, _) = l.until("READY=1", Duration::from_secs(5));
    assert!(
        ready.contains("of 3 running"),
        "the new max_concurrent_jobs: {ready}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("max_concurrent_jobs 1 → 3"), "{text}");

    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let (stopping, _) = l.until("STOPPING=1", Duration::from_secs(5));
    assert!(stopping.contains("SIGTERM"), "{stopping}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn stderr_to_the_journal_gets_priorities_and_no_timestamps() {
    let d = tempfile::tempdir().unwrap();
    // The pipe's inode is the same at both ends: the daemon sees its stderr is "the journal".
    let (read_end, write_end) = std::io::pipe().unwrap();
    let st = nix::sys::stat::fstat(&read_end).unwrap();
    let mut child = Command::new(BIN)
        .arg("daemon")
        .arg("--dir")
        .arg(d.path().join("spool"))
        .arg("--output-dir")
        .arg(d.path().join("out"))
        .env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino))
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(write_end)
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(read_end).lines();
    let ready = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains("daemon ready"))
        .expect("a ready line");
    assert!(ready.starts_with("<6>INFO  [daemon] "), "{ready}");
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

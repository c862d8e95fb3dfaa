//! A real `h2k-guest daemon` on a temp spool for the tests of what it serves and files
//! (metrics, spool batches, the throughput bench): started, waited on, killed when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A temp root with `spool/`, `out/` and the daemon's log.
pub struct SpoolRoot {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl SpoolRoot {
    pub fn new(prefix: &str) -> SpoolRoot {
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        SpoolRoot {
            root: tmp.path().to_path_buf(),
            _tmp: tmp,
        }
    }
    pub fn spool(&self) -> PathBuf {
        self.root.join("spool")
    }
    pub fn out(&self) -> PathBuf {
        self.root.join("out")
    }
    pub fn tbp(&self) -> PathBuf {
        self.spool().join("to_be_processed")
    }
    pub fn processed_today(&self) -> PathBuf {
        self.spool()
            .join("processed")
            .join(h2k_guest::daemon::spool::today())
    }
    pub fn failed_today(&self) -> PathBuf {
        self.spool()
            .join("failed")
            .join(h2k_guest::daemon::spool::today())
    }
    /// Submit the atomic way: a dotfile renamed in.
    pub fn drop_manifest(&self, name: &str, content: &[u8]) {
        fs::create_dir_all(self.tbp()).unwrap();
        let tmp = self.tbp().join(format!(".{name}.tmp"));
        fs::write(&tmp, content).unwrap();
        fs::rename(&tmp, self.tbp().join(name)).unwrap();
    }
    /// `name` and its sidecar are both filed (the manifest arrives last) under `dir`.
    pub fn filed(dir: &Path, name: &str, suffix: &str) -> bool {
        dir.join(name).is_file() && dir.join(format!("{name}{suffix}")).is_file()
    }
    pub fn processed(&self, name: &str) -> bool {
        Self::filed(&self.processed_today(), name, ".report.json")
    }
    pub fn failed(&self, name: &str) -> bool {
        Self::filed(&self.failed_today(), name, ".error.json")
    }
}

/// A running daemon; SIGKILLed and reaped when dropped, whatever happened to the test.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Start `h2k-guest daemon --dir SPOOL --output-dir OUT EXTRA…` and wait for "daemon ready".
    pub fn start(root: &SpoolRoot, extra: &[&str]) -> Daemon {
        let log = root.root.join(format!("daemon-{}.log", stamp()));
        let child = Command::new(super::bin())
            .arg("daemon")
            .arg("--dir")
            .arg(root.spool())
            .arg("--output-dir")
            .arg(root.out())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            log,
        };
        d.wait_for("the daemon to be ready", Duration::from_secs(30), |d| {
            d.log_text().contains("daemon ready").then_some(())
        });
        d
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Poll `f` every 50 ms until it gives a value; panic with the daemon's log on timeout or
    /// when the daemon exits.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Daemon) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "the daemon exited ({st}) while waiting for {what}; log:\n{}",
                    self.log_text()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; daemon log:\n{}",
                    super::tail(&self.log_text(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait for the exit (a clean stop writes the final metrics).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().unwrap();
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the daemon did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn stamp() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A free TCP port on 127.0.0.1 (bound and released: good enough for one test's servers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A seed-format manifest whose source does not exist: fails in the manifest stage at once,
/// without an appliance.
pub fn missing_source(tag: &str) -> Vec<u8> {
    format!(
        r#"{{"version": "1.0", "pipeline": {{"load": {{"source_type": "vmdk", "source_path": "/nonexistent/{tag}.vmdk"}},
            "convert": {{"output_format": "qcow2", "output_path": "{tag}.qcow2"}}}}}}"#
    )
    .into_bytes()
}

/// The seed-format manifest of a full fix of `vmdk` (no boot check), output `TAG.qcow2`.
pub fn good_manifest(vmdk: &Path, tag: &str) -> Vec<u8> {
    format!(
        r#"{{"version": "1.0",
            "pipeline": {{
              "load": {{"source_type": "vmdk", "source_path": "{}"}},
              "inspect": {{"enabled": true, "detect_os": true}},
              "fix": {{"fstab": {{"enabled": true, "mode": "stabilize-all"}}, "grub": {{"enabled": true}},
                       "initramfs": {{"enabled": true, "regenerate": true}}}},
              "convert": {{"output_format": "qcow2", "compress": false, "output_path": "{tag}.qcow2"}}
            }}}}"#,
        vmdk.display()
    )
    .into_bytes()
}

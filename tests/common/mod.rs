//! Helpers shared by the integration tests: real guest images from `scripts/make-fixture.sh`,
//! the built binary, file hashes, and a lock that keeps VM-heavy tests from running at once
//! (two TCG guests on two cores starve each other; run with `--test-threads=1` as well).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `h2k-guest` binary Cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_h2k-guest"))
}

/// Held by every test that boots a guest or launches an appliance, so they run one at a time
/// even without `--test-threads=1`. A test that panicked while holding it does not block the
/// others.
pub fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The VMDK of a fixture (`debian12-bios`, `debian12-uefi-dracut-lvm`), built on first use by
/// `scripts/make-fixture.sh NAME` (cached across runs by the script itself; minutes the first
/// time) and remembered for the rest of this test process.
pub fn fixture(name: &str) -> PathBuf {
    built_by("make-fixture.sh", name)
}

/// The first VMDK of a variant of a fixture (`debian12-bios-twodisk`, …), built on first use by
/// `scripts/make-variant.sh NAME` (cached; a minute or two under TCG). Other disks of the
/// variant lie beside it (see its JSON facts).
#[allow(dead_code)]
pub fn variant(name: &str) -> PathBuf {
    built_by("make-variant.sh", name)
}

/// A guest of another Debian release and layout (`debian11-bios-xfs-nm`, …), built on first use
/// by `scripts/make-guest.sh NAME` (cached; 5–8 minutes each when not).
#[allow(dead_code)]
pub fn guest(name: &str) -> PathBuf {
    built_by("make-guest.sh", name)
}

/// A boot-layout image (`photon5-bios`, `photon5-uefi`, `debian13-uefi-systemd-boot`), built on
/// first use by `scripts/make-layout.sh NAME` (cached).
#[allow(dead_code)]
pub fn layout(name: &str) -> PathBuf {
    built_by("make-layout.sh", name)
}

fn built_by(builder: &str, name: &str) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // Held across the build: a second test asking for the same fixture waits for the first.
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = cache.get(name) {
        return p.clone();
    }
    let script = repo_root().join("scripts").join(builder);
    let start = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {name} failed ({}):\n{}",
        script.display(),
        out.status,
        tail(&stderr, 40)
    );
    let path = PathBuf::from(
        stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("{builder} {name} printed no path"))
            .trim(),
    );
    assert!(
        path.is_file(),
        "{builder} {name} printed {}, which is not a file",
        path.display()
    );
    eprintln!(
        "fixture {name}: {} ({:.0} s)",
        path.display(),
        start.elapsed().as_secs_f64()
    );
    cache.insert(name.to_string(), path.clone());
    path
}

/// The JSON facts file make-fixture.sh writes beside a fixture's VMDK.
pub fn fixture_facts(vmdk: &Path) -> serde_json::Value {
    let name = vmdk
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("fixture file name");
    let json = vmdk.with_file_name(format!("{name}.json"));
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", json.display()))
}

/// Lowercase hex sha256 of a file's contents (coreutils' sha256sum when present: the fixtures
/// are ~1 GB and sha2 in a debug build is several times slower).
pub fn sha256_file(path: &Path) -> String {
    if let Ok(out) = Command::new("sha256sum").arg(path).output() {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(hex) = text.split_whitespace().next().filter(|h| h.len() == 64) {
                return hex.to_string();
            }
        }
    }
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// One run of the binary.
pub struct Run {
    pub output: Output,
    pub seconds: f64,
}

impl Run {
    pub fn success(&self) -> bool {
        self.output.status.success()
    }
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// stdout parsed as JSON (panics with both streams when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.output.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            )
        })
    }
    /// Everything, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?} after {:.1} s\n--- stdout\n{}\n--- stderr\n{}",
            self.code(),
            self.seconds,
            tail(&self.stdout(), 60),
            tail(&self.stderr(), 30)
        )
    }
}

/// Run `h2k-guest ARGS…` to completion.
pub fn h2k<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let start = Instant::now();
    let output = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run h2k-guest");
    Run {
        output,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// A job report's stage timeline, `stage 1.2s` each.
#[allow(dead_code)]
pub fn timeline(report: &serde_json::Value) -> Vec<String> {
    report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{} {:.1}s",
                t["stage"].as_str().unwrap(),
                t["seconds"].as_f64().unwrap()
            )
        })
        .collect()
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `f` and fails the test if it took longer than `limit` (the binary enforces its own
/// timeouts; this asserts they hold).
pub fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let v = f();
    assert!(
        start.elapsed() <= limit,
        "{what} took {:.0} s, more than the {} s allowed",
        start.elapsed().as_secs_f64(),
        limit.as_secs()
    );
    v
}

/// The single `h2k-guest: error:` line of a failed run (and no panic): errors are one line.
pub fn one_error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("h2k-guest: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "expected exactly one error line:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_string()
}

/// A JSON file (a report) parsed, panicking with its path when it is missing or malformed.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `qemu-img` in `DIR/bin` that runs the shell lines `prelude`, then the real qemu-img with
/// its arguments: how a test slows LOAD down or watches its calls. Returns `DIR/bin`.
pub fn wrapped_qemu_img(dir: &Path, prelude: &str) -> PathBuf {
    let real = Command::new("sh")
        .args(["-c", "command -v qemu-img"])
        .output()
        .expect("sh");
    let real = String::from_utf8(real.stdout).expect("a UTF-8 path");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("qemu-img");
    let script = format!("#!/bin/sh\n{prelude}exec '{}' \"$@\"\n", real.trim());
    std::fs::write(&wrapper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// `$PATH` with `bin` first.
pub fn path_with_first(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// An empty qcow2 image of `size` (qemu-img's syntax: `10M`) at `path`.
pub fn empty_qcow2(path: &Path, size: &str) {
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .status()
        .expect("qemu-img create");
    assert!(status.success(), "qemu-img create {}", path.display());
}

#[allow(dead_code)]
pub mod probe;

/// Keep `contents` as `target/tmp/artifacts/NAME` after the test's temp dirs are gone (inspect
/// output, the seed scenario's report): what a CI run's notes are written from.
#[allow(dead_code)]
pub fn keep_artifact(name: &str, contents: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(name), contents);
}

/// The .deb of `scripts/build-deb.sh` around the binary this test run built (profile dev, no
/// second compile: `bin()` is that target/debug/h2k-guest), made once per test process.
/// Prints its build time; about 10-30 s (xz of the binary).
pub fn deb_package() -> PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        assert_eq!(
            bin().parent().and_then(|d| d.file_name()),
            Some(std::ffi::OsStr::new("debug")),
            "the tests package the dev build in TARGET/debug, not {}",
            bin().display()
        );
        let script = repo_root().join("scripts/build-deb.sh");
        let start = Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .env("H2K_DEB_PROFILE", "dev")
            .env("H2K_DEB_NO_BUILD", "1")
            // The target dir the tests were built in, whatever cargo metadata would say.
            .env(
                "CARGO_TARGET_DIR",
                bin().parent().unwrap().parent().unwrap(),
            )
            // Beside, not over, a release .deb of the same name in TARGET/debian.
            .env(
                "H2K_DEB_OUTPUT",
                bin()
                    .parent()
                    .unwrap()
                    .parent()
                    .unwrap()
                    .join("debian-test"),
            )
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "build-deb.sh failed ({}):\n{}",
            out.status,
            tail(&stderr, 40)
        );
        let deb = PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .expect("build-deb.sh printed no path")
                .trim(),
        );
        assert!(deb.is_file(), "build-deb.sh printed {}", deb.display());
        eprintln!(
            "deb {}: built in {:.0} s",
            deb.display(),
            start.elapsed().as_secs_f64()
        );
        deb
    })
    .clone()
}

#[allow(dead_code)]
pub mod daemon;

/// The values of `attr` on every `element` of an XML document (libvirt domain XML), in order.
pub fn xml_attrs(xml: &str, element: &str, attr: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name(element))
        .filter_map(|n| n.attribute(attr).map(str::to_string))
        .collect()
}

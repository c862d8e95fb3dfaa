//! The spool directory on disk: its four directories, which entries are manifests, how one is
//! claimed (an exclusive `flock` on the file, then an atomic `rename` into `processing/`), how
//! results are filed under dated directories without ever overwriting, and the small per-job
//! ledger that survives a crash (attempt count, output directory).
//!
//! Ownership of a claimed manifest is the `flock` its worker holds on it: the kernel drops it
//! when the daemon dies, even on `kill -9`, so "no live owner" is simply "the lock can be
//! taken" — no pid guessing, no pid reuse problem.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, RenameFlags};
use serde::{Deserialize, Serialize};

pub const TO_BE_PROCESSED: &str = "to_be_processed";
pub const PROCESSING: &str = "processing";
pub const PROCESSED: &str = "processed";
pub const FAILED: &str = "failed";
/// Hidden bookkeeping: `daemons/` (state and lock files), `jobs/` (the ledger).
pub const META: &str = ".h2k-guest";

/// Suffixes of the files written beside a filed manifest.
pub const REPORT_SUFFIX: &str = ".report.json";
pub const ERROR_SUFFIX: &str = ".error.json";

/// The layout of one spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    pub root: PathBuf,
}

impl Spool {
    pub fn new(root: &Path) -> Spool {
        Spool {
            root: root.to_path_buf(),
        }
    }

    pub fn to_be_processed(&self) -> PathBuf {
        self.root.join(TO_BE_PROCESSED)
    }
    pub fn processing(&self) -> PathBuf {
        self.root.join(PROCESSING)
    }
    pub fn processed(&self) -> PathBuf {
        self.root.join(PROCESSED)
    }
    pub fn failed(&self) -> PathBuf {
        self.root.join(FAILED)
    }
    pub fn daemons_dir(&self) -> PathBuf {
        self.root.join(META).join("daemons")
    }
    pub fn ledger_dir(&self) -> PathBuf {
        self.root.join(META).join("jobs")
    }

    /// Create the four directories and the bookkeeping directory when missing.
    pub fn create(&self) -> io::Result<()> {
        for d in [
            self.to_be_processed(),
            self.processing(),
            self.processed(),
            self.failed(),
            self.daemons_dir(),
            self.ledger_dir(),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| annotate(e, &d, "cannot create"))?;
        }
        Ok(())
    }
}

/// `PATH: what: error` as an io::Error of the same kind.
pub fn annotate(e: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
}

/// Today's date (UTC) as `YYYY-MM-DD`: the name of the dated directories.
pub fn today() -> String {
    date_of(time::OffsetDateTime::now_utc())
}

pub fn date_of(t: time::OffsetDateTime) -> String {
    let d = t.date();
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

/// Longest file name (bytes) the spool files under: leaves room for `-N` and the sidecar
/// suffix (`.error.json`) within the 255-byte limit of common file systems.
pub const MAX_FILED_NAME_BYTES: usize = 200;

/// The name a manifest is moved and filed under. Names that are long, not UTF-8 or contain
/// control characters get a sanitized, shortened stem plus a short hash of the original bytes
/// (so distinct hostile names stay distinct); the original name lives in the ledger and reports.
pub fn safe_file_name(name: &OsStr) -> OsString {
    use std::os::unix::ffi::OsStrExt;
    let fine = name
        .to_str()
        .is_some_and(|s| s.len() <= MAX_FILED_NAME_BYTES && !s.chars().any(char::is_control));
    if fine {
        return name.to_os_string();
    }
    let lossy = name.to_string_lossy();
    let clean: String = lossy
        .chars()
        .map(|c| {
            if c.is_control() || c == char::REPLACEMENT_CHARACTER {
                '_'
            } else {
                c
            }
        })
        .collect();
    let (stem, ext) = match clean.rfind('.') {
        Some(i) if i > 0 && clean.len() - i <= 8 => clean.split_at(i),
        _ => (clean.as_str(), ""),
    };
    let mut cut = stem.len().min(MAX_FILED_NAME_BYTES - 32);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(name.as_bytes());
        d.iter()
            .take(5)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    OsString::from(format!("{}-{digest}{ext}", &stem[..cut]))
}

/// What the daemon does with a directory entry of `to_be_processed/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// Never touched: dotfiles, `*.tmp`, `*.part` (a submission in progress).
    Hidden,
    /// A regular file named `*.json`, `*.yaml`, `*.yml`.
    Manifest,
    /// A regular file with another name: left alone (warned about once).
    OtherFile,
    /// A directory, symlink, FIFO, socket or device: filed to `failed/` at once.
    Junk(String),
}

/// Names the daemon never takes: dotfiles, `*.tmp`, `*.part`.
pub fn is_hidden_name(name: &OsStr) -> bool {
    let s = name.to_string_lossy();
    let lower = s.to_ascii_lowercase();
    s.starts_with('.') || lower.ends_with(".tmp") || lower.ends_with(".part")
}

/// `.json`, `.yaml`, `.yml` (any case).
pub fn has_manifest_extension(name: &OsStr) -> bool {
    let lower = name.to_string_lossy().to_ascii_lowercase();
    [".json", ".yaml", ".yml"]
        .iter()
        .any(|ext| lower.ends_with(ext) && lower.len() > ext.len())
}

/// Classify an entry by its name and `lstat` (symlinks are not followed).
pub fn classify(name: &OsStr, meta: &std::fs::Metadata) -> EntryKind {
    if is_hidden_name(name) {
        return EntryKind::Hidden;
    }
    let ft = meta.file_type();
    if ft.is_file() {
        if has_manifest_extension(name) {
            EntryKind::Manifest
        } else {
            EntryKind::OtherFile
        }
    } else {
        EntryKind::Junk(describe_non_regular(meta))
    }
}

fn describe_non_regular(meta: &std::fs::Metadata) -> String {
    let what = crate::util::file_type_name(&meta.file_type());
    format!("{what}, not a manifest file: submit a regular .json/.yaml/.yml file (write it elsewhere, then rename it into to_be_processed/)")
}

pub use super::ledger::{
    ledger_all, ledger_gc, ledger_read, ledger_remove, ledger_write, LedgerEntry,
};

/// The inode identity of a manifest: renames keep it, so it follows the file through the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileKey {
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
    fn same_inode(&self, meta: &std::fs::Metadata) -> bool {
        self.dev == meta.dev() && self.ino == meta.ino()
    }
}

/// `rename(2)` that fails with `AlreadyExists` instead of replacing the target.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        // File systems without RENAME_NOREPLACE: link + unlink is just as exclusive for
        // files; for anything else check-then-rename is the best available.
        Err(Errno::EINVAL) | Err(Errno::ENOSYS) => match std::fs::hard_link(from, to) {
            Ok(()) => std::fs::remove_file(from),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
            Err(_) => {
                if std::fs::symlink_metadata(to).is_ok() {
                    return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                }
                std::fs::rename(from, to)
            }
        },
        Err(e) => Err(io::Error::from(e)),
    }
}

/// The n-th alternative of a file name: `vm.json`, `vm-1.json`, `vm-2.json`, …
pub fn suffixed(name: &OsStr, n: u32) -> OsString {
    if n == 0 {
        return name.to_os_string();
    }
    let s = name.to_string_lossy();
    match s.rfind('.') {
        Some(i) if i > 0 => OsString::from(format!("{}-{n}{}", &s[..i], &s[i..])),
        _ => OsString::from(format!("{s}-{n}")),
    }
}

fn with_suffix(name: &OsStr, suffix: &str) -> OsString {
    let mut s = name.to_os_string();
    s.push(suffix);
    s
}

/// Move `src` into `dir` as `name` (or `name-N.ext` when taken), never replacing anything.
/// Returns the final path; `NotFound` when `src` is gone (someone else moved it).
pub fn move_unique(src: &Path, dir: &Path, name: &OsStr) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| annotate(e, dir, "cannot create"))?;
    let name = &safe_file_name(name);
    for n in 0..10_000 {
        let target = dir.join(suffixed(name, n));
        match rename_noreplace(src, &target) {
            Ok(()) => return Ok(target),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{}: no free name for {}",
        dir.display(),
        name.to_string_lossy()
    )))
}

/// File `src` into `dir` with a sidecar (`NAME<sidecar_suffix>`, its content made by `sidecar`
/// from the final name).
///
/// The sidecar is created first, complete, under a name nobody holds, then the manifest is
/// renamed beside it; so a filed manifest always has its report, and a crash in between leaves
/// at worst a sidecar without a manifest (the manifest itself is still where it was).
pub fn file_with_sidecar(
    src: &Path,
    dir: &Path,
    name: &OsStr,
    sidecar_suffix: &str,
    sidecar: &mut dyn FnMut(&OsStr) -> Vec<u8>,
) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| annotate(e, dir, "cannot create"))?;
    let name = &safe_file_name(name);
    for n in 0..10_000 {
        let cand = suffixed(name, n);
        let target = dir.join(&cand);
        let side = dir.join(with_suffix(&cand, sidecar_suffix));
        if std::fs::symlink_metadata(&target).is_ok() {
            continue;
        }
        match write_new(&side, &sidecar(&cand)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(annotate(e, &side, "cannot write")),
        }
        match rename_noreplace(src, &target) {
            Ok(()) => {
                sync_dir(dir);
                return Ok(target);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&side);
                if e.kind() == io::ErrorKind::AlreadyExists {
                    continue;
                }
                return Err(e);
            }
        }
    }
    Err(io::Error::other(format!(
        "{}: no free name for {}",
        dir.display(),
        name.to_string_lossy()
    )))
}

/// Create `path` with `bytes`, atomically and only if it does not exist yet.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp_path = crate::util::synced_temp_beside(path, bytes)?.into_temp_path();
    match rename_noreplace(&tmp_path, path) {
        Ok(()) => {
            // Already renamed: don't let TempPath delete the (now absent) temp name's new owner.
            let _ = tmp_path.keep();
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// fsync a directory so renames into it survive a power cut (best effort).
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Open a spool entry for locking: read-only, not following symlinks, not blocking on FIFOs.
pub fn open_entry(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// A manifest this process owns: the lock is held until the value is dropped.
#[derive(Debug)]
pub struct Claimed {
    pub lock: Flock<File>,
    /// `processing/NAME` (NAME may carry a `-N` suffix when the name was taken).
    pub path: PathBuf,
    /// The name it was submitted under.
    pub original: OsString,
    pub key: FileKey,
    /// When it arrived in `to_be_processed/` (its ctime: last write or rename in), unix seconds.
    pub arrived_unix: f64,
}

pub enum Claim {
    Claimed(Claimed),
    /// Gone, or another process owns it: nothing to do.
    Skip,
    /// Cannot be opened as a manifest at all (unreadable, vanished type change): file it.
    Junk(String),
}

/// Take `to_be_processed/NAME`: lock, check it is still the same file, rename it into
/// `processing/`. Exactly one of several racing daemons gets `Claimed`.
pub fn claim(spool: &Spool, name: &OsStr) -> io::Result<Claim> {
    let path = spool.to_be_processed().join(name);
    let file = match open_entry(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Claim::Skip),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Claim::Junk("a symbolic link, not a manifest file".into()))
        }
        Err(e) => return Ok(Claim::Junk(format!("cannot open: {e}"))),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Claim::Junk(describe_non_regular(&meta)));
    }
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, Errno::EWOULDBLOCK)) => return Ok(Claim::Skip),
        Err((_, e)) => return Err(io::Error::from(e)),
    };
    let key = FileKey::of(&meta);
    // Still the file we opened? (Another daemon may have claimed and filed it, and a new
    // submission taken its name, between our readdir and our lock.)
    match std::fs::symlink_metadata(&path) {
        Ok(m) if key.same_inode(&m) => {}
        _ => return Ok(Claim::Skip),
    }
    let processing = spool.processing();
    match move_unique(&path, &processing, name) {
        Ok(target) => Ok(Claim::Claimed(Claimed {
            lock,
            path: target,
            original: name.to_os_string(),
            key,
            arrived_unix: meta.ctime() as f64 + meta.ctime_nsec() as f64 / 1e9,
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Claim::Skip),
        Err(e) => Err(e),
    }
}

/// Try to take over `processing/NAME`: `Some` when nobody holds its lock (its daemon died).
pub fn adopt_orphan(spool: &Spool, name: &OsStr) -> io::Result<Option<Claimed>> {
    let path = spool.processing().join(name);
    let file = match open_entry(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, e)) => return Err(io::Error::from(e)),
    };
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => {}
        _ => return Ok(None),
    }
    let key = FileKey::of(&meta);
    Ok(Some(Claimed {
        lock,
        path,
        original: name.to_os_string(),
        key,
        arrived_unix: 0.0,
    }))
}

/// Is a process holding this inode open for writing? (Scans `/proc/*/fd`; processes we may not
/// look at are not seen, which is why the caller also wants the file's mtime to have settled.)
pub fn open_for_writing(meta: &std::fs::Metadata) -> bool {
    let (dev, ino) = (meta.dev(), meta.ino());
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.flatten() {
        let pid = p.file_name();
        let pid = pid.to_string_lossy();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(m) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if m.dev() != dev || m.ino() != ino {
                continue;
            }
            let info = std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name()))
                .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok());
            match flags {
                Some(f) if f & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 => {}
                _ => return true,
            }
        }
    }
    false
}

/// How long ago a file was last modified.
pub fn age(meta: &std::fs::Metadata) -> Duration {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default()
}

/// Remove what a killed job may have left in its output directory: the pipeline's hidden work
/// directories (`.h2k-guest-*`) and partial outputs (`*.part`). Final names are only ever
/// written whole, so they are kept.
pub fn clean_job_leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    clean_rec(dir, 0, &mut removed);
    removed
}

fn clean_rec(dir: &Path, depth: u32, removed: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let s = name.to_string_lossy();
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() && s.starts_with(".h2k-guest-") {
            if std::fs::remove_dir_all(&p).is_ok() {
                removed.push(p);
            }
        } else if ft.is_file() && s.ends_with(".part") {
            if std::fs::remove_file(&p).is_ok() {
                removed.push(p);
            }
        } else if ft.is_dir() && depth < 4 {
            clean_rec(&p, depth + 1, removed);
        }
    }
}

/// Make `O/DATE/JOB` (or `JOB-N` when taken) and return it.
pub fn make_job_dir(output_root: &Path, date: &str, job: &str) -> io::Result<PathBuf> {
    let day = output_root.join(date);
    std::fs::create_dir_all(&day).map_err(|e| annotate(e, &day, "cannot create"))?;
    for n in 0..10_000 {
        let p = day.join(suffixed(OsStr::new(job), n));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(annotate(e, &p, "cannot create")),
        }
    }
    Err(io::Error::other(format!(
        "{}: no free job directory name for {job}",
        day.display()
    )))
}

/// Is `name` (in a dated directory listing `names`) a report/error sidecar of another entry?
pub fn is_sidecar(name: &str, exists: impl Fn(&str) -> bool) -> bool {
    for suffix in [REPORT_SUFFIX, ERROR_SUFFIX] {
        if let Some(base) = name.strip_suffix(suffix) {
            if !base.is_empty() && exists(base) {
                return true;
            }
        }
    }
    false
}

/// The entries of a spool directory that count as queued or in progress (what `workflow queue`
/// counts): everything but hidden names.
pub fn visible_entries(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name())
                .filter(|n| !is_hidden_name(n))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The filed manifests of `processed/DATE` or `failed/DATE` (sidecars left out).
pub fn filed_manifests(day_dir: &Path) -> Vec<String> {
    let names: std::collections::HashSet<String> = std::fs::read_dir(day_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut v: Vec<String> = names
        .iter()
        .filter(|n| !n.starts_with('.') && !is_sidecar(n, |b| names.contains(b)))
        .cloned()
        .collect();
    v.sort();
    v
}

/// Dated subdirectories (`YYYY-MM-DD`) of `processed/` or `failed/`, sorted.
pub fn dated_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| is_date(n))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `YYYY-MM-DD` (shape only).
pub fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    // A real calendar day: 2026-13-45 and 2026-02-30 are not.
    let num = |r: std::ops::Range<usize>| s[r].parse::<u16>().unwrap_or(0);
    shaped
        && time::Month::try_from(num(5..7) as u8)
            .and_then(|m| time::Date::from_calendar_date(num(0..4).into(), m, num(8..10) as u8))
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_get_short_safe_unique_file_names() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(safe_file_name(OsStr::new("vm.json")), "vm.json");
        let long = format!("{}.json", "a".repeat(245));
        let safe = safe_file_name(OsStr::new(&long));
        let s = safe.to_str().unwrap();
        assert!(
            s.len() <= MAX_FILED_NAME_BYTES && s.ends_with(".json"),
            "{s}"
        );
        let other = format!("{}b.json", "a".repeat(244));
        assert_ne!(safe, safe_file_name(OsStr::new(&other)));
        let nl = safe_file_name(OsStr::new("x\nINFO forged.json"));
        assert!(nl.to_str().unwrap().starts_with("x_INFO forged-"), "{nl:?}");
        let raw = safe_file_name(OsStr::from_bytes(b"caf\xe9.yaml"));
        assert!(raw.to_str().unwrap().ends_with(".yaml"), "{raw:?}");
        assert!((with_suffix(&safe, ERROR_SUFFIX).len() + 6) < 255);
    }

    #[test]
    fn dates_must_exist() {
        assert!(is_date("2026-02-28"));
        assert!(!is_date("2026-13-45"));
        assert!(!is_date("2026-02-30"));
        assert!(!is_date("yesterday"));
    }

    #[test]
    fn names_the_daemon_takes() {
        for n in ["vm.json", "vm.yaml", "VM.YML", "a.b.json"] {
            assert!(
                has_manifest_extension(OsStr::new(n)) && !is_hidden_name(OsStr::new(n)),
                "{n}"
            );
        }
        for n in [
            ".vm.json",
            "vm.json.tmp",
            "vm.json.part",
            "vm.TMP",
            ".submit-x",
        ] {
            assert!(is_hidden_name(OsStr::new(n)), "{n}");
        }
        for n in ["vm.txt", "json", ".json", "README"] {
            assert!(
                !has_manifest_extension(OsStr::new(n)) || is_hidden_name(OsStr::new(n)),
                "{n}"
            );
        }
    }

    #[test]
    fn collision_suffixes_keep_the_extension() {
        assert_eq!(suffixed(OsStr::new("vm.json"), 0), "vm.json");
        assert_eq!(suffixed(OsStr::new("vm.json"), 2), "vm-2.json");
        assert_eq!(suffixed(OsStr::new("junkdir"), 1), "junkdir-1");
        assert_eq!(suffixed(OsStr::new(".x"), 1), ".x-1");
    }

    #[test]
    fn move_unique_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let dst = d.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(dst.join("m.json"), "old").unwrap();
        let src = d.path().join("m.json");
        std::fs::write(&src, "new").unwrap();
        let p = move_unique(&src, &dst, OsStr::new("m.json")).unwrap();
        assert_eq!(p, dst.join("m-1.json"));
        assert_eq!(std::fs::read_to_string(dst.join("m.json")).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            move_unique(&src, &dst, OsStr::new("m.json"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn filing_writes_the_sidecar_beside_a_free_name() {
        let d = tempfile::tempdir().unwrap();
        let day = d.path().join("2026-01-24");
        std::fs::create_dir(&day).unwrap();
        std::fs::write(day.join("m.json.error.json"), "{}").unwrap(); // orphan sidecar: name taken
        let src = d.path().join("m.json");
        std::fs::write(&src, "x").unwrap();
        let p = file_with_sidecar(&src, &day, OsStr::new("m.json"), ERROR_SUFFIX, &mut |_| {
            b"{\"e\":1}".to_vec()
        })
        .unwrap();
        assert_eq!(p, day.join("m-1.json"));
        assert_eq!(
            std::fs::read_to_string(day.join("m-1.json.error.json")).unwrap(),
            "{\"e\":1}"
        );
        assert_eq!(
            filed_manifests(&day),
            vec!["m-1.json".to_string(), "m.json.error.json".to_string()]
        );
    }

    #[test]
    fn sidecars_are_recognised_only_next_to_their_manifest() {
        let names = ["a.json", "a.json.report.json", "b.report.json"];
        let has = |b: &str| names.contains(&b);
        assert!(is_sidecar("a.json.report.json", has));
        assert!(!is_sidecar("b.report.json", has));
    }

    #[test]
    fn claim_is_exclusive_and_moves_into_processing() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::new(d.path());
        spool.create().unwrap();
        std::fs::write(spool.to_be_processed().join("m.json"), "{}").unwrap();
        let Claim::Claimed(c) = claim(&spool, OsStr::new("m.json")).unwrap() else {
            panic!("not claimed")
        };
        assert_eq!(c.path, spool.processing().join("m.json"));
        assert!(matches!(
            claim(&spool, OsStr::new("m.json")).unwrap(),
            Claim::Skip
        ));
        // Its owner is alive (the lock is held): not an orphan.
        assert!(adopt_orphan(&spool, OsStr::new("m.json"))
            .unwrap()
            .is_none());
        drop(c);
        assert!(adopt_orphan(&spool, OsStr::new("m.json"))
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_file_open_for_writing_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        let w = File::create(&p).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        // Our own pid is skipped, so look from a child's point of view: a `sleep` holding it.
        drop(w);
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3>>'{}'; exec sleep 5", p.display()))
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        let mut seen = false;
        while t.elapsed() < Duration::from_secs(3) {
            if open_for_writing(&meta) {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen);
        assert!(!open_for_writing(&meta));
    }

    #[test]
    fn dates_have_the_right_shape() {
        assert!(is_date(&today()));
        assert!(!is_date("2026-1-24"));
        assert!(!is_date("2026-01-2x"));
    }
}

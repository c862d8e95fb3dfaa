//! The per-run work directory (`OUTPUT_DIR/.h2k-guest-XXXXXX/`: overlays, NBD sockets).
//!
//! A run that is killed with SIGKILL cannot remove its work directory, so ownership is a `flock`
//! on a lock file inside it, which the kernel drops when the process dies. Every new run sweeps
//! the output directory first: a work directory whose lock can be taken belongs to nobody and is
//! removed. A live run (this process or another one sharing the directory) keeps its lock, so it
//! is never swept.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The prefix of every work directory; nothing else in an output directory starts with it.
pub const PREFIX: &str = ".h2k-guest-";
const LOCK_NAME: &str = "owner.lock";

/// A work directory this process owns: removed on drop; its lock is held until then.
#[derive(Debug)]
pub struct WorkDir {
    // Fields drop in declaration order: the directory is removed while the lock is still held,
    // so a sweeper never sees it unowned.
    dir: tempfile::TempDir,
    _lock: Flock<File>,
}

impl WorkDir {
    /// Create a fresh, locked work directory in `parent`.
    pub fn create(parent: &Path) -> io::Result<WorkDir> {
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir_in(parent)?;
        let file = File::create(dir.path().join(LOCK_NAME))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io::Error::from(e))?;
        Ok(WorkDir { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Remove the work directories in `parent` that no live process owns; returns what was removed.
/// Errors are not fatal (a directory we cannot inspect is left as it is).
pub fn sweep_stale(parent: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_work_dir = name.to_str().is_some_and(|n| n.starts_with(PREFIX))
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_work_dir {
            continue;
        }
        let path = entry.path();
        if is_owned(&path) {
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Whether a live process holds the lock of work directory `dir`. A directory without a lock
/// file (made by a version before locks, or killed between mkdir and lock) counts as unowned
/// only when it is older than a minute, so a run that is just starting is never swept.
fn is_owned(dir: &Path) -> bool {
    match File::open(dir.join(LOCK_NAME)) {
        Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err(),
        Err(_) => std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age.as_secs() < 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_work_dir_is_kept_and_an_abandoned_one_is_swept() {
        let parent = tempfile::tempdir().unwrap();
        let live = WorkDir::create(parent.path()).unwrap();
        // Abandoned: its lock file exists but nobody holds it (as after a SIGKILL).
        let dead = parent.path().join(format!("{PREFIX}dead"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK_NAME), b"").unwrap();
        std::fs::write(dead.join("overlay0.qcow2"), b"x").unwrap();
        let other = parent.path().join("x.qcow2");
        std::fs::write(&other, b"keep").unwrap();

        let removed = sweep_stale(parent.path());
        assert_eq!(removed, vec![dead.clone()]);
        assert!(live.path().is_dir());
        assert!(other.exists());
        assert!(!dead.exists());
    }

    #[test]
    fn a_work_dir_without_a_lock_is_kept_while_young() {
        let parent = tempfile::tempdir().unwrap();
        let young = parent.path().join(format!("{PREFIX}young"));
        std::fs::create_dir(&young).unwrap();
        assert!(sweep_stale(parent.path()).is_empty());
        assert!(young.is_dir());
    }

    #[test]
    fn dropping_removes_the_directory() {
        let parent = tempfile::tempdir().unwrap();
        let wd = WorkDir::create(parent.path()).unwrap();
        let p = wd.path().to_path_buf();
        drop(wd);
        assert!(!p.exists());
    }
}

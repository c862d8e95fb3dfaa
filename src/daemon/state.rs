//! The daemon's state file, `DIR/.h2k-guest/daemons/PID.json`, read back by
//! `h2k-guest workflow status`. It is replaced atomically (temp file + rename) whenever a job
//! starts, changes stage or ends. Beside it, `PID.lock` is `flock`ed by the daemon for its
//! whole life: a reader that can take that lock knows the daemon is gone (even after
//! `kill -9`, even if the pid has been reused), so a stale state file is never shown as live.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::spool::Spool;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobState {
    pub job_id: String,
    /// Output job name (`O/DATE/JOB`).
    pub job: String,
    /// Name it was submitted under.
    pub manifest: String,
    pub processing_name: String,
    pub stage: String,
    pub started_at: String,
    pub started_unix: f64,
    pub stage_started_unix: f64,
    pub attempt: u32,
    pub output_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DaemonState {
    pub pid: u32,
    /// "running" or "stopping".
    pub state: String,
    pub started_at: String,
    pub started_unix: f64,
    pub updated_at: String,
    pub dir: PathBuf,
    pub output_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub max_concurrent_jobs: usize,
    pub on_stop: String,
    pub version: String,
    pub jobs: Vec<JobState>,
    /// Jobs finished by this daemon since it started.
    pub processed: u64,
    pub failed: u64,
    pub requeued: u64,
}

fn state_path(spool: &Spool, pid: u32) -> PathBuf {
    spool.daemons_dir().join(format!("{pid}.json"))
}

fn lock_path(spool: &Spool, pid: u32) -> PathBuf {
    spool.daemons_dir().join(format!("{pid}.lock"))
}

/// This daemon's registration: holds the lock for as long as it lives.
pub struct Registration {
    spool: Spool,
    pid: u32,
    _lock: Flock<File>,
}

impl Registration {
    /// Create and lock `PID.lock`. The lock is taken on a temp file that is then renamed into
    /// place, so the named lock file is never seen unlocked while this daemon lives.
    pub fn register(spool: &Spool) -> io::Result<Registration> {
        let pid = std::process::id();
        let dir = spool.daemons_dir();
        let tmp = tempfile::Builder::new()
            .prefix(".lock-")
            .tempfile_in(&dir)?;
        let (file, tmp_path) = tmp.into_parts();
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io::Error::from(e))?;
        let target = lock_path(spool, pid);
        std::fs::rename(&tmp_path, &target)?;
        let _ = tmp_path.keep();
        Ok(Registration {
            spool: spool.clone(),
            pid,
            _lock: lock,
        })
    }

    pub fn write(&self, state: &DaemonState) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        crate::util::write_atomic(&state_path(&self.spool, self.pid), &bytes)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(state_path(&self.spool, self.pid));
        let _ = std::fs::remove_file(lock_path(&self.spool, self.pid));
    }
}

/// Is the daemon with this pid alive (holding its lock)?
pub fn is_alive(spool: &Spool, pid: u32) -> bool {
    let Ok(f) = File::open(lock_path(spool, pid)) else {
        return false;
    };
    match Flock::lock(f, FlockArg::LockSharedNonblock) {
        Ok(_) => false,
        Err((_, Errno::EWOULDBLOCK)) => true,
        Err(_) => false,
    }
}

/// Every state file in the spool, with whether its daemon is alive.
pub fn read_all(spool: &Spool) -> Vec<(DaemonState, bool)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(spool.daemons_dir()) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension() != Some(OsStr::new("json")) {
            continue;
        }
        let Some(state) = std::fs::read(&p)
            .ok()
            .and_then(|t| serde_json::from_slice::<DaemonState>(&t).ok())
        else {
            continue;
        };
        let alive = is_alive(spool, state.pid);
        out.push((state, alive));
    }
    out.sort_by_key(|(s, _)| s.pid);
    out
}

/// The last state a dead daemon wrote (recovery reads the stage its jobs died in).
pub fn read_one(spool: &Spool, pid: u32) -> Option<DaemonState> {
    std::fs::read(state_path(spool, pid))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
}

/// Remove the state and lock files of daemons that are gone.
pub fn remove_stale(spool: &Spool) -> Vec<u32> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(spool.daemons_dir()) else {
        return removed;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = name
            .strip_suffix(".lock")
            .or_else(|| name.strip_suffix(".json"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || is_alive(spool, pid) {
            continue;
        }
        if std::fs::remove_file(e.path()).is_ok() && name.ends_with(".json") {
            removed.push(pid);
        }
    }
    removed
}

/// The lock file path (for diagnostics).
pub fn lock_file(spool: &Spool, pid: u32) -> PathBuf {
    lock_path(spool, pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_daemon_is_alive_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::new(d.path());
        spool.create().unwrap();
        let pid = std::process::id();
        assert!(!is_alive(&spool, pid));
        let reg = Registration::register(&spool).unwrap();
        assert!(is_alive(&spool, pid));
        drop(reg);
        assert!(!is_alive(&spool, pid));
        assert!(!lock_file(&spool, pid).exists());
    }
}

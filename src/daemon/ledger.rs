//! The per-job ledger in `.h2k-guest/jobs/`: what survives a crash about a claimed manifest
//! (attempt count, output directory, why earlier attempts ended), keyed by its inode.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spool::{age, FileKey, Spool};

/// What survives a crash about one claimed manifest, kept in `.h2k-guest/jobs/<dev>-<ino>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LedgerEntry {
    pub key: Option<FileKey>,
    pub job_id: String,
    /// The name it was submitted under.
    pub manifest: String,
    /// Its current name in `processing/`.
    pub processing_name: String,
    /// Claims so far (this one included).
    pub attempts: u32,
    pub pid: u32,
    pub claimed_at: String,
    pub claimed_unix: f64,
    /// The job's output directory, reused by a retry.
    pub output_dir: Option<PathBuf>,
    /// Why earlier attempts ended (e.g. "daemon pid 123 died in stage fix").
    #[serde(default)]
    pub history: Vec<String>,
    /// Set when the job ran but could not be filed: recovery files it as failed and never
    /// runs it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filing_failed: Option<String>,
}

fn ledger_path(spool: &Spool, key: &FileKey) -> PathBuf {
    spool
        .ledger_dir()
        .join(format!("{}-{}.json", key.dev, key.ino))
}

/// The ledger entry of this file, if it is really about this file (same size and mtime).
pub fn ledger_read(spool: &Spool, key: &FileKey) -> Option<LedgerEntry> {
    let text = std::fs::read(ledger_path(spool, key)).ok()?;
    let e: LedgerEntry = serde_json::from_slice(&text).ok()?;
    match e.key {
        Some(k) if k.size == key.size && k.mtime_ns == key.mtime_ns => Some(e),
        _ => None,
    }
}

pub fn ledger_write(spool: &Spool, key: &FileKey, e: &LedgerEntry) {
    let path = ledger_path(spool, key);
    let bytes = serde_json::to_vec_pretty(e).unwrap_or_default();
    if let Err(err) = crate::util::write_atomic(&path, &bytes) {
        log::warn!("{}: cannot write the job ledger: {err}", path.display());
    }
}

pub fn ledger_remove(spool: &Spool, key: &FileKey) {
    let _ = std::fs::remove_file(ledger_path(spool, key));
}

/// All ledger entries (for `workflow list` and garbage collection).
pub fn ledger_all(spool: &Spool) -> Vec<(PathBuf, LedgerEntry)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(spool.ledger_dir()) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension() != Some(OsStr::new("json")) {
                continue;
            }
            if let Some(entry) = std::fs::read(&p)
                .ok()
                .and_then(|t| serde_json::from_slice::<LedgerEntry>(&t).ok())
            {
                out.push((p, entry));
            }
        }
    }
    out
}

/// Drop ledger entries whose manifest is neither queued nor processing any more (a crash
/// between filing and removing the entry), once they are a minute old.
pub fn ledger_gc(spool: &Spool) {
    let mut live = std::collections::HashSet::new();
    for d in [spool.processing(), spool.to_be_processed()] {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    live.insert((m.dev(), m.ino()));
                }
            }
        }
    }
    for (p, e) in ledger_all(spool) {
        let Some(k) = e.key else { continue };
        if live.contains(&(k.dev, k.ino)) {
            continue;
        }
        let old = std::fs::metadata(&p)
            .map(|m| age(&m) > Duration::from_secs(60))
            .unwrap_or(false);
        if old {
            let _ = std::fs::remove_file(&p);
        }
    }
}

//! Taking manifests from `to_be_processed/`: which entries are ready, claiming them, filing
//! junk, and starting a worker per claimed manifest.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::sync::Arc;

use super::job::{self, JobSpec, Outcome};
use super::records::{ErrorReport, JobStatus, Stage};
use super::spool::{self, Claim, EntryKind, LedgerEntry};
use super::state::JobState;
use super::watch::Event;
use super::{job_name, Daemon, Running};
use crate::logging::JobCtx;
use crate::util::now_rfc3339;

impl Daemon {
    /// Look at `to_be_processed/`: file junk, claim what is complete while slots are free.
    pub(super) fn scan(&mut self) {
        if self.stopping {
            return;
        }
        let dir = self.sp().to_be_processed();
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                log::error!("{}: cannot list: {e}", dir.display());
                return;
            }
        };
        let mut present = HashSet::new();
        let mut candidates: Vec<(std::time::SystemTime, OsString, std::fs::Metadata)> = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            present.insert(name.clone());
            match spool::classify(&name, &meta) {
                EntryKind::Hidden => {}
                EntryKind::Junk(reason) => self.file_junk(&name, &reason),
                EntryKind::OtherFile => {
                    if self.warned.insert(name.clone()) {
                        log::warn!(
                            "ignoring {}: not a manifest name (the daemon takes .json, .yaml, .yml)",
                            name.to_string_lossy()
                        );
                    }
                }
                EntryKind::Manifest => {
                    let mtime = meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                    candidates.push((mtime, name, meta));
                }
            }
        }
        self.ready.retain(|n| present.contains(n));
        self.warned.retain(|n| present.contains(n));
        candidates.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (_, name, meta) in candidates {
            if self.running.len() >= self.cfg().max_concurrent_jobs {
                break;
            }
            let announced = self.ready.contains(&name);
            if !announced
                && (spool::age(&meta) < self.cfg().settle || spool::open_for_writing(&meta))
            {
                continue; // still being written, or too fresh to tell
            }
            match spool::claim(self.sp(), &name) {
                Ok(Claim::Claimed(c)) => {
                    self.ready.remove(&name);
                    self.start(c);
                }
                Ok(Claim::Skip) => {
                    self.ready.remove(&name);
                }
                Ok(Claim::Junk(reason)) => self.file_junk(&name, &reason),
                Err(e) => log::error!("{}: cannot claim: {e}", dir.join(&name).display()),
            }
        }
    }

    /// A directory, symlink, unreadable file…: straight to `failed/` with its error report.
    pub(super) fn file_junk(&mut self, name: &OsStr, reason: &str) {
        if self.stopping {
            return;
        }
        let sp = self.sp().clone();
        let src = sp.to_be_processed().join(name);
        let dir = sp.failed().join(spool::today());
        let job_id = self.next_job_id(&job_name(name));
        let shown = name.to_string_lossy().into_owned();
        let error = format!("{shown}: {reason}");
        let result = spool::file_with_sidecar(
            &src,
            &dir,
            name,
            spool::ERROR_SUFFIX,
            &mut |filed: &OsStr| {
                ErrorReport {
                    job_id: Some(job_id.clone()),
                    job: Some(job_name(name)),
                    manifest: shown.clone(),
                    filed_as: Some(dir.join(filed)),
                    status: JobStatus::Failed,
                    failed_at: now_rfc3339(),
                    stage: Stage::Claim,
                    error: error.clone(),
                    daemon_pid: Some(std::process::id()),
                    ..ErrorReport::default()
                }
                .to_json()
            },
        );
        match result {
            Ok(p) => {
                self.failed += 1;
                self.shared.metrics.record_rejected();
                log::warn!(target: &format!("{}/claim", job_name(name)), "rejected {error}; filed as {}", job::rel(&sp, &p));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // someone else filed it
            Err(e) => log::error!("{}: cannot file as failed: {e}", src.display()),
        }
    }

    pub(super) fn next_job_id(&mut self, job: &str) -> String {
        self.seq += 1;
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let stamp = time::OffsetDateTime::now_utc()
            .format(&fmt)
            .unwrap_or_default();
        format!("{job}.{stamp}.{}.{}", std::process::id(), self.seq)
    }

    /// Start a worker for a claimed manifest.
    pub(super) fn start(&mut self, claimed: spool::Claimed) {
        let sp = self.sp().clone();
        let job = job_name(&claimed.original);
        let job_id = self.next_job_id(&job);
        let prev = spool::ledger_read(&sp, &claimed.key);
        let attempts = prev.as_ref().map(|p| p.attempts).unwrap_or(0) + 1;
        let now = crate::util::unix_now();
        let latency_ms = if claimed.arrived_unix > 0.0 {
            ((now - claimed.arrived_unix) * 1000.0).max(0.0)
        } else {
            0.0
        };
        let target = format!("{job}/claim");
        let pname = claimed
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let msg = format!(
            "new manifest claimed: {} → processing/{pname} ({:.0} ms after it arrived; attempt {attempts} of {})",
            claimed.original.to_string_lossy(),
            latency_ms,
            self.cfg().max_attempts
        );
        log::info!(target: &target, "{msg}");
        // A retry reuses its earlier output directory, cleaned of partial files.
        let reuse = prev
            .as_ref()
            .and_then(|p| p.output_dir.clone())
            .filter(|d| d.is_dir());
        let (output_dir, reused_dir) = match reuse {
            Some(d) => {
                for p in spool::clean_job_leftovers(&d) {
                    log::info!(target: &target, "removed leftover {}", p.display());
                }
                (Ok(d), true)
            }
            None => (
                spool::make_job_dir(&self.cfg().output_dir, &spool::today(), &job),
                false,
            ),
        };
        let ledger = LedgerEntry {
            key: Some(claimed.key),
            job_id: job_id.clone(),
            manifest: claimed.original.to_string_lossy().into_owned(),
            processing_name: pname.clone(),
            attempts,
            pid: std::process::id(),
            claimed_at: now_rfc3339(),
            claimed_unix: now,
            output_dir: output_dir.as_ref().ok().cloned(),
            history: prev.map(|p| p.history).unwrap_or_default(),
            filing_failed: None,
        };
        spool::ledger_write(&sp, &claimed.key, &ledger);
        let ctx = JobCtx::new(&job);
        ctx.push(&format!("{} INFO  [{target}] {msg}", now_rfc3339()));
        let st = JobState {
            job_id: job_id.clone(),
            job: job.clone(),
            manifest: ledger.manifest.clone(),
            processing_name: pname,
            stage: "claim".into(),
            started_at: ledger.claimed_at.clone(),
            started_unix: now,
            stage_started_unix: now,
            attempt: attempts,
            output_dir: ledger.output_dir.clone(),
        };
        self.running.insert(
            job_id.clone(),
            Running {
                ctx: Arc::clone(&ctx),
                state: st,
            },
        );
        let spec = JobSpec {
            job_id: job_id.clone(),
            job: job.clone(),
            claimed,
            ledger,
            output_dir,
            reused_dir,
            ctx: Arc::clone(&ctx),
        };
        let event = job::job_event(&spec, crate::webhook::EventKind::Claimed, 0.0)
            .with_paths(spec.output_dir.as_ref().ok(), None);
        self.shared.webhooks.send(&event);
        let shared = Arc::clone(&self.shared);
        let tx = self.tx.clone();
        let done_id = job_id.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("job {job}"))
            .spawn(move || {
                let _scope = crate::logging::enter(ctx);
                // job::run files its own panics; this catches one while filing, so the slot
                // is always given back (the manifest then waits in processing/ for recovery).
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    job::run(&shared, spec)
                }))
                .unwrap_or(Outcome::Stuck);
                let _ = tx.send(Event::Done { job_id, outcome });
            });
        if let Err(e) = spawned {
            // The spec (and its lock) went down with the closure: recovery re-queues it.
            log::error!(target: &target, "cannot start a worker thread: {e}");
            self.running.remove(&done_id);
        }
        self.write_state(true);
    }
}

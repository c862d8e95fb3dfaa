//! Recovery: entries of `processing/` whose daemon died go back to the queue, or to `failed/`
//! once tried `max_attempts` times (or when their job ended and could not be filed).

use std::ffi::{OsStr, OsString};

use super::job::{self, Outcome};
use super::records::{ErrorReport, JobStatus, Stage};
use super::spool::{self, LedgerEntry};
use super::{job_name, state, Daemon};
use crate::util::now_rfc3339;

impl Daemon {
    /// Entries of `processing/` nobody owns any more: re-queue, or fail after max_attempts.
    pub(super) fn recover(&mut self) {
        let sp = self.sp().clone();
        for name in spool::visible_entries(&sp.processing()) {
            let path = sp.processing().join(&name);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                // Never put there by a daemon; treat as junk found in the wrong place.
                let dir = sp.failed().join(spool::today());
                let shown = name.to_string_lossy().into_owned();
                let r = spool::file_with_sidecar(
                    &path,
                    &dir,
                    &name,
                    spool::ERROR_SUFFIX,
                    &mut |filed: &OsStr| {
                        ErrorReport {
                            manifest: shown.clone(),
                            filed_as: Some(dir.join(filed)),
                            status: JobStatus::Failed,
                            failed_at: now_rfc3339(),
                            stage: Stage::Recover,
                            error: format!("{shown}: found in processing/ and not a regular file"),
                            daemon_pid: Some(std::process::id()),
                            ..ErrorReport::default()
                        }
                        .to_json()
                    },
                );
                if let Ok(p) = r {
                    log::warn!(
                        "{shown}: not a regular file in processing/; filed as {}",
                        job::rel(&sp, &p)
                    );
                }
                continue;
            }
            let claimed = match spool::adopt_orphan(&sp, &name) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    log::error!("{}: cannot check its owner: {e}", path.display());
                    continue;
                }
            };
            if self
                .unfileable
                .contains(&(claimed.key.dev, claimed.key.ino))
            {
                continue; // could not be filed: tried and logged once; left to an operator
            }
            let mut ledger = spool::ledger_read(&sp, &claimed.key).unwrap_or_else(|| LedgerEntry {
                key: Some(claimed.key),
                manifest: name.to_string_lossy().into_owned(),
                processing_name: name.to_string_lossy().into_owned(),
                attempts: 1,
                ..LedgerEntry::default()
            });
            let original = OsString::from(&ledger.manifest);
            let job = job_name(&original);
            let target = format!("{job}/recover");
            // Which stage did it die in? The dead daemon's last state file says.
            let stage = state::read_one(&sp, ledger.pid)
                .and_then(|s| {
                    s.jobs
                        .into_iter()
                        .find(|j| j.job_id == ledger.job_id)
                        .map(|j| j.stage)
                })
                .unwrap_or_else(|| "unknown".into());
            let why = format!(
                "{}: the daemon running it (pid {}) died in the {stage} stage of attempt {}",
                now_rfc3339(),
                ledger.pid,
                ledger.attempts
            );
            if ledger.filing_failed.is_none() {
                ledger.history.push(why.clone());
            }
            if let Some(d) = &ledger.output_dir {
                for p in spool::clean_job_leftovers(d) {
                    log::info!(target: &target, "removed leftover {}", p.display());
                }
            }
            let claimed = spool::Claimed {
                original: original.clone(),
                ..claimed
            };
            let unfileable = ledger.filing_failed.clone();
            if unfileable.is_some() || ledger.attempts >= self.cfg().max_attempts {
                let error = match &unfileable {
                    Some(e) => format!("the job ended but could not be filed ({e}); not run again"),
                    None => format!(
                        "abandoned after {} attempt{}: the daemon running it died each time (last: pid {} in the {stage} stage)",
                        ledger.attempts,
                        if ledger.attempts == 1 { "" } else { "s" },
                        ledger.pid
                    ),
                };
                log::error!(target: &target, "{}: {error}", ledger.manifest);
                let info = job::FailureInfo {
                    stage: &stage,
                    error: &error,
                    seconds: 0.0,
                    report: None,
                    report_path: None,
                    tail: Vec::new(),
                };
                let job_id = if ledger.job_id.is_empty() {
                    self.next_job_id(&job)
                } else {
                    ledger.job_id.clone()
                };
                let inode = (claimed.key.dev, claimed.key.ino);
                match job::file_failure(
                    &sp,
                    &claimed,
                    &job_id,
                    &job,
                    &ledger,
                    ledger.output_dir.as_deref(),
                    &info,
                ) {
                    Outcome::Failed => {
                        self.failed += 1;
                        self.shared.metrics.record_rejected();
                    }
                    _ => {
                        self.unfileable.insert(inode);
                    }
                }
            } else {
                spool::ledger_write(&sp, &claimed.key, &ledger);
                match spool::move_unique(&claimed.path, &sp.to_be_processed(), &original) {
                    Ok(p) => {
                        self.requeued += 1;
                        log::warn!(
                            target: &target,
                            "orphan {} (pid {} died in the {stage} stage): re-queued as {} (attempt {} of {} done)",
                            name.to_string_lossy(),
                            ledger.pid,
                            job::rel(&sp, &p),
                            ledger.attempts,
                            self.cfg().max_attempts
                        );
                    }
                    Err(e) => {
                        log::error!(target: &target, "cannot re-queue {}: {e}", path.display())
                    }
                }
            }
        }
        for pid in state::remove_stale(&sp) {
            log::info!("removed the state file of daemon pid {pid}, which is gone");
        }
        spool::ledger_gc(&sp);
    }
}

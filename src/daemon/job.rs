//! One claimed manifest, from `processing/` to `processed/` or `failed/` (or back to
//! `to_be_processed/` when a shutdown interrupts it): read the manifest with the job's output
//! directory, run the pipeline (its own appliance), file the manifest with its report or error.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::records::{ErrorReport, JobStatus, ProcessedReport, Stage};
use super::spool::{self, Claimed, LedgerEntry, Spool};
use super::{DaemonConfig, OnStop};
use crate::logging::JobCtx;
use crate::metrics::{JobOutcome, JobSample};
use crate::pipeline::{self, PipelineError, RunOptions};
use crate::report::Report;
use crate::util::now_rfc3339;
use crate::webhook::{EventKind, JobEvent};

/// What the worker threads share with the main loop.
pub struct Shared {
    pub spool: Spool,
    pub cfg: DaemonConfig,
    /// Set when running jobs must stop (shutdown with on_stop=abort, or a second signal).
    pub cancel: Arc<AtomicBool>,
    /// Shared with the configuration a SIGHUP reload makes (a reload replaces its receivers).
    pub webhooks: Arc<crate::webhook::Notifier>,
    /// The daemon's metrics (one registry for its whole life).
    pub metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Processed,
    Failed,
    /// Back in `to_be_processed/` (interrupted by a shutdown).
    Requeued,
    /// Could not be filed at all (I/O error); left in `processing/` for recovery.
    Stuck,
    /// A batch, split into one queued job per VM and filed under `processed/`.
    Split,
}

/// Everything the main loop decided about a job before starting its thread.
pub struct JobSpec {
    pub job_id: String,
    pub job: String,
    pub claimed: Claimed,
    pub ledger: LedgerEntry,
    /// `O/DATE/JOB`, or why it could not be made.
    pub output_dir: std::io::Result<PathBuf>,
    /// A retry reusing the directory of an earlier attempt (outputs may be replaced).
    pub reused_dir: bool,
    pub ctx: Arc<JobCtx>,
}

enum Verdict {
    Success(Box<Report>),
    Failure {
        stage: String,
        error: String,
        report: Option<Box<Report>>,
        report_path: Option<PathBuf>,
    },
    /// Stopped by a shutdown before it finished: goes back to the queue.
    Interrupted {
        stage: String,
    },
    /// A batch: these VMs are now queued as jobs of their own.
    Split(Vec<super::split::Queued>),
}

/// Run the job and file it. Never panics (a panic in the pipeline is filed as a failure).
pub fn run(shared: &Shared, spec: JobSpec) -> Outcome {
    let started = std::time::Instant::now();
    let verdict =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(shared, &spec))) {
            Ok(v) => v,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Verdict::Failure {
                    stage: spec.ctx.stage().0,
                    error: format!("internal error (please report): {msg}"),
                    report: None,
                    report_path: None,
                }
            }
        };
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(dir) = &spec.output_dir {
        // A job that failed before writing anything leaves no empty directory behind.
        // Removed before filing: the filed manifest tells watchers the job is over.
        // (Only an empty directory goes; a retry makes a new one.)
        let _ = std::fs::remove_dir(dir);
    }
    let sample = match &verdict {
        Verdict::Success(r) => JobSample::new(seconds, Some(r)),
        Verdict::Failure { report, .. } => JobSample::new(seconds, report.as_deref()),
        Verdict::Interrupted { .. } => JobSample::new(seconds, None),
        Verdict::Split(_) => {
            // Not a VM: its VMs are counted as they finish.
            return file(shared, &spec, verdict, seconds);
        }
    };
    let outcome = file(shared, &spec, verdict, seconds);
    let counted = match outcome {
        Outcome::Processed => Some(JobOutcome::Success),
        Outcome::Failed | Outcome::Stuck => Some(JobOutcome::Failed),
        Outcome::Requeued | Outcome::Split => None,
    };
    shared.metrics.record(counted, &sample);
    outcome
}

fn execute(shared: &Shared, spec: &JobSpec) -> Verdict {
    let cfg = &shared.cfg;
    let fail = |stage: &str, error: String| Verdict::Failure {
        stage: stage.into(),
        error,
        report: None,
        report_path: None,
    };
    let name = spec.claimed.original.to_string_lossy().into_owned();
    spec.ctx.set_stage("manifest");
    let out_dir = match &spec.output_dir {
        Ok(d) => d.clone(),
        Err(e) => return fail("output", e.to_string()),
    };
    let size = spec.claimed.key.size;
    if size > cfg.max_manifest_bytes {
        return fail(
            "manifest",
            format!(
                "{name}: {size} bytes ({:.1} MiB) is too big for a manifest (limit {} bytes, max_manifest_bytes); is this the right file?",
                size as f64 / (1u64 << 20) as f64,
                cfg.max_manifest_bytes
            ),
        );
    }
    if let Ok(text) = std::fs::read_to_string(&spec.claimed.path) {
        if crate::batch::looks_like_batch(&text) {
            return match super::split::split(
                &shared.spool,
                &spec.claimed,
                &spec.ledger,
                &spec.job_id,
                &text,
                cfg.max_manifest_bytes,
            ) {
                Ok(queued) => Verdict::Split(queued),
                Err(e) => fail("manifest", e),
            };
        }
    }
    let plan = match crate::manifest::load_manifest(&spec.claimed.path, Some(&out_dir)) {
        Ok(p) => p,
        Err(e) => {
            // Errors name the file by its processing/ path; the user knows it by its name.
            let msg = e
                .to_string()
                .replace(&spec.claimed.path.display().to_string(), &name);
            return fail("manifest", msg);
        }
    };
    for w in &plan.warnings {
        log::warn!("{name}: {w}");
    }
    log::info!(
        "processing manifest {name} ({:?}, {} disk{}): outputs in {}",
        plan.dialect,
        plan.disks.len(),
        if plan.disks.len() == 1 { "" } else { "s" },
        out_dir.display()
    );
    if shared.cancel.load(Ordering::SeqCst) {
        return Verdict::Interrupted {
            stage: "manifest".into(),
        };
    }
    let opts = RunOptions {
        appliance: cfg.appliance.clone(),
        quiet: true,
        cancel: Arc::clone(&shared.cancel),
        checksum: false,
        overwrite: spec.reused_dir,
        report_path: None,
    };
    match pipeline::run(&plan, &opts) {
        Ok(report) => Verdict::Success(Box::new(report)),
        Err(f) => {
            let cancelled = matches!(f.error, PipelineError::Cancelled);
            // With on_stop=abort, a job that fails once the stop began was most likely killed
            // by it (Ctrl-C reaches qemu too): run it again rather than file a false failure.
            if cancelled || (shared.cancel.load(Ordering::SeqCst) && cfg.on_stop == OnStop::Abort) {
                if !cancelled {
                    log::warn!(
                        "{} stage failed during shutdown ({}); re-queueing",
                        f.stage,
                        f.error
                    );
                }
                return Verdict::Interrupted { stage: f.stage };
            }
            Verdict::Failure {
                stage: Stage::of_failed_run(&f.report, &f.stage).to_string(),
                error: f.error.to_string(),
                report: Some(Box::new(f.report)),
                report_path: Some(f.report_path),
            }
        }
    }
}

fn file(shared: &Shared, spec: &JobSpec, verdict: Verdict, seconds: f64) -> Outcome {
    let sp = &shared.spool;
    let original = spec.claimed.original.as_os_str();
    let name = original.to_string_lossy().into_owned();
    let date = spool::today();
    let out_dir = spec
        .output_dir
        .as_ref()
        .ok()
        .map(|p| p.display().to_string());
    match verdict {
        Verdict::Success(report) => {
            spec.ctx.set_stage("file");
            let mut base = serde_json::to_value(&*report).unwrap_or(Value::Null);
            let dir = sp.processed().join(&date);
            let result = spool::file_with_sidecar(
                &spec.claimed.path,
                &dir,
                original,
                spool::REPORT_SUFFIX,
                &mut |filed: &OsStr| {
                    if let Some(p) = base.pointer_mut("/plan/manifest_path") {
                        *p = json!(dir.join(filed));
                    }
                    let filed_report = ProcessedReport {
                        report: base.clone(),
                        job_id: spec.job_id.clone(),
                        manifest: name.clone(),
                        filed_as: dir.join(filed),
                        completed_at: now_rfc3339(),
                        duration_seconds: round(seconds),
                        attempts: spec.ledger.attempts,
                        output_dir: out_dir.clone(),
                        daemon_pid: std::process::id(),
                    };
                    serde_json::to_vec_pretty(&filed_report).unwrap_or_default()
                },
            );
            match result {
                Ok(filed) => {
                    spool::ledger_remove(sp, &spec.claimed.key);
                    let sidecar = format!("{}{}", filed.display(), spool::REPORT_SUFFIX);
                    let event = job_event(spec, EventKind::Finished, seconds)
                        .with_report(&report)
                        .with_paths(spec.output_dir.as_ref().ok(), Some(Path::new(&sidecar)));
                    shared.webhooks.send(&event);
                    log::info!(
                        "job completed: {} in {:.1} s; manifest and report in {}; outputs in {}",
                        spec.job,
                        seconds,
                        rel(sp, &filed),
                        out_dir.as_deref().unwrap_or("-")
                    );
                    Outcome::Processed
                }
                Err(e) => {
                    log::error!("cannot file {name} as processed: {e}; it stays in processing/ and is not run again");
                    mark_unfileable(sp, &spec.claimed, &spec.ledger, &e);
                    Outcome::Stuck
                }
            }
        }
        Verdict::Failure {
            stage,
            error,
            report,
            report_path,
        } => {
            log::error!("job failed in the {stage} stage: {error}");
            let mut event = job_event(spec, EventKind::Failed, seconds);
            if let Some(r) = &report {
                event = event.with_report(r);
            }
            let event = event
                .with_error(&stage, &error)
                .with_paths(spec.output_dir.as_ref().ok(), report_path.as_deref());
            let info = FailureInfo {
                stage: &stage,
                error: &error,
                seconds,
                report: report.as_deref(),
                report_path: report_path.as_deref(),
                tail: spec.ctx.tail(),
            };
            let outcome = file_failure(
                sp,
                &spec.claimed,
                &spec.job_id,
                &spec.job,
                &spec.ledger,
                spec.output_dir.as_ref().ok().map(|p| p.as_path()),
                &info,
            );
            shared.webhooks.send(&event);
            outcome
        }
        Verdict::Split(queued) => file_split(shared, spec, &queued, seconds),
        Verdict::Interrupted { stage } => {
            let mut ledger = spec.ledger.clone();
            ledger.attempts = ledger.attempts.saturating_sub(1);
            ledger.history.push(format!(
                "{}: interrupted by a daemon shutdown in the {stage} stage (pid {})",
                now_rfc3339(),
                std::process::id()
            ));
            spool::ledger_write(sp, &spec.claimed.key, &ledger);
            if let Ok(d) = &spec.output_dir {
                spool::clean_job_leftovers(d);
            }
            match spool::move_unique(&spec.claimed.path, &sp.to_be_processed(), original) {
                Ok(p) => {
                    log::warn!(
                        "interrupted in the {stage} stage by the shutdown: re-queued as {}",
                        rel(sp, &p)
                    );
                    Outcome::Requeued
                }
                Err(e) => {
                    log::error!(
                        "cannot re-queue {name}: {e}; it stays in processing/ for recovery"
                    );
                    Outcome::Stuck
                }
            }
        }
    }
}

/// File a split batch under `processed/DATE/` with a report of the jobs it queued.
fn file_split(
    shared: &Shared,
    spec: &JobSpec,
    queued: &[super::split::Queued],
    seconds: f64,
) -> Outcome {
    let sp = &shared.spool;
    let original = spec.claimed.original.as_os_str();
    let name = original.to_string_lossy().into_owned();
    let dir = sp.processed().join(spool::today());
    let result = spool::file_with_sidecar(
        &spec.claimed.path,
        &dir,
        original,
        spool::REPORT_SUFFIX,
        &mut |filed: &OsStr| {
            let filed_report = ProcessedReport {
                report: json!({"status": "split", "batch": {"vms": queued}}),
                job_id: spec.job_id.clone(),
                manifest: name.clone(),
                filed_as: dir.join(filed),
                completed_at: now_rfc3339(),
                duration_seconds: round(seconds),
                attempts: spec.ledger.attempts,
                output_dir: None,
                daemon_pid: std::process::id(),
            };
            serde_json::to_vec_pretty(&filed_report).unwrap_or_default()
        },
    );
    match result {
        Ok(filed) => {
            spool::ledger_remove(sp, &spec.claimed.key);
            let sidecar = format!("{}{}", filed.display(), spool::REPORT_SUFFIX);
            let event = job_event(spec, EventKind::Finished, seconds)
                .with_paths(None, Some(Path::new(&sidecar)));
            shared.webhooks.send(&event);
            log::info!(
                "batch {name} split into {} job(s): {}; filed as {}",
                queued.len(),
                queued
                    .iter()
                    .map(|q| q.queued_as.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                rel(sp, &filed)
            );
            Outcome::Split
        }
        Err(e) => {
            log::error!("cannot file the batch {name} as processed: {e}; it stays in processing/ and is not run again");
            mark_unfileable(sp, &spec.claimed, &spec.ledger, &e);
            Outcome::Stuck
        }
    }
}

/// A webhook event about this job (sent after filing, so receivers can read the spool).
pub fn job_event(spec: &JobSpec, kind: EventKind, seconds: f64) -> JobEvent {
    let mut e = JobEvent::new(
        kind,
        &spec.job_id,
        &spec.job,
        &spec.claimed.original.to_string_lossy(),
        spec.ledger.attempts,
    );
    if kind != EventKind::Claimed {
        e.duration_seconds = Some(round(seconds));
    }
    e
}

pub struct FailureInfo<'a> {
    pub stage: &'a str,
    pub error: &'a str,
    pub seconds: f64,
    pub report: Option<&'a Report>,
    pub report_path: Option<&'a Path>,
    pub tail: Vec<String>,
}

/// File a claimed manifest under `failed/DATE/` with its `error.json`.
pub fn file_failure(
    sp: &Spool,
    claimed: &Claimed,
    job_id: &str,
    job: &str,
    ledger: &LedgerEntry,
    output_dir: Option<&Path>,
    info: &FailureInfo,
) -> Outcome {
    let original = claimed.original.as_os_str();
    let name = original.to_string_lossy().into_owned();
    let dir = sp.failed().join(spool::today());
    let out_dir = output_dir.filter(|d| d.is_dir() && dir_has_entries(d));
    let result = spool::file_with_sidecar(
        &claimed.path,
        &dir,
        original,
        spool::ERROR_SUFFIX,
        &mut |filed: &OsStr| {
            let mut report = info.report.and_then(|r| serde_json::to_value(r).ok());
            if let Some(p) = report
                .as_mut()
                .and_then(|r| r.pointer_mut("/plan/manifest_path"))
            {
                *p = json!(dir.join(filed));
            }
            // One failed stage in the whole file: the embedded report says the same.
            if let Some(Value::Object(r)) = report.as_mut() {
                r.insert("failed_stage".into(), json!(info.stage));
            }
            ErrorReport {
                job_id: Some(job_id.to_string()),
                job: Some(job.to_string()),
                manifest: name.clone(),
                filed_as: Some(dir.join(filed)),
                status: JobStatus::Failed,
                failed_at: now_rfc3339(),
                stage: Stage::from(info.stage.to_string()),
                error: truncate(info.error, 4000),
                attempts: ledger.attempts,
                duration_seconds: round(info.seconds),
                daemon_pid: Some(std::process::id()),
                output_dir: out_dir.map(Path::to_path_buf),
                report_path: info.report_path.map(Path::to_path_buf),
                history: ledger.history.clone(),
                log_tail: info.tail.clone(),
                report,
            }
            .to_json()
        },
    );
    match result {
        Ok(filed) => {
            spool::ledger_remove(sp, &claimed.key);
            log::info!("filed as {} with its error report", rel(sp, &filed));
            Outcome::Failed
        }
        Err(e) => {
            log::error!(
                "cannot file {name} as failed: {e}; it stays in processing/ and is not run again"
            );
            mark_unfileable(sp, claimed, ledger, &e);
            Outcome::Stuck
        }
    }
}

/// Note in the ledger that this job is over but could not be filed, so recovery never
/// re-runs it.
fn mark_unfileable(sp: &Spool, claimed: &Claimed, ledger: &LedgerEntry, e: &std::io::Error) {
    let mut marked = ledger.clone();
    marked.filing_failed = Some(e.to_string());
    spool::ledger_write(sp, &claimed.key, &marked);
}

fn dir_has_entries(d: &Path) -> bool {
    std::fs::read_dir(d)
        .map(|mut r| r.next().is_some())
        .unwrap_or(false)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes more)", &s[..end], s.len() - end)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A path relative to the spool root, for log lines.
pub fn rel(sp: &Spool, p: &Path) -> String {
    p.strip_prefix(&sp.root).unwrap_or(p).display().to_string()
}

//! `h2k-guest daemon`: watch a spool directory and run the fix pipeline for every manifest
//! dropped into it.
//!
//! ```text
//! DIR/to_be_processed/   drop manifests here (.json, .yaml, .yml)
//! DIR/processing/        claimed by a worker (atomic rename, owner holds a flock on it)
//! DIR/processed/DATE/    NAME + NAME.report.json
//! DIR/failed/DATE/       NAME + NAME.error.json (job_id, manifest, failed_at, stage, error, log_tail)
//! OUT/DATE/JOB/          the job's outputs (JOB = the manifest's file name without extension)
//! DIR/.h2k-guest/        daemons/PID.json (state for `workflow status`), daemons/PID.lock,
//!                        jobs/DEV-INO.json (attempt count and output directory of a claim)
//! ```
//! DATE is the UTC date, `YYYY-MM-DD`.
//!
//! **Submitting atomically.** The daemon takes a file when the writer closes it (inotify
//! `IN_CLOSE_WRITE`) or when it is renamed in (`IN_MOVED_TO`); at start-up and on rescans, files
//! nobody has open for writing whose mtime is over a second old. Dotfiles, `*.tmp` and `*.part`
//! are never taken. The safe way to submit is to write the manifest under such a name (or
//! anywhere on the same file system) and `rename(2)` it to `NAME.json`; `h2k-guest workflow
//! submit` does exactly that.
//!
//! **Crash safety.** A worker holds an exclusive `flock` on its manifest from before the claim
//! until it is filed. At start-up and every few seconds the daemon looks for entries of
//! `processing/` whose lock it can take: their daemon died. Such a manifest goes back to
//! `to_be_processed/` (its output directory cleaned of `.part` files and work directories and
//! reused), or to `failed/` once it has been tried `max_attempts` times. Filing writes the
//! report first and then renames the manifest next to it, never replacing anything (`-N`
//! suffixes on collisions).
//!
//! **Stopping.** SIGTERM or SIGINT: no new work. With `on_stop: abort` (default) running jobs
//! are cancelled at their next safe point and re-queued; with `on_stop: finish` they run to the
//! end (a second signal aborts them). Then the daemon exits 0. A third signal exits at once
//! (recovery at the next start puts its jobs back in the queue).
//!
//! **Reloading.** SIGHUP reads the configuration again (flags still win over the file). The
//! output directory, `max_concurrent_jobs`, `on_stop`, `max_attempts` and `max_manifest_bytes`
//! apply to jobs claimed from then on; the spool directory, the log file and the verbosity need
//! a restart. A configuration that does not parse is logged and the running one kept. Under
//! systemd (`Type=notify`) the daemon says READY=1 after its first scan, RELOADING=1 / READY=1
//! around a reload, STOPPING=1 on a stop signal, and WATCHDOG=1 at half of `WatchdogSec`.

mod claim;
mod config;
pub mod job;
mod ledger;
mod notify;
pub mod records;
mod recover;
mod split;
pub mod spool;
pub mod state;
mod watch;

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::logging::JobCtx;
use crate::util::now_rfc3339;
pub use config::{
    read_config_file, resolve, spool_dir, ConfigError, ConfigFile, DaemonConfig, OnStop, Overrides,
    DEFAULT_DIR, DEFAULT_OUTPUT_DIR, DIR_ENV,
};
use job::Shared;
use spool::Spool;
use state::{DaemonState, JobState, Registration};
pub use watch::run;
use watch::Event;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Already names its path (spool creation), or needs none (signals, threads).
    #[error(transparent)]
    Os(#[from] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl DaemonError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
        let what = what.into();
        move |source| DaemonError::Io { what, source }
    }
}

struct Running {
    ctx: Arc<JobCtx>,
    state: JobState,
}

struct Daemon {
    shared: Arc<Shared>,
    reg: Registration,
    started_at: String,
    started_unix: f64,
    tx: mpsc::Sender<Event>,
    running: BTreeMap<String, Running>,
    /// Names announced complete by inotify (closed after writing, or renamed in).
    ready: HashSet<OsString>,
    /// Non-manifest names already warned about.
    warned: HashSet<OsString>,
    /// Inodes in `processing/` that could not be filed: tried once, then left alone.
    unfileable: HashSet<(u64, u64)>,
    stopping: bool,
    signals: u32,
    seq: u64,
    processed: u64,
    failed: u64,
    requeued: u64,
    last_state: Option<DaemonState>,
    last_write: Instant,
    notify: notify::Notifier,
    /// The last STATUS= sent to systemd.
    last_status: String,
    /// `/metrics`, while the daemon runs.
    _metrics_server: Option<crate::metrics::MetricsServer>,
    /// What the textfile last showed (job counts, running) and when it was written.
    textfile_key: Option<(u64, u64, u64, usize)>,
    textfile_written: Instant,
    textfile_error: Option<String>,
}

/// The metrics textfile is rewritten at least this often (the queue depth changes without
/// any job starting or ending).
const TEXTFILE_EVERY: Duration = Duration::from_secs(15);

/// The queue depth of the spool, read when the metrics are rendered.
fn queue_reader(sp: &Spool) -> crate::metrics::QueueReader {
    let sp = sp.clone();
    Box::new(move || {
        vec![
            (
                "to_be_processed".to_string(),
                spool::visible_entries(&sp.to_be_processed()).len() as u64,
            ),
            (
                "processing".to_string(),
                spool::visible_entries(&sp.processing()).len() as u64,
            ),
        ]
    })
}

impl Daemon {
    fn sp(&self) -> &Spool {
        &self.shared.spool
    }

    fn cfg(&self) -> &DaemonConfig {
        &self.shared.cfg
    }

    fn snapshot(&self) -> DaemonState {
        let cfg = self.cfg();
        let jobs = self
            .running
            .values()
            .map(|r| {
                let (stage, since) = r.ctx.stage();
                JobState {
                    stage,
                    stage_started_unix: since,
                    ..r.state.clone()
                }
            })
            .collect();
        DaemonState {
            pid: std::process::id(),
            state: if self.stopping {
                "stopping".into()
            } else {
                "running".into()
            },
            started_at: self.started_at.clone(),
            started_unix: self.started_unix,
            updated_at: String::new(),
            dir: cfg.dir.clone(),
            output_dir: cfg.output_dir.clone(),
            log_file: cfg.log_file.clone(),
            max_concurrent_jobs: cfg.max_concurrent_jobs,
            on_stop: cfg.on_stop.as_str().into(),
            version: crate::version::TOOL.into(),
            jobs,
            processed: self.processed,
            failed: self.failed,
            requeued: self.requeued,
        }
    }

    /// Rewrite the state file when something changed (or every 30 s as a heartbeat).
    fn write_state(&mut self, force: bool) {
        let snap = self.snapshot();
        if !force
            && self.last_state.as_ref() == Some(&snap)
            && self.last_write.elapsed() < Duration::from_secs(30)
        {
            return;
        }
        let mut out = snap.clone();
        out.updated_at = now_rfc3339();
        if let Err(e) = self.reg.write(&out) {
            log::warn!("cannot write the state file: {e}");
        }
        self.last_state = Some(snap);
        self.last_write = Instant::now();
    }
}

impl Daemon {
    /// Keep the running gauge current; rewrite the textfile when a job started or ended, or
    /// every [`TEXTFILE_EVERY`] (`force`: now).
    fn refresh_metrics(&mut self, force: bool) {
        let metrics = Arc::clone(&self.shared.metrics);
        metrics.set_running(self.running.len());
        let Some(path) = self.cfg().metrics_textfile.clone() else {
            return;
        };
        let key = (
            self.processed,
            self.failed,
            self.requeued,
            self.running.len(),
        );
        if !force
            && self.textfile_key == Some(key)
            && self.textfile_written.elapsed() < TEXTFILE_EVERY
        {
            return;
        }
        match crate::metrics::text::write_textfile(&path, &metrics.render_text()) {
            Ok(()) => self.textfile_error = None,
            Err(e) => {
                let msg = e.to_string();
                if self.textfile_error.as_deref() != Some(&msg) {
                    log::warn!("{}: cannot write the metrics: {msg}", path.display());
                }
                self.textfile_error = Some(msg);
            }
        }
        self.textfile_key = Some(key);
        self.textfile_written = Instant::now();
    }

    /// One line for systemd's `STATUS=` (shown by `systemctl status`).
    fn status_line(&self) -> String {
        format!(
            "{} job(s) of {} running; {} processed, {} failed, {} re-queued",
            self.running.len(),
            self.cfg().max_concurrent_jobs,
            self.processed,
            self.failed,
            self.requeued
        )
    }

    /// Tell systemd when the counts changed (the main loop calls this on every turn).
    fn update_status(&mut self) {
        let line = self.status_line();
        if line != self.last_status && !self.stopping {
            self.notify.status(&line);
            self.last_status = line;
        }
    }

    /// SIGHUP: resolve the configuration again; jobs already running keep the one they started with.
    fn reload(&mut self) {
        self.notify.reloading();
        let overrides = self.cfg().overrides.clone();
        let source = match &overrides.config {
            Some(p) => p.display().to_string(),
            None => "the command line (no --config)".into(),
        };
        match resolve(&overrides) {
            Err(e) => log::error!("SIGHUP: {e}; keeping the running configuration"),
            Ok((new, warnings)) => {
                for w in &warnings {
                    log::warn!("{w}");
                }
                let (mut new, changes, restart) = merge_reloaded(self.cfg(), new);
                if new.webhooks != self.cfg().webhooks {
                    // Jobs still running send their later events to the new receivers too.
                    if let Err(e) = self.shared.webhooks.replace(&new.webhooks) {
                        log::error!("SIGHUP: cannot start the new webhook senders: {e}; keeping the old ones");
                        new.webhooks = self.cfg().webhooks.clone();
                    }
                }
                log::info!(
                    "SIGHUP: configuration reloaded from {source}: {}",
                    if changes.is_empty() {
                        "nothing changed".to_string()
                    } else {
                        changes.join(", ")
                    }
                );
                if !restart.is_empty() {
                    log::warn!(
                        "SIGHUP: a restart is needed to change {}",
                        restart.join(", ")
                    );
                }
                if let Err(e) = std::fs::create_dir_all(&new.output_dir) {
                    log::error!("{}: cannot create the output directory: {e}; keeping the running configuration", new.output_dir.display());
                } else {
                    self.shared = Arc::new(Shared {
                        spool: self.shared.spool.clone(),
                        cfg: new,
                        cancel: Arc::clone(&self.shared.cancel),
                        webhooks: Arc::clone(&self.shared.webhooks),
                        metrics: Arc::clone(&self.shared.metrics),
                    });
                }
            }
        }
        self.last_status = self.status_line();
        self.notify.ready(&self.last_status);
    }
}

/// The reloaded configuration with what cannot change while running kept as it was; also
/// what changed (`key old → new`) and what needs a restart.
fn merge_reloaded(
    old: &DaemonConfig,
    mut new: DaemonConfig,
) -> (DaemonConfig, Vec<String>, Vec<String>) {
    let mut changes = Vec::new();
    let mut note = |key: &str, a: String, b: String| {
        if a != b {
            changes.push(format!("{key} {a} → {b}"));
        }
    };
    note(
        "output_dir",
        old.output_dir.display().to_string(),
        new.output_dir.display().to_string(),
    );
    note(
        "max_concurrent_jobs",
        old.max_concurrent_jobs.to_string(),
        new.max_concurrent_jobs.to_string(),
    );
    note(
        "on_stop",
        old.on_stop.as_str().into(),
        new.on_stop.as_str().into(),
    );
    note(
        "max_attempts",
        old.max_attempts.to_string(),
        new.max_attempts.to_string(),
    );
    note(
        "max_manifest_bytes",
        old.max_manifest_bytes.to_string(),
        new.max_manifest_bytes.to_string(),
    );
    if new.webhooks != old.webhooks {
        let shown = |w: &[crate::webhook::WebhookTarget]| {
            let urls: Vec<String> = w
                .iter()
                .map(|t| {
                    let signed = if t.is_signed() { " (signed)" } else { "" };
                    format!("{}{signed}", crate::webhook::redact(&t.url))
                })
                .collect();
            format!("[{}]", urls.join(", "))
        };
        changes.push(format!(
            "webhooks {} → {}",
            shown(&old.webhooks),
            shown(&new.webhooks)
        ));
    }
    let mut restart = Vec::new();
    if new.dir != old.dir {
        restart.push(format!(
            "manifest_workflow_dir (still {})",
            old.dir.display()
        ));
        new.dir = old.dir.clone();
    }
    if new.log_file != old.log_file {
        restart.push("log_file".to_string());
        new.log_file = old.log_file.clone();
    }
    if new.metrics_listen != old.metrics_listen {
        restart.push("metrics_listen".to_string());
        new.metrics_listen = old.metrics_listen.clone();
    }
    if new.metrics_textfile != old.metrics_textfile {
        restart.push("metrics_textfile".to_string());
        new.metrics_textfile = old.metrics_textfile.clone();
    }
    if new.verbose != old.verbose {
        restart.push("verbose".to_string());
        new.verbose = old.verbose;
        new.appliance.verbose = old.appliance.verbose;
    }
    (new, changes, restart)
}

/// The job name of a manifest: its file name without the extension, file-name safe.
pub fn job_name(manifest: &OsStr) -> String {
    let s = manifest.to_string_lossy();
    let stem = match s.rfind('.') {
        Some(i) if i > 0 => &s[..i],
        _ => &s[..],
    };
    crate::plan::sanitize_job_name(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_come_from_the_file_name() {
        assert_eq!(
            job_name(OsStr::new("photon-1769251638.json")),
            "photon-1769251638"
        );
        assert_eq!(job_name(OsStr::new("my vm.yaml")), "my_vm");
        assert_eq!(job_name(OsStr::new("junkdir")), "junkdir");
    }

    #[test]
    fn a_reload_changes_the_job_settings_and_keeps_the_spool() {
        let old = DaemonConfig::new("/spool".into(), "/out".into());
        let mut new = DaemonConfig::new("/elsewhere".into(), "/out2".into());
        new.max_concurrent_jobs = 3;
        new.verbose = 2;
        let (merged, changes, restart) = merge_reloaded(&old, new);
        assert_eq!(merged.dir, std::path::PathBuf::from("/spool"));
        assert_eq!(merged.output_dir, std::path::PathBuf::from("/out2"));
        assert_eq!((merged.max_concurrent_jobs, merged.verbose), (3, 1));
        assert_eq!(
            changes,
            ["output_dir /out → /out2", "max_concurrent_jobs 1 → 3"]
        );
        assert_eq!(restart, ["manifest_workflow_dir (still /spool)", "verbose"]);
    }

    #[test]
    fn the_metrics_endpoint_and_textfile_need_a_restart() {
        let old = DaemonConfig::new("/spool".into(), "/out".into());
        let mut new = old.clone();
        new.metrics_listen =
            Some(crate::metrics::parse_listen("metrics_listen", "127.0.0.1:9464").unwrap());
        new.metrics_textfile = Some("/m/h2k.prom".into());
        let (merged, changes, restart) = merge_reloaded(&old, new);
        assert_eq!(
            (merged.metrics_listen, merged.metrics_textfile),
            (None, None)
        );
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(restart, ["metrics_listen", "metrics_textfile"]);
    }

    #[test]
    fn a_reload_names_the_webhooks_it_changes_without_their_passwords() {
        let old = DaemonConfig::new("/spool".into(), "/out".into());
        let mut new = old.clone();
        new.webhooks = vec![crate::webhook::WebhookTarget::new(
            "webhooks[0].url",
            "https://ops:hunter2@hooks.example/h2k",
            None,
        )
        .unwrap()];
        let (merged, changes, restart) = merge_reloaded(&old, new.clone());
        assert_eq!(merged.webhooks, new.webhooks);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            changes[0].starts_with("webhooks [] → [https://"),
            "{changes:?}"
        );
        assert!(!changes[0].contains("hunter2"), "{changes:?}");
        assert!(restart.is_empty(), "{restart:?}");
    }
}

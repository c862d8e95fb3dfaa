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

pub mod job;
pub mod spool;
pub mod state;

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use inotify::{EventMask, Inotify, WatchMask};
use serde::Deserialize;
use serde_json::json;

use crate::accel::AccelChoice;
use crate::appliance::ApplianceOptions;
use crate::logging::JobCtx;
use crate::util::now_rfc3339;
use job::{JobSpec, Outcome, Shared};
use spool::{Claim, EntryKind, LedgerEntry, Spool};
use state::{DaemonState, JobState, Registration};

/// Where `daemon` and `workflow` look when neither `--dir` nor a config file says.
pub const DEFAULT_DIR: &str = "/var/lib/h2k-guest/workflow";
pub const DEFAULT_OUTPUT_DIR: &str = "/var/lib/h2k-guest/output";
/// Environment variable naming the spool directory (for `daemon` and `workflow`).
pub const DIR_ENV: &str = "H2K_WORKFLOW_DIR";

/// What a stop signal does to running jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// Cancel them at their next safe point and put their manifests back in the queue.
    Abort,
    /// Let them finish.
    Finish,
}

impl std::str::FromStr for OnStop {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "abort" => Ok(OnStop::Abort),
            "finish" => Ok(OnStop::Finish),
            other => Err(format!(
                "unknown on_stop {other:?} (expected abort or finish)"
            )),
        }
    }
}

impl OnStop {
    pub fn as_str(self) -> &'static str {
        match self {
            OnStop::Abort => "abort",
            OnStop::Finish => "finish",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The spool directory (`manifest_workflow_dir`).
    pub dir: PathBuf,
    pub output_dir: PathBuf,
    pub max_concurrent_jobs: usize,
    pub log_file: Option<PathBuf>,
    /// 0 = warnings, 1 = info, 2 = debug, 3 = trace (and the appliance's console).
    pub verbose: u8,
    pub on_stop: OnStop,
    /// Claims of one manifest (daemon deaths included) before it is filed as failed.
    pub max_attempts: u32,
    /// Larger files are filed as failed without being parsed.
    pub max_manifest_bytes: u64,
    pub appliance: ApplianceOptions,
    /// A file no event announced is taken once its mtime is this old (and nobody writes it).
    pub settle: Duration,
    /// Rescan `to_be_processed/` this often (inotify does the real work; this is the net).
    pub rescan: Duration,
    /// Look for orphans in `processing/` this often.
    pub recover: Duration,
}

impl DaemonConfig {
    pub fn new(dir: PathBuf, output_dir: PathBuf) -> DaemonConfig {
        DaemonConfig {
            dir,
            output_dir,
            max_concurrent_jobs: 1,
            log_file: None,
            verbose: 1,
            on_stop: OnStop::Abort,
            max_attempts: 3,
            max_manifest_bytes: crate::manifest::MAX_MANIFEST_BYTES as u64,
            appliance: ApplianceOptions::default(),
            settle: Duration::from_secs(1),
            rescan: Duration::from_secs(2),
            recover: Duration::from_secs(5),
        }
    }
}

/// The daemon's YAML configuration: the seed's keys, plus a few of ours.
#[derive(Debug, Default, Deserialize)]
pub struct ConfigFile {
    pub command: Option<String>,
    pub daemon: Option<bool>,
    pub manifest_workflow_mode: Option<bool>,
    pub manifest_workflow_dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub max_concurrent_jobs: Option<usize>,
    pub log_file: Option<PathBuf>,
    pub verbose: Option<u8>,
    pub on_stop: Option<String>,
    pub max_attempts: Option<u32>,
    pub max_manifest_bytes: Option<u64>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// Read a config file; paths in it are relative to its directory. Returns warnings for
/// unknown keys.
pub fn read_config_file(path: &Path) -> Result<(ConfigFile, Vec<String>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut cfg: ConfigFile = if text.trim().is_empty() {
        ConfigFile::default()
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = std::path::absolute(&base).unwrap_or(base);
    for p in [
        &mut cfg.manifest_workflow_dir,
        &mut cfg.output_dir,
        &mut cfg.log_file,
    ]
    .into_iter()
    .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    let mut warnings = Vec::new();
    for k in cfg.other.keys() {
        warnings.push(format!("{}: unknown key {k:?} ignored", path.display()));
    }
    if let Some(c) = &cfg.command {
        if c != "daemon" {
            return Err(format!("{}: command: {c:?}: this file configures `h2k-guest daemon` (expected command: daemon)", path.display()));
        }
    }
    if cfg.manifest_workflow_mode == Some(false) {
        return Err(format!(
            "{}: manifest_workflow_mode: false is not supported: the daemon only runs the manifest workflow",
            path.display()
        ));
    }
    Ok((cfg, warnings))
}

/// Command-line values; `None` = not given (the config file or the default applies).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub jobs: Option<usize>,
    pub log_file: Option<PathBuf>,
    /// `-v` count (0 = not given).
    pub verbose: u8,
    pub on_stop: Option<OnStop>,
    pub max_attempts: Option<u32>,
    pub accel: AccelChoice,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Flags over the config file over the defaults.
pub fn resolve(o: &Overrides) -> Result<(DaemonConfig, Vec<String>), String> {
    let (file, warnings) = match &o.config {
        Some(p) => read_config_file(p)?,
        None => (ConfigFile::default(), Vec::new()),
    };
    let dir = o
        .dir
        .as_deref()
        .map(absolute)
        .or(file.manifest_workflow_dir.clone())
        .or_else(dir_from_env)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    let output_dir = o
        .output_dir
        .as_deref()
        .map(absolute)
        .or(file.output_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_OUTPUT_DIR));
    let mut cfg = DaemonConfig::new(dir, output_dir);
    cfg.max_concurrent_jobs = o.jobs.or(file.max_concurrent_jobs).unwrap_or(1);
    if cfg.max_concurrent_jobs == 0 {
        return Err("max_concurrent_jobs must be at least 1".into());
    }
    cfg.log_file = o
        .log_file
        .as_deref()
        .map(absolute)
        .or(file.log_file.clone());
    cfg.verbose = if o.verbose > 0 {
        o.verbose
    } else {
        file.verbose.unwrap_or(1)
    };
    cfg.on_stop = match (o.on_stop, &file.on_stop) {
        (Some(s), _) => s,
        (None, Some(s)) => s.parse().map_err(|e| format!("on_stop: {e}"))?,
        (None, None) => OnStop::Abort,
    };
    cfg.max_attempts = o.max_attempts.or(file.max_attempts).unwrap_or(3);
    if cfg.max_attempts == 0 {
        return Err("max_attempts must be at least 1".into());
    }
    if let Some(b) = file.max_manifest_bytes {
        cfg.max_manifest_bytes = b;
    }
    cfg.appliance.accel = o.accel;
    cfg.appliance.verbose = cfg.verbose >= 3;
    Ok((cfg, warnings))
}

fn dir_from_env() -> Option<PathBuf> {
    std::env::var_os(DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(|v| absolute(Path::new(&v)))
}

/// The spool directory a `workflow` command works on: `--dir`, else the config file's
/// `manifest_workflow_dir`, else `$H2K_WORKFLOW_DIR`, else the default.
pub fn spool_dir(dir: Option<&Path>, config: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(d) = dir {
        return Ok(absolute(d));
    }
    if let Some(c) = config {
        let (file, _) = read_config_file(c)?;
        if let Some(d) = file.manifest_workflow_dir {
            return Ok(d);
        }
    }
    Ok(dir_from_env().unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)))
}

enum Event {
    Signal(i32),
    Done {
        job_id: String,
        outcome: Outcome,
    },
    /// inotify events on `to_be_processed/` (mask, name).
    Fs(Vec<(EventMask, Option<OsString>)>),
    FsError(String),
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
}

/// Run the daemon until a stop signal; returns once running jobs are finished or aborted.
pub fn run(cfg: DaemonConfig, warnings: Vec<String>) -> anyhow::Result<()> {
    crate::logging::init_daemon(cfg.verbose, cfg.log_file.as_deref()).with_context(
        || match &cfg.log_file {
            Some(p) => format!("{}: cannot open the log file", p.display()),
            None => "cannot set up logging".into(),
        },
    )?;
    for w in &warnings {
        log::warn!("{w}");
    }
    let sp = Spool::new(&cfg.dir);
    sp.create()?;
    std::fs::create_dir_all(&cfg.output_dir).with_context(|| {
        format!(
            "{}: cannot create the output directory",
            cfg.output_dir.display()
        )
    })?;
    let reg = Registration::register(&sp)
        .with_context(|| format!("{}: cannot register the daemon", sp.daemons_dir().display()))?;

    // Everything the main loop waits for arrives on one channel: signals, inotify events
    // (each from a thread of its own) and finished jobs.
    let (tx, rx) = mpsc::channel::<Event>();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    let sig_handle = signals.handle();
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if tx.send(Event::Signal(sig)).is_err() {
                        break;
                    }
                }
            })?;
    }

    let mut inotify = Inotify::init().context("inotify")?;
    let mask = WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF;
    let mut watches = inotify.watches();
    watches
        .add(sp.to_be_processed(), mask)
        .with_context(|| format!("{}: cannot watch", sp.to_be_processed().display()))?;
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("inotify".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let ev = match inotify.read_events_blocking(&mut buf) {
                        Ok(evs) => Event::Fs(
                            evs.map(|e| (e.mask, e.name.map(OsStr::to_os_string)))
                                .collect(),
                        ),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => Event::FsError(e.to_string()),
                    };
                    let fatal = matches!(ev, Event::FsError(_));
                    if tx.send(ev).is_err() || fatal {
                        break;
                    }
                }
            })?;
    }
    log::info!(
        "file system observer started on {}",
        sp.to_be_processed().display()
    );

    let cancel = Arc::new(AtomicBool::new(false));
    let mut d = Daemon {
        shared: Arc::new(Shared {
            spool: sp.clone(),
            cfg: cfg.clone(),
            cancel,
        }),
        reg,
        started_at: now_rfc3339(),
        started_unix: crate::util::unix_now(),
        tx,
        running: BTreeMap::new(),
        ready: HashSet::new(),
        warned: HashSet::new(),
        unfileable: HashSet::new(),
        stopping: false,
        signals: 0,
        seq: 0,
        processed: 0,
        failed: 0,
        requeued: 0,
        last_state: None,
        last_write: Instant::now(),
    };
    d.write_state(true);
    d.recover();
    log::info!("scanning for existing manifests");
    d.scan();
    log::info!(
        "manifest workflow daemon ready: pid {}, spool {}, outputs {}, {} job{} at once, on stop: {}, max attempts {}",
        std::process::id(),
        cfg.dir.display(),
        cfg.output_dir.display(),
        cfg.max_concurrent_jobs,
        if cfg.max_concurrent_jobs == 1 { "" } else { "s" },
        cfg.on_stop.as_str(),
        cfg.max_attempts
    );

    let mut next_rescan = Instant::now() + cfg.rescan;
    let mut next_recover = Instant::now() + cfg.recover;
    let mut watch_lost = false;
    let mut first = rx.recv_timeout(Duration::from_millis(0)).ok();
    loop {
        let mut dirty = false;
        while let Some(ev) = first.take().or_else(|| rx.try_recv().ok()) {
            match ev {
                Event::Signal(sig) => d.on_signal(sig),
                Event::Done { job_id, outcome } => {
                    d.running.remove(&job_id);
                    match outcome {
                        Outcome::Processed => d.processed += 1,
                        Outcome::Failed => d.failed += 1,
                        Outcome::Requeued => d.requeued += 1,
                        Outcome::Stuck => {}
                    }
                    dirty = true;
                }
                Event::FsError(e) => log::error!(
                    "inotify: {e}; relying on rescans every {} s",
                    cfg.rescan.as_secs()
                ),
                Event::Fs(events) => {
                    for (mask, name) in events {
                        dirty |= d.on_fs_event(mask, name, &mut watch_lost);
                    }
                }
            }
        }
        if watch_lost {
            log::warn!(
                "{} went away; re-creating the spool directories",
                sp.to_be_processed().display()
            );
            if let Err(e) = sp.create() {
                log::error!("{e}");
            }
            match watches.add(sp.to_be_processed(), mask) {
                Ok(_) => watch_lost = false,
                Err(e) => log::error!("{}: cannot watch: {e}", sp.to_be_processed().display()),
            }
            dirty = true;
        }
        let now = Instant::now();
        if now >= next_recover {
            d.recover();
            next_recover = now + cfg.recover;
        }
        if dirty || now >= next_rescan {
            d.scan();
            next_rescan = Instant::now() + cfg.rescan;
        }
        d.write_state(false);
        if d.stopping && d.running.is_empty() {
            break;
        }
        let timeout = if d.running.is_empty() { 500 } else { 250 };
        first = match rx.recv_timeout(Duration::from_millis(timeout)) {
            Ok(ev) => Some(ev),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
    }
    sig_handle.close();
    log::info!(
        "daemon stopped: {} processed, {} failed, {} re-queued since {}",
        d.processed,
        d.failed,
        d.requeued,
        d.started_at
    );
    drop(d);
    Ok(())
}

impl Daemon {
    fn sp(&self) -> &Spool {
        &self.shared.spool
    }

    fn cfg(&self) -> &DaemonConfig {
        &self.shared.cfg
    }

    fn on_signal(&mut self, sig: i32) {
        let name = match sig {
            signal_hook::consts::SIGTERM => "SIGTERM",
            signal_hook::consts::SIGINT => "SIGINT",
            signal_hook::consts::SIGHUP => "SIGHUP",
            _ => "signal",
        };
        if sig == signal_hook::consts::SIGHUP {
            log::info!("SIGHUP: rescanning (the configuration is read at start-up only)");
            return;
        }
        self.signals += 1;
        let n = self.running.len();
        match self.signals {
            1 => {
                self.stopping = true;
                if self.cfg().on_stop == OnStop::Abort {
                    self.shared.cancel.store(true, Ordering::SeqCst);
                    log::info!("{name}: stopping; taking no new work; aborting {n} running job(s) (they go back to the queue)");
                } else {
                    log::info!("{name}: stopping; taking no new work; letting {n} running job(s) finish (signal again to abort them)");
                }
            }
            2 => {
                self.shared.cancel.store(true, Ordering::SeqCst);
                log::warn!(
                    "{name} again: aborting {n} running job(s); a third signal exits at once"
                );
            }
            _ => {
                log::error!("{name} a third time: exiting now; {n} job(s) left in processing/ are re-queued by the next start");
                std::process::exit(130);
            }
        }
    }

    /// Note an inotify event; true when `to_be_processed/` should be looked at now.
    fn on_fs_event(
        &mut self,
        mask: EventMask,
        name: Option<OsString>,
        watch_lost: &mut bool,
    ) -> bool {
        if mask.contains(EventMask::Q_OVERFLOW) {
            log::warn!("inotify queue overflowed; rescanning");
            return true;
        }
        if mask.intersects(EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
            *watch_lost = true;
            return true;
        }
        let Some(name) = name else { return false };
        if mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO) {
            self.ready.insert(name);
            true
        } else if mask.intersects(EventMask::CREATE | EventMask::MODIFY) {
            // Being written (or a directory / link dropped in): not complete yet.
            self.ready.remove(&name);
            mask.contains(EventMask::CREATE)
        } else if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            self.ready.remove(&name);
            false
        } else {
            mask.contains(EventMask::ATTRIB)
        }
    }

    /// Look at `to_be_processed/`: file junk, claim what is complete while slots are free.
    fn scan(&mut self) {
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
    fn file_junk(&mut self, name: &OsStr, reason: &str) {
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
                let v = json!({
                    "job_id": job_id,
                    "job": job_name(name),
                    "manifest": shown,
                    "filed_as": dir.join(filed),
                    "status": "failed",
                    "failed_at": now_rfc3339(),
                    "stage": "claim",
                    "error": error,
                    "attempts": 0,
                    "duration_seconds": 0.0,
                    "daemon_pid": std::process::id(),
                    "log_tail": Vec::<String>::new(),
                });
                serde_json::to_vec_pretty(&v).unwrap_or_default()
            },
        );
        match result {
            Ok(p) => {
                self.failed += 1;
                log::warn!(target: &format!("{}/claim", job_name(name)), "rejected {error}; filed as {}", job::rel(&sp, &p));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // someone else filed it
            Err(e) => log::error!("{}: cannot file as failed: {e}", src.display()),
        }
    }

    fn next_job_id(&mut self, job: &str) -> String {
        self.seq += 1;
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let stamp = time::OffsetDateTime::now_utc()
            .format(&fmt)
            .unwrap_or_default();
        format!("{job}.{stamp}.{}.{}", std::process::id(), self.seq)
    }

    /// Start a worker for a claimed manifest.
    fn start(&mut self, claimed: spool::Claimed) {
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
                spool::make_job_dir(&self.cfg().output_dir, &spool::today(), &job)
                    .map_err(|e| e.to_string()),
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

    /// Entries of `processing/` nobody owns any more: re-queue, or fail after max_attempts.
    fn recover(&mut self) {
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
                    &mut |_| {
                        serde_json::to_vec_pretty(&json!({
                        "manifest": shown, "status": "failed", "failed_at": now_rfc3339(), "stage": "recover",
                        "error": format!("{shown}: found in processing/ and not a regular file"), "log_tail": Vec::<String>::new(),
                    }))
                    .unwrap_or_default()
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
                    Outcome::Failed => self.failed += 1,
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
    fn the_seed_config_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("daemon.yaml");
        std::fs::write(
            &p,
            "command: daemon\ndaemon: true\nmanifest_workflow_mode: true\nmanifest_workflow_dir: spool\noutput_dir: /o\nmax_concurrent_jobs: 2\nlog_file: d.log\nverbose: 2\nwebhook: x\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(p.clone()),
            ..Overrides::default()
        };
        let (cfg, warnings) = resolve(&o).unwrap();
        assert_eq!(cfg.dir, d.path().join("spool"));
        assert_eq!(cfg.output_dir, PathBuf::from("/o"));
        assert_eq!(cfg.max_concurrent_jobs, 2);
        assert_eq!(cfg.log_file, Some(d.path().join("d.log")));
        assert_eq!(cfg.verbose, 2);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("webhook"));
        // Flags win over the file.
        let o = Overrides {
            config: Some(p),
            jobs: Some(3),
            dir: Some("/s".into()),
            ..Overrides::default()
        };
        let (cfg, _) = resolve(&o).unwrap();
        assert_eq!((cfg.max_concurrent_jobs, cfg.dir), (3, PathBuf::from("/s")));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.yaml");
        std::fs::write(&p, "max_concurrent_jobs: many\n").unwrap();
        let e = read_config_file(&p).unwrap_err();
        assert!(e.contains("max_concurrent_jobs"), "{e}");
        std::fs::write(&p, "command: convert\n").unwrap();
        assert!(read_config_file(&p).unwrap_err().contains("command"));
        std::fs::write(&p, "max_concurrent_jobs: 0\n").unwrap();
        let o = Overrides {
            config: Some(p),
            ..Overrides::default()
        };
        assert!(resolve(&o).unwrap_err().contains("max_concurrent_jobs"));
    }
}

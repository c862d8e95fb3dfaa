//! The event loop: signals, inotify events on `to_be_processed/` and finished jobs all arrive
//! on one channel; timers drive rescans and recovery.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchMask};

use super::job::{Outcome, Shared};
use super::spool::Spool;
use super::state::Registration;
use super::{Daemon, DaemonConfig, DaemonError, OnStop};
use crate::util::now_rfc3339;

pub(super) enum Event {
    Signal(i32),
    Done {
        job_id: String,
        outcome: Outcome,
    },
    /// inotify events on `to_be_processed/` (mask, name).
    Fs(Vec<(EventMask, Option<OsString>)>),
    FsError(String),
}

/// Run the daemon until a stop signal; returns once running jobs are finished or aborted.
pub fn run(cfg: DaemonConfig, warnings: Vec<String>) -> Result<(), DaemonError> {
    crate::logging::init_daemon(cfg.verbose, cfg.log_file.as_deref()).map_err(DaemonError::io(
        match &cfg.log_file {
            Some(p) => format!("{}: cannot open the log file", p.display()),
            None => "cannot set up logging".into(),
        },
    ))?;
    for w in &warnings {
        log::warn!("{w}");
    }
    let sp = Spool::new(&cfg.dir);
    let metrics = Arc::new(crate::metrics::Metrics::new(
        crate::metrics::Scope::Daemon {
            queue: super::queue_reader(&sp),
        },
    ));
    // Bound first: a port in use stops the start before anything is written.
    let metrics_server = match &cfg.metrics_listen {
        Some(spec) => Some(crate::metrics::MetricsServer::start(
            spec,
            Arc::clone(&metrics),
        )?),
        None => None,
    };
    sp.create()?;
    std::fs::create_dir_all(&cfg.output_dir).map_err(DaemonError::io(format!(
        "{}: cannot create the output directory",
        cfg.output_dir.display()
    )))?;
    let reg = Registration::register(&sp).map_err(DaemonError::io(format!(
        "{}: cannot register the daemon",
        sp.daemons_dir().display()
    )))?;

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

    let mut inotify = Inotify::init().map_err(DaemonError::io("inotify"))?;
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
        .map_err(DaemonError::io(format!(
            "{}: cannot watch",
            sp.to_be_processed().display()
        )))?;
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
            webhooks: Arc::new(crate::webhook::Notifier::start(&cfg.webhooks)?),
            metrics,
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
        notify: super::notify::Notifier::from_env(),
        last_status: String::new(),
        _metrics_server: metrics_server,
        textfile_key: None,
        textfile_written: Instant::now(),
        textfile_error: None,
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
    d.last_status = d.status_line();
    d.notify.ready(&d.last_status);

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
                        Outcome::Stuck | Outcome::Split => {}
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
        d.refresh_metrics(false);
        d.update_status();
        d.notify.keep_alive();
        if d.stopping && d.running.is_empty() {
            break;
        }
        let timeout = Duration::from_millis(if d.running.is_empty() { 500 } else { 250 });
        let timeout = d.notify.ping_interval().map_or(timeout, |p| timeout.min(p));
        first = match rx.recv_timeout(timeout) {
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
    d.shared.webhooks.finish(crate::webhook::WEBHOOK_GRACE);
    d.refresh_metrics(true);
    drop(d);
    Ok(())
}

impl Daemon {
    pub(super) fn on_signal(&mut self, sig: i32) {
        let name = match sig {
            signal_hook::consts::SIGTERM => "SIGTERM",
            signal_hook::consts::SIGINT => "SIGINT",
            signal_hook::consts::SIGHUP => "SIGHUP",
            _ => "signal",
        };
        if sig == signal_hook::consts::SIGHUP {
            if !self.stopping {
                self.reload();
            }
            return;
        }
        self.signals += 1;
        let n = self.running.len();
        match self.signals {
            1 => {
                self.stopping = true;
                self.notify
                    .stopping(&format!("{name}: stopping, {n} job(s) running"));
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
    pub(super) fn on_fs_event(
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
}

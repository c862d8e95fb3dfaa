//! `h2k-guest workflow watch`: a live view of a spool (the seed's `hyperctl workflow -op
//! watch`): queue depth and running jobs with their stage and elapsed time. On a terminal the
//! view is redrawn every second; otherwise one plain line is printed per change (elapsed
//! times alone are not a change), for logs and scripts. `--once` prints one snapshot.
//!
//! The spool is polled every second: the view reads the daemon's state file and the spool's
//! directories, which is cheap, and polling also sees a spool on a file system without inotify.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::spool::Spool;
use crate::workflow::{self, human_duration, Status, WorkflowError};

/// `workflow watch` flags (the spool flags are those of the other `workflow` commands).
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Spool directory [default: the config's manifest_workflow_dir, else $H2K_WORKFLOW_DIR,
    /// else /var/lib/h2k-guest/workflow].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Take the spool directory from the daemon's configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one snapshot and exit.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Config(#[from] crate::daemon::ConfigError),
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
    #[error("stdout: {0}")]
    Stdout(#[from] std::io::Error),
}

/// One snapshot: (what changed is compared on `key`, the line shown).
pub fn snapshot_line(st: &Status) -> (String, String) {
    let q = &st.queue;
    let mut key = format!(
        "queue: {} to be processed, {} processing, {} processed today, {} failed today",
        q.to_be_processed, q.processing, q.processed_today, q.failed_today
    );
    let mut line = key.clone();
    let jobs: Vec<_> = st.daemons.iter().flat_map(|d| d.jobs.iter()).collect();
    if st.daemons.is_empty() {
        key += "; no daemon running";
        line += "; no daemon running";
    }
    for j in jobs {
        key += &format!("; job {} stage {}", j.job, j.stage);
        line += &format!(
            "; job {} stage {} ({}), running {}",
            j.job,
            j.stage,
            human_duration(j.stage_elapsed_seconds),
            human_duration(j.elapsed_seconds)
        );
    }
    (key, crate::logging::escape_controls(&line).into_owned())
}

/// Run the view until SIGINT/SIGTERM, then exit 128 + the signal like the other commands.
pub fn run(args: &WatchArgs) -> Result<(), WatchError> {
    let dir = crate::daemon::spool_dir(args.dir.as_deref(), args.config.as_deref())?;
    let sp = Spool::new(&dir);
    let mut out = std::io::stdout().lock();
    if args.once {
        let (_, line) = snapshot_line(&workflow::status(&sp)?);
        writeln!(out, "{line}")?;
        return Ok(());
    }
    let stop = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_usize(sig, Arc::clone(&stop), sig as usize)
            .map_err(WatchError::Signals)?;
    }
    let tty = std::io::stdout().is_terminal();
    let mut last_key = None;
    loop {
        let (key, line) = snapshot_line(&workflow::status(&sp)?);
        if tty {
            // Clear the screen and home the cursor: the view is redrawn in place.
            write!(out, "\x1b[H\x1b[2J{}\n{line}\n", sp.root.display())?;
            out.flush()?;
        } else if last_key.as_ref() != Some(&key) {
            writeln!(out, "{} {line}", crate::util::now_rfc3339())?;
            out.flush()?;
        }
        last_key = Some(key);
        for _ in 0..10 {
            let sig = stop.load(Ordering::SeqCst);
            if sig != 0 {
                std::process::exit(128 + sig as i32);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

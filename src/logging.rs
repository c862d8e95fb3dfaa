//! Log lines for people and for log collectors: `TIME LEVEL [scope] message`, to stderr and,
//! for the daemon, also to a log file. For a daemon running several jobs at once:
//!
//! - every line logged on a worker thread is scoped `[job/stage]`, including the pipeline's own
//!   lines (the worker installs a [`JobCtx`] for its thread);
//! - the current stage is followed from the pipeline's `stage NAME: start` lines, for
//!   `workflow status`;
//! - the last lines of each job are kept for its `error.json` (`log_tail`), whatever the
//!   verbosity.
//!
//! When stderr is the journal's stream (`$JOURNAL_STREAM` names its device and inode, as
//! systemd sets it for `StandardError=journal`), lines on stderr carry a `<N>` syslog priority
//! prefix and no timestamp (journald records both); the log file keeps the full format.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Lines kept per job for its error report.
const TAIL_LINES: usize = 60;

/// What the logger knows about the job running on the current thread.
pub struct JobCtx {
    pub job: String,
    inner: Mutex<CtxInner>,
}

struct CtxInner {
    stage: String,
    stage_since: f64,
    tail: VecDeque<String>,
}

impl JobCtx {
    pub fn new(job: &str) -> Arc<JobCtx> {
        Arc::new(JobCtx {
            job: job.to_string(),
            inner: Mutex::new(CtxInner {
                stage: "claim".into(),
                stage_since: crate::util::unix_now(),
                tail: VecDeque::new(),
            }),
        })
    }

    pub fn set_stage(&self, stage: &str) {
        if let Ok(mut i) = self.inner.lock() {
            if i.stage != stage {
                i.stage = stage.to_string();
                i.stage_since = crate::util::unix_now();
            }
        }
    }

    /// (stage, since when in unix seconds)
    pub fn stage(&self) -> (String, f64) {
        self.inner
            .lock()
            .map(|i| (i.stage.clone(), i.stage_since))
            .unwrap_or_default()
    }

    pub fn tail(&self) -> Vec<String> {
        self.inner
            .lock()
            .map(|i| i.tail.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Add a line to the job's tail (lines logged for it on another thread).
    pub fn push(&self, line: &str) {
        if let Ok(mut i) = self.inner.lock() {
            if i.tail.len() == TAIL_LINES {
                i.tail.pop_front();
            }
            i.tail.push_back(line.trim_end().to_string());
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<JobCtx>>> = const { RefCell::new(None) };
}

/// Scope this thread's log lines to a job until the guard is dropped.
pub fn enter(ctx: Arc<JobCtx>) -> CtxGuard {
    CURRENT.with(|c| *c.borrow_mut() = Some(ctx));
    CtxGuard
}

pub struct CtxGuard;

impl Drop for CtxGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

struct Logger {
    print: LevelFilter,
    file: Option<Mutex<File>>,
    /// Scope of lines logged outside a job ("daemon"); None prints no scope (the CLI).
    outside_jobs: Option<&'static str>,
    /// stderr goes to journald: `<N>` priority prefix, no timestamp.
    journal: bool,
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Is `$JOURNAL_STREAM` (`DEVICE:INODE`) our stderr? A child that inherited the variable but
/// not the stream (stderr redirected) must keep the plain format.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var("JOURNAL_STREAM").ok() else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    journal_stream_matches(&v, st.st_dev, st.st_ino)
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// `stage NAME: start`, as [`crate::report::Report::stage`] logs it.
fn stage_start(target: &str, msg: &str) -> Option<String> {
    if !target.starts_with("h2k_guest") {
        return None;
    }
    let rest = msg.strip_prefix("stage ")?.strip_suffix(": start")?;
    (!rest.is_empty() && !rest.contains(' ')).then(|| rest.to_string())
}

/// Control characters as visible escapes (`\n`, `\r`, `\t`, `\u{1b}`), so that untrusted text
/// logged in a field can never split or rewrite a log line.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.print.max(LevelFilter::Info)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        let ctx = CURRENT.with(|c| c.borrow().clone());
        if let (Some(ctx), Some(stage)) = (&ctx, stage_start(record.target(), &msg)) {
            ctx.set_stage(&stage);
        }
        let ts = crate::util::now_rfc3339();
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let scope = match (&ctx, self.outside_jobs) {
            (Some(c), _) => format!("[{}/{}] ", c.job, c.stage().0),
            (None, _) if !record.target().starts_with("h2k_guest") => {
                format!("[{}] ", record.target())
            }
            (None, Some(s)) => format!("[{s}] "),
            (None, None) => String::new(),
        };
        // One record is one line: a newline in a manifest name or an error from untrusted
        // input must not forge a line of its own.
        let line = format!(
            "{ts} {level} {}{}\n",
            escape_controls(&scope),
            escape_controls(&msg)
        );
        if let Some(c) = &ctx {
            c.push(&line);
        }
        if record.level() <= self.print {
            let _ = if self.journal {
                let untimed = line.split_once(' ').map_or(&line[..], |(_, rest)| rest);
                let prio = syslog_priority(record.level());
                std::io::stderr().write_all(format!("<{prio}>{untimed}").as_bytes())
            } else {
                std::io::stderr().write_all(line.as_bytes())
            };
            if let Some(f) = &self.file {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
        }
    }

    fn flush(&self) {
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = f.flush();
            }
        }
    }
}

/// Install the command-line logger. verbosity: 0 = warnings, 1 = info, 2 = debug, 3+ = trace.
pub fn init(verbosity: u8, log_file: Option<&Path>) -> std::io::Result<()> {
    install(verbosity, log_file, None)
}

/// Install the daemon's logger: lines outside a job are scoped `[daemon]`.
pub fn init_daemon(verbosity: u8, log_file: Option<&Path>) -> std::io::Result<()> {
    install(verbosity, log_file, Some("daemon"))
}

fn install(
    verbosity: u8,
    log_file: Option<&Path>,
    outside_jobs: Option<&'static str>,
) -> std::io::Result<()> {
    let print = match verbosity {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let file = match log_file {
        Some(p) => {
            if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            Some(Mutex::new(
                OpenOptions::new().create(true).append(true).open(p)?,
            ))
        }
        None => None,
    };
    if log::set_boxed_logger(Box::new(Logger {
        print,
        file,
        outside_jobs,
        journal: stderr_is_journal(),
    }))
    .is_ok()
    {
        log::set_max_level(print.max(LevelFilter::Info));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_lines_are_recognised() {
        assert_eq!(
            stage_start("h2k_guest::report", "stage fix: start").as_deref(),
            Some("fix")
        );
        assert_eq!(
            stage_start("h2k_guest::report", "stage fix: done in 1.0 s"),
            None
        );
        assert_eq!(stage_start("other", "stage fix: start"), None);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain é"), "plain é");
        assert_eq!(
            escape_controls("a\nFAKE ERROR\r\t\u{1b}[31m"),
            "a\\nFAKE ERROR\\r\\t\\u{1b}[31m"
        );
    }

    #[test]
    fn the_journal_stream_is_matched_by_device_and_inode() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("", 0, 0));
        assert_eq!(syslog_priority(Level::Warn), 4);
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let c = JobCtx::new("j");
        for i in 0..100 {
            c.push(&format!("line {i}\n"));
        }
        let t = c.tail();
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t.last().unwrap(), "line 99");
    }
}

//! Log lines for people and for log collectors: `TIME LEVEL [job/stage] message`, to stderr
//! and, for the daemon, also to a log file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Logger {
    level: LevelFilter,
    file: Option<Mutex<File>>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = time::OffsetDateTime::now_utc();
        let ts = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "-".into());
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        // `target` carries "job/stage" when the caller sets one (log::info!(target: "job/stage", …)).
        let target = record.target();
        let scope = if target.starts_with("h2k_guest") {
            String::new()
        } else {
            format!("[{target}] ")
        };
        let line = format!("{ts} {level} {scope}{}\n", record.args());
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(line.as_bytes());
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

/// Install the logger once. verbosity: 0 = warnings, 1 = info, 2 = debug, 3+ = trace.
pub fn init(verbosity: u8, log_file: Option<&Path>) -> std::io::Result<()> {
    let level = match verbosity {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let file = match log_file {
        Some(p) => Some(Mutex::new(
            OpenOptions::new().create(true).append(true).open(p)?,
        )),
        None => None,
    };
    // A second init (tests) keeps the first logger; that is fine.
    if log::set_boxed_logger(Box::new(Logger { level, file })).is_ok() {
        log::set_max_level(level);
    }
    Ok(())
}

//! Progress display: indicatif bars on a terminal, plain log lines otherwise (batch jobs, CI,
//! the daemon), so logs never fill with carriage-return noise.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress display for one stage (percent-based).
pub struct StageProgress {
    bar: Option<ProgressBar>,
    label: String,
    last_logged_decile: u64,
    start: Instant,
}

impl StageProgress {
    /// A bar when stderr is a terminal and `quiet` is off; otherwise logs at every 10 %.
    pub fn new(label: &str, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:40}] {percent:>3}% {elapsed_precise} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        StageProgress {
            bar,
            label: label.to_string(),
            last_logged_decile: 0,
            start: Instant::now(),
        }
    }

    /// Set progress as a percentage (0–100).
    pub fn set_percent(&mut self, percent: f64) {
        let p = percent.clamp(0.0, 100.0) as u64;
        match &self.bar {
            Some(bar) => bar.set_position(p),
            None => {
                let decile = p / 10;
                if decile > self.last_logged_decile {
                    self.last_logged_decile = decile;
                    log::info!(
                        "{}: {}% ({:.1} s)",
                        self.label,
                        decile * 10,
                        self.start.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    pub fn set_message(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.to_string());
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A spinner for steps without measurable progress (appliance launch, initramfs rebuild).
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    pub fn new(msg: &str, quiet: bool) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            log::info!("{msg}");
            return Spinner(None);
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
        );
        bar.set_message(msg.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Spinner(Some(bar))
    }

    pub fn set_message(&self, msg: &str) {
        match &self.0 {
            Some(bar) => bar.set_message(msg.to_string()),
            None => log::info!("{msg}"),
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}

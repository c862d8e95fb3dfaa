//! SIGINT/SIGTERM for the foreground commands: a cancel flag, and the signal for the exit status.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;

/// The signal that stopped this run (0: none), for the exit status.
pub static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Ctrl-C / SIGTERM set the cancel flag (the job stops at the next safe point and cleans
/// up); a second one exits at once.
pub fn cancel_on_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))?;
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// [`cancel_on_signals`], and the first signal also kills every child at once, so a `fix`
/// stops within a moment in any stage (it fails fast on its dead children and cleans up;
/// exit status 128 + the signal).
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = cancel_on_signals()?;
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            STOP_SIGNAL.store(sig, std::sync::atomic::Ordering::SeqCst);
            h2k_guest::process::stop_all_children();
        }
    });
    Ok(flag)
}

/// "SIGTERM" for a stopped run.
pub fn stop_signal_name() -> Option<&'static str> {
    match STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        signal_hook::consts::SIGINT => Some("SIGINT"),
        _ => Some("SIGTERM"),
    }
}

//! The systemd notification protocol (`sd_notify(3)`): one datagram per message to the unix
//! socket named by `$NOTIFY_SOCKET`, and the watchdog period from `$WATCHDOG_USEC`.
//!
//! Written on `std::os::unix::net::UnixDatagram` rather than a crate: the protocol is a
//! sendto(2) of `KEY=VALUE` lines, and this keeps abstract sockets (`@name`) and the
//! `WATCHDOG_PID` check in plain sight. Without `$NOTIFY_SOCKET` (not run by systemd) every
//! call is a no-op, so the daemon runs the same under a terminal, a test or a unit.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where notifications go, and how often the watchdog wants to hear from us.
pub struct Notifier {
    target: Option<(UnixDatagram, Target)>,
    watchdog: Option<Duration>,
    next_ping: Option<Instant>,
}

enum Target {
    Path(PathBuf),
    /// A socket in the abstract namespace (`@name` in `$NOTIFY_SOCKET`).
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From the environment systemd gives a `Type=notify` service.
    pub fn from_env() -> Notifier {
        Notifier::new(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        )
    }

    fn new(
        socket: Option<std::ffi::OsString>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Notifier {
        let target = socket.filter(|s| !s.is_empty()).and_then(|s| {
            use std::os::unix::ffi::OsStrExt;
            let bytes = s.as_bytes();
            let target = match bytes.strip_prefix(b"@") {
                Some(name) => Target::Abstract(name.to_vec()),
                None => Target::Path(PathBuf::from(&s)),
            };
            match UnixDatagram::unbound() {
                Ok(sock) => Some((sock, target)),
                Err(e) => {
                    log::warn!("NOTIFY_SOCKET: cannot make a socket: {e}");
                    None
                }
            }
        });
        Notifier {
            watchdog: watchdog_period(watchdog_usec, watchdog_pid, std::process::id()),
            next_ping: None,
            target,
        }
    }

    /// How often to send `WATCHDOG=1`: half the period systemd enforces.
    pub fn ping_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Send one message (newline-separated `KEY=VALUE` assignments). Failures are logged at
    /// debug level only: a missing listener must never stop the daemon.
    pub fn send(&self, message: &str) {
        let Some((sock, target)) = &self.target else {
            return;
        };
        let sent = match target {
            Target::Path(p) => sock.send_to(message.as_bytes(), p),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
            }
        };
        if let Err(e) = sent {
            log::debug!("NOTIFY_SOCKET: cannot send {message:?}: {e}");
        }
    }

    /// `READY=1` with a status line (after start-up, and after a reload).
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// `RELOADING=1` (then [`Notifier::ready`] once the new configuration is in effect).
    pub fn reloading(&self) {
        self.send("RELOADING=1\nSTATUS=reloading the configuration");
    }

    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// Called from the main loop on every turn: `WATCHDOG=1` when half the period is over.
    pub fn keep_alive(&mut self) {
        let Some(every) = self.ping_interval() else {
            return;
        };
        let now = Instant::now();
        if self.next_ping.is_none_or(|t| now >= t) {
            self.send("WATCHDOG=1");
            self.next_ping = Some(now + every);
        }
    }
}

/// `$WATCHDOG_USEC`, when it is meant for this process (`$WATCHDOG_PID` unset or ours).
fn watchdog_period(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// A status is one line: a newline would start a new assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_period_is_for_this_process_only() {
        assert_eq!(
            watchdog_period(Some("2000000"), None, 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_period(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(watchdog_period(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("soon"), None, 7), None);
        assert_eq!(watchdog_period(None, None, 7), None);
    }

    #[test]
    fn messages_arrive_on_the_socket_and_pings_are_spaced() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut n = Notifier::new(Some(path.into_os_string()), Some("10000000"), None);
        assert!(n.target.is_some());
        assert_eq!(n.ping_interval(), Some(Duration::from_secs(5)));
        n.ready("ready:\nno jobs");
        n.keep_alive();
        n.keep_alive(); // too early for a second ping
        n.stopping("bye");
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let len = listener.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(
            got,
            [
                "READY=1\nSTATUS=ready: no jobs",
                "WATCHDOG=1",
                "STOPPING=1\nSTATUS=bye"
            ]
        );
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let mut n = Notifier::new(None, Some("1000000"), None);
        assert!(n.target.is_none());
        n.ready("x");
        n.keep_alive();
    }
}

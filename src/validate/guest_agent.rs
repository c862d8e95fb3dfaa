//! The QEMU guest agent's side of the probe: after the probe's line, the host talks to
//! qemu-ga on its virtio-serial port (`org.qemu.guest_agent.0`, a unix socket QEMU serves) —
//! `guest-sync` with a random id, then `guest-info` and `guest-ping`.
//!
//! [`Handshake`] is the protocol, pure and fed bytes as they come: the agent may send
//! leftovers of an earlier session or a parse-error reply to the 0xFF that flushes its
//! parser, so lines are skipped until the sync id comes back. [`query_agent`] does the
//! socket I/O with a deadline, reconnecting and re-syncing while the agent is not up.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use serde_json::Value;

use super::*;

/// The port name qemu-ga opens (its default for virtio-serial).
pub const AGENT_PORT: &str = "org.qemu.guest_agent.0";
/// The whole handshake must be done within this (a TCG guest answers in seconds).
pub const AGENT_DEADLINE: Duration = Duration::from_secs(45);
/// No sync reply for this long: the agent was not reading yet; flush and sync again.
const RESYNC_EVERY: Duration = Duration::from_secs(5);
const READ_POLL: Duration = Duration::from_millis(250);
/// A line longer than this is garbage, not a reply (guest-info lists every command: ~8 KiB).
const MAX_LINE: usize = 256 * 1024;

/// What the probe records about the agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgentCheck {
    /// Asked for (`--expect-agent`, or installed by this run).
    pub expected: bool,
    pub answered: bool,
    /// qemu-ga's version, from guest-info.
    pub version: Option<String>,
    pub error: Option<String>,
}

impl AgentCheck {
    /// Not expected: the channel is not attached and nothing is asked.
    pub fn not_checked() -> AgentCheck {
        AgentCheck {
            error: Some("not checked (not expected)".into()),
            ..AgentCheck::default()
        }
    }

    /// The problem line when it was expected and did not answer.
    pub fn problem(&self) -> Option<String> {
        (self.expected && !self.answered).then(|| {
            format!(
                "guest agent did not answer on {AGENT_PORT}: {}",
                self.error.as_deref().unwrap_or("no reply")
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Sync,
    Info,
    Ping,
    Done,
}

/// The QGA conversation, fed the bytes the agent sends.
#[derive(Debug)]
pub struct Handshake {
    id: u64,
    stage: Stage,
    partial: Vec<u8>,
    version: Option<String>,
}

fn command(execute: &str, arguments: Option<Value>) -> Vec<u8> {
    let mut v = serde_json::json!({ "execute": execute });
    if let Some(a) = arguments {
        v["arguments"] = a;
    }
    let mut bytes = v.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

impl Handshake {
    pub fn new(id: u64) -> Handshake {
        Handshake {
            id,
            stage: Stage::Sync,
            partial: Vec::new(),
            version: None,
        }
    }

    /// What to send first, and again on a re-sync: 0xFF (qemu-ga's parser resets on it, per
    /// the QGA documentation) and guest-sync with this handshake's id.
    pub fn opening(&self) -> Vec<u8> {
        let mut bytes = vec![0xFF];
        bytes.extend(command(
            "guest-sync",
            Some(serde_json::json!({ "id": self.id })),
        ));
        bytes
    }

    /// Still waiting for the sync reply.
    pub fn syncing(&self) -> bool {
        self.stage == Stage::Sync
    }

    /// Start over with a new id (what arrives for the old one is skipped as stale).
    pub fn resync(&mut self, id: u64) {
        self.id = id;
        self.stage = Stage::Sync;
        self.partial.clear();
    }

    /// The agent's version once guest-ping answered.
    pub fn done(&self) -> Option<&str> {
        (self.stage == Stage::Done).then(|| self.version.as_deref().unwrap_or("?"))
    }

    /// Feed what was read; returns what to send next (possibly nothing), or the reason the
    /// agent failed (an error reply to guest-info or guest-ping).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        self.partial.extend_from_slice(bytes);
        let mut send = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            send.extend(self.line(&line)?);
        }
        if self.partial.len() > MAX_LINE {
            self.partial.clear();
        }
        Ok(send)
    }

    fn line(&mut self, line: &[u8]) -> Result<Vec<u8>, String> {
        // Garbage (0xFF, a half line of an earlier session) may precede the object.
        let Some(start) = line.iter().position(|&b| b == b'{') else {
            return Ok(Vec::new());
        };
        let Ok(reply) = serde_json::from_slice::<Value>(&line[start..]) else {
            return Ok(Vec::new());
        };
        let error = reply.get("error").map(|e| {
            e.get("desc")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string())
        });
        match self.stage {
            Stage::Sync => {
                // Anything but our id (stale replies, the parse error the 0xFF causes).
                if reply.get("return").and_then(Value::as_u64) == Some(self.id) {
                    self.stage = Stage::Info;
                    return Ok(command("guest-info", None));
                }
                Ok(Vec::new())
            }
            Stage::Info => {
                if let Some(e) = error {
                    return Err(format!("guest-info: {e}"));
                }
                let Some(ret) = reply.get("return") else {
                    return Ok(Vec::new());
                };
                self.version = ret
                    .get("version")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                self.stage = Stage::Ping;
                Ok(command("guest-ping", None))
            }
            Stage::Ping => {
                if let Some(e) = error {
                    return Err(format!("guest-ping: {e}"));
                }
                if reply.get("return").is_some() {
                    self.stage = Stage::Done;
                }
                Ok(Vec::new())
            }
            Stage::Done => Ok(Vec::new()),
        }
    }
}

/// A sync id no earlier session used: time, pid and a counter mixed.
fn fresh_id() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Kept below 2^53: JSON readers that go through doubles return it intact.
    (nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        & ((1 << 53) - 1)
}

/// Talk to the agent behind `socket` until it answered, failed, `deadline` passed or a
/// cancel flag was set.
pub fn query_agent(socket: &Path, deadline: Duration, cancel: &[Arc<AtomicBool>]) -> AgentCheck {
    let start = Instant::now();
    let mut last_error = "no reply".to_string();
    let mut buf = [0u8; 8192];
    let cancelled = || cancel.iter().any(|c| c.load(Ordering::SeqCst));
    'connect: while start.elapsed() < deadline && !cancelled() {
        let mut stream = match UnixStream::connect(socket) {
            Ok(s) => s,
            Err(e) => {
                last_error = format!("connecting to {}: {e}", socket.display());
                std::thread::sleep(READ_POLL);
                continue;
            }
        };
        if let Err(e) = stream.set_read_timeout(Some(READ_POLL)) {
            last_error = e.to_string();
            break;
        }
        let mut hs = Handshake::new(fresh_id());
        let mut sent_at = Instant::now();
        if let Err(e) = stream.write_all(&hs.opening()) {
            last_error = format!("writing guest-sync: {e}");
            continue;
        }
        while start.elapsed() < deadline && !cancelled() {
            match stream.read(&mut buf) {
                Ok(0) => {
                    last_error = "QEMU closed the agent's socket".into();
                    std::thread::sleep(READ_POLL);
                    continue 'connect;
                }
                Ok(n) => match hs.push(&buf[..n]) {
                    Ok(reply) => {
                        if let Some(version) = hs.done() {
                            return AgentCheck {
                                expected: true,
                                answered: true,
                                version: Some(version.to_string()),
                                error: None,
                            };
                        }
                        if !reply.is_empty() {
                            if let Err(e) = stream.write_all(&reply) {
                                last_error = format!("writing to the agent: {e}");
                                continue 'connect;
                            }
                        }
                    }
                    Err(e) => {
                        return AgentCheck {
                            expected: true,
                            answered: false,
                            version: None,
                            error: Some(e),
                        }
                    }
                },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => {
                    last_error = format!("reading from the agent: {e}");
                    continue 'connect;
                }
            }
            if hs.syncing() && sent_at.elapsed() >= RESYNC_EVERY {
                last_error = "no reply to guest-sync".into();
                hs.resync(fresh_id());
                sent_at = Instant::now();
                if let Err(e) = stream.write_all(&hs.opening()) {
                    last_error = format!("writing guest-sync: {e}");
                    continue 'connect;
                }
            }
        }
    }
    AgentCheck {
        expected: true,
        answered: false,
        version: None,
        error: Some(if cancelled() {
            "interrupted".into()
        } else {
            format!("{last_error} within {} s", deadline.as_secs())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(bytes: &[u8]) -> Value {
        let text = String::from_utf8_lossy(bytes);
        serde_json::from_str(text.trim_start_matches('\u{FFFD}').trim()).unwrap()
    }

    #[test]
    fn the_opening_flushes_then_syncs_with_the_id() {
        let hs = Handshake::new(42);
        let o = hs.opening();
        assert_eq!(o[0], 0xFF);
        assert_eq!(*o.last().unwrap(), b'\n');
        let v: Value = serde_json::from_slice(&o[1..]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"execute": "guest-sync", "arguments": {"id": 42}})
        );
    }

    #[test]
    fn garbage_and_stale_replies_before_the_sync_are_skipped() {
        let mut hs = Handshake::new(7);
        let stream: &[u8] = b"\xff\xfe half a line of an earlier session\n\
            {\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid keyword\"}}\n\
            {\"return\": 6}\n\
            not json at all {\n";
        assert_eq!(hs.push(stream).unwrap(), b"");
        assert!(hs.syncing());
        let next = hs.push(b"\xff{\"return\": 7}\n").unwrap();
        assert_eq!(sent(&next), serde_json::json!({"execute": "guest-info"}));
        let next = hs
            .push(b"{\"return\": {\"version\": \"7.2.19\", \"supported_commands\": []}}\n")
            .unwrap();
        assert_eq!(sent(&next), serde_json::json!({"execute": "guest-ping"}));
        assert_eq!(hs.done(), None);
        assert_eq!(hs.push(b"{\"return\": {}}\n").unwrap(), b"");
        assert_eq!(hs.done(), Some("7.2.19"));
    }

    #[test]
    fn replies_split_across_reads_are_joined() {
        let mut hs = Handshake::new(123456789);
        let all =
            b"{\"return\": 123456789}\n{\"return\": {\"version\": \"5.2.0\"}}\n{\"return\": {}}\n";
        let mut out = Vec::new();
        for chunk in all.chunks(3) {
            out.extend(hs.push(chunk).unwrap());
        }
        assert_eq!(hs.done(), Some("5.2.0"));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn error_replies_after_the_sync_are_the_reason() {
        let mut hs = Handshake::new(1);
        hs.push(b"{\"return\": 1}\n").unwrap();
        let e = hs
            .push(b"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Command guest-info has been disabled\"}}\n")
            .unwrap_err();
        assert_eq!(e, "guest-info: Command guest-info has been disabled");

        let mut hs = Handshake::new(2);
        hs.push(b"{\"return\": 2}\n{\"return\": {}}\n").unwrap();
        let e = hs
            .push(b"{\"error\": {\"class\": \"GenericError\"}}\n")
            .unwrap_err();
        assert!(e.starts_with("guest-ping: {"), "{e}");
        assert_eq!(hs.done(), None);
    }

    #[test]
    fn a_resync_ignores_the_old_id() {
        let mut hs = Handshake::new(10);
        hs.resync(11);
        assert_eq!(hs.push(b"{\"return\": 10}\n").unwrap(), b"");
        assert!(hs.syncing());
        assert!(!hs.push(b"{\"return\": 11}\n").unwrap().is_empty());
        assert!(!hs.syncing());
        assert!(fresh_id() < (1 << 53) && fresh_id() != fresh_id());
    }

    #[test]
    fn problems_only_when_expected_and_silent() {
        assert_eq!(AgentCheck::not_checked().problem(), None);
        let silent = AgentCheck {
            expected: true,
            error: Some("no reply to guest-sync within 45 s".into()),
            ..AgentCheck::default()
        };
        assert_eq!(
            silent.problem().as_deref(),
            Some("guest agent did not answer on org.qemu.guest_agent.0: no reply to guest-sync within 45 s")
        );
        let ok = AgentCheck {
            expected: true,
            answered: true,
            version: Some("7.2.19".into()),
            error: None,
        };
        assert_eq!(ok.problem(), None);
        let v = serde_json::to_value(&ok).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"expected": true, "answered": true, "version": "7.2.19", "error": null})
        );
    }

    /// The socket side against a stand-in agent on a unix socket: it sends garbage first,
    /// ignores the first sync (not reading yet) and answers the second.
    #[test]
    fn query_agent_resyncs_and_reads_the_version() {
        use std::io::BufRead;
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let agent = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            w.write_all(b"\xffstale junk\n").unwrap();
            let mut r = std::io::BufReader::new(stream);
            let mut syncs = 0;
            let mut line = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).unwrap() == 0 {
                    return;
                }
                let start = line.iter().position(|&b| b == b'{').unwrap();
                let v: Value = serde_json::from_slice(&line[start..]).unwrap();
                let reply = match v["execute"].as_str().unwrap() {
                    "guest-sync" => {
                        syncs += 1;
                        if syncs == 1 {
                            continue;
                        }
                        serde_json::json!({"return": v["arguments"]["id"]})
                    }
                    "guest-info" => serde_json::json!({"return": {"version": "9.9.9"}}),
                    "guest-ping" => serde_json::json!({"return": {}}),
                    other => panic!("{other}"),
                };
                w.write_all(format!("{reply}\n").as_bytes()).unwrap();
            }
        });
        let check = query_agent(&path, Duration::from_secs(20), &[]);
        assert_eq!(check.version.as_deref(), Some("9.9.9"), "{check:?}");
        assert!(check.answered && check.expected && check.error.is_none());
        drop(agent);
    }

    #[test]
    fn query_agent_without_a_socket_says_so_by_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let check = query_agent(&dir.path().join("none.sock"), Duration::from_secs(1), &[]);
        assert!(!check.answered);
        let e = check.error.unwrap();
        assert!(
            e.starts_with("connecting to ") && e.ends_with("within 1 s"),
            "{e}"
        );
    }
}

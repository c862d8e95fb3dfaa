//! Webhook notifications: a JSON event POSTed to every configured URL when a daemon job is
//! claimed, finished or failed, signed with HMAC-SHA256 when the URL has a secret.
//!
//! Deliveries never block or fail a job: each URL has its own background thread fed by a
//! bounded queue (events for one URL stay in order); a full queue drops the event. Each
//! delivery is tried [`TRIES`] times with exponential backoff; a delivery that still fails is
//! logged (URL without credentials) and counted in [`delivery_failures`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// The signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-H2K-Signature";
/// The event name, also in the body, for receivers that route on headers.
pub const EVENT_HEADER: &str = "X-H2K-Event";
/// Attempts of one delivery (the first try and its retries).
pub const TRIES: u32 = 4;
/// Wait before the first retry; doubled for each further one (0.5, 1, 2 s).
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Whole-request timeout (connect, send, response).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Events waiting per URL before new ones are dropped (and counted as failed).
pub const QUEUE_LEN: usize = 256;

/// How long a stopping daemon waits for queued events to go out.
pub const WEBHOOK_GRACE: Duration = Duration::from_secs(10);

static DELIVERY_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Events given up on since the process started (all tries failed, or the queue was full).
pub fn delivery_failures() -> u64 {
    DELIVERY_FAILURES.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{origin}: {url:?}: {reason}")]
    BadUrl {
        origin: String,
        url: String,
        reason: String,
    },
    #[error("{origin}: {}: cannot read the webhook secret: {source}", path.display())]
    Secret {
        origin: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {}: the webhook secret file is empty", path.display())]
    EmptySecret { origin: String, path: PathBuf },
}

/// One receiver: where to POST and the key to sign with.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub url: String,
    secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret or the URL's password.
        f.debug_struct("WebhookTarget")
            .field("url", &redact(&self.url))
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

impl WebhookTarget {
    /// Check `url` (http or https only) and read the secret. `origin` names where the value
    /// came from (`--webhook`, `FILE: webhooks[0].url`) for the error message.
    pub fn new(
        origin: &str,
        url: &str,
        secret_file: Option<&Path>,
    ) -> Result<WebhookTarget, WebhookError> {
        let bad = |reason: &str| WebhookError::BadUrl {
            origin: origin.into(),
            url: redact(url),
            reason: reason.into(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("only http:// and https:// URLs are supported"));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        let secret = match secret_file {
            None => None,
            Some(p) => Some(read_secret(origin, p)?),
        };
        Ok(WebhookTarget {
            url: url.into(),
            secret,
        })
    }

    pub fn is_signed(&self) -> bool {
        self.secret.is_some()
    }
}

/// The secret is the file's content without a trailing newline.
fn read_secret(origin: &str, path: &Path) -> Result<Vec<u8>, WebhookError> {
    let mut bytes = std::fs::read(path).map_err(|source| WebhookError::Secret {
        origin: origin.into(),
        path: path.to_path_buf(),
        source,
    })?;
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(WebhookError::EmptySecret {
            origin: origin.into(),
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// `sha256=<hex>` of the body under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The waits before each retry of a delivery of `tries` attempts.
pub fn backoff_schedule(tries: u32) -> Vec<Duration> {
    (1..tries)
        .map(|i| FIRST_BACKOFF * 2u32.pow(i - 1))
        .collect()
}

/// A URL fit for a log line: user name and password removed.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() || !u.username().is_empty() {
                let _ = u.set_username("");
                let _ = u.set_password(None);
            }
            u.to_string()
        }
        Err(_) => url.split('@').next_back().unwrap_or(url).to_string(),
    }
}

/// What happened to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventKind {
    #[serde(rename = "job.claimed")]
    Claimed,
    #[serde(rename = "job.finished")]
    Finished,
    #[serde(rename = "job.failed")]
    Failed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Claimed => "job.claimed",
            EventKind::Finished => "job.finished",
            EventKind::Failed => "job.failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSeconds {
    pub stage: String,
    pub seconds: f64,
    pub ok: bool,
}

/// The body of one POST.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobEvent {
    pub event: EventKind,
    pub job_id: String,
    /// The VM's job name (the manifest's file name without its extension).
    pub vm: String,
    /// The manifest's file name as it was dropped in the spool.
    pub manifest: String,
    pub attempt: u32,
    pub stage_timings: Vec<StageSeconds>,
    pub outputs: Vec<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub report_path: Option<PathBuf>,
    /// The stage that failed (`job.failed` only).
    pub failed_stage: Option<String>,
    /// The error's first line (`job.failed` only).
    pub error: Option<String>,
    pub duration_seconds: Option<f64>,
    pub timestamp: String,
    pub daemon_pid: u32,
    pub tool_version: String,
}

impl JobEvent {
    /// An event with what every kind has; the caller fills in the rest.
    pub fn new(event: EventKind, job_id: &str, vm: &str, manifest: &str, attempt: u32) -> Self {
        JobEvent {
            event,
            job_id: job_id.into(),
            vm: vm.into(),
            manifest: manifest.into(),
            attempt,
            stage_timings: Vec::new(),
            outputs: Vec::new(),
            output_dir: None,
            report_path: None,
            failed_stage: None,
            error: None,
            duration_seconds: None,
            timestamp: crate::util::now_rfc3339(),
            daemon_pid: std::process::id(),
            tool_version: crate::version::TOOL.into(),
        }
    }

    /// Timings and outputs from a report (complete or not).
    pub fn with_report(mut self, report: &crate::report::Report) -> Self {
        self.stage_timings = report
            .timeline
            .iter()
            .map(|t| StageSeconds {
                stage: t.stage.clone(),
                seconds: t.seconds,
                ok: t.ok,
            })
            .collect();
        self.outputs = report.outputs.iter().map(|o| o.path.clone()).collect();
        self
    }

    pub fn with_paths(mut self, output_dir: Option<&PathBuf>, report: Option<&Path>) -> Self {
        self.output_dir = output_dir.cloned();
        self.report_path = report.map(Path::to_path_buf);
        self
    }

    /// Record the error as one line of at most 500 bytes.
    pub fn with_error(mut self, stage: &str, error: &str) -> Self {
        self.failed_stage = Some(stage.into());
        self.error = Some(one_line(error, 500));
        self
    }
}

fn one_line(s: &str, max: usize) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

struct Delivery {
    event: &'static str,
    body: Arc<Vec<u8>>,
}

struct Worker {
    url: String,
    tx: SyncSender<Delivery>,
    thread: JoinHandle<()>,
}

/// One delivery thread (and queue) per target.
fn start_workers(targets: &[WebhookTarget]) -> std::io::Result<Vec<Worker>> {
    let mut workers = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LEN);
        log::info!(
            "webhook {}: job events{}",
            redact(&t.url),
            if t.is_signed() { ", signed" } else { "" }
        );
        let target = t.clone();
        let thread = std::thread::Builder::new()
            .name(format!("webhook {i}"))
            .spawn(move || deliver_all(&target, rx))?;
        workers.push(Worker {
            url: t.url.clone(),
            tx,
            thread,
        });
    }
    Ok(workers)
}

/// The daemon's webhook sender: one queue and thread per URL.
#[derive(Default)]
pub struct Notifier {
    /// Emptied by [`Notifier::finish`]; later events go nowhere.
    workers: Mutex<Vec<Worker>>,
}

impl Notifier {
    /// Start one delivery thread per target (none for an empty list).
    pub fn start(targets: &[WebhookTarget]) -> std::io::Result<Notifier> {
        Ok(Notifier {
            workers: Mutex::new(start_workers(targets)?),
        })
    }

    /// Send later events to `targets` instead (a SIGHUP reload). The old threads are not
    /// waited for: each still delivers what was queued to it, then ends.
    pub fn replace(&self, targets: &[WebhookTarget]) -> std::io::Result<()> {
        let new = start_workers(targets)?;
        let old = std::mem::replace(
            &mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()),
            new,
        );
        // Dropping a sender closes its queue; the thread's `for d in rx` ends after the last.
        drop(old);
        Ok(())
    }

    /// Queue the event for every URL; never waits.
    pub fn send(&self, event: &JobEvent) {
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if workers.is_empty() {
            return;
        }
        let body = match serde_json::to_vec(event) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                log::error!(
                    "webhook: cannot encode the {} event: {e}",
                    event.event.as_str()
                );
                return;
            }
        };
        for w in workers.iter() {
            let d = Delivery {
                event: event.event.as_str(),
                body: Arc::clone(&body),
            };
            match w.tx.try_send(d) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    DELIVERY_FAILURES.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "webhook {}: {QUEUE_LEN} events waiting; dropped the {} event of {}",
                        redact(&w.url),
                        event.event.as_str(),
                        event.job_id
                    );
                }
                Err(TrySendError::Disconnected(_)) => {
                    DELIVERY_FAILURES.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Let queued events go out for up to `grace`, then return (threads still busy are left
    /// to die with the process).
    pub fn finish(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        let threads: Vec<JoinHandle<()>> = workers
            .into_iter()
            .map(|w| {
                drop(w.tx);
                w.thread
            })
            .collect();
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn deliver_all(target: &WebhookTarget, rx: Receiver<Delivery>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .user_agent(format!("h2k-guest/{}", crate::version::TOOL))
        .build()
        .into();
    let shown = redact(&target.url);
    let signature = |body: &[u8]| target.secret.as_deref().map(|s| sign(s, body));
    for d in rx {
        let sig = signature(&d.body);
        let mut last_error = String::new();
        let mut delivered = false;
        let waits = backoff_schedule(TRIES);
        for attempt in 0..TRIES as usize {
            match post(&agent, &target.url, d.event, sig.as_deref(), &d.body) {
                Ok(()) => {
                    delivered = true;
                    break;
                }
                Err(e) => {
                    log::debug!("webhook {shown}: {} try {}: {e}", d.event, attempt + 1);
                    last_error = e;
                }
            }
            if let Some(w) = waits.get(attempt) {
                std::thread::sleep(*w);
            }
        }
        if !delivered {
            DELIVERY_FAILURES.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "webhook {shown}: {} event not delivered after {TRIES} tries: {last_error}",
                d.event
            );
        }
    }
}

/// One POST; a 2xx status is success.
fn post(
    agent: &ureq::Agent,
    url: &str,
    event: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), String> {
    let mut req = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header(EVENT_HEADER, event);
    if let Some(s) = signature {
        req = req.header(SIGNATURE_HEADER, s);
    }
    match req.send(body) {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("HTTP status {}", resp.status().as_u16())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retries_back_off_exponentially() {
        let ms: Vec<u128> = backoff_schedule(TRIES)
            .iter()
            .map(Duration::as_millis)
            .collect();
        assert_eq!(ms, [500, 1000, 2000]);
        assert!(backoff_schedule(1).is_empty());
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        let ok = WebhookTarget::new("--webhook", "https://hooks.example/x", None).unwrap();
        assert!(!ok.is_signed());
        for bad in ["ftp://h/x", "not a url", "file:///etc/passwd", "http://"] {
            let e = WebhookTarget::new("--webhook", bad, None)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--webhook: "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = WebhookTarget::new("--webhook", "ftp://u:pw@h/x", None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn secrets_lose_their_trailing_newline_and_are_never_printed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, "hunter2\n").unwrap();
        let t = WebhookTarget::new("x", "http://u:pw@127.0.0.1:9/h", Some(&p)).unwrap();
        assert_eq!(t.secret.as_deref(), Some(&b"hunter2"[..]));
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("pw"),
            "{shown}"
        );
        std::fs::write(&p, "\n").unwrap();
        let e = WebhookTarget::new("x", "http://h/", Some(&p)).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = WebhookTarget::new("x", "http://h/", Some(&d.path().join("none"))).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn redacted_urls_keep_host_and_path() {
        assert_eq!(
            redact("https://user:secret@hooks.example:8443/a?b=1"),
            "https://hooks.example:8443/a?b=1"
        );
        assert_eq!(redact("http://h/x"), "http://h/x");
    }

    #[test]
    fn the_event_json_has_the_documented_keys() {
        let e = JobEvent::new(
            EventKind::Failed,
            "vm1.20261202T000000Z.1.1",
            "vm1",
            "vm1.json",
            2,
        )
        .with_error("load", "first line\nsecond line");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "job.failed");
        assert_eq!(v["vm"], "vm1");
        assert_eq!(v["manifest"], "vm1.json");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["failed_stage"], "load");
        assert_eq!(v["error"], "first line");
        for k in [
            "job_id",
            "stage_timings",
            "outputs",
            "output_dir",
            "report_path",
            "duration_seconds",
            "timestamp",
            "daemon_pid",
            "tool_version",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(
            serde_json::to_value(EventKind::Claimed).unwrap(),
            "job.claimed"
        );
        assert!(one_line(&"x".repeat(600), 500).ends_with('…'));
    }

    #[test]
    fn a_dead_receiver_is_counted_and_never_blocks_the_sender() {
        // A port nobody listens on: every try is refused at once.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = WebhookTarget::new("t", &format!("http://127.0.0.1:{port}/"), None).unwrap();
        let n = Notifier::start(&[t]).unwrap();
        let before = delivery_failures();
        let started = Instant::now();
        n.send(&JobEvent::new(EventKind::Claimed, "j", "vm", "vm.json", 1));
        assert!(started.elapsed() < Duration::from_millis(100));
        n.finish(Duration::from_secs(10));
        assert!(delivery_failures() > before);
    }
}

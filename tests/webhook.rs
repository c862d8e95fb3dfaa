//! Webhooks against a real HTTP receiver: a small HTTP/1.1 server on 127.0.0.1 in the test
//! (std's TcpListener) records every request, answers the first with 500 and the rest with 200.
//! The daemon runs manifests that fail without an appliance (a missing source), so no VM boots.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const BIN: &str = env!("CARGO_BIN_EXE_h2k-guest");

/// One request as the receiver saw it, and the status it answered.
#[derive(Clone, Debug)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Answer the first `failures` requests with 500, the rest with 200.
    fn start(failures: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = Arc::clone(&s);
                std::thread::spawn(move || serve(conn, &s, failures));
            }
        });
        Receiver { url, seen }
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// The bodies answered with 200, in arrival order.
    fn delivered(&self) -> Vec<Value> {
        self.seen()
            .iter()
            .filter(|r| r.status == 200)
            .map(Received::json)
            .collect()
    }
}

/// Serve HTTP/1.1 requests on one connection until the client closes it.
fn serve(conn: TcpStream, seen: &Mutex<Vec<Received>>, failures: usize) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = {
            let mut seen = seen.lock().unwrap();
            let status = if seen.len() < failures { 500 } else { 200 };
            seen.push(Received {
                headers,
                body,
                status,
            });
            status
        };
        let reason = if status == 200 {
            "OK"
        } else {
            "Internal Server Error"
        };
        let _ = write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = out.flush();
    }
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(root: &Path, extra: &[&str]) -> Daemon {
        let log = root.join("daemon.log");
        let child = Command::new(BIN)
            .arg("daemon")
            .arg("--dir")
            .arg(root.join("spool"))
            .arg("--output-dir")
            .arg(root.join("out"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child, log };
        d.wait_for("the daemon to be ready", Duration::from_secs(20), || {
            d.log_text().contains("daemon ready").then_some(())
        });
        d
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; daemon log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A seed-format manifest whose source does not exist: fails at once, without an appliance.
fn missing_source(tag: &str) -> Vec<u8> {
    format!(
        r#"{{"version": "1.0", "pipeline": {{"load": {{"source_type": "vmdk", "source_path": "/nonexistent/{tag}.vmdk"}},
            "convert": {{"output_format": "qcow2", "output_path": "{tag}.qcow2"}}}}}}"#
    )
    .into_bytes()
}

fn drop_manifest(root: &Path, name: &str, content: &[u8]) {
    let tbp = root.join("spool/to_be_processed");
    let tmp = tbp.join(format!(".{name}.tmp"));
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, tbp.join(name)).unwrap();
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[test]
fn events_are_signed_retried_after_a_500_and_delivered_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let secret = root.join("webhook.key");
    fs::write(&secret, "s3cret\n").unwrap();
    let rx = Receiver::start(1);
    let d = Daemon::start(
        root,
        &[
            "--webhook",
            &rx.url,
            "--webhook-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    drop_manifest(root, "vm-one.json", &missing_source("one"));
    let events = d.wait_for("two delivered events", Duration::from_secs(30), || {
        let e = rx.delivered();
        (e.len() >= 2).then_some(e)
    });
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["job.claimed", "job.failed"]);

    let seen = rx.seen();
    // The first delivery got a 500 and was retried with the same body.
    assert_eq!(seen[0].status, 500);
    assert_eq!(seen[0].body, seen[1].body);
    for r in &seen {
        assert_eq!(
            r.header("X-H2K-Signature"),
            Some(hmac_hex(b"s3cret", &r.body).as_str()),
            "signature of {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("X-H2K-Event"), r.json()["event"].as_str());
        assert_eq!(r.header("Content-Type"), Some("application/json"));
    }

    let (claimed, failed) = (&events[0], &events[1]);
    assert_eq!(claimed["vm"], "vm-one");
    assert_eq!(claimed["manifest"], "vm-one.json");
    assert_eq!(claimed["job_id"], failed["job_id"]);
    assert_eq!(failed["attempt"], 1);
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("/nonexistent/one.vmdk"), "{error}");
    assert!(!error.contains('\n'));
    assert!(failed["failed_stage"].is_string());
    assert!(failed["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert!(failed["timestamp"].as_str().unwrap().ends_with('Z'));

    // The daemon keeps going: a second job gets its two events too, in order.
    drop_manifest(root, "vm-two.json", &missing_source("two"));
    let events = d.wait_for("four delivered events", Duration::from_secs(30), || {
        let e = rx.delivered();
        (e.len() >= 4).then_some(e)
    });
    let two: Vec<(&str, &str)> = events[2..]
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["vm"].as_str().unwrap()))
        .collect();
    assert_eq!(two, [("job.claimed", "vm-two"), ("job.failed", "vm-two")]);
    assert_eq!(rx.seen().len(), 5, "one retry in all");
}

#[test]
fn a_dead_receiver_never_holds_up_a_job() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Bound, then closed: connections are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://user:pw@127.0.0.1:{port}/hook");
    let d = Daemon::start(root, &["--webhook", &url]);
    let started = Instant::now();
    drop_manifest(root, "vm.json", &missing_source("vm"));
    let failed = root.join("spool/failed");
    d.wait_for("the job to be filed", Duration::from_secs(20), || {
        walk_has(&failed, "vm.json.error.json").then_some(())
    });
    // Both events' retries take 3.5 s each; the job is filed before they give up.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    d.wait_for(
        "the failed delivery to be logged",
        Duration::from_secs(20),
        || {
            d.log_text()
                .contains("not delivered after 4 tries")
                .then_some(())
        },
    );
    let log = d.log_text();
    assert!(!log.contains("pw@"), "credentials in the log:\n{log}");
}

fn walk_has(dir: &Path, name: &str) -> bool {
    let Ok(rd) = fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            walk_has(&p, name)
        } else {
            e.file_name() == name
        }
    })
}

#[test]
fn a_bad_webhook_url_is_a_one_line_startup_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("daemon")
        .arg("--dir")
        .arg(tmp.path().join("spool"))
        .args(["--webhook", "ftp://h/x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("--webhook: \"ftp://h/x\""), "{err}");
    assert!(
        !tmp.path().join("spool").exists(),
        "nothing made before the error"
    );
}

#[test]
fn a_sighup_sends_later_events_to_the_reloaded_webhooks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (first, second) = (Receiver::start(0), Receiver::start(0));
    let config = root.join("daemon.yaml");
    let write_config = |url: &str| {
        fs::write(&config, format!("webhooks:\n  - url: \"{url}\"\n")).unwrap();
    };
    write_config(&first.url);
    let d = Daemon::start(root, &["--config", config.to_str().unwrap()]);
    drop_manifest(root, "vm-a.json", &missing_source("a"));
    d.wait_for(
        "vm-a's events at the first receiver",
        Duration::from_secs(30),
        || (first.delivered().len() >= 2).then_some(()),
    );

    write_config(&second.url);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    d.wait_for("the reload", Duration::from_secs(20), || {
        d.log_text()
            .contains("SIGHUP: configuration reloaded")
            .then_some(())
    });
    let log = d.log_text();
    assert!(
        log.contains("webhooks ["),
        "the reload names the change:\n{log}"
    );
    drop_manifest(root, "vm-b.json", &missing_source("b"));
    let events = d.wait_for(
        "vm-b's events at the second receiver",
        Duration::from_secs(30),
        || {
            let e = second.delivered();
            (e.len() >= 2).then_some(e)
        },
    );
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["vm"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("job.claimed", "vm-b"), ("job.failed", "vm-b")]);
    // Control: the first receiver got vm-a's events and nothing after the reload.
    std::thread::sleep(Duration::from_millis(500));
    let old: Vec<String> = first
        .delivered()
        .iter()
        .map(|e| e["vm"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(old, ["vm-a", "vm-a"]);
}

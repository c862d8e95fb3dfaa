//! `GET /metrics` on a small synchronous HTTP server (tiny_http, one thread): OpenMetrics
//! when the scraper asks for it (Prometheus does), the classic text format otherwise.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response};

use super::{ListenSpec, Metrics, MetricsError};

pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The running endpoint; stopped (and its thread joined) when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Bind now (so a port in use is an error at start-up, naming the flag or key) and serve
    /// from a thread of its own.
    pub fn start(spec: &ListenSpec, metrics: Arc<Metrics>) -> Result<MetricsServer, MetricsError> {
        let err = |error: std::io::Error| MetricsError::Listen {
            origin: spec.origin.clone(),
            addr: spec.addr,
            error,
        };
        let listener = TcpListener::bind(spec.addr).map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| err(std::io::Error::other(e.to_string())))?;
        let server = Arc::new(server);
        let thread = {
            let server = Arc::clone(&server);
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || {
                    for req in server.incoming_requests() {
                        answer(req, &metrics);
                    }
                })
                .map_err(err)?
        };
        log::info!("metrics on http://{addr}/metrics");
        Ok(MetricsServer {
            server,
            thread: Some(thread),
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether the request's `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut it = part.split(';');
            let media = it.next().unwrap_or("").trim();
            let q_zero = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    == Some(0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
        })
    })
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

fn answer(req: Request, metrics: &Metrics) {
    let path = req.url().split('?').next().unwrap_or("");
    let method = req.method().clone();
    let response = match (path, &method) {
        ("/metrics", Method::Get | Method::Head) => {
            let accept = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Accept"))
                .map(|h| h.value.as_str().to_string());
            let (body, kind) = if wants_openmetrics(accept.as_deref()) {
                (metrics.render_openmetrics(), OPENMETRICS_TYPE)
            } else {
                (metrics.render_text(), TEXT_TYPE)
            };
            Response::from_string(body).with_header(header("Content-Type", kind))
        }
        ("/metrics", _) => Response::from_string("only GET /metrics\n")
            .with_status_code(405)
            .with_header(header("Allow", "GET, HEAD")),
        ("/", Method::Get | Method::Head) => {
            Response::from_string("h2k-guest: metrics are at /metrics\n")
                .with_header(header("Content-Type", "text/plain; charset=utf-8"))
        }
        _ => Response::from_string("not found; metrics are at /metrics\n").with_status_code(404),
    };
    if let Err(e) = req.respond(response) {
        log::debug!("metrics: cannot answer a scrape: {e}");
    }
}

//! Prometheus metrics of the daemon and of `fix`: one registry per process, filled from each
//! job's [`Report`] when the job ends (timeline, outputs, appliance) rather than by every
//! stage, and exposed on `/metrics` ([`server`]) or written for node_exporter's textfile
//! collector ([`text::write_textfile`]).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `h2k_jobs_total` | counter | `outcome` = success, failed |
//! | `h2k_job_duration_seconds` | histogram | |
//! | `h2k_stage_duration_seconds` | histogram | `stage` (the report's timeline names) |
//! | `h2k_queue_depth` | gauge | `directory` = to_be_processed, processing (daemon only, read from the spool at each scrape) |
//! | `h2k_jobs_running` | gauge | |
//! | `h2k_convert_read_bytes_total` | counter | (allocated size of the sources CONVERT copied) |
//! | `h2k_convert_source_virtual_bytes_total` | counter | (their virtual size) |
//! | `h2k_convert_written_bytes_total` | counter | (size of the output files) |
//! | `h2k_appliance_launches_total` | counter | |
//! | `h2k_accelerator` | gauge | `accelerator` = kvm, tcg (1 for the one the last appliance used) |
//! | `h2k_last_success_timestamp_seconds` | gauge | |
//! | `h2k_build_info` | gauge (= 1) | `version`, `git_commit`, `libguestfs` |
//! | `h2k_webhook_delivery_failures_total` | counter | (daemon only) |

pub mod server;
pub mod text;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::report::Report;

pub use server::MetricsServer;

/// Buckets of the whole-job histogram (seconds): a KVM job takes a minute, a TCG one several.
const JOB_BUCKETS: [f64; 12] = [
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];
/// Buckets of the per-stage histogram (seconds).
const STAGE_BUCKETS: [f64; 13] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// A metrics option that cannot be used; one line naming the flag or key and the value.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{origin}: {value:?}: {reason}")]
    BadListen {
        origin: String,
        value: String,
        reason: String,
    },
    /// The OS error is in the message, not a `source`: `{:#}` must not print it twice.
    #[error("{origin} {addr}: cannot listen: {error}")]
    Listen {
        origin: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{origin}: {}: {reason}", path.display())]
    BadTextfile {
        origin: String,
        path: PathBuf,
        reason: String,
    },
}

/// Where to serve `/metrics`, and which flag or key said so (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub addr: SocketAddr,
    pub origin: String,
}

/// Parse `ADDR:PORT`: an IPv4 address, `[IPv6]`, `localhost`, or nothing (`:9464`, every IPv4
/// interface). Port 0 is refused: Prometheus needs a fixed port to scrape.
pub fn parse_listen(origin: &str, value: &str) -> Result<ListenSpec, MetricsError> {
    let bad = |reason: &str| MetricsError::BadListen {
        origin: origin.into(),
        value: value.into(),
        reason: reason.into(),
    };
    let v = value.trim();
    let addr = if let Some(port) = v.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else if let Some(port) = v.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        v.to_string()
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => {
            let reason = match v.rsplit_once(':') {
                None => "expected ADDR:PORT, e.g. 127.0.0.1:9464".to_string(),
                Some((_, port)) if port.parse::<u16>().is_err() => {
                    format!("{port:?} is not a port number (1-65535); expected ADDR:PORT")
                }
                Some((host, _)) if host.parse::<IpAddr>().is_ok() => {
                    "an IPv6 address needs brackets: [ADDR]:PORT".to_string()
                }
                Some((host, _)) => format!(
                    "{host:?} is not an IP address (use 127.0.0.1, 0.0.0.0, [::1], localhost); expected ADDR:PORT"
                ),
            };
            return Err(bad(&reason));
        }
    };
    if addr.port() == 0 {
        return Err(bad(
            "port 0 is not a fixed port; give the port Prometheus scrapes",
        ));
    }
    Ok(ListenSpec {
        addr,
        origin: origin.into(),
    })
}

/// Check a textfile path before any work: absolute, its directory exists, not a directory.
pub fn check_textfile(origin: &str, path: &Path) -> Result<PathBuf, MetricsError> {
    let bad = |reason: String| MetricsError::BadTextfile {
        origin: origin.into(),
        path: path.to_path_buf(),
        reason,
    };
    let abs = std::path::absolute(path).map_err(|e| bad(e.to_string()))?;
    if abs.file_name().is_none() {
        return Err(bad("not a file name".into()));
    }
    let dir = abs.parent().unwrap_or(Path::new("/"));
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad(format!("{} is not a directory", dir.display()))),
        Err(e) => return Err(bad(format!("directory {}: {e}", dir.display()))),
    }
    if abs.is_dir() {
        return Err(bad("is a directory".into()));
    }
    if abs.extension().is_none_or(|e| e != "prom") {
        log::warn!(
            "{origin}: {}: node_exporter's textfile collector reads only *.prom files",
            abs.display()
        );
    }
    Ok(abs)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Success,
    Failed,
}

impl JobOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Success => "success",
            JobOutcome::Failed => "failed",
        }
    }
}

/// What one finished job contributes, taken from its report (when it got one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobSample {
    pub seconds: f64,
    /// The report's timeline: (stage, seconds).
    pub stages: Vec<(String, f64)>,
    /// Allocated size of the sources, when CONVERT completed (virtual size when unknown).
    pub read_bytes: u64,
    pub read_virtual_bytes: u64,
    /// Output file sizes, when CONVERT completed.
    pub written_bytes: u64,
    pub appliance_launches: u64,
    /// `kvm` or `tcg`, from the appliance record.
    pub accelerator: Option<String>,
}

impl JobSample {
    /// `seconds` is the job's wall time as its runner measured it (the report's own total
    /// when it has none: a job may end before its report starts).
    pub fn new(seconds: f64, report: Option<&Report>) -> JobSample {
        let mut s = JobSample {
            seconds,
            ..JobSample::default()
        };
        let Some(r) = report else { return s };
        s.stages = r
            .timeline
            .iter()
            .map(|t| (t.stage.clone(), t.seconds))
            .collect();
        let converted = r.timeline.iter().any(|t| t.stage == "convert" && t.ok);
        if converted {
            for src in &r.sources {
                s.read_virtual_bytes += src.info.virtual_size;
                s.read_bytes += src.info.actual_size.unwrap_or(src.info.virtual_size);
            }
            s.written_bytes = r.outputs.iter().map(|o| o.bytes).sum();
        }
        if let Some(a) = &r.appliance {
            s.appliance_launches = u64::from(a.launches);
            s.accelerator = Some(a.accelerator.to_string());
        }
        s
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccelLabels {
    accelerator: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    git_commit: String,
    libguestfs: String,
}

fn stage_histogram() -> Histogram {
    Histogram::new(STAGE_BUCKETS)
}

/// Reads the queue depth (directory name, entries) when the metrics are rendered.
pub type QueueReader = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// Gauges read at render time: the spool's queue depth.
struct QueueCollector(QueueReader);

impl std::fmt::Debug for QueueCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueCollector")
    }
}

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let depth = (self.0)();
        let g = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "h2k_queue_depth",
            "Entries in each spool directory (manifests waiting, jobs claimed)",
            None,
            g.metric_type(),
        )?;
        for (dir, n) in depth {
            let labels = [("directory", dir)];
            let enc = family.encode_family(&labels)?;
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(enc)?;
        }
        Ok(())
    }
}

/// The webhook module's process-wide failure count.
#[derive(Debug)]
struct WebhookCollector;

impl Collector for WebhookCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = ConstCounter::new(crate::webhook::delivery_failures());
        let enc = encoder.encode_descriptor(
            "h2k_webhook_delivery_failures",
            "Webhook events given up on (every try failed, or the queue was full)",
            None,
            c.metric_type(),
        )?;
        c.encode(enc)
    }
}

/// Which process the metrics describe (the daemon has a spool and webhooks, `fix` neither).
pub enum Scope {
    Fix,
    Daemon { queue: QueueReader },
}

/// The registry and the handles to its metrics.
pub struct Metrics {
    registry: Registry,
    jobs: Family<OutcomeLabels, Counter>,
    job_seconds: Histogram,
    stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    running: Gauge,
    read_bytes: Counter,
    read_virtual_bytes: Counter,
    written_bytes: Counter,
    launches: Counter,
    accel: Family<AccelLabels, Gauge>,
    last_success: Gauge<f64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(scope: Scope) -> Metrics {
        let mut registry = Registry::default();
        let jobs = Family::<OutcomeLabels, Counter>::default();
        // Both outcomes exist from the start, so rate() and increase() see the first job.
        for o in [JobOutcome::Success, JobOutcome::Failed] {
            let _ = jobs.get_or_create(&OutcomeLabels {
                outcome: o.as_str().into(),
            });
        }
        registry.register("h2k_jobs", "Jobs finished, by outcome", jobs.clone());
        let job_seconds = Histogram::new(JOB_BUCKETS);
        registry.register_with_unit(
            "h2k_job_duration",
            "Wall time of finished jobs",
            Unit::Seconds,
            job_seconds.clone(),
        );
        let stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(stage_histogram);
        registry.register_with_unit(
            "h2k_stage_duration",
            "Time of each pipeline stage of finished jobs (the report's timeline)",
            Unit::Seconds,
            stage_seconds.clone(),
        );
        let daemon = matches!(scope, Scope::Daemon { .. });
        if let Scope::Daemon { queue } = scope {
            registry.register_collector(Box::new(QueueCollector(queue)));
        }
        let running = Gauge::default();
        registry.register("h2k_jobs_running", "Jobs running now", running.clone());
        let read_bytes = Counter::default();
        registry.register_with_unit(
            "h2k_convert_read",
            "Allocated size of the source disks CONVERT copied (virtual size when unknown)",
            Unit::Bytes,
            read_bytes.clone(),
        );
        let read_virtual_bytes = Counter::default();
        registry.register_with_unit(
            "h2k_convert_source_virtual",
            "Virtual size of the source disks CONVERT copied",
            Unit::Bytes,
            read_virtual_bytes.clone(),
        );
        let written_bytes = Counter::default();
        registry.register_with_unit(
            "h2k_convert_written",
            "Size of the output images CONVERT wrote",
            Unit::Bytes,
            written_bytes.clone(),
        );
        let launches = Counter::default();
        registry.register(
            "h2k_appliance_launches",
            "libguestfs appliance launches (a KVM launch that fell back to TCG counts twice)",
            launches.clone(),
        );
        let accel = Family::<AccelLabels, Gauge>::default();
        registry.register(
            "h2k_accelerator",
            "1 for the accelerator the last appliance ran under (kvm or tcg)",
            accel.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "h2k_last_success_timestamp_seconds",
            "Unix time the last successful job ended (0: none yet)",
            last_success.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::version::TOOL.into(),
                git_commit: crate::version::GIT_COMMIT.into(),
                libguestfs: crate::version::LIBGUESTFS.into(),
            })
            .set(1);
        registry.register("h2k_build_info", "The running h2k-guest (always 1)", build);
        if daemon {
            registry.register_collector(Box::new(WebhookCollector));
        }
        Metrics {
            registry,
            jobs,
            job_seconds,
            stage_seconds,
            running,
            read_bytes,
            read_virtual_bytes,
            written_bytes,
            launches,
            accel,
            last_success,
        }
    }

    /// A job ended. `outcome` None: it was interrupted (re-queued), so only what really
    /// happened (appliance launches) is counted.
    pub fn record(&self, outcome: Option<JobOutcome>, sample: &JobSample) {
        self.launches.inc_by(sample.appliance_launches);
        if let Some(a) = &sample.accelerator {
            for name in ["kvm", "tcg"] {
                let v = i64::from(name == a);
                self.accel
                    .get_or_create(&AccelLabels {
                        accelerator: name.into(),
                    })
                    .set(v);
            }
        }
        let Some(outcome) = outcome else { return };
        self.jobs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str().into(),
            })
            .inc();
        self.job_seconds.observe(sample.seconds);
        for (stage, secs) in &sample.stages {
            self.stage_seconds
                .get_or_create(&StageLabels {
                    stage: stage.clone(),
                })
                .observe(*secs);
        }
        self.read_bytes.inc_by(sample.read_bytes);
        self.read_virtual_bytes.inc_by(sample.read_virtual_bytes);
        self.written_bytes.inc_by(sample.written_bytes);
        if outcome == JobOutcome::Success {
            self.last_success.set(crate::util::unix_now());
        }
    }

    /// A spool entry filed as failed without running now: junk (a directory, a FIFO, …), or an
    /// orphan that used up its attempts. Counted as failed; no duration.
    pub fn record_rejected(&self) {
        self.jobs
            .get_or_create(&OutcomeLabels {
                outcome: JobOutcome::Failed.as_str().into(),
            })
            .inc();
    }

    pub fn set_running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn job_started(&self) {
        self.running.inc();
    }

    pub fn job_ended(&self) {
        self.running.dec();
    }

    /// The OpenMetrics text exposition (what Prometheus asks for), ending in `# EOF`.
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format 0.0.4 (node_exporter's textfile collector, curl, older
    /// scrapers).
    pub fn render_text(&self) -> String {
        text::openmetrics_to_classic(&self.render_openmetrics())
    }
}

#[cfg(test)]
mod tests;

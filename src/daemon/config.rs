//! The daemon's configuration: its YAML file (the seed's keys `manifest_workflow_dir`,
//! `output_dir`, `max_concurrent_jobs`, `log_file`, `verbose`, plus ours), command-line
//! overrides, and the spool directory the `workflow` commands read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::accel::AccelChoice;
use crate::appliance::ApplianceOptions;

/// Where `daemon` and `workflow` look when neither `--dir` nor a config file says.
pub const DEFAULT_DIR: &str = "/var/lib/h2k-guest/workflow";
pub const DEFAULT_OUTPUT_DIR: &str = "/var/lib/h2k-guest/output";
/// Environment variable naming the spool directory (for `daemon` and `workflow`).
pub const DIR_ENV: &str = "H2K_WORKFLOW_DIR";

/// What a stop signal does to running jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnStop {
    /// Cancel them at their next safe point and put their manifests back in the queue.
    Abort,
    /// Let them finish.
    Finish,
}

/// A configuration the daemon cannot run with; messages name the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Yaml {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("{}: command: {command:?}: this file configures `h2k-guest daemon` (expected command: daemon)", path.display())]
    NotDaemon { path: PathBuf, command: String },
    #[error("{}: manifest_workflow_mode: false is not supported: the daemon only runs the manifest workflow", .0.display())]
    NotWorkflowMode(PathBuf),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("on_stop: unknown on_stop {0:?} (expected abort or finish)")]
    OnStop(String),
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

impl OnStop {
    pub fn as_str(self) -> &'static str {
        match self {
            OnStop::Abort => "abort",
            OnStop::Finish => "finish",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The spool directory (`manifest_workflow_dir`).
    pub dir: PathBuf,
    pub output_dir: PathBuf,
    pub max_concurrent_jobs: usize,
    pub log_file: Option<PathBuf>,
    /// 0 = warnings, 1 = info, 2 = debug, 3 = trace (and the appliance's console).
    pub verbose: u8,
    pub on_stop: OnStop,
    /// Claims of one manifest (daemon deaths included) before it is filed as failed.
    pub max_attempts: u32,
    /// Larger files are filed as failed without being parsed.
    pub max_manifest_bytes: u64,
    pub appliance: ApplianceOptions,
    /// A file no event announced is taken once its mtime is this old (and nobody writes it).
    pub settle: Duration,
    /// Rescan `to_be_processed/` this often (inotify does the real work; this is the net).
    pub rescan: Duration,
    /// Look for orphans in `processing/` this often.
    pub recover: Duration,
    /// What this was resolved from, for a SIGHUP reload.
    pub overrides: Overrides,
    /// Receivers of job events (`--webhook`, `webhooks:`).
    pub webhooks: Vec<crate::webhook::WebhookTarget>,
    /// Serve `/metrics` here (`--metrics-listen`, `metrics_listen:`).
    pub metrics_listen: Option<crate::metrics::ListenSpec>,
    /// Keep the metrics in this file for node_exporter (`--metrics-textfile`, `metrics_textfile:`).
    pub metrics_textfile: Option<PathBuf>,
}

impl DaemonConfig {
    pub fn new(dir: PathBuf, output_dir: PathBuf) -> DaemonConfig {
        DaemonConfig {
            dir,
            output_dir,
            max_concurrent_jobs: 1,
            log_file: None,
            verbose: 1,
            on_stop: OnStop::Abort,
            max_attempts: 3,
            max_manifest_bytes: crate::manifest::MAX_MANIFEST_BYTES as u64,
            appliance: ApplianceOptions::default(),
            settle: Duration::from_secs(1),
            rescan: Duration::from_secs(2),
            recover: Duration::from_secs(5),
            overrides: Overrides::default(),
            webhooks: Vec::new(),
            metrics_listen: None,
            metrics_textfile: None,
        }
    }
}

/// The daemon's YAML configuration: the seed's keys, plus a few of ours.
#[derive(Debug, Default, Deserialize)]
pub struct ConfigFile {
    pub command: Option<String>,
    pub daemon: Option<bool>,
    pub manifest_workflow_mode: Option<bool>,
    pub manifest_workflow_dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub max_concurrent_jobs: Option<usize>,
    pub log_file: Option<PathBuf>,
    pub verbose: Option<u8>,
    pub on_stop: Option<String>,
    pub max_attempts: Option<u32>,
    pub max_manifest_bytes: Option<u64>,
    pub webhooks: Option<Vec<WebhookEntry>>,
    pub metrics_listen: Option<String>,
    pub metrics_textfile: Option<PathBuf>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// One `webhooks:` entry of the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    pub url: String,
    pub secret_file: Option<PathBuf>,
}

/// Read a config file; paths in it are relative to its directory. Returns warnings for
/// unknown keys.
pub fn read_config_file(path: &Path) -> Result<(ConfigFile, Vec<String>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut cfg: ConfigFile = if text.trim().is_empty() {
        ConfigFile::default()
    } else {
        serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Yaml {
            path: path.to_path_buf(),
            source,
        })?
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = std::path::absolute(&base).unwrap_or(base);
    for p in [
        &mut cfg.manifest_workflow_dir,
        &mut cfg.output_dir,
        &mut cfg.log_file,
        &mut cfg.metrics_textfile,
    ]
    .into_iter()
    .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    for w in cfg.webhooks.iter_mut().flatten() {
        if let Some(p) = w.secret_file.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
    }
    let mut warnings = Vec::new();
    for k in cfg.other.keys() {
        warnings.push(format!("{}: unknown key {k:?} ignored", path.display()));
    }
    if let Some(c) = &cfg.command {
        if c != "daemon" {
            return Err(ConfigError::NotDaemon {
                path: path.to_path_buf(),
                command: c.clone(),
            });
        }
    }
    if cfg.manifest_workflow_mode == Some(false) {
        return Err(ConfigError::NotWorkflowMode(path.to_path_buf()));
    }
    Ok((cfg, warnings))
}

/// Command-line values; `None` = not given (the config file or the default applies).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub jobs: Option<usize>,
    pub log_file: Option<PathBuf>,
    /// `-v` count (0 = not given).
    pub verbose: u8,
    pub on_stop: Option<OnStop>,
    pub max_attempts: Option<u32>,
    pub accel: AccelChoice,
    /// `--webhook` URLs; when given they replace the file's `webhooks:`.
    pub webhooks: Vec<String>,
    /// `--webhook-secret-file`: signs every `--webhook`.
    pub webhook_secret_file: Option<PathBuf>,
    /// `--metrics-listen ADDR:PORT`, unparsed (checked by [`resolve`]).
    pub metrics_listen: Option<String>,
    pub metrics_textfile: Option<PathBuf>,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Flags over the config file over the defaults.
pub fn resolve(o: &Overrides) -> Result<(DaemonConfig, Vec<String>), ConfigError> {
    let (file, warnings) = match &o.config {
        Some(p) => read_config_file(p)?,
        None => (ConfigFile::default(), Vec::new()),
    };
    let dir = o
        .dir
        .as_deref()
        .map(absolute)
        .or(file.manifest_workflow_dir.clone())
        .or_else(dir_from_env)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    let output_dir = o
        .output_dir
        .as_deref()
        .map(absolute)
        .or(file.output_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_OUTPUT_DIR));
    let mut cfg = DaemonConfig::new(dir, output_dir);
    cfg.max_concurrent_jobs = o.jobs.or(file.max_concurrent_jobs).unwrap_or(1);
    if cfg.max_concurrent_jobs == 0 {
        return Err(ConfigError::Zero("max_concurrent_jobs"));
    }
    cfg.log_file = o
        .log_file
        .as_deref()
        .map(absolute)
        .or(file.log_file.clone());
    cfg.verbose = if o.verbose > 0 {
        o.verbose
    } else {
        file.verbose.unwrap_or(1)
    };
    cfg.on_stop = match (o.on_stop, &file.on_stop) {
        (Some(s), _) => s,
        (None, Some(s)) => <OnStop as clap::ValueEnum>::from_str(s, false)
            .map_err(|_| ConfigError::OnStop(s.clone()))?,
        (None, None) => OnStop::Abort,
    };
    cfg.max_attempts = o.max_attempts.or(file.max_attempts).unwrap_or(3);
    if cfg.max_attempts == 0 {
        return Err(ConfigError::Zero("max_attempts"));
    }
    if let Some(b) = file.max_manifest_bytes {
        cfg.max_manifest_bytes = b;
    }
    cfg.appliance.accel = o.accel;
    cfg.appliance.verbose = cfg.verbose >= 3;
    cfg.overrides = o.clone();
    cfg.webhooks = webhook_targets(o, &file)?;
    let file_name = o.config.as_deref().unwrap_or(Path::new("config")).display();
    cfg.metrics_listen = match (&o.metrics_listen, &file.metrics_listen) {
        (Some(v), _) => Some(crate::metrics::parse_listen("--metrics-listen", v)?),
        (None, Some(v)) => Some(crate::metrics::parse_listen(
            &format!("{file_name}: metrics_listen"),
            v,
        )?),
        (None, None) => None,
    };
    cfg.metrics_textfile = match (&o.metrics_textfile, &file.metrics_textfile) {
        (Some(p), _) => Some(crate::metrics::check_textfile("--metrics-textfile", p)?),
        (None, Some(p)) => Some(crate::metrics::check_textfile(
            &format!("{file_name}: metrics_textfile"),
            p,
        )?),
        (None, None) => None,
    };
    Ok((cfg, warnings))
}

/// The flags' webhooks if any, else the file's; every URL and secret checked now.
fn webhook_targets(
    o: &Overrides,
    file: &ConfigFile,
) -> Result<Vec<crate::webhook::WebhookTarget>, ConfigError> {
    use crate::webhook::WebhookTarget;
    if !o.webhooks.is_empty() {
        let secret = o.webhook_secret_file.as_deref();
        return Ok(o
            .webhooks
            .iter()
            .map(|u| WebhookTarget::new("--webhook", u, secret))
            .collect::<Result<_, _>>()?);
    }
    let name = o.config.as_deref().unwrap_or(Path::new("config")).display();
    let mut out = Vec::new();
    for (i, w) in file.webhooks.iter().flatten().enumerate() {
        let origin = format!("{name}: webhooks[{i}].url");
        out.push(WebhookTarget::new(
            &origin,
            &w.url,
            w.secret_file.as_deref(),
        )?);
    }
    Ok(out)
}

fn dir_from_env() -> Option<PathBuf> {
    std::env::var_os(DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(|v| absolute(Path::new(&v)))
}

/// The spool directory a `workflow` command works on: `--dir`, else the config file's
/// `manifest_workflow_dir`, else `$H2K_WORKFLOW_DIR`, else the default.
pub fn spool_dir(dir: Option<&Path>, config: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(d) = dir {
        return Ok(absolute(d));
    }
    if let Some(c) = config {
        let (file, _) = read_config_file(c)?;
        if let Some(d) = file.manifest_workflow_dir {
            return Ok(d);
        }
    }
    Ok(dir_from_env().unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p2(d: &tempfile::TempDir) -> PathBuf {
        d.path().join("other.yaml")
    }

    #[test]
    fn the_seed_config_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("daemon.yaml");
        std::fs::write(
            &p,
            "command: daemon\ndaemon: true\nmanifest_workflow_mode: true\nmanifest_workflow_dir: spool\noutput_dir: /o\nmax_concurrent_jobs: 2\nlog_file: d.log\nverbose: 2\nwebhook: x\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(p.clone()),
            ..Overrides::default()
        };
        let (cfg, warnings) = resolve(&o).unwrap();
        assert_eq!(cfg.dir, d.path().join("spool"));
        assert_eq!(cfg.output_dir, PathBuf::from("/o"));
        assert_eq!(cfg.max_concurrent_jobs, 2);
        assert_eq!(cfg.log_file, Some(d.path().join("d.log")));
        assert_eq!(cfg.verbose, 2);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("webhook"));
        // Flags win over the file.
        let o = Overrides {
            config: Some(p),
            jobs: Some(3),
            dir: Some("/s".into()),
            ..Overrides::default()
        };
        let (cfg, _) = resolve(&o).unwrap();
        assert_eq!((cfg.max_concurrent_jobs, cfg.dir), (3, PathBuf::from("/s")));
        std::fs::write(p2(&d), "on_stop: later\n").unwrap();
        let o = Overrides {
            config: Some(p2(&d)),
            ..Overrides::default()
        };
        assert_eq!(
            resolve(&o).unwrap_err().to_string(),
            "on_stop: unknown on_stop \"later\" (expected abort or finish)"
        );
    }

    #[test]
    fn webhooks_come_from_the_file_or_replace_it_from_the_flags() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.yaml");
        std::fs::write(d.path().join("key"), "k\n").unwrap();
        std::fs::write(
            &p,
            "webhooks:\n  - url: http://127.0.0.1:9/a\n    secret_file: key\n  - url: https://h/b\n",
        )
        .unwrap();
        let mut o = Overrides {
            config: Some(p.clone()),
            ..Overrides::default()
        };
        let (cfg, _) = resolve(&o).unwrap();
        let signed: Vec<(&str, bool)> = cfg
            .webhooks
            .iter()
            .map(|w| (w.url.as_str(), w.is_signed()))
            .collect();
        assert_eq!(
            signed,
            [("http://127.0.0.1:9/a", true), ("https://h/b", false)]
        );
        o.webhooks = vec!["http://x/".into()];
        let (cfg, _) = resolve(&o).unwrap();
        assert_eq!(cfg.webhooks.len(), 1);
        o.webhooks = vec!["gopher://x/".into()];
        let e = resolve(&o).unwrap_err().to_string();
        assert!(e.starts_with("--webhook: \"gopher://x/\": "), "{e}");
        std::fs::write(&p, "webhooks:\n  - url: mailto:me@h\n").unwrap();
        let e = resolve(&Overrides {
            config: Some(p.clone()),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("c.yaml: webhooks[0].url: \"mailto:"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn bad_configs_name_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.yaml");
        std::fs::write(&p, "max_concurrent_jobs: many\n").unwrap();
        let e = read_config_file(&p).unwrap_err().to_string();
        assert!(e.contains("max_concurrent_jobs"), "{e}");
        std::fs::write(&p, "command: convert\n").unwrap();
        assert!(read_config_file(&p)
            .unwrap_err()
            .to_string()
            .contains("command"));
        std::fs::write(&p, "max_concurrent_jobs: 0\n").unwrap();
        let o = Overrides {
            config: Some(p),
            ..Overrides::default()
        };
        assert!(resolve(&o)
            .unwrap_err()
            .to_string()
            .contains("max_concurrent_jobs"));
    }

    #[test]
    fn metrics_settings_come_from_the_flags_or_the_file_and_bad_ones_name_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.yaml");
        std::fs::write(
            &p,
            "metrics_listen: 127.0.0.1:9464\nmetrics_textfile: h2k.prom\n",
        )
        .unwrap();
        let mut o = Overrides {
            config: Some(p.clone()),
            ..Overrides::default()
        };
        let (cfg, _) = resolve(&o).unwrap();
        let spec = cfg.metrics_listen.unwrap();
        assert_eq!(spec.addr.to_string(), "127.0.0.1:9464");
        assert_eq!(spec.origin, format!("{}: metrics_listen", p.display()));
        assert_eq!(cfg.metrics_textfile, Some(d.path().join("h2k.prom")));
        o.metrics_listen = Some("[::1]:9000".into());
        let (cfg, _) = resolve(&o).unwrap();
        assert_eq!(cfg.metrics_listen.unwrap().origin, "--metrics-listen");
        o.metrics_listen = Some("9000".into());
        let e = resolve(&o).unwrap_err().to_string();
        assert!(
            e.starts_with("--metrics-listen: \"9000\": expected ADDR:PORT"),
            "{e}"
        );
        o.metrics_listen = None;
        std::fs::write(&p, "metrics_listen: \"*:9464\"\n").unwrap();
        let e = resolve(&o).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: metrics_listen: \"*:9464\": ", p.display())),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        std::fs::write(&p, "metrics_textfile: /nonexistent/dir/h2k.prom\n").unwrap();
        let e = resolve(&o).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: metrics_textfile: /nonexistent/dir/h2k.prom: ",
                p.display()
            )),
            "{e}"
        );
    }
}

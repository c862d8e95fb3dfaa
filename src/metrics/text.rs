//! The classic Prometheus text format (0.0.4) from the OpenMetrics text `prometheus-client`
//! encodes, and the atomic textfile write for node_exporter.
//!
//! The two formats differ only where node_exporter's parser would mistype our metrics: an
//! OpenMetrics counter family is named without `_total` (`# TYPE h2k_jobs counter`, samples
//! `h2k_jobs_total`), which the classic parser reads as an empty counter plus an untyped
//! metric; `# UNIT` and `# EOF` are OpenMetrics-only.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Rewrite an OpenMetrics exposition into the classic text format.
pub fn openmetrics_to_classic(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // A family's HELP line comes before its TYPE line: hold it until the type is known.
    let mut help: Option<(&str, &str)> = None;
    let flush_help = |out: &mut String, help: &mut Option<(&str, &str)>| {
        if let Some((name, text)) = help.take() {
            out.push_str(&format!("# HELP {name} {text}\n"));
        }
    };
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, &mut help);
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (classic_name, classic_kind) = match kind {
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                "stateset" => (name.to_string(), "gauge"),
                other => (name.to_string(), other),
            };
            if let Some((hname, text)) = help.take() {
                let hname = if hname == name { &classic_name } else { hname };
                out.push_str(&format!("# HELP {hname} {text}\n"));
            }
            out.push_str(&format!("# TYPE {classic_name} {classic_kind}\n"));
            continue;
        }
        flush_help(&mut out, &mut help);
        out.push_str(line);
        out.push('\n');
    }
    flush_help(&mut out, &mut help);
    out
}

/// Replace `path` with `text` all at once: a hidden temp file in the same directory (not
/// `*.prom`, so the collector never reads it half-written), fsync, mode 0644 (node_exporter
/// runs as another user), rename over the old file.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".h2k-metrics-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Metrics of a `fix` run (or a `fix --batch`) kept in a textfile: rewritten whole after each
/// job, one writer at a time so an older rendering never replaces a newer one.
pub struct TextfileMetrics {
    pub metrics: super::Metrics,
    pub path: std::path::PathBuf,
    write_lock: std::sync::Mutex<()>,
}

impl TextfileMetrics {
    pub fn new(path: std::path::PathBuf) -> TextfileMetrics {
        TextfileMetrics {
            metrics: super::Metrics::new(super::Scope::Fix),
            path,
            write_lock: std::sync::Mutex::new(()),
        }
    }

    /// Record a finished job and rewrite the file; a write error is logged, never fatal.
    pub fn record(&self, outcome: Option<super::JobOutcome>, sample: &super::JobSample) {
        self.metrics.record(outcome, sample);
        self.write();
    }

    pub fn write(&self) {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = write_textfile(&self.path, &self.metrics.render_text()) {
            log::warn!("{}: cannot write the metrics: {e}", self.path.display());
        }
    }
}

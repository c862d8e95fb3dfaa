//! The files filed beside a manifest, typed once for the daemon that writes them and the
//! `workflow` commands that read them back: `NAME.error.json` ([`ErrorReport`]) and what
//! `workflow list` reads of either sidecar ([`FiledReport`]). Keys are those of earlier
//! versions; keys only some writers had are optional, so old files still read.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::report::Report;

/// Where a job is: filed (`processed/`, `failed/`), or still in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    #[default]
    Failed,
    Processed,
    Processing,
    Queued,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Failed => "failed",
            JobStatus::Processed => "processed",
            JobStatus::Processing => "processing",
            JobStatus::Queued => "queued",
        }
    }
}

/// The stage a job failed in: the daemon's own steps, or a pipeline stage by its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(from = "String", into = "String")]
pub enum Stage {
    /// Rejected when taken from `to_be_processed/` (junk: a FIFO, directory, symlink…).
    Claim,
    /// Found by recovery in `processing/`.
    Recover,
    /// Reading the manifest.
    Manifest,
    /// Making the job's output directory.
    Output,
    /// Filing the result.
    File,
    /// A pipeline stage (load, appliance, inspect, fix, convert, …).
    Pipeline(String),
    #[default]
    Unknown,
}

impl Stage {
    pub fn as_str(&self) -> &str {
        match self {
            Stage::Claim => "claim",
            Stage::Recover => "recover",
            Stage::Manifest => "manifest",
            Stage::Output => "output",
            Stage::File => "file",
            Stage::Pipeline(s) => s,
            Stage::Unknown => "unknown",
        }
    }

    /// The stage a failed pipeline run stopped in: the first stage of its timeline that did
    /// not succeed (the one place both the report and the filing read), else what the
    /// pipeline said.
    pub fn of_failed_run(report: &Report, said: &str) -> Stage {
        let failed = report.timeline.iter().find(|t| !t.ok);
        Stage::from(failed.map_or(said, |t| t.stage.as_str()).to_string())
    }
}

impl From<String> for Stage {
    fn from(s: String) -> Stage {
        match s.as_str() {
            "claim" => Stage::Claim,
            "recover" => Stage::Recover,
            "manifest" => Stage::Manifest,
            "output" => Stage::Output,
            "file" => Stage::File,
            "unknown" | "" => Stage::Unknown,
            _ => Stage::Pipeline(s),
        }
    }
}

impl From<Stage> for String {
    fn from(s: Stage) -> String {
        s.as_str().to_string()
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `NAME.error.json`: why a manifest was filed under `failed/`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ErrorReport {
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(default)]
    pub job: Option<String>,
    /// The name it was submitted under (lossy for a non-UTF-8 name); it may be filed under a
    /// safe shortened name, see `filed_as`.
    pub manifest: String,
    #[serde(default)]
    pub filed_as: Option<PathBuf>,
    #[serde(default)]
    pub status: JobStatus,
    #[serde(default)]
    pub failed_at: String,
    #[serde(default)]
    pub stage: Stage,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub duration_seconds: f64,
    #[serde(default)]
    pub daemon_pid: Option<u32>,
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    #[serde(default)]
    pub report_path: Option<PathBuf>,
    #[serde(default)]
    pub history: Vec<String>,
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// The pipeline's report of the failed run (with `plan.manifest_path` pointing at the
    /// filed manifest).
    #[serde(default)]
    pub report: Option<Value>,
}

impl ErrorReport {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// `NAME.report.json`: the pipeline's report plus what the daemon adds when filing it.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessedReport {
    #[serde(flatten)]
    pub report: Value,
    pub job_id: String,
    pub manifest: String,
    pub filed_as: PathBuf,
    pub completed_at: String,
    pub duration_seconds: f64,
    pub attempts: u32,
    pub output_dir: Option<String>,
    pub daemon_pid: u32,
}

/// What `workflow list` reads of either sidecar.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct FiledReport {
    pub manifest: Option<String>,
    pub job_id: Option<String>,
    pub duration_seconds: Option<f64>,
    /// A report written by `h2k-guest fix` rather than the daemon has only this.
    pub total_seconds: Option<f64>,
    pub stage: Option<String>,
    pub error: Option<String>,
    pub output_dir: Option<String>,
}

impl FiledReport {
    pub fn read(path: &std::path::Path) -> Option<FiledReport> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub fn duration(&self) -> Option<f64> {
        self.duration_seconds.or(self.total_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_error_reports_still_read() {
        // The recovery writer of earlier versions had only these keys.
        let old = r#"{"manifest": "x.json", "status": "failed", "failed_at": "t",
            "stage": "recover", "error": "e", "log_tail": []}"#;
        let r: ErrorReport = serde_json::from_str(old).unwrap();
        assert_eq!((r.stage, r.status), (Stage::Recover, JobStatus::Failed));
        let f: FiledReport = serde_json::from_str(old).unwrap();
        assert_eq!(f.stage.as_deref(), Some("recover"));
    }

    #[test]
    fn stages_keep_their_spelling() {
        for s in ["claim", "manifest", "appliance", "inspect", "unknown"] {
            let st = Stage::from(s.to_string());
            assert_eq!(serde_json::to_value(&st).unwrap(), s);
        }
        let r = ErrorReport {
            manifest: "m".into(),
            stage: Stage::Claim,
            ..ErrorReport::default()
        };
        let v: Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["stage"].as_str()),
            (Some("failed"), Some("claim"))
        );
    }
}

//! The job report (`OUTPUT.report.json`): what was found, what was changed (with diffs), how
//! long each stage took, what was written. Also the timeline helper the pipeline uses.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::inspect::OsInfo;
use crate::load::SourceInfo;
use crate::plan::Plan;

pub use crate::util::now_rfc3339;

#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub stage: String,
    pub started_at: String,
    pub ended_at: String,
    pub seconds: f64,
    pub ok: bool,
}

pub use crate::fix::record::{unified_diff, FileChange, FixRecord, FixStatus};

#[derive(Debug, Clone, Serialize)]
pub struct ApplianceRecord {
    pub accelerator: crate::accel::Accel,
    pub reason: String,
    pub launches: u32,
    pub launch_seconds: f64,
    pub vcpus: i32,
    pub memory_mib: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceRecord {
    pub id: String,
    #[serde(flatten)]
    pub info: SourceInfo,
    /// "sha256:<hex>" when computed (manifest checksum given, or --checksum).
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputRecord {
    pub disk_id: String,
    pub path: PathBuf,
    pub format: String,
    pub compressed: bool,
    pub bytes: u64,
    pub virtual_size: u64,
    pub check: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub tool_version: String,
    pub git_commit: String,
    pub libguestfs_version: String,
    pub job: String,
    pub status: String,
    pub error: Option<String>,
    pub failed_stage: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub total_seconds: f64,
    pub plan: Plan,
    pub sources: Vec<SourceRecord>,
    pub appliance: Option<ApplianceRecord>,
    pub os: Option<OsInfo>,
    pub timeline: Vec<StageTiming>,
    pub fixes: Vec<FixRecord>,
    pub outputs: Vec<OutputRecord>,
    pub validation: Vec<serde_json::Value>,
    pub warnings: Vec<String>,
    #[serde(skip)]
    start: Option<Instant>,
}

impl Report {
    pub fn new(plan: &Plan) -> Report {
        Report {
            tool: "h2k-guest".into(),
            tool_version: crate::version::TOOL.into(),
            git_commit: crate::version::GIT_COMMIT.into(),
            libguestfs_version: crate::version::LIBGUESTFS.into(),
            job: plan.job_name.clone(),
            status: "running".into(),
            error: None,
            failed_stage: None,
            started_at: now_rfc3339(),
            ended_at: None,
            total_seconds: 0.0,
            plan: plan.clone(),
            sources: Vec::new(),
            appliance: None,
            os: None,
            timeline: Vec::new(),
            fixes: Vec::new(),
            outputs: Vec::new(),
            validation: Vec::new(),
            warnings: plan.warnings.clone(),
            start: Some(Instant::now()),
        }
    }

    /// Run `f` as stage `name`, recording its start, end and duration even when it fails.
    pub fn stage<T, E>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Report) -> Result<T, E>,
    ) -> Result<T, E> {
        let started_at = now_rfc3339();
        let t = Instant::now();
        log::info!("stage {name}: start");
        let r = f(self);
        let seconds = t.elapsed().as_secs_f64();
        log::info!(
            "stage {name}: {} in {seconds:.1} s",
            if r.is_ok() { "done" } else { "failed" }
        );
        self.timeline.push(StageTiming {
            stage: name.into(),
            started_at,
            ended_at: now_rfc3339(),
            seconds,
            ok: r.is_ok(),
        });
        r
    }

    pub fn finish(&mut self, error: Option<(String, String)>) {
        self.ended_at = Some(now_rfc3339());
        self.total_seconds = self
            .start
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or_default();
        match error {
            None => self.status = "success".into(),
            Some((stage, message)) => {
                self.status = "failed".into();
                self.failed_stage = Some(stage);
                self.error = Some(message);
            }
        }
    }

    /// Write the report atomically (temp file + rename) so a reader never sees half a report.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(path, &json)
    }
}

/// The few lines `h2k-guest fix` prints when a job succeeds.
pub fn summary(r: &Report) -> String {
    let mut o = String::new();
    if let Some(os) = &r.os {
        o += &format!(
            "guest: {} ({} firmware, {}, {})\n",
            os.product_name,
            os.firmware.kind,
            os.bootloader.kind,
            os.default_kernel.as_deref().unwrap_or("no kernel")
        );
    }
    let stages: Vec<String> = r
        .timeline
        .iter()
        .map(|t| format!("{} {:.1}s", t.stage, t.seconds))
        .collect();
    o += &format!(
        "stages: {} (total {:.1}s)\n",
        stages.join(", "),
        r.total_seconds
    );
    for f in &r.fixes {
        let files: Vec<&str> = f.files.iter().map(|c| c.path.as_str()).collect();
        let status = serde_json::to_value(f.status)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        o += &format!(
            "fix {:<13} {:<9} {}{}\n",
            f.name,
            status,
            f.summary,
            if files.is_empty() {
                String::new()
            } else {
                format!(" [{}]", files.join(", "))
            }
        );
    }
    for out in &r.outputs {
        o += &format!(
            "output: {} ({}, {:.1} MiB)\n",
            out.path.display(),
            out.format,
            out.bytes as f64 / (1u64 << 20) as f64
        );
    }
    for w in &r.warnings {
        o += &format!("warning: {w}\n");
    }
    o
}

pub use crate::util::{synced_temp_beside, write_atomic};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "r.json")
            .collect();
        assert!(leftovers.is_empty());
    }
}

//! The batch report (`batch-report.json`) and the resume decision made from the previous one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmOutcome {
    Success,
    Failed,
    /// Not run: an earlier run's output and report match (see [`resume_decision`]).
    Skipped,
}

/// One VM of the batch, as the report records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmResult {
    pub vm: String,
    pub manifest: PathBuf,
    /// `sha256:<hex>` of the manifest file as this run read it.
    pub manifest_sha256: String,
    pub outcome: VmOutcome,
    pub outputs: Vec<PathBuf>,
    pub report: Option<PathBuf>,
    pub duration_seconds: f64,
    pub failed_stage: Option<String>,
    pub error: Option<String>,
    /// Why it was skipped (`skipped` only).
    #[serde(default)]
    pub skipped_because: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchReport {
    pub batch: PathBuf,
    pub tool_version: String,
    pub started_at: String,
    pub ended_at: String,
    pub jobs: usize,
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    pub duration_seconds: f64,
    pub vms: Vec<VmResult>,
}

impl BatchReport {
    /// Read a previous report; None when missing or unreadable (then nothing is skipped).
    pub fn read(path: &Path) -> Option<BatchReport> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Write under a temp name and rename over the previous report (ours to replace).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".batch-report.")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        serde_json::to_writer_pretty(&mut tmp, self)?;
        std::io::Write::write_all(&mut tmp, b"\n")?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    Run,
    Skip(String),
}

/// Whether a VM can be skipped. It can when all of these hold:
/// - the previous batch report has it (same manifest path) as `success` or `skipped`, with the
///   same manifest sha256 (an edited manifest runs again);
/// - its own report exists and says `"status": "success"`;
/// - every output that report lists exists.
///
/// `vm_report` is the parsed report file, if any; `exists` says whether a path exists.
pub fn resume_decision(
    previous: Option<&VmResult>,
    manifest_sha256: &str,
    vm_report: Option<&serde_json::Value>,
    exists: &dyn Fn(&Path) -> bool,
) -> Resume {
    let Some(prev) = previous else {
        return Resume::Run;
    };
    if prev.outcome == VmOutcome::Failed || prev.manifest_sha256 != manifest_sha256 {
        return Resume::Run;
    }
    let Some(report) = vm_report else {
        return Resume::Run;
    };
    if report.get("status").and_then(|s| s.as_str()) != Some("success") {
        return Resume::Run;
    }
    let outputs: Vec<PathBuf> = report
        .get("outputs")
        .and_then(|o| o.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|o| o.get("path").and_then(|p| p.as_str()).map(PathBuf::from))
                .collect()
        })
        .unwrap_or_default();
    if outputs.is_empty() || !outputs.iter().all(|p| exists(p)) {
        return Resume::Run;
    }
    Resume::Skip(format!(
        "output{} and report of an earlier run match the manifest",
        if outputs.len() == 1 { "" } else { "s" }
    ))
}

/// The outputs a VM's report lists.
pub fn report_outputs(report: &serde_json::Value) -> Vec<PathBuf> {
    report["outputs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o["path"].as_str().map(PathBuf::from))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prev(outcome: VmOutcome, sha: &str) -> VmResult {
        VmResult {
            vm: "vm".into(),
            manifest: "/b/vm.json".into(),
            manifest_sha256: sha.into(),
            outcome,
            outputs: vec!["/o/vm.qcow2".into()],
            report: Some("/o/vm.qcow2.report.json".into()),
            duration_seconds: 1.0,
            failed_stage: None,
            error: None,
            skipped_because: None,
        }
    }

    fn ok_report() -> serde_json::Value {
        json!({"status": "success", "outputs": [{"path": "/o/vm.qcow2"}]})
    }

    #[test]
    fn a_matching_earlier_success_is_skipped() {
        let all = |_: &Path| true;
        let r = ok_report();
        for outcome in [VmOutcome::Success, VmOutcome::Skipped] {
            assert!(matches!(
                resume_decision(Some(&prev(outcome, "sha256:a")), "sha256:a", Some(&r), &all),
                Resume::Skip(_)
            ));
        }
    }

    type Case<'a> = (
        Option<&'a VmResult>,
        &'a str,
        Option<serde_json::Value>,
        &'a dyn Fn(&Path) -> bool,
    );

    #[test]
    fn anything_that_does_not_match_runs_again() {
        let all = |_: &Path| true;
        let none = |_: &Path| false;
        let r = ok_report();
        let ok = prev(VmOutcome::Success, "sha256:a");
        let cases: [Case; 6] = [
            (None, "sha256:a", Some(r.clone()), &all),
            (Some(&ok), "sha256:b", Some(r.clone()), &all),
            (Some(&ok), "sha256:a", None, &all),
            (Some(&ok), "sha256:a", Some(r.clone()), &none),
            (
                Some(&ok),
                "sha256:a",
                Some(json!({"status": "failed", "outputs": r["outputs"]})),
                &all,
            ),
            (
                Some(&ok),
                "sha256:a",
                Some(json!({"status": "success", "outputs": []})),
                &all,
            ),
        ];
        for (i, (p, sha, rep, exists)) in cases.into_iter().enumerate() {
            assert_eq!(
                resume_decision(p, sha, rep.as_ref(), exists),
                Resume::Run,
                "case {i}"
            );
        }
        let failed = prev(VmOutcome::Failed, "sha256:a");
        assert_eq!(
            resume_decision(Some(&failed), "sha256:a", Some(&r), &all),
            Resume::Run
        );
    }

    #[test]
    fn the_report_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("batch-report.json");
        let rep = BatchReport {
            batch: "/b".into(),
            tool_version: "x".into(),
            started_at: "s".into(),
            ended_at: "e".into(),
            jobs: 2,
            total: 1,
            succeeded: 1,
            failed: 0,
            skipped: 0,
            duration_seconds: 1.0,
            vms: vec![prev(VmOutcome::Success, "sha256:a")],
        };
        rep.write(&p).unwrap();
        rep.write(&p).unwrap();
        assert_eq!(BatchReport::read(&p), Some(rep));
        assert_eq!(report_outputs(&ok_report()), [PathBuf::from("/o/vm.qcow2")]);
    }
}

//! The job report (`OUTPUT.report.json`): what was found, what was changed (with diffs), how
//! long each stage took, what was written. Also the timeline helper the pipeline uses.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::inspect::OsInfo;
use crate::load::SourceInfo;
use crate::plan::Plan;

pub use crate::util::now_rfc3339;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageTiming {
    pub stage: String,
    pub started_at: String,
    pub ended_at: String,
    pub seconds: f64,
    pub ok: bool,
    /// Where the stage's time went (e.g. inspect: filesystems, roots, mount, kernels),
    /// in the order measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<StagePart>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StagePart {
    pub name: String,
    pub seconds: f64,
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
    pub status: JobStatus,
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
    pub validation: Vec<ValidationRecord>,
    /// The libvirt domain written (and defined) for the outputs, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<LibvirtRecord>,
    pub warnings: Vec<String>,
    #[serde(skip)]
    start: Option<Instant>,
    /// Parts of the running stage, moved into its timeline entry when it ends.
    #[serde(skip)]
    pending_parts: Vec<StagePart>,
    /// The path [`Report::write_new`] was last asked for and the file it wrote for it (the
    /// only file it may replace).
    #[serde(skip)]
    written_to: Option<(PathBuf, PathBuf)>,
}

/// The libvirt domain written for the outputs (`fix --libvirt-xml`).
#[derive(Debug, Clone, Serialize)]
pub struct LibvirtRecord {
    pub xml: PathBuf,
    pub name: String,
    /// `kvm` or `qemu`.
    pub domain_type: String,
    pub machine: String,
    pub firmware: crate::plan::Firmware,
    /// `declared` (manifest or OVF), `detected` (inspection) or `default`.
    pub firmware_from: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<PathBuf>,
    /// Each NIC's MAC; null where libvirt picks one.
    pub nics: Vec<Option<String>>,
    pub guest_agent_channel: bool,
    /// The URI it was defined on, when `--libvirt-define` asked.
    pub defined: Option<String>,
}

/// Where the job stands, as the report's `status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Success,
    Failed,
}

/// One boot check of an output, as the report's `validation` entries carry it (the fields
/// of [`crate::validate::BootOutcome`], enums as their names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationRecord {
    pub image: String,
    pub format: String,
    pub bus: String,
    pub firmware: crate::plan::Firmware,
    pub firmware_reason: String,
    pub accel: String,
    pub accel_reason: String,
    pub booted: bool,
    pub stage: String,
    pub seconds_to_login: Option<f64>,
    pub login_prompt: Option<String>,
    /// The failure as validate describes it (kind, reason and its details).
    pub failure: Option<serde_json::Value>,
    pub seconds: f64,
    pub console_log: Option<PathBuf>,
    pub last_console_lines: Vec<String>,
    /// `validate --probe`'s result (disks, NICs, whole, problems, the guest's report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<serde_json::Value>,
}

impl From<&crate::validate::BootOutcome> for ValidationRecord {
    fn from(outcome: &crate::validate::BootOutcome) -> Self {
        // The enums' names are their serde names; going through JSON keeps them identical
        // to what the report wrote when it stored the outcome as is.
        let record = serde_json::to_value(outcome).and_then(serde_json::from_value);
        record.unwrap_or_else(|e| ValidationRecord {
            image: outcome.image.clone(),
            format: outcome.format.clone(),
            bus: outcome.bus.to_string(),
            firmware: outcome.firmware,
            firmware_reason: outcome.firmware_reason.clone(),
            accel: outcome.accel.to_string(),
            accel_reason: outcome.accel_reason.clone(),
            booted: outcome.booted,
            stage: format!("{:?}", outcome.stage).to_lowercase(),
            seconds_to_login: outcome.seconds_to_login,
            login_prompt: outcome.login_prompt.clone(),
            failure: Some(serde_json::Value::String(format!("unrecorded: {e}"))),
            seconds: outcome.seconds,
            console_log: outcome.console_log.clone(),
            last_console_lines: outcome.last_console_lines.clone(),
            probe: None,
        })
    }
}

impl Report {
    pub fn new(plan: &Plan) -> Report {
        Report {
            tool: "h2k-guest".into(),
            tool_version: crate::version::TOOL.into(),
            git_commit: crate::version::GIT_COMMIT.into(),
            libguestfs_version: crate::version::LIBGUESTFS.into(),
            job: plan.job_name.clone(),
            status: JobStatus::Running,
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
            libvirt: None,
            warnings: plan.warnings.clone(),
            start: Some(Instant::now()),
            pending_parts: Vec::new(),
            written_to: None,
        }
    }

    /// Whether `--install-guest-agent` put qemu-guest-agent in (or found it there).
    pub fn guest_agent_present(&self) -> bool {
        self.fixes.iter().any(|f| {
            f.name == crate::fix::guest_agent::STEP && f.status != crate::fix::FixStatus::Skipped
        })
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
            parts: std::mem::take(&mut self.pending_parts),
        });
        r
    }

    /// Record that `seconds` of the running stage went to `name` (see [`StageTiming::parts`]).
    pub fn stage_part(&mut self, name: &str, seconds: f64) {
        self.pending_parts.push(StagePart {
            name: name.into(),
            seconds,
        });
    }

    /// Run `f` as part `name` of the running stage, timed.
    pub fn timed<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let v = f();
        self.stage_part(name, t.elapsed().as_secs_f64());
        v
    }

    pub fn finish(&mut self, error: Option<(String, String)>) {
        self.ended_at = Some(now_rfc3339());
        self.total_seconds = self
            .start
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or_default();
        match error {
            None => self.status = JobStatus::Success,
            Some((stage, message)) => {
                self.status = JobStatus::Failed;
                self.failed_stage = Some(stage);
                self.error = Some(message);
            }
        }
    }

    /// Where [`Report::write_new`] last wrote this report.
    pub fn written_path(&self) -> Option<&Path> {
        self.written_to.as_ref().map(|(_, w)| w.as_path())
    }

    /// Replace `path` (the user asked to overwrite the output this report describes).
    pub fn write_replacing(&mut self, path: &Path) -> std::io::Result<PathBuf> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::util::write_atomic(path, &json)?;
        self.written_to = Some((path.to_path_buf(), path.to_path_buf()));
        Ok(path.to_path_buf())
    }

    /// [`Report::write_new`] for callers that do not need the path written.
    pub fn write(&mut self, path: &Path) -> std::io::Result<()> {
        self.write_new(path).map(|_| ())
    }

    /// Write the report atomically (temp file + rename, so a reader never sees half a
    /// report) without ever replacing a file this report did not write itself. Returns the
    /// path written:
    /// - the file this report wrote when it was asked for `path` before (replaced: a failure
    ///   after a first write updates its own report, wherever that went);
    /// - `path`, when nothing was there;
    /// - otherwise `path` is left untouched (an earlier run's report, or any file given with
    ///   `--report`) and the report goes beside it as `NAME.N.json` (`NAME` is `path` without
    ///   its `.json`; the first free `N` from 1), which is returned.
    ///
    /// The no-clobber check and the write are one step (a hard link of the synced temp file),
    /// so a file appearing meanwhile is not replaced either.
    pub fn write_new(&mut self, path: &Path) -> std::io::Result<PathBuf> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        if let Some((asked, written)) = &self.written_to {
            if asked == path {
                crate::util::write_atomic(written, &json)?;
                return Ok(written.clone());
            }
        }
        for n in 0..1000u32 {
            let candidate = if n == 0 {
                path.to_path_buf()
            } else {
                numbered_beside(path, n)
            };
            let tmp = crate::util::synced_temp_beside(&candidate, &json)?;
            match tmp.persist_noclobber(&candidate) {
                Ok(_) => {
                    self.written_to = Some((path.to_path_buf(), candidate.clone()));
                    return Ok(candidate);
                }
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.error),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} and 999 numbered reports beside it exist",
                path.display()
            ),
        ))
    }
}

/// `dir/job.report.json` → `dir/job.report.N.json`.
fn numbered_beside(path: &Path, n: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".json").unwrap_or(&name);
    path.with_file_name(format!("{stem}.{n}.json"))
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
        let status = f.status.as_str();
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
        crate::util::write_atomic(&p, b"first").unwrap();
        crate::util::write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "r.json")
            .collect();
        assert!(leftovers.is_empty());
    }

    fn report() -> Report {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.vmdk");
        std::fs::write(&disk, b"").unwrap();
        let manifest = dir.path().join("m.json");
        let text = format!(
            r#"{{"version": "1.0", "pipeline": {{"load": {{"source_path": "{}"}}}}}}"#,
            disk.display()
        );
        std::fs::write(&manifest, text).unwrap();
        let plan = crate::manifest::load_manifest(&manifest, Some(dir.path())).unwrap();
        Report::new(&plan)
    }

    #[test]
    fn write_new_never_replaces_a_file_it_did_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job.report.json");
        std::fs::write(&p, b"earlier good run").unwrap();
        let mut r = report();
        let written = r.write_new(&p).unwrap();
        assert_eq!(written, dir.path().join("job.report.1.json"));
        assert_eq!(std::fs::read(&p).unwrap(), b"earlier good run");
        // Its own file is rewritten in place on the next write.
        r.finish(Some(("fix".into(), "boom".into())));
        assert_eq!(r.write_new(&p).unwrap(), written);
        let back: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
        assert_eq!(back["status"], "failed");
        // Another report does not take the numbered one either.
        assert_eq!(
            report().write_new(&p).unwrap(),
            dir.path().join("job.report.2.json")
        );
    }

    #[test]
    fn write_new_writes_the_path_when_free() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        let mut r = report();
        assert_eq!(r.write_new(&p).unwrap(), p);
        r.finish(None);
        r.write(&p).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back["status"], "success");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn job_status_serializes_as_before() {
        for (s, name) in [
            (JobStatus::Running, "running"),
            (JobStatus::Success, "success"),
            (JobStatus::Failed, "failed"),
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), name);
            assert_eq!(serde_json::from_value::<JobStatus>(name.into()).unwrap(), s);
        }
    }
}

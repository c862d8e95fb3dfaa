//! `h2k-guest workflow status|queue|list|submit`: read a spool directory back (the seed's
//! `hyperctl workflow -op status|queue`) and submit manifests to it atomically. Nothing here
//! needs the daemon to be running; everything is read from the directory and the daemon's
//! state file.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::daemon::records::{self, FiledReport};
use crate::daemon::spool::{self, Spool};
use crate::daemon::state::{self, DaemonState};
use crate::logging::escape_controls;

/// Largest manifest `workflow submit` copies (manifests are a few KiB; this refuses the wrong file).
pub const MAX_SUBMIT_BYTES: u64 = 4 << 20;

/// Why a `workflow` command failed; each message is one line naming the file, flag or directory.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("{}: no such spool directory (start `h2k-guest daemon --dir {}` once, or create it)", .0.display(), .0.display())]
    NoSpool(PathBuf),
    #[error("--since {0:?}: expected a date as YYYY-MM-DD")]
    BadSince(String),
    #[error("{}: not a file name", .0.display())]
    NotAFileName(PathBuf),
    #[error("{}: the daemon only takes .json, .yaml and .yml files whose names do not start with a dot", .0.display())]
    NotAManifestName(PathBuf),
    #[error("{}: {what}: submit a regular file", path.display())]
    NotRegular { path: PathBuf, what: &'static str },
    #[error("{}: larger than {MAX_SUBMIT_BYTES} bytes: not a manifest", .0.display())]
    TooBig(PathBuf),
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> WorkflowError {
    let path = path.to_path_buf();
    move |source| WorkflowError::Io { path, what, source }
}

/// The commands read an existing spool; a mistyped `--dir` is an error, not an empty queue.
fn existing(sp: &Spool) -> Result<(), WorkflowError> {
    if sp.root.is_dir() {
        Ok(())
    } else {
        Err(WorkflowError::NoSpool(sp.root.clone()))
    }
}

/// `workflow queue`: how many manifests are where.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueCounts {
    pub dir: PathBuf,
    /// The UTC date the dated counts are for.
    pub date: String,
    pub to_be_processed: usize,
    pub processing: usize,
    pub processed_today: usize,
    pub failed_today: usize,
}

pub fn queue(sp: &Spool) -> Result<QueueCounts, WorkflowError> {
    existing(sp)?;
    Ok(counts(sp))
}

fn counts(sp: &Spool) -> QueueCounts {
    let date = spool::today();
    QueueCounts {
        dir: sp.root.clone(),
        to_be_processed: spool::visible_entries(&sp.to_be_processed()).len(),
        processing: spool::visible_entries(&sp.processing()).len(),
        processed_today: spool::filed_manifests(&sp.processed().join(&date)).len(),
        failed_today: spool::filed_manifests(&sp.failed().join(&date)).len(),
        date,
    }
}

pub fn render_queue(q: &QueueCounts) -> String {
    format!(
        "Spool: {}\nTo Be Processed: {}\nProcessing: {}\nProcessed (today, {}): {}\nFailed (today, {}): {}\n",
        q.dir.display(),
        q.to_be_processed,
        q.processing,
        q.date,
        q.processed_today,
        q.date,
        q.failed_today
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job_id: String,
    pub job: String,
    pub manifest: String,
    pub stage: String,
    pub elapsed_seconds: f64,
    pub stage_elapsed_seconds: f64,
    pub attempt: u32,
    pub output_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub state: String,
    pub started_at: String,
    pub uptime_seconds: f64,
    pub updated_at: String,
    pub output_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub max_concurrent_jobs: usize,
    pub on_stop: String,
    pub processed: u64,
    pub failed: u64,
    pub requeued: u64,
    pub jobs: Vec<JobStatus>,
}

/// `workflow status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub dir: PathBuf,
    pub running: bool,
    pub daemons: Vec<DaemonStatus>,
    /// Pids of daemons that left a state file and are gone (killed).
    pub stale: Vec<u32>,
    pub queue: QueueCounts,
}

fn secs(x: f64) -> f64 {
    (x.max(0.0) * 10.0).round() / 10.0
}

fn daemon_status(s: DaemonState, now: f64) -> DaemonStatus {
    DaemonStatus {
        pid: s.pid,
        state: s.state,
        started_at: s.started_at,
        uptime_seconds: secs(now - s.started_unix),
        updated_at: s.updated_at,
        output_dir: s.output_dir,
        log_file: s.log_file,
        max_concurrent_jobs: s.max_concurrent_jobs,
        on_stop: s.on_stop,
        processed: s.processed,
        failed: s.failed,
        requeued: s.requeued,
        jobs: s
            .jobs
            .into_iter()
            .map(|j| JobStatus {
                job_id: j.job_id,
                job: j.job,
                manifest: j.manifest,
                stage: j.stage,
                elapsed_seconds: secs(now - j.started_unix),
                stage_elapsed_seconds: secs(now - j.stage_started_unix),
                attempt: j.attempt,
                output_dir: j.output_dir,
            })
            .collect(),
    }
}

pub fn status(sp: &Spool) -> Result<Status, WorkflowError> {
    existing(sp)?;
    let now = crate::util::unix_now();
    let mut daemons = Vec::new();
    let mut stale = Vec::new();
    for (s, alive) in state::read_all(sp) {
        if alive {
            daemons.push(daemon_status(s, now));
        } else {
            stale.push(s.pid);
        }
    }
    Ok(Status {
        dir: sp.root.clone(),
        running: !daemons.is_empty(),
        daemons,
        stale,
        queue: counts(sp),
    })
}

/// "1h 02m", "3m 05s", "12.3s"
pub fn human_duration(s: f64) -> String {
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let t = s.round() as u64;
    if t < 3600 {
        format!("{}m {:02}s", t / 60, t % 60)
    } else {
        format!("{}h {:02}m", t / 3600, (t % 3600) / 60)
    }
}

pub fn render_status(st: &Status) -> String {
    let mut o = String::new();
    if st.daemons.is_empty() {
        let missing = if st.dir.is_dir() {
            ""
        } else {
            " (no such directory)"
        };
        o += &format!("no daemon running on {}{missing}\n", st.dir.display());
    }
    for d in &st.daemons {
        o += &format!(
            "daemon {} on {}: pid {}, since {} (up {}), {} of {} job slot{} busy, on stop: {}\n",
            d.state,
            st.dir.display(),
            d.pid,
            d.started_at,
            human_duration(d.uptime_seconds),
            d.jobs.len(),
            d.max_concurrent_jobs,
            if d.max_concurrent_jobs == 1 { "" } else { "s" },
            d.on_stop
        );
        o += &format!("  outputs: {}\n", d.output_dir.display());
        if let Some(l) = &d.log_file {
            o += &format!("  log: {}\n", l.display());
        }
        o += &format!(
            "  since start: {} processed, {} failed, {} re-queued\n",
            d.processed, d.failed, d.requeued
        );
        for j in &d.jobs {
            o += &format!(
                "  job {}: stage {} ({}), running {}, attempt {}, manifest {}\n",
                j.job,
                j.stage,
                human_duration(j.stage_elapsed_seconds),
                human_duration(j.elapsed_seconds),
                j.attempt,
                escape_controls(&j.manifest)
            );
        }
    }
    for pid in &st.stale {
        o += &format!(
            "stale state of daemon pid {pid} (not running; cleaned up by the next daemon start)\n"
        );
    }
    let q = &st.queue;
    o += &format!(
        "queue: {} to be processed, {} processing, {} processed today, {} failed today\n",
        q.to_be_processed, q.processing, q.processed_today, q.failed_today
    );
    o
}

/// One row of `workflow list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    /// `processed`, `failed`, `processing`, `queued`.
    pub status: records::JobStatus,
    /// The dated directory (filed jobs only).
    pub date: Option<String>,
    /// The file name where it is now.
    pub name: String,
    /// The name it was submitted under (when known).
    pub manifest: String,
    pub job_id: Option<String>,
    pub duration_seconds: Option<f64>,
    pub stage: Option<String>,
    pub error: Option<String>,
    pub output_dir: Option<String>,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter {
    pub processed: bool,
    pub failed: bool,
}

/// `workflow list`: filed jobs (oldest first), then what is processing and queued.
pub fn list(
    sp: &Spool,
    filter: ListFilter,
    since: Option<&str>,
) -> Result<Vec<ListEntry>, WorkflowError> {
    if let Some(s) = since {
        if !spool::is_date(s) {
            return Err(WorkflowError::BadSince(s.to_string()));
        }
    }
    existing(sp)?;
    let all = !filter.processed && !filter.failed;
    let mut out = Vec::new();
    let mut kinds = Vec::new();
    if all || filter.processed {
        kinds.push((
            records::JobStatus::Processed,
            sp.processed(),
            spool::REPORT_SUFFIX,
        ));
    }
    if all || filter.failed {
        kinds.push((records::JobStatus::Failed, sp.failed(), spool::ERROR_SUFFIX));
    }
    for (status, dir, suffix) in kinds {
        for date in spool::dated_dirs(&dir) {
            if since.is_some_and(|s| date.as_str() < s) {
                continue;
            }
            let day = dir.join(&date);
            for name in spool::filed_manifests(&day) {
                let side = FiledReport::read(&day.join(format!("{name}{suffix}")));
                let side_ref = side.as_ref();
                out.push(ListEntry {
                    status,
                    date: Some(date.clone()),
                    manifest: side_ref
                        .and_then(|s| s.manifest.clone())
                        .unwrap_or_else(|| name.clone()),
                    job_id: side_ref.and_then(|s| s.job_id.clone()),
                    duration_seconds: side_ref.and_then(FiledReport::duration),
                    stage: side_ref.and_then(|s| s.stage.clone()),
                    error: match side_ref {
                        Some(s) => s.error.clone(),
                        None => Some(format!("no {suffix} beside it")),
                    },
                    output_dir: side_ref.and_then(|s| s.output_dir.clone()),
                    path: day.join(&name),
                    name,
                });
            }
        }
    }
    // Sort filed jobs by date, then by when they were filed.
    out.sort_by(|a, b| (&a.date, file_mtime(&a.path)).cmp(&(&b.date, file_mtime(&b.path))));
    if all {
        let now = crate::util::unix_now();
        let live: Vec<DaemonState> = state::read_all(sp)
            .into_iter()
            .filter(|(_, a)| *a)
            .map(|(s, _)| s)
            .collect();
        for name in spool::visible_entries(&sp.processing()) {
            let path = sp.processing().join(&name);
            let name = name.to_string_lossy().into_owned();
            let ledger = std::fs::symlink_metadata(&path)
                .ok()
                .and_then(|m| spool::ledger_read(sp, &spool::FileKey::of(&m)));
            let stage = ledger.as_ref().and_then(|l| {
                live.iter()
                    .flat_map(|d| d.jobs.iter())
                    .find(|j| j.job_id == l.job_id)
                    .map(|j| j.stage.clone())
            });
            out.push(ListEntry {
                status: records::JobStatus::Processing,
                date: None,
                manifest: ledger
                    .as_ref()
                    .map(|l| l.manifest.clone())
                    .unwrap_or_else(|| name.clone()),
                job_id: ledger.as_ref().map(|l| l.job_id.clone()),
                duration_seconds: ledger.as_ref().map(|l| secs(now - l.claimed_unix)),
                stage,
                error: None,
                output_dir: ledger
                    .as_ref()
                    .and_then(|l| l.output_dir.as_ref().map(|p| p.display().to_string())),
                path,
                name,
            });
        }
        for name in spool::visible_entries(&sp.to_be_processed()) {
            let path = sp.to_be_processed().join(&name);
            let name = name.to_string_lossy().into_owned();
            out.push(ListEntry {
                status: records::JobStatus::Queued,
                date: None,
                manifest: name.clone(),
                job_id: None,
                duration_seconds: None,
                stage: None,
                error: None,
                output_dir: None,
                path,
                name,
            });
        }
    }
    Ok(out)
}

fn file_mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok()
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() <= max {
        s
    } else {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

pub fn render_list(entries: &[ListEntry]) -> String {
    if entries.is_empty() {
        return "no jobs\n".into();
    }
    let wname = entries
        .iter()
        .map(|e| e.name.chars().count())
        .max()
        .unwrap_or(8)
        .clamp(8, 48);
    let mut o = format!(
        "{:<10}  {:<10}  {:>9}  {:<wname$}  DETAIL\n",
        "DATE", "STATUS", "DURATION", "MANIFEST"
    );
    for e in entries {
        let detail = match e.status {
            records::JobStatus::Failed => format!(
                "{}: {}",
                e.stage.as_deref().unwrap_or("?"),
                one_line(e.error.as_deref().unwrap_or(""), 120)
            ),
            records::JobStatus::Processed => {
                format!("outputs: {}", e.output_dir.as_deref().unwrap_or("-"))
            }
            records::JobStatus::Processing => {
                format!("stage {}", e.stage.as_deref().unwrap_or("?"))
            }
            records::JobStatus::Queued => String::new(),
        };
        let detail = if e.manifest != e.name && e.status != records::JobStatus::Queued {
            format!("{detail} (submitted as {})", e.manifest)
        } else {
            detail
        };
        // Names and errors come from whoever wrote into the spool: one row stays one line.
        o += &format!(
            "{:<10}  {:<10}  {:>9}  {:<wname$}  {}\n",
            e.date.as_deref().unwrap_or("-"),
            e.status.as_str(),
            e.duration_seconds
                .map(human_duration)
                .unwrap_or_else(|| "-".into()),
            escape_controls(&e.name),
            escape_controls(detail.trim_end())
        );
    }
    o
}

/// `workflow submit`: copy `file` into `DIR/to_be_processed/` under a hidden temp name, fsync,
/// then rename it to its own name (`NAME-N.ext` if taken), so the daemon only ever sees a
/// complete manifest. Returns the submitted path.
pub fn submit(sp: &Spool, file: &Path) -> Result<PathBuf, WorkflowError> {
    let name = file
        .file_name()
        .ok_or_else(|| WorkflowError::NotAFileName(file.to_path_buf()))?;
    if !spool::has_manifest_extension(name) || spool::is_hidden_name(name) {
        return Err(WorkflowError::NotAManifestName(file.to_path_buf()));
    }
    let bytes = read_manifest_input(file)?;
    existing(sp)?;
    let tbp = sp.to_be_processed();
    std::fs::create_dir_all(&tbp).map_err(io_err(&tbp, "cannot create"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".submit-")
        .suffix(".tmp")
        .tempfile_in(&tbp)
        .map_err(io_err(&tbp, "cannot write"))?;
    tmp.write_all(&bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err(tmp.path(), "cannot write"))?;
    let tmp_path = tmp.into_temp_path();
    let dest = spool::move_unique(&tmp_path, &tbp, name).map_err(io_err(&tbp, "cannot submit"))?;
    let _ = tmp_path.keep();
    spool::sync_dir(&tbp);
    Ok(dest)
}

/// Read a file to submit: a regular file of at most [`MAX_SUBMIT_BYTES`]. Opened non-blocking
/// so a FIFO cannot hang us, and checked on the open descriptor (no race with a swap).
fn read_manifest_input(file: &Path) -> Result<Vec<u8>, WorkflowError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(file)
        .map_err(io_err(file, "cannot read"))?;
    let ft = f
        .metadata()
        .map_err(io_err(file, "cannot read"))?
        .file_type();
    let what = crate::util::file_type_name(&ft);
    if !ft.is_file() {
        return Err(WorkflowError::NotRegular {
            path: file.to_path_buf(),
            what,
        });
    }
    let mut bytes = Vec::new();
    f.take(MAX_SUBMIT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(file, "cannot read"))?;
    if bytes.len() as u64 > MAX_SUBMIT_BYTES {
        return Err(WorkflowError::TooBig(file.to_path_buf()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(3.12), "3.1s");
        assert_eq!(human_duration(185.0), "3m 05s");
        assert_eq!(human_duration(3720.0), "1h 02m");
    }

    #[test]
    fn submit_renames_in_and_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let sp = Spool::new(&d.path().join("spool"));
        let m = d.path().join("vm.json");
        std::fs::write(&m, "{}").unwrap();
        assert!(submit(&sp, &m)
            .unwrap_err()
            .to_string()
            .contains("no such spool directory"));
        sp.create().unwrap();
        let a = submit(&sp, &m).unwrap();
        let b = submit(&sp, &m).unwrap();
        assert_eq!(a, sp.to_be_processed().join("vm.json"));
        assert_eq!(b, sp.to_be_processed().join("vm-1.json"));
        let leftovers: Vec<_> = std::fs::read_dir(sp.to_be_processed())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
        let txt = d.path().join("notes.txt");
        std::fs::write(&txt, "x").unwrap();
        assert!(submit(&sp, &txt).is_err());
        let q = queue(&sp).unwrap();
        assert_eq!(
            (
                q.to_be_processed,
                q.processing,
                q.processed_today,
                q.failed_today
            ),
            (2, 0, 0, 0)
        );
    }

    #[test]
    fn submit_refuses_fifos_devices_and_huge_files() {
        let d = tempfile::tempdir().unwrap();
        let sp = Spool::new(d.path());
        sp.create().unwrap();
        let fifo = d.path().join("pipe.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = submit(&sp, &fifo).unwrap_err().to_string();
        assert!(e.contains("pipe.json") && e.contains("FIFO"), "{e}");
        let zero = d.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = submit(&sp, &zero).unwrap_err().to_string();
        assert!(e.contains("zero.json") && e.contains("device"), "{e}");
        let big = d.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_SUBMIT_BYTES as usize + 1]).unwrap();
        let e = submit(&sp, &big).unwrap_err().to_string();
        assert!(e.contains("big.json") && e.contains("larger"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn list_rejects_bad_dates() {
        let d = tempfile::tempdir().unwrap();
        let sp = Spool::new(d.path());
        assert!(list(&sp, ListFilter::default(), Some("yesterday")).is_err());
        let e = list(&sp, ListFilter::default(), Some("2026-13-45")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--since \"2026-13-45\": expected a date as YYYY-MM-DD"
        );
        let gone = Spool::new(&d.path().join("nonexistent"));
        assert!(matches!(queue(&gone), Err(WorkflowError::NoSpool(_))));
        assert!(matches!(status(&gone), Err(WorkflowError::NoSpool(_))));
        assert!(list(&sp, ListFilter::default(), Some("2026-01-01"))
            .unwrap()
            .is_empty());
    }
}

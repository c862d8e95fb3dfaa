//! CONVERT: `qemu-nbd` exports the fixed overlay read-only on a unix socket and `qemu-img
//! convert` copies it from `nbd+unix://` into `OUTPUT.part`, which is fsynced and renamed to
//! the final name only when complete. NBD block-status lets qemu-img skip holes and zeroes,
//! so the copy costs what the guest holds, not its virtual size.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::plan::{CompressionType, ConvertPlan, OutputFormat};
use crate::process::{self, Child};
use crate::progress::StageProgress;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot start {tool}: {reason}")]
    Spawn { tool: &'static str, reason: String },
    #[error("qemu-nbd did not open its socket {socket} within {secs} s: {reason}")]
    NbdNotReady {
        socket: String,
        secs: u64,
        reason: String,
    },
    #[error("qemu-img convert to {output} failed: {reason}")]
    QemuImg { output: String, reason: String },
    #[error("interrupted; removed the partial output {output}")]
    Cancelled { output: String },
    #[error("cannot finish {output}: {reason}")]
    Finalize { output: String, reason: String },
}

/// A qemu-nbd child serving one image on a unix socket; killed on drop.
pub struct NbdExport {
    child: Child,
    socket: PathBuf,
}

impl NbdExport {
    /// Export `image` (of `format`) read-only on `socket`.
    pub fn start(image: &Path, format: &str, socket: &Path) -> Result<NbdExport, ConvertError> {
        // Through the process module: qemu-nbd --persistent would otherwise outlive a kill -9.
        let child = process::qemu_nbd()
            .args([
                "--read-only",
                "--persistent",
                "--shared=8",
                "--format",
                format,
                "--socket",
            ])
            .arg(socket)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ConvertError::Spawn {
                tool: process::QEMU_NBD,
                reason: spawn_reason(e),
            })?;
        let mut export = NbdExport {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        // Ready when it accepts a connection: the socket file can exist before qemu-nbd
        // listens on it (seen with Debian 12's qemu-nbd 7.2 inside a container).
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(status)) = export.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = export.child.take_stderr() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(ConvertError::NbdNotReady {
                    socket: socket.display().to_string(),
                    secs: 15,
                    reason: format!("qemu-nbd exited ({status}): {}", err.trim()),
                });
            }
            if Instant::now() > deadline {
                return Err(ConvertError::NbdNotReady {
                    socket: socket.display().to_string(),
                    secs: 15,
                    reason: "still starting".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(export)
    }

    /// The URI qemu-img (or anything NBD-aware) opens.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }
}

impl Drop for NbdExport {
    fn drop(&mut self) {
        self.child.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The io error alone, as the `Spawn` variant's message had it before the process module.
fn spawn_reason(e: process::ProcessError) -> String {
    match e {
        process::ProcessError::Spawn { source, .. }
        | process::ProcessError::Wait { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// `OUTPUT.part`: where the copy is written until it is complete.
pub fn part_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// The `qemu-img convert` arguments for reading `source_uri` (raw over NBD) into `target`.
pub fn qemu_img_args(source_uri: &str, target: &Path, plan: &ConvertPlan) -> Vec<String> {
    let mut args: Vec<String> = vec!["convert".into(), "-p".into(), "-f".into(), "raw".into()];
    args.extend(["-O".into(), plan.format.as_str().into()]);
    // Out-of-order writes let qemu-img's parallel coroutines finish in any order.
    args.push("-W".into());
    if plan.format == OutputFormat::Qcow2 && plan.compress {
        args.push("-c".into());
        let ty = match plan.compression_type {
            CompressionType::Zstd => "zstd",
            CompressionType::Zlib => "zlib",
        };
        args.extend(["-o".into(), format!("compression_type={ty}")]);
    }
    args.push(source_uri.into());
    args.push(target.display().to_string());
    args
}

/// Parse qemu-img's `-p` progress ("    (42.17/100%)") from a chunk of its output.
pub fn parse_progress(chunk: &str) -> Option<f64> {
    let start = chunk.rfind('(')?;
    let rest = &chunk[start + 1..];
    let end = rest.find('/')?;
    rest[..end].trim().parse().ok()
}

/// One disk to copy: the NBD export of its fixed overlay and the final output name. `weight`
/// (its virtual size) is its share of the progress bar.
pub struct CopyJob<'a> {
    pub source_uri: String,
    pub output: &'a Path,
    pub weight: u64,
}

/// Disks copied at once at most: each qemu-img is one reader and one writer, and two share the
/// two cores of a small host without starving the NBD servers.
pub const MAX_PARALLEL_COPIES: usize = 2;

/// Copy the NBD export into `output` through `output.part`. On failure or cancel the
/// `.part` is removed; the final name appears only after fsync.
pub fn convert(
    source_uri: &str,
    output: &Path,
    plan: &ConvertPlan,
    cancel: &AtomicBool,
    quiet: bool,
) -> Result<(), ConvertError> {
    let job = CopyJob {
        source_uri: source_uri.into(),
        output,
        weight: 1,
    };
    convert_all(&[job], plan, cancel, quiet, 1)
}

/// Copy every job, `max_parallel` at a time, under one progress bar weighted by size. Each
/// output is written as `OUTPUT.part`, fsynced and renamed when its copy is complete; when
/// one copy fails (or on cancel) the others are killed and every `.part` is removed.
pub fn convert_all(
    jobs: &[CopyJob],
    plan: &ConvertPlan,
    cancel: &AtomicBool,
    quiet: bool,
    max_parallel: usize,
) -> Result<(), ConvertError> {
    let mut bar = StageProgress::new("convert", quiet);
    let result = copy_all(jobs, plan, cancel, max_parallel.max(1), &mut bar);
    bar.finish();
    if result.is_err() {
        for j in jobs {
            let _ = std::fs::remove_file(part_path(j.output));
        }
    }
    result
}

/// A running `qemu-img convert` with its progress and error readers.
struct Copy {
    index: usize,
    child: Child,
    progress: mpsc::Receiver<f64>,
    stderr: std::thread::JoinHandle<String>,
    percent: f64,
}

fn copy_all(
    jobs: &[CopyJob],
    plan: &ConvertPlan,
    cancel: &AtomicBool,
    max_parallel: usize,
    bar: &mut StageProgress,
) -> Result<(), ConvertError> {
    let total: u64 = jobs.iter().map(|j| j.weight.max(1)).sum();
    let mut done_weight = 0u64;
    let mut next = 0;
    let mut running: Vec<Copy> = Vec::new();
    loop {
        while running.len() < max_parallel && next < jobs.len() {
            let _ = std::fs::remove_file(part_path(jobs[next].output));
            running.push(start_copy(next, &jobs[next], plan)?);
            next += 1;
        }
        if running.is_empty() {
            return Ok(());
        }
        if cancel.load(Ordering::SeqCst) {
            let first = running[0].index;
            for c in &mut running {
                c.child.kill();
            }
            return Err(ConvertError::Cancelled {
                output: jobs[first].output.display().to_string(),
            });
        }
        let mut finished = None;
        for (k, c) in running.iter_mut().enumerate() {
            while let Ok(p) = c.progress.try_recv() {
                c.percent = p;
            }
            match c.child.try_wait() {
                Ok(Some(status)) => {
                    finished = Some((k, Ok(status)));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    finished = Some((k, Err(e.to_string())));
                    break;
                }
            }
        }
        let in_flight: f64 = running
            .iter()
            .map(|c| jobs[c.index].weight.max(1) as f64 * c.percent / 100.0)
            .sum();
        bar.set_percent(100.0 * (done_weight as f64 + in_flight) / total as f64);
        let Some((k, outcome)) = finished else {
            // Short: the end of a copy is noticed here, and a 2 s copy is the common case.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let c = running.swap_remove(k);
        let job = &jobs[c.index];
        let out_name = job.output.display().to_string();
        let err = c.stderr.join().unwrap_or_default();
        let failure = match outcome {
            Ok(status) if status.success() => finalize(&part_path(job.output), job.output).err(),
            Ok(status) => {
                let reason = process::reduce_stderr(&err).unwrap_or_else(|| "failed".into());
                Some(ConvertError::QemuImg {
                    output: out_name,
                    reason: format!("{reason} ({status})"),
                })
            }
            Err(reason) => Some(ConvertError::QemuImg {
                output: out_name,
                reason,
            }),
        };
        if let Some(e) = failure {
            for other in &mut running {
                other.child.kill();
            }
            return Err(e);
        }
        done_weight += job.weight.max(1);
    }
}

fn start_copy(index: usize, job: &CopyJob, plan: &ConvertPlan) -> Result<Copy, ConvertError> {
    let args = qemu_img_args(&job.source_uri, &part_path(job.output), plan);
    log::debug!("qemu-img {}", args.join(" "));
    let mut child = process::qemu_img()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ConvertError::Spawn {
            tool: process::QEMU_IMG,
            reason: spawn_reason(e),
        })?;
    let mut stdout = child.take_stdout().expect("piped stdout");
    let mut stderr = child.take_stderr().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<f64>();
    // Detached: it ends when qemu-img closes its stdout.
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(p) = parse_progress(&String::from_utf8_lossy(&buf[..n])) {
                let _ = tx.send(p);
            }
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Ok(Copy {
        index,
        child,
        progress: rx,
        stderr,
        percent: 0.0,
    })
}

/// fsync the finished `.part`, rename it to the final name, fsync the directory.
fn finalize(part: &Path, output: &Path) -> Result<(), ConvertError> {
    let fail = |e: std::io::Error| ConvertError::Finalize {
        output: output.display().to_string(),
        reason: e.to_string(),
    };
    File::open(part).and_then(|f| f.sync_all()).map_err(fail)?;
    std::fs::rename(part, output).map_err(fail)?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        assert_eq!(parse_progress("    (0.00/100%)\r"), Some(0.0));
        assert_eq!(
            parse_progress("    (12.50/100%)\r    (13.01/100%)\r"),
            Some(13.01)
        );
        assert_eq!(parse_progress("    (100.00/100%)\n"), Some(100.0));
        assert_eq!(parse_progress("garbage"), None);
    }

    #[test]
    fn part_path_appends_suffix() {
        assert_eq!(
            part_path(Path::new("/o/vm.qcow2")),
            PathBuf::from("/o/vm.qcow2.part")
        );
    }

    #[test]
    fn compressed_qcow2_uses_zstd_by_default() {
        let plan = ConvertPlan {
            compress: true,
            ..Default::default()
        };
        let args = qemu_img_args("nbd+unix:///?socket=/s", Path::new("/o/x.part"), &plan);
        assert!(args.windows(2).any(|w| w == ["-O", "qcow2"]));
        assert!(args.contains(&"-c".to_string()));
        assert!(args
            .windows(2)
            .any(|w| w == ["-o", "compression_type=zstd"]));
        assert_eq!(args.last().unwrap(), "/o/x.part");
    }

    #[test]
    fn uncompressed_and_raw_have_no_compression_options() {
        let raw = ConvertPlan {
            format: OutputFormat::Raw,
            compress: true,
            ..Default::default()
        };
        let args = qemu_img_args("nbd+unix:///?socket=/s", Path::new("/o/x.part"), &raw);
        assert!(!args.contains(&"-c".to_string()));
        let plain = ConvertPlan::default();
        let args = qemu_img_args("nbd+unix:///?socket=/s", Path::new("/o/x.part"), &plain);
        assert!(!args.iter().any(|a| a.starts_with("compression_type")));
    }

    #[test]
    fn nbd_export_serves_an_image_and_convert_writes_final_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let src = small_qcow2(dir.path(), "src.qcow2");
        let sock = dir.path().join("nbd.sock");
        let export = NbdExport::start(&src, "qcow2", &sock).unwrap();
        let out = dir.path().join("out.qcow2");
        let cancel = AtomicBool::new(false);
        convert(&export.uri(), &out, &ConvertPlan::default(), &cancel, true).unwrap();
        assert!(out.exists());
        assert!(!part_path(&out).exists());
        drop(export);
        assert!(!sock.exists(), "socket removed when the export stops");
    }

    #[test]
    fn failed_convert_leaves_no_part_and_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.qcow2");
        let cancel = AtomicBool::new(false);
        let err = convert(
            "nbd+unix:///?socket=/nonexistent.sock",
            &out,
            &ConvertPlan::default(),
            &cancel,
            true,
        )
        .unwrap_err();
        assert!(matches!(err, ConvertError::QemuImg { .. }), "{err}");
        assert!(!out.exists());
        assert!(!part_path(&out).exists());
    }

    fn small_qcow2(dir: &Path, name: &str) -> PathBuf {
        let src = dir.join(name);
        let st = std::process::Command::new(process::QEMU_IMG)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&src)
            .arg("16M")
            .status()
            .unwrap();
        assert!(st.success());
        src
    }

    #[test]
    fn several_disks_are_copied_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let exports: Vec<NbdExport> = (0..3)
            .map(|i| {
                let src = small_qcow2(dir.path(), &format!("src{i}.qcow2"));
                NbdExport::start(&src, "qcow2", &dir.path().join(format!("n{i}.sock"))).unwrap()
            })
            .collect();
        let outs: Vec<PathBuf> = (0..3)
            .map(|i| dir.path().join(format!("out{i}.qcow2")))
            .collect();
        let jobs: Vec<CopyJob> = exports
            .iter()
            .zip(&outs)
            .map(|(e, o)| CopyJob {
                source_uri: e.uri(),
                output: o,
                weight: 16 << 20,
            })
            .collect();
        let cancel = AtomicBool::new(false);
        convert_all(&jobs, &ConvertPlan::default(), &cancel, true, 2).unwrap();
        for o in &outs {
            assert!(o.exists(), "{}", o.display());
            assert!(!part_path(o).exists());
        }
    }

    #[test]
    fn one_failed_copy_stops_the_others_and_leaves_no_part() {
        let dir = tempfile::tempdir().unwrap();
        let src = small_qcow2(dir.path(), "src.qcow2");
        let export = NbdExport::start(&src, "qcow2", &dir.path().join("n.sock")).unwrap();
        let good = dir.path().join("good.qcow2");
        let bad = dir.path().join("bad.qcow2");
        let jobs = [
            CopyJob {
                source_uri: "nbd+unix:///?socket=/nonexistent.sock".into(),
                output: &bad,
                weight: 1,
            },
            CopyJob {
                source_uri: export.uri(),
                output: &good,
                weight: 1,
            },
        ];
        let cancel = AtomicBool::new(false);
        let err = convert_all(&jobs, &ConvertPlan::default(), &cancel, true, 1).unwrap_err();
        assert!(
            matches!(&err, ConvertError::QemuImg { output, .. } if output.ends_with("bad.qcow2")),
            "{err}"
        );
        assert!(!bad.exists() && !part_path(&bad).exists());
        assert!(
            !good.exists(),
            "the copy after a failed one is never started"
        );
        assert!(!part_path(&good).exists());
    }
}

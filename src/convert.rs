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
        while !socket.exists() {
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

/// Copy the NBD export into `output` through `output.part`. On failure or cancel the
/// `.part` is removed; the final name appears only after fsync.
pub fn convert(
    source_uri: &str,
    output: &Path,
    plan: &ConvertPlan,
    cancel: &AtomicBool,
    quiet: bool,
) -> Result<(), ConvertError> {
    let part = part_path(output);
    let out_name = output.display().to_string();
    let _ = std::fs::remove_file(&part);
    let result = run_qemu_img(source_uri, &part, plan, cancel, quiet, &out_name)
        .and_then(|()| finalize(&part, output));
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

fn run_qemu_img(
    source_uri: &str,
    part: &Path,
    plan: &ConvertPlan,
    cancel: &AtomicBool,
    quiet: bool,
    out_name: &str,
) -> Result<(), ConvertError> {
    let args = qemu_img_args(source_uri, part, plan);
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
    let reader = std::thread::spawn(move || {
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
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut bar = StageProgress::new("convert", quiet);
    let status = loop {
        while let Ok(p) = rx.try_recv() {
            bar.set_percent(p);
        }
        if cancel.load(Ordering::SeqCst) {
            child.kill();
            bar.finish();
            return Err(ConvertError::Cancelled {
                output: out_name.into(),
            });
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                bar.finish();
                return Err(ConvertError::QemuImg {
                    output: out_name.into(),
                    reason: e.to_string(),
                });
            }
        }
    };
    let _ = reader.join();
    let err = err_reader.join().unwrap_or_default();
    bar.finish();
    if !status.success() {
        let reason = process::reduce_stderr(&err).unwrap_or_else(|| "failed".into());
        return Err(ConvertError::QemuImg {
            output: out_name.into(),
            reason: format!("{reason} ({status})"),
        });
    }
    Ok(())
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
        let src = dir.path().join("src.qcow2");
        let st = std::process::Command::new(process::QEMU_IMG)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&src)
            .arg("16M")
            .status()
            .unwrap();
        assert!(st.success());
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
}

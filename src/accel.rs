//! Choosing the accelerator for QEMU (the libguestfs appliance and boot checks).
//!
//! `auto` uses KVM only when it really works: `/dev/kvm` must open read-write *and* a short
//! probe must boot the host kernel far enough to print its banner. Nested setups where QEMU
//! aborts on an MSR (0x10a) or hangs with `-cpu host` then fall back to TCG without the user
//! doing anything. The probe result is cached per host boot so it costs ~0.1 s once.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// What the user asked for (`--accel`, `H2K_ACCEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // For H2K_ACCEL-like callers outside clap; the same spellings as the ValueEnum.
        <AccelChoice as clap::ValueEnum>::from_str(s, true).map_err(|_| {
            format!(
                "unknown accelerator {:?} (expected auto, kvm or tcg)",
                s.to_ascii_lowercase()
            )
        })
    }
}

impl fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccelChoice::Auto => "auto",
            AccelChoice::Kvm => "kvm",
            AccelChoice::Tcg => "tcg",
        })
    }
}

/// Why KVM is not usable (one line each; the probe cache stores the text).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KvmUnusable {
    #[error("/dev/kvm: {0}")]
    DevKvm(String),
    #[error("no kernel in /boot to probe KVM with")]
    NoKernel,
    #[error("cannot run {tool}: {reason}")]
    Spawn { tool: String, reason: String },
    #[error("QEMU with KVM printed no kernel banner within {secs:.0} s")]
    NoBanner { secs: f64 },
    #[error("QEMU with KVM failed: {0}")]
    QemuFailed(String),
    /// An earlier probe's verdict, read back from the per-boot cache.
    #[error("{0}")]
    Cached(String),
}

/// The accelerator actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Decision plus the reason, so logs and reports can say why TCG was chosen.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub accel: Accel,
    pub reason: String,
}

impl AccelChoice {
    /// Resolve `auto` by probing; `kvm`/`tcg` are taken as given.
    pub fn resolve(self) -> Resolved {
        match self {
            AccelChoice::Kvm => Resolved {
                accel: Accel::Kvm,
                reason: "requested".into(),
            },
            AccelChoice::Tcg => Resolved {
                accel: Accel::Tcg,
                reason: "requested".into(),
            },
            AccelChoice::Auto => match kvm_usable() {
                Ok(()) => Resolved {
                    accel: Accel::Kvm,
                    reason: "KVM probe succeeded".into(),
                },
                Err(why) => Resolved {
                    accel: Accel::Tcg,
                    reason: format!("KVM not usable: {why}"),
                },
            },
        }
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

fn probe_cache_path() -> PathBuf {
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let uid = nix::unistd::getuid();
    dir.join(format!("h2k-guest-kvm-probe-{uid}-{}", boot_id.trim()))
}

/// Ok when KVM works for QEMU on this host; Err says why not (one line).
pub fn kvm_usable() -> Result<(), KvmUnusable> {
    let cache = probe_cache_path();
    if let Ok(text) = fs::read_to_string(&cache) {
        return match text.strip_prefix("ok") {
            Some(_) => Ok(()),
            None => Err(KvmUnusable::Cached(text.trim().to_string())),
        };
    }
    let result = probe_kvm();
    let line = match &result {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    // Best effort: a failed cache write only costs another probe next time.
    let _ = fs::write(&cache, line);
    result
}

fn probe_kvm() -> Result<(), KvmUnusable> {
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Err(KvmUnusable::DevKvm(e.to_string()));
    }
    let kernel = host_kernel().ok_or(KvmUnusable::NoKernel)?;
    let mut child = crate::process::qemu_system()
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(&kernel)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| KvmUnusable::Spawn {
            tool: qemu_system_binary(),
            reason: match e {
                crate::process::ProcessError::Spawn { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        })?;
    let mut stdout = child.take_stdout().expect("piped stdout");
    let stderr_reader = child.take_stderr().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains("Linux version") {
                let _ = tx.send(());
                break;
            }
        }
    });
    let start = Instant::now();
    let booted = rx.recv_timeout(PROBE_TIMEOUT).is_ok();
    child.kill();
    if booted {
        return Ok(());
    }
    let stderr = stderr_reader
        .and_then(|r| r.join().ok())
        .and_then(|text| crate::process::reduce_stderr(&text));
    match stderr {
        None => Err(KvmUnusable::NoBanner {
            secs: start.elapsed().as_secs_f64(),
        }),
        Some(line) => Err(KvmUnusable::QemuFailed(line)),
    }
}

/// `qemu-system-x86_64`, or what `H2K_QEMU` names (spelled in [`crate::process`]).
pub fn qemu_system_binary() -> String {
    crate::process::qemu_system_program()
}

/// The newest `/boot/vmlinuz-*`, used only by the probe.
fn host_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = fs::read_dir(Path::new("/boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices_case_insensitively() {
        assert_eq!("AUTO".parse::<AccelChoice>().unwrap(), AccelChoice::Auto);
        assert_eq!("kvm".parse::<AccelChoice>().unwrap(), AccelChoice::Kvm);
        assert_eq!("Tcg".parse::<AccelChoice>().unwrap(), AccelChoice::Tcg);
        let err = "hvf".parse::<AccelChoice>().unwrap_err();
        assert!(
            err.contains("hvf") && err.contains("auto, kvm or tcg"),
            "{err}"
        );
    }

    #[test]
    fn explicit_choices_skip_the_probe() {
        assert_eq!(AccelChoice::Tcg.resolve().accel, Accel::Tcg);
        assert_eq!(AccelChoice::Kvm.resolve().accel, Accel::Kvm);
    }
}

//! Launching the one libguestfs appliance a VM gets, with the accelerator rule applied.
//!
//! Under `auto`, KVM is tried when the probe in [`crate::accel`] says it works; if the launch
//! still fails, or does not finish within [`KVM_LAUNCH_BOUND`], the appliance is relaunched
//! once under TCG and the fallback is recorded.

use std::sync::mpsc;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::accel::{Accel, AccelChoice};
use crate::guestfs::{DriveOptions, Event, EventKind, Guestfs, GuestfsError};

/// A KVM appliance starts in a few seconds; past this it is hung (seen with `-cpu host` nested).
pub const KVM_LAUNCH_BOUND: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error("cannot create a libguestfs handle: {0}")]
    Create(GuestfsError),
    #[error("cannot attach {path}: {cause}")]
    AddDrive { path: String, cause: GuestfsError },
    #[error("the libguestfs appliance did not start ({accel}): {cause}")]
    Launch { accel: Accel, cause: GuestfsError },
    #[error(transparent)]
    Setup(GuestfsError),
}

/// One disk to attach.
#[derive(Debug, Clone)]
pub struct Drive {
    pub path: String,
    pub options: DriveOptions,
}

#[derive(Debug, Clone)]
pub struct ApplianceOptions {
    pub accel: AccelChoice,
    /// Forward the appliance console and library messages to stderr (`-v`).
    pub verbose: bool,
    pub vcpus: i32,
    pub memory_mib: i32,
    /// Shown by libguestfs in its messages; the job name helps when several run at once.
    pub identifier: String,
}

impl Default for ApplianceOptions {
    fn default() -> Self {
        // initramfs compression and grub-mkconfig are CPU-bound in the appliance; give it
        // the host's cores (capped) and room for dracut's temp files.
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4) as i32;
        ApplianceOptions {
            accel: AccelChoice::Auto,
            verbose: false,
            vcpus: cores,
            memory_mib: 2048,
            identifier: "h2k-guest".into(),
        }
    }
}

/// A launched appliance and how it was started.
pub struct Appliance {
    pub g: Guestfs,
    pub accel: Accel,
    /// Why this accelerator (e.g. "KVM not usable: /dev/kvm: Permission denied").
    pub accel_reason: String,
    pub launch_seconds: f64,
    /// How many appliance launches this took (1, or 2 after a KVM → TCG fallback).
    pub launches: u32,
}

/// A KVM launch holds it exclusively, a TCG launch shared: while the KVM watchdog runs no
/// other appliance QEMU can appear, so the one new unregistered QEMU child is ours.
static KVM_LAUNCH_LOCK: RwLock<()> = RwLock::new(());

impl Appliance {
    pub fn launch(drives: &[Drive], opts: &ApplianceOptions) -> Result<Appliance, ApplianceError> {
        let env_forces_tcg =
            std::env::var("LIBGUESTFS_BACKEND_SETTINGS").is_ok_and(|s| s.contains("force_tcg"));
        let resolved = if env_forces_tcg && opts.accel == AccelChoice::Auto {
            crate::accel::Resolved {
                accel: Accel::Tcg,
                reason: "LIBGUESTFS_BACKEND_SETTINGS has force_tcg".into(),
            }
        } else {
            opts.accel.resolve()
        };
        let start = Instant::now();
        match resolved.accel {
            Accel::Tcg => {
                let g = launch_once(drives, opts, Accel::Tcg)?;
                Ok(Appliance {
                    g,
                    accel: Accel::Tcg,
                    accel_reason: resolved.reason,
                    launch_seconds: start.elapsed().as_secs_f64(),
                    launches: 1,
                })
            }
            Accel::Kvm => match launch_once(drives, opts, Accel::Kvm) {
                Ok(g) => Ok(Appliance {
                    g,
                    accel: Accel::Kvm,
                    accel_reason: resolved.reason,
                    launch_seconds: start.elapsed().as_secs_f64(),
                    launches: 1,
                }),
                Err(ApplianceError::Launch { cause, .. }) if opts.accel == AccelChoice::Auto => {
                    log::warn!(
                        "appliance launch under KVM failed ({cause}); relaunching under TCG"
                    );
                    let g = launch_once(drives, opts, Accel::Tcg)?;
                    Ok(Appliance {
                        g,
                        accel: Accel::Tcg,
                        accel_reason: format!("KVM launch failed: {}", cause.message),
                        launch_seconds: start.elapsed().as_secs_f64(),
                        launches: 2,
                    })
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Unmount everything, sync and stop the appliance, surfacing write errors.
    pub fn finish(mut self) -> Result<(), GuestfsError> {
        self.g.umount_all()?;
        self.g.shutdown()
    }
}

fn launch_once(
    drives: &[Drive],
    opts: &ApplianceOptions,
    accel: Accel,
) -> Result<Guestfs, ApplianceError> {
    let mut g = Guestfs::new().map_err(ApplianceError::Create)?;
    let settings: Vec<&str> = match accel {
        Accel::Tcg => vec!["force_tcg"],
        Accel::Kvm => vec![],
    };
    g.set_backend_settings(&settings)
        .map_err(ApplianceError::Setup)?;
    g.set_smp(opts.vcpus.max(1))
        .map_err(ApplianceError::Setup)?;
    g.set_memsize(opts.memory_mib)
        .map_err(ApplianceError::Setup)?;
    g.set_identifier(&opts.identifier)
        .map_err(ApplianceError::Setup)?;
    if opts.verbose {
        g.set_verbose(true).map_err(ApplianceError::Setup)?;
        g.on_event(EventKind::Messages, |ev| {
            if let Event::Message { kind, text } = ev {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    eprintln!("[{kind}] {line}");
                }
            }
        })
        .map_err(ApplianceError::Setup)?;
    }
    for d in drives {
        g.add_drive(&d.path, &d.options)
            .map_err(|cause| ApplianceError::AddDrive {
                path: d.path.clone(),
                cause,
            })?;
    }
    let result = match accel {
        Accel::Tcg => {
            let _shared = KVM_LAUNCH_LOCK.read().unwrap_or_else(|p| p.into_inner());
            g.launch()
        }
        Accel::Kvm => {
            let _exclusive = KVM_LAUNCH_LOCK.write().unwrap_or_else(|p| p.into_inner());
            let before = crate::process::qemu_children();
            let (done_tx, done_rx) = mpsc::channel::<()>();
            let watchdog = std::thread::spawn(move || {
                if done_rx.recv_timeout(KVM_LAUNCH_BOUND).is_err() {
                    // Children of the process module (other jobs' qemu-img, qemu-nbd, boot
                    // checks) are never the target; the registry lock keeps new ones from
                    // appearing unregistered while we look.
                    crate::process::with_registry(|ours| {
                        for pid in crate::process::qemu_children()
                            .difference(&before)
                            .filter(|pid| !ours.contains(&(**pid as u32)))
                        {
                            log::warn!("KVM appliance launch exceeded {KVM_LAUNCH_BOUND:?}; killing QEMU pid {pid}");
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(*pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    });
                }
            });
            let r = g.launch();
            let _ = done_tx.send(());
            let _ = watchdog.join();
            r
        }
    };
    result.map_err(|cause| ApplianceError::Launch { accel, cause })?;
    Ok(g)
}

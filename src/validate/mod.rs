//! VALIDATE: `qemu-img check` and booting an image until a login prompt.
//!
//! [`check_image`] runs `qemu-img check` (metadata of qcow2, vmdk, vdi, vhdx; raw has none).
//!
//! [`boot_check`] boots the image under QEMU on a **throw-away qcow2 overlay** (the image is
//! only ever opened read-only as its backing file), on the disk controller asked for — virtio,
//! virtio-scsi, VMware's pvscsi (the faithful "as it ran on VMware" bus), LSI or q35 SATA —
//! with SeaBIOS or OVMF (auto: OVMF when the disk has an EFI system partition), and reads the
//! serial console. `login:` is success. The messages a guest prints when it cannot boot —
//! initramfs-tools and dracut giving up on the root device, emergency shells, kernel panics,
//! GRUB and firmware failures — end the check early with the console line that proves it
//! ([`Console`] is the pure parser). QEMU is killed on every path (success, failure, timeout,
//! error, Ctrl-C/SIGTERM), runs in its own process group, and dies with us if we are killed
//! (through [`crate::process`]); the overlay's temp directory is removed.
//!
//! [`probe_check`] (`validate --boot --probe`) goes further than a login prompt: one appliance
//! launch writes a one-shot systemd unit and its POSIX-sh script (`probe.sh`) into throw-away
//! overlays of every disk; the guest boots with those disks and its NICs (user-mode network,
//! DHCP 10.0.2.15, gateway 10.0.2.2) and, after multi-user.target, prints one `H2K-PROBE {json}`
//! line on its serial console ([`ProbeScanner`] finds it, [`whole_problems`] judges it).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::accel::{self, Accel, AccelChoice};
use crate::load::{self, LoadError, Source, SourceInfo};
use crate::plan::Firmware;
use crate::process::{self, ProcessError};

mod boot;
mod check;
mod console;
mod firmware;
mod guest_agent;
mod probe;
mod probe_report;
mod qemu;
mod selinux;

pub use boot::*;
pub use check::*;
pub use console::*;
pub use firmware::*;
pub use guest_agent::*;
pub use probe::*;
pub use probe_report::*;
pub use qemu::*;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{image}: qemu-img check failed: {reason}")]
    Check { image: String, reason: String },
    #[error("{image}: cannot read its partition table: {reason}")]
    PartitionTable { image: String, reason: String },
    #[error(
        "UEFI firmware (OVMF) not found (looked for {looked}); install ovmf (scripts/setup.sh \
         does) or set H2K_OVMF_CODE and H2K_OVMF_VARS"
    )]
    NoOvmf { looked: String },
    #[error(
        "{image}: OVMF has no boot driver for the {bus} controller; boot UEFI guests with \
         --bus sata, virtio or virtio-scsi"
    )]
    NoUefiDriver { image: String, bus: Bus },
    #[error("cannot run {tool}: {reason}")]
    Spawn { tool: String, reason: String },
    #[error("{image}: QEMU failed on bus {bus}: {reason}")]
    Qemu {
        image: String,
        bus: Bus,
        reason: String,
    },
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
    #[error("{image}: cannot put the boot probe into its overlay: {reason}")]
    Probe { image: String, reason: String },
    #[error("{image}: boot check interrupted; QEMU stopped and its overlay removed")]
    Interrupted { image: String },
}

/// A child that could not be started or waited for; the io error alone is the reason.
fn spawn_err(e: ProcessError) -> ValidateError {
    match e {
        ProcessError::Spawn { tool, source } | ProcessError::Wait { tool, source } => {
            ValidateError::Spawn {
                tool,
                reason: source.to_string(),
            }
        }
        ProcessError::TimedOut { ref tool, .. } => ValidateError::Spawn {
            tool: tool.clone(),
            reason: e.to_string(),
        },
    }
}

fn io_err(what: impl fmt::Display) -> impl FnOnce(std::io::Error) -> ValidateError {
    let what = what.to_string();
    move |e| ValidateError::Io {
        what,
        reason: e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// The disk controller the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Bus {
    /// virtio-blk (`/dev/vda`): what the converted guest should boot on.
    #[value(alias = "virtio-blk")]
    Virtio,
    /// virtio-scsi + scsi-hd (`/dev/sda`).
    VirtioScsi,
    /// VMware's paravirtual SCSI + scsi-hd, with a vmxnet3 NIC: the guest as it ran on VMware.
    #[value(alias = "vmw_pvscsi")]
    Pvscsi,
    /// LSI 53C895A + scsi-hd.
    #[value(alias = "lsi53c895a")]
    Lsi,
    /// q35's built-in AHCI (`-machine q35`).
    #[value(alias = "ahci")]
    Sata,
}

impl Bus {
    pub const ALL: [Bus; 5] = [
        Bus::Virtio,
        Bus::VirtioScsi,
        Bus::Pvscsi,
        Bus::Lsi,
        Bus::Sata,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Bus::Virtio => "virtio",
            Bus::VirtioScsi => "virtio-scsi",
            Bus::Pvscsi => "pvscsi",
            Bus::Lsi => "lsi",
            Bus::Sata => "sata",
        }
    }

    /// The NIC model that goes with the controller.
    pub fn nic_model(self) -> &'static str {
        if self.vmware_like() {
            "vmxnet3"
        } else {
            "virtio-net-pci"
        }
    }

    /// The controllers a VMware VM has: booted on them, the guest also gets VMware's NIC
    /// (vmxnet3) in VMware's PCIe slots, so its interface names are the ones it had there.
    pub fn vmware_like(self) -> bool {
        matches!(self, Bus::Pvscsi | Bus::Lsi | Bus::Sata)
    }

    /// OVMF (as packaged by the distributions) has boot drivers for these controllers.
    pub fn uefi_bootable(self) -> bool {
        !matches!(self, Bus::Pvscsi | Bus::Lsi)
    }

    fn is_virtio(self) -> bool {
        matches!(self, Bus::Virtio | Bus::VirtioScsi)
    }
}

impl fmt::Display for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Bus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Bus as clap::ValueEnum>::from_str(s, true).map_err(|_| {
            format!(
                "unknown bus {:?} (expected virtio, virtio-scsi, pvscsi, lsi or sata)",
                s.to_ascii_lowercase()
            )
        })
    }
}

/// `--firmware`: auto picks UEFI when the disk has an EFI system partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FirmwareChoice {
    #[default]
    Auto,
    Bios,
    #[value(alias = "efi")]
    Uefi,
}

impl FromStr for FirmwareChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <FirmwareChoice as clap::ValueEnum>::from_str(s, true).map_err(|_| {
            format!(
                "unknown firmware {:?} (expected auto, bios or uefi)",
                s.to_ascii_lowercase()
            )
        })
    }
}

fn firmware_name(f: Firmware) -> &'static str {
    match f {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
    }
}

/// What [`boot_check`] boots and how.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Image path or NBD URI.
    pub image: String,
    /// Forced image format (default: detected).
    pub format: Option<String>,
    pub bus: Bus,
    pub firmware: FirmwareChoice,
    pub accel: AccelChoice,
    /// How long to wait for `login:`.
    pub timeout: Duration,
    pub memory_mib: u32,
    /// Keep the serial console here (default: a temp file, kept only when the boot fails).
    pub console_log: Option<PathBuf>,
    /// Set by the caller to stop the check (QEMU is killed, the overlay removed). When None,
    /// boot_check stops on SIGINT/SIGTERM itself (a second signal exits at once).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            image: String::new(),
            format: None,
            bus: Bus::Virtio,
            firmware: FirmwareChoice::Auto,
            accel: AccelChoice::Auto,
            timeout: DEFAULT_TIMEOUT,
            memory_mib: 1024,
            console_log: None,
            cancel: None,
        }
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Outcome
// ---------------------------------------------------------------------------------------------

/// Why a guest did not reach a login prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The initramfs (initramfs-tools, dracut, systemd) never saw the root file system's device.
    RootDeviceMissing,
    /// The guest dropped to an initramfs or emergency shell.
    EmergencyShell,
    KernelPanic,
    /// The BIOS found no bootable disk.
    NoBootableDevice,
    /// GRUB failed (error line, rescue prompt).
    Bootloader,
    /// The UEFI firmware found nothing to boot (UEFI shell, network boot).
    Firmware,
    /// The guest reset or powered off before a login prompt.
    GuestStopped,
    /// No login prompt and no known failure message before the timeout.
    Timeout,
}

impl FailureKind {
    fn describe(self) -> &'static str {
        match self {
            FailureKind::RootDeviceMissing => "the root file system's device never appeared",
            FailureKind::EmergencyShell => "the guest dropped to an emergency shell",
            FailureKind::KernelPanic => "the kernel panicked",
            FailureKind::NoBootableDevice => "the BIOS found no bootable disk",
            FailureKind::Bootloader => "GRUB failed",
            FailureKind::Firmware => "the UEFI firmware found nothing to boot",
            FailureKind::GuestStopped => "the guest reset or powered off before a login prompt",
            FailureKind::Timeout => "no login prompt before the timeout",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BootFailure {
    pub kind: FailureKind,
    /// One sentence: what went wrong.
    pub reason: String,
    /// The console line that shows it (or the last one, on a timeout).
    pub console_line: Option<String>,
    /// The device the guest waited for, when the console names it.
    pub device: Option<String>,
    /// Seconds from QEMU's start until the failure was recognised.
    pub seconds: f64,
}

/// The result of one boot check; serialised for `--json` and reports.
#[derive(Debug, Clone, Serialize)]
pub struct BootOutcome {
    pub image: String,
    pub format: String,
    pub bus: Bus,
    pub firmware: Firmware,
    pub firmware_reason: String,
    pub accel: Accel,
    pub accel_reason: String,
    pub booted: bool,
    /// How far the boot got (firmware, kernel, initramfs, system).
    pub stage: Stage,
    pub seconds_to_login: Option<f64>,
    /// The login prompt line, e.g. "h2k-bios login:".
    pub login_prompt: Option<String>,
    pub failure: Option<BootFailure>,
    /// Wall time of the whole check.
    pub seconds: f64,
    /// Where the serial console was kept (None after a success without --console-log).
    pub console_log: Option<PathBuf>,
    pub last_console_lines: Vec<String>,
}

impl BootOutcome {
    /// One line for people: the time to login, or what the console showed.
    pub fn summary(&self) -> String {
        let how = format!(
            "bus {}, {}, {}",
            self.bus,
            firmware_name(self.firmware),
            self.accel
        );
        match (&self.failure, self.seconds_to_login) {
            (None, Some(s)) => format!(
                "{}: login prompt after {s:.1} s ({how}){}",
                self.image,
                self.login_prompt
                    .as_deref()
                    .map(|p| format!(": {p:?}"))
                    .unwrap_or_default()
            ),
            (Some(f), _) => {
                let mut o = format!("{}: no login on {how}: {}", self.image, f.reason);
                if let Some(line) = &f.console_line {
                    o += &format!("; console: {line:?}");
                }
                o += &format!(" (after {:.1} s", f.seconds);
                if let Some(log) = &self.console_log {
                    o += &format!("; console log: {}", log.display());
                }
                o += ")";
                o
            }
            (None, None) => format!("{}: no result ({how})", self.image),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(text: &str) -> Console {
        let mut c = Console::new();
        c.push(text.as_bytes());
        c
    }

    fn failed(c: &Console) -> (Finding, Option<String>, bool) {
        match c.verdict() {
            Verdict::Failed {
                finding,
                device,
                conclusive,
            } => (finding, device, conclusive),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn getty_prompt_is_a_login() {
        let c = feed(
            "[  OK  ] Started serial-getty@ttyS0.service - Serial Getty on ttyS0.\r\n\
             [  OK  ] Reached target getty.target - Login Prompts.\r\n\r\n\
             Debian GNU/Linux 12 h2k-bios ttyS0\r\n\r\nh2k-bios login: ",
        );
        assert_eq!(c.verdict(), Verdict::Login("h2k-bios login:".into()));
        // "User Login Management" and friends are not prompts.
        let c = feed("Starting systemd-logind.service - User Login Management...\r\n");
        assert_eq!(c.verdict(), Verdict::Running);
    }

    #[test]
    fn a_prompt_split_across_chunks_is_found() {
        let mut c = Console::new();
        c.push(b"\r\nh2k-uefi lo");
        assert_eq!(c.verdict(), Verdict::Running);
        c.push(b"gin: ");
        assert_eq!(c.verdict(), Verdict::Login("h2k-uefi login:".into()));
    }

    // Verbatim from debian12-bios booted on virtio-blk (initramfs-tools without virtio).
    const INITRAMFS_TOOLS: &str = "Begin: Running /scripts/local-block ... done.\r\n\
        done.\r\n\
        Gave up waiting for root file system device.  Common problems:\r\n \
        - Boot args (cat /proc/cmdline)\r\n   \
        - Check rootdelay= (did the system wait long enough?)\r\n \
        - Missing modules (cat /proc/modules; ls /dev)\r\n\
        ALERT!  /dev/sda1 does not exist.  Dropping to a shell!\r\n\r\n\r\n\
        BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) built-in shell (ash)\r\n\
        Enter 'help' for a list of built-in commands.\r\n\r\n\
        (initramfs) ";

    #[test]
    fn initramfs_tools_missing_root() {
        let (f, device, conclusive) = failed(&feed(INITRAMFS_TOOLS));
        assert_eq!(f.kind, FailureKind::RootDeviceMissing);
        assert_eq!(
            f.line,
            "ALERT!  /dev/sda1 does not exist.  Dropping to a shell!"
        );
        assert_eq!(device.as_deref(), Some("/dev/sda1"));
        assert!(conclusive);
        // The first line alone is fatal but waits for the ALERT that names the device.
        let (f, device, conclusive) = failed(&feed(
            "Gave up waiting for root file system device.  Common problems:\r\n",
        ));
        assert_eq!(f.kind, FailureKind::RootDeviceMissing);
        assert_eq!(device, None);
        assert!(!conclusive);
        // A UUID root.
        let (_, device, _) = failed(&feed(
            "ALERT!  UUID=0b7f7d2c-93c5-4b3c-9d5a-2f1e2f8e1a11 does not exist.  Dropping to a shell!\n",
        ));
        assert_eq!(
            device.as_deref(),
            Some("UUID=0b7f7d2c-93c5-4b3c-9d5a-2f1e2f8e1a11")
        );
    }

    #[test]
    fn the_resume_wait_is_not_a_failure() {
        let c = feed("Begin: Waiting for suspend/resume device ... Begin: Running /scripts/local-block ... done.\r\ndone.\r\nGave up waiting for suspend/resume device\r\ndone.\r\n");
        assert_eq!(c.verdict(), Verdict::Running);
    }

    const DRACUT: &str = "[  186.512399] dracut-initqueue[228]: Warning: dracut-initqueue: timeout, still waiting for following initqueue hooks:\r\n\
        [  186.540512] dracut-initqueue[228]: Warning: /lib/dracut/hooks/initqueue/finished/devexists-\\x2fdev\\x2fmapper\\x2fvg0-root.sh: \"if ! grep -q After=remote-fs-pre.target /run/systemd/generator/systemd-cryptsetup@*.service 2>/dev/null; then\r\n\
        [  186.541840] dracut-initqueue[228]:     [ -e \"/dev/mapper/vg0-root\" ]\r\n\
        [  186.542391] dracut-initqueue[228]: fi\"\r\n";

    #[test]
    fn dracut_initqueue_timeout_names_the_device() {
        let (f, device, conclusive) = failed(&feed(DRACUT));
        assert_eq!(f.kind, FailureKind::RootDeviceMissing);
        assert!(f.line.contains("dracut-initqueue: timeout"), "{}", f.line);
        assert_eq!(device.as_deref(), Some("/dev/mapper/vg0-root"));
        assert!(!conclusive);
        let more = format!(
            "{DRACUT}[  246.613044] dracut-initqueue[228]: Warning: Could not boot.\r\n\
             [  246.700000] dracut-initqueue[228]: Warning: /dev/mapper/vg0-root does not exist\r\n\
             Starting dracut-emergency.service - Dracut Emergency Shell...\r\n\
             Warning: /dev/mapper/vg0-root does not exist\r\n\r\n\
             Generating \"/run/initramfs/rdsosreport.txt\"\r\n\r\n\
             Entering emergency mode. Exit the shell to continue.\r\n"
        );
        let (f, device, conclusive) = failed(&feed(&more));
        assert_eq!(
            f.line,
            "[  246.700000] dracut-initqueue[228]: Warning: /dev/mapper/vg0-root does not exist"
        );
        assert_eq!(device.as_deref(), Some("/dev/mapper/vg0-root"));
        assert!(conclusive);
    }

    #[test]
    fn systemd_emergency_mode() {
        let c = feed("[ TIME ] Timed out waiting for device dev-mapper-vg0\\x2droot.device - /dev/mapper/vg0-root.\r\n");
        match c.verdict() {
            Verdict::Suspect(f) => assert_eq!(f.device.as_deref(), Some("/dev/mapper/vg0-root")),
            other => panic!("{other:?}"),
        }
        let c = feed("[ TIME ] Timed out waiting for device dev-mapper-vg0\\x2droot.device - /dev/mapper/vg0-root.\r\n\
            [DEPEND] Dependency failed for initrd-root-device.target - Initrd Root Device.\r\n\
            You are in emergency mode. After logging in, type \"journalctl -xb\" to view\r\n\
            system logs, \"systemctl reboot\" to reboot, \"systemctl default\" or \"exit\"\r\n\
            to boot into default mode.\r\n\
            Cannot open access to console, the root account is locked.\r\n");
        let (f, device, conclusive) = failed(&c);
        assert_eq!(f.kind, FailureKind::EmergencyShell);
        assert!(f.line.starts_with("You are in emergency mode"));
        assert_eq!(device, None, "a suspect line's device is not the failure's");
        assert!(conclusive);
    }

    #[test]
    fn device_jobs_waited_for_in_the_initramfs_end_the_boot() {
        use super::console::device_job_wait;
        assert_eq!(
            device_job_wait(
                "[ *** ] Job dev-disk-by\\x2dpartuuid-b9e90f3…tart running (5min 19s / no limit)"
            ),
            Some(319.0)
        );
        assert_eq!(
            device_job_wait(
                "[  *  ] A start job is running for /dev/disk/by-uuid/1234 (42s / 1min 30s)"
            ),
            Some(42.0)
        );
        assert_eq!(
            device_job_wait("[  OK  ] Finished systemd-sysctl.service (3s / no limit)"),
            None
        );
        assert_eq!(
            device_job_wait("Job dev-sda1.device/start running (soon / no limit)"),
            None
        );
        // Under 90 s: still running; past it, in the initramfs: the root never came.
        let mut c = feed("[    1.000000] Run /init as init process\r\n");
        c.push("\x1b[K[ \x1b[0;31m*\x1b[0m] Job dev-disk-by\\x2dpartuuid-b9e9…tart running (1min 0s / no limit)\r".as_bytes());
        assert!(matches!(c.verdict(), Verdict::Running), "{:?}", c.verdict());
        c.push("\x1b[K[ \x1b[0;31m*\x1b[0m] Job dev-disk-by\\x2dpartuuid-b9e9…tart running (1min 31s / no limit)\r".as_bytes());
        assert!(
            matches!(c.verdict(), Verdict::Failed { ref finding, .. } if finding.kind == FailureKind::RootDeviceMissing),
            "{:?}",
            c.verdict()
        );
        // The same wait after the switch to the real root is a data disk's: not this rule.
        let mut c =
            feed("[    1.000000] Run /init as init process\r\n[    5.0] Switching root.\r\n");
        c.push(b"[ *** ] A start job is running for /dev/disk/by-uuid/9 (1min 40s / 1min 30s)\r");
        assert!(matches!(c.verdict(), Verdict::Running), "{:?}", c.verdict());
    }

    #[test]
    fn tracks_the_stage_and_the_root_argument() {
        let mut c = feed("SeaBIOS (version 1.16.3)\r\nBooting from Hard Disk...\r\n");
        assert_eq!(c.stage(), Stage::Firmware);
        // GRUB's greeting is not the system's.
        c.push("\x1b[0m\x1b[30m\x1b[47mWelcome to GRUB!\r\n".as_bytes());
        assert_eq!(c.stage(), Stage::Firmware);
        c.push(b"[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\r\n\
            [    0.000000] Command line: BOOT_IMAGE=/vmlinuz-6.1.0-56-amd64 root=/dev/mapper/vg0-root ro console=tty0 console=ttyS0,115200n8\r\n");
        assert_eq!(c.stage(), Stage::Kernel);
        assert_eq!(c.root_arg(), Some("/dev/mapper/vg0-root"));
        c.push(b"[    6.170000] Run /init as init process\r\n");
        assert_eq!(c.stage(), Stage::Initramfs);
        c.push("\x1b[0;1;39mWelcome to \x1b[0mDebian GNU/Linux 12 (bookworm) dracut-059-4 (Initramfs)!\r\n".as_bytes());
        assert_eq!(c.stage(), Stage::Initramfs);
        c.push(b"         Starting initrd-switch-root.service - Switch Root...\r\n");
        assert_eq!(c.stage(), Stage::System);
        c.push(b"Welcome to Debian GNU/Linux 12 (bookworm)!\r\n");
        assert_eq!(c.stage(), Stage::System);
    }

    #[test]
    fn kernel_panic() {
        let c = feed("[    2.100000] VFS: Cannot open root device \"sda1\" or unknown-block(0,0): error -6\r\n\
            [    2.100100] Please append a correct \"root=\" boot option; here are the available partitions:\r\n\
            [    2.101000] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\r\n");
        let (f, device, conclusive) = failed(&c);
        assert_eq!(f.kind, FailureKind::KernelPanic);
        assert_eq!(device.as_deref(), Some("sda1"));
        assert!(conclusive);
    }

    #[test]
    fn seabios_blank_disk() {
        // Verbatim (escapes included) from a blank qcow2 under SeaBIOS with graphics=off.
        let c = feed("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.3-debian-1.16.3-2~bpo12+1)\r\nBooting from Hard Disk...\r\nBoot failed: not a bootable disk\r\n\nNo bootable device.\r");
        let (f, _, conclusive) = failed(&c);
        assert_eq!(f.kind, FailureKind::NoBootableDevice);
        assert_eq!(f.line, "No bootable device.");
        assert!(conclusive);
    }

    #[test]
    fn ovmf_falls_to_the_shell() {
        let text = "\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01HBdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0): Not Found\r\n\
            BdsDxe: loading Boot0002 \"EFI Internal Shell\" from Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/FvFile(7C04A583-9E3E-4F1C-AD65-E05268D0B4D1)\r\n";
        let c = feed(text);
        match c.verdict() {
            Verdict::Suspect(f) => {
                assert_eq!(f.kind, FailureKind::Firmware);
                assert!(f.line.starts_with("BdsDxe: failed to load Boot0001"));
            }
            other => panic!("{other:?}"),
        }
        let text = format!("{text}\x1b[07;01HPress \x1b[1m\x1b[37m\x1b[40mESC\x1b[0m\x1b[37m\x1b[40m in 1 seconds to skip \x1b[1m\x1b[33m\x1b[40mstartup.nsh\x1b[0m\x1b[37m\x1b[40m or any other key to continue.\r\n\x1b[08;01H\x1b[1m\x1b[33m\x1b[40mShell> \x1b[0m\x1b[37m\x1b[40m");
        let (f, _, conclusive) = failed(&feed(&text));
        assert_eq!(f.kind, FailureKind::Firmware);
        assert_eq!(f.line, "Shell>");
        assert!(conclusive);
        let c = feed(">>Start PXE over IPv4.\r\n");
        assert_eq!(failed(&c).0.kind, FailureKind::Firmware);
    }

    #[test]
    fn grub_errors() {
        // Harmless on a serial-only VM.
        let c = feed("error: no suitable video mode found.\r\nBooting in blind mode\r\n");
        assert_eq!(c.verdict(), Verdict::Running);
        let c = feed("error: file `/boot/vmlinuz-6.1.0-56-amd64' not found.\r\n");
        assert!(matches!(c.verdict(), Verdict::Suspect(f) if f.kind == FailureKind::Bootloader));
        let c = feed("error: no such device: 4b1e2c5d-1111-2222-3333-444455556666.\r\nEntering rescue mode...\r\ngrub rescue> ");
        let (f, _, conclusive) = failed(&c);
        assert_eq!(f.kind, FailureKind::Bootloader);
        assert!(conclusive);
    }

    #[test]
    fn terminal_escapes_are_cleaned() {
        assert_eq!(
            clean_terminal("\x1b[1m\x1b[33mShell> \x1b[0m"),
            "Shell> ".to_string()
        );
        assert_eq!(clean_terminal("a\x1b[5;3Hb"), "a\nb");
        assert_eq!(clean_terminal("\x1b]0;title\x07x\x1b(By"), "xy");
        assert_eq!(
            clean_terminal("GNU GRUB\x1b[?25l  version"),
            "GNU GRUB  version"
        );
    }

    #[test]
    fn last_lines_include_the_unterminated_one() {
        let c = feed("one\r\n\r\ntwo\r\n(initramfs) ");
        assert_eq!(c.last_lines(2), vec!["two", "(initramfs)"]);
        assert_eq!(c.last_line().as_deref(), Some("(initramfs)"));
    }

    #[test]
    fn unescapes_hook_names() {
        assert_eq!(unescape_systemd("\\x2fdev\\x2fsda1"), "/dev/sda1");
        assert_eq!(
            unescape_systemd("\\x2fdev\\x2fdisk\\x2fby-uuid\\x2fabc"),
            "/dev/disk/by-uuid/abc"
        );
        assert_eq!(unescape_systemd("plain\\x2"), "plain\\x2");
    }

    fn guid_to_disk_bytes(s: &str) -> [u8; 16] {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        let b: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
        out[4..6].copy_from_slice(&[b[5], b[4]]);
        out[6..8].copy_from_slice(&[b[7], b[6]]);
        out[8..].copy_from_slice(&b[8..]);
        out
    }

    #[test]
    fn guid_constants_match_their_names() {
        assert_eq!(
            guid_to_disk_bytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            ESP_TYPE_GUID
        );
        assert_eq!(
            guid_to_disk_bytes("21686148-6449-6E6F-744E-656564454649"),
            BIOS_BOOT_TYPE_GUID
        );
    }

    fn gpt_head(types: &[[u8; 16]]) -> Vec<u8> {
        let mut d = vec![0u8; HEAD_SECTORS as usize * 512];
        d[510] = 0x55;
        d[511] = 0xaa;
        d[446 + 4] = 0xee;
        d[512..520].copy_from_slice(b"EFI PART");
        d[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        d[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            d[1024 + i * 128..1024 + i * 128 + 16].copy_from_slice(t);
        }
        d
    }

    #[test]
    fn gpt_with_an_esp_means_uefi() {
        let linux = guid_to_disk_bytes("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        let lvm = guid_to_disk_bytes("E6D6D379-F507-44C2-A23C-238F2A3DF928");
        let t = scan_partition_table(&gpt_head(&[ESP_TYPE_GUID, linux, lvm]));
        assert_eq!(
            t,
            PartitionTable::Gpt {
                esp: true,
                bios_boot: false
            }
        );
        assert_eq!(firmware_for(t).0, Firmware::Uefi);
        // The ESP need not be first.
        let t = scan_partition_table(&gpt_head(&[linux, linux, ESP_TYPE_GUID]));
        assert_eq!(firmware_for(t).0, Firmware::Uefi);
        let t = scan_partition_table(&gpt_head(&[BIOS_BOOT_TYPE_GUID, linux]));
        assert_eq!(
            t,
            PartitionTable::Gpt {
                esp: false,
                bios_boot: true
            }
        );
        assert_eq!(firmware_for(t).0, Firmware::Bios);
        let (fw, why) = firmware_for(scan_partition_table(&gpt_head(&[
            BIOS_BOOT_TYPE_GUID,
            ESP_TYPE_GUID,
        ])));
        assert_eq!(fw, Firmware::Uefi);
        assert!(why.contains("BIOS boot partition"), "{why}");
    }

    #[test]
    fn mbr_and_blank_disks_mean_bios() {
        let mut d = vec![0u8; 17408];
        assert_eq!(scan_partition_table(&d), PartitionTable::None);
        d[510] = 0x55;
        d[511] = 0xaa;
        d[446 + 4] = 0x83;
        d[446 + 16 + 4] = 0x82;
        assert_eq!(scan_partition_table(&d), PartitionTable::Mbr { esp: false });
        d[446 + 32 + 4] = 0xef;
        assert_eq!(scan_partition_table(&d), PartitionTable::Mbr { esp: true });
        // Short reads never panic.
        assert_eq!(
            scan_partition_table(&d[..600]),
            PartitionTable::Mbr { esp: true }
        );
        assert_eq!(
            scan_partition_table(&gpt_head(&[ESP_TYPE_GUID])[..1000]),
            PartitionTable::Gpt {
                esp: false,
                bios_boot: false
            }
        );
    }

    fn spec(bus: Bus, firmware: Firmware, accel: Accel) -> GuestSpec {
        GuestSpec {
            accel,
            cpus: 2,
            memory_mib: 1024,
            firmware,
            ovmf: (firmware == Firmware::Uefi).then(|| {
                (
                    PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"),
                    PathBuf::from("/tmp/x,y/OVMF_VARS.fd"),
                )
            }),
            bus,
            disks: vec![PathBuf::from("/tmp/v/overlay.qcow2")],
            nics: Vec::new(),
            serial_log: PathBuf::from("/tmp/v/console.log"),
            agent_socket: None,
        }
    }

    fn joined(s: &GuestSpec) -> String {
        qemu_args(s)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn qemu_command_lines() {
        let a = joined(&spec(Bus::Pvscsi, Firmware::Bios, Accel::Tcg));
        // VMware's topology: q35 with native PCIe hotplug, the controller in slot 160 and the
        // NIC in slot 192 (the guest names it ens192, as on VMware).
        assert!(a.contains("-machine q35,graphics=off"), "{a}");
        assert!(
            a.contains("-global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"),
            "{a}"
        );
        assert!(
            a.contains("-device pcie-root-port,id=vmslot1,chassis=2,slot=192 -device vmxnet3"),
            "{a}"
        );
        assert!(
            a.contains("-accel tcg,thread=multi -cpu max,svm=off,vmx=off -smp 2 -m 1024"),
            "{a}"
        );
        assert!(
            a.contains(
                "-device pvscsi,id=scsi0,bus=vmslot0 -device scsi-hd,drive=disk0,bus=scsi0.0,bootindex=0"
            ),
            "{a}"
        );
        assert!(a.contains("-device vmxnet3,netdev=net0,romfile="), "{a}");
        assert!(a.contains("file=/tmp/v/overlay.qcow2,format=qcow2"), "{a}");
        assert!(a.contains("-serial file:/tmp/v/console.log"), "{a}");
        assert!(
            a.contains("-nodefaults") && a.contains("-display none") && a.contains("-no-reboot")
        );
        assert!(!a.contains("pflash"));

        let a = joined(&spec(Bus::Virtio, Firmware::Bios, Accel::Kvm));
        assert!(a.contains("-accel kvm -cpu host"), "{a}");
        assert!(
            a.contains("-device virtio-blk-pci,drive=disk0,bootindex=0"),
            "{a}"
        );
        assert!(a.contains("-device virtio-net-pci,netdev=net0"), "{a}");

        let a = joined(&spec(Bus::Sata, Firmware::Uefi, Accel::Tcg));
        assert!(a.contains("-machine q35,graphics=off"), "{a}");
        assert!(
            a.contains("-device ide-hd,drive=disk0,bus=ide.0,bootindex=0"),
            "{a}"
        );
        assert!(
            a.contains(
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
            ),
            "{a}"
        );
        assert!(
            a.contains("if=pflash,format=raw,unit=1,file=/tmp/x,,y/OVMF_VARS.fd"),
            "{a}"
        );

        let a = joined(&spec(Bus::Sata, Firmware::Bios, Accel::Tcg));
        assert!(
            a.contains("-machine q35,graphics=off"),
            "SATA needs q35's AHCI: {a}"
        );
        let a = joined(&spec(Bus::VirtioScsi, Firmware::Bios, Accel::Tcg));
        assert!(
            a.contains("-device virtio-scsi-pci,id=scsi0 -device scsi-hd"),
            "{a}"
        );
        let a = joined(&spec(Bus::Lsi, Firmware::Bios, Accel::Tcg));
        assert!(a.contains("-device lsi53c895a,id=scsi0"), "{a}");
    }

    #[test]
    fn parses_bus_and_firmware_names() {
        for b in Bus::ALL {
            assert_eq!(b.as_str().parse::<Bus>().unwrap(), b);
        }
        assert_eq!("virtio-blk".parse::<Bus>().unwrap(), Bus::Virtio);
        assert!("ide".parse::<Bus>().unwrap_err().contains("pvscsi"));
        assert_eq!(
            "UEFI".parse::<FirmwareChoice>().unwrap(),
            FirmwareChoice::Uefi
        );
        assert!("coreboot".parse::<FirmwareChoice>().is_err());
        assert!(!Bus::Pvscsi.uefi_bootable() && Bus::Sata.uefi_bootable());
    }

    #[test]
    fn check_json_counters() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"image-end-offset": 262144, "total-clusters": 1600, "check-errors": 0,
                "leaks": 3, "filename": "a.qcow2", "format": "qcow2"}"#,
        )
        .unwrap();
        let o = check_outcome_from_json("a.qcow2", "qcow2", &v);
        assert!(o.clean && o.applicable);
        assert_eq!((o.leaks, o.corruptions), (3, 0));
        assert!(o.summary().contains("3 leaked"), "{}", o.summary());
        let v: serde_json::Value =
            serde_json::from_str(r#"{"check-errors": 0, "corruptions": 2}"#).unwrap();
        assert!(!check_outcome_from_json("a", "qcow2", &v).clean);
    }

    #[test]
    fn failure_summary_names_image_bus_and_console() {
        let (f, device, _) = failed(&feed(INITRAMFS_TOOLS));
        let out = BootOutcome {
            image: "/x/debian12-bios.vmdk".into(),
            format: "vmdk".into(),
            bus: Bus::Virtio,
            firmware: Firmware::Bios,
            firmware_reason: "MBR partition table".into(),
            accel: Accel::Tcg,
            accel_reason: "KVM not usable".into(),
            booted: false,
            stage: Stage::Initramfs,
            seconds_to_login: None,
            login_prompt: None,
            failure: Some(failure(&f, device, Bus::Virtio, 71.3)),
            seconds: 72.0,
            console_log: Some("/tmp/c.log".into()),
            last_console_lines: vec![],
        };
        let s = out.summary();
        assert!(s.starts_with("/x/debian12-bios.vmdk: no login on bus virtio, bios, tcg: root device /dev/sda1 never appeared"), "{s}");
        assert!(s.contains("ALERT!  /dev/sda1 does not exist"), "{s}");
        assert!(s.contains("after 71.3 s; console log: /tmp/c.log"), "{s}");
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(json["failure"]["kind"], "root-device-missing");
        assert_eq!(json["bus"], "virtio");
        assert_eq!(json["firmware"], "bios");
    }
}

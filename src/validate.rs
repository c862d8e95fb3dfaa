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
// qemu-img check
// ---------------------------------------------------------------------------------------------

/// What `qemu-img check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub image: String,
    pub format: String,
    /// False when the format has no metadata qemu-img can check (raw, vpc).
    pub applicable: bool,
    /// No check errors and no corruptions (leaked clusters waste space but harm nothing).
    pub clean: bool,
    pub check_errors: u64,
    pub corruptions: u64,
    pub leaks: u64,
    pub image_end_offset: Option<u64>,
    pub note: Option<String>,
}

impl CheckOutcome {
    /// One line for people.
    pub fn summary(&self) -> String {
        if !self.applicable {
            return format!(
                "{} ({}): image check not applicable: {}",
                self.image,
                self.format,
                self.note.as_deref().unwrap_or("no metadata to check")
            );
        }
        if self.clean && self.leaks == 0 {
            return format!("{} ({}): no errors found", self.image, self.format);
        }
        format!(
            "{} ({}): {} corruption(s), {} leaked cluster(s), {} check error(s){}",
            self.image,
            self.format,
            self.corruptions,
            self.leaks,
            self.check_errors,
            if self.clean {
                " (leaks only waste space)"
            } else {
                ""
            }
        )
    }
}

/// `qemu-img check` the image, its format detected.
pub fn check_image(path: &Path) -> Result<CheckOutcome, ValidateError> {
    check_image_as(&path.display().to_string(), None)
}

/// `qemu-img check` an image or NBD URI; `format` forces the format.
pub fn check_image_as(image: &str, format: Option<&str>) -> Result<CheckOutcome, ValidateError> {
    let source = Source::parse(image);
    let info = load::probe(&source, format)?;
    let name = source.qemu_name();
    let out = process::qemu_img()
        .args(["check", "-U", "--output=json", "-f", &info.format])
        .arg(&name)
        .output()
        .map_err(spawn_err)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit status 63: the format does not support checks.
    if out.status.code() == Some(63) || stderr.contains("does not support checks") {
        return Ok(CheckOutcome {
            image: name,
            format: info.format.clone(),
            applicable: false,
            clean: true,
            check_errors: 0,
            corruptions: 0,
            leaks: 0,
            image_end_offset: None,
            note: Some(format!(
                "{} images have no metadata for qemu-img to check",
                info.format
            )),
        });
    }
    // 0 clean, 2 corruptions, 3 leaks: all print the JSON report. 1 = the check could not run.
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    let Some(report) = parsed.filter(|_| matches!(out.status.code(), Some(0 | 2 | 3))) else {
        let reason = process::reduce_stderr(&stderr)
            .unwrap_or_else(|| format!("qemu-img exited with {}", out.status));
        return Err(ValidateError::Check {
            image: name,
            reason,
        });
    };
    Ok(check_outcome_from_json(&name, &info.format, &report))
}

/// Build the outcome from `qemu-img check --output=json` (absent counters are 0).
pub fn check_outcome_from_json(image: &str, format: &str, v: &serde_json::Value) -> CheckOutcome {
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let check_errors = n("check-errors");
    let corruptions = n("corruptions");
    CheckOutcome {
        image: image.to_string(),
        format: format.to_string(),
        applicable: true,
        clean: check_errors == 0 && corruptions == 0,
        check_errors,
        corruptions,
        leaks: n("leaks"),
        image_end_offset: v.get("image-end-offset").and_then(|x| x.as_u64()),
        note: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// The disk controller the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bus {
    /// virtio-blk (`/dev/vda`): what the converted guest should boot on.
    Virtio,
    /// virtio-scsi + scsi-hd (`/dev/sda`).
    VirtioScsi,
    /// VMware's paravirtual SCSI + scsi-hd, with a vmxnet3 NIC: the guest as it ran on VMware.
    Pvscsi,
    /// LSI 53C895A + scsi-hd.
    Lsi,
    /// q35's built-in AHCI (`-machine q35`).
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
        match self {
            Bus::Pvscsi => "vmxnet3",
            _ => "virtio-net-pci",
        }
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
        match s.to_ascii_lowercase().as_str() {
            "virtio" | "virtio-blk" => Ok(Bus::Virtio),
            "virtio-scsi" => Ok(Bus::VirtioScsi),
            "pvscsi" | "vmw_pvscsi" => Ok(Bus::Pvscsi),
            "lsi" | "lsi53c895a" => Ok(Bus::Lsi),
            "sata" | "ahci" => Ok(Bus::Sata),
            other => Err(format!(
                "unknown bus {other:?} (expected virtio, virtio-scsi, pvscsi, lsi or sata)"
            )),
        }
    }
}

/// `--firmware`: auto picks UEFI when the disk has an EFI system partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirmwareChoice {
    #[default]
    Auto,
    Bios,
    Uefi,
}

impl FromStr for FirmwareChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(FirmwareChoice::Auto),
            "bios" => Ok(FirmwareChoice::Bios),
            "uefi" | "efi" => Ok(FirmwareChoice::Uefi),
            other => Err(format!(
                "unknown firmware {other:?} (expected auto, bios or uefi)"
            )),
        }
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

// ---------------------------------------------------------------------------------------------
// Console parser (pure)
// ---------------------------------------------------------------------------------------------

/// How strongly a console line proves that the boot failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strength {
    /// Names a device for a failure seen elsewhere (dracut's list of hooks it still waits for).
    Detail,
    /// Could be survivable (a GRUB `error:` line, OVMF failing one boot option, a systemd
    /// device timeout): a failure only if the console then stays silent.
    Suspect,
    /// The boot failed; a more specific line may follow within seconds.
    Fatal,
    /// The boot failed and the guest now sits at a prompt or a halt: stop now.
    Conclusive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FailureKind,
    pub strength: Strength,
    pub line: String,
    pub device: Option<String>,
}

/// What the console shows so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A login prompt (the prompt line).
    Login(String),
    /// Failed: the most telling line, the device if some line named it, and whether the guest
    /// is at its final state already (`conclusive`) or a more specific line may still come.
    Failed {
        finding: Finding,
        device: Option<String>,
        conclusive: bool,
    },
    /// Possibly failed: decide by silence or timeout.
    Suspect(Finding),
    Running,
}

const KEEP_LINES: usize = 200;
const MAX_PARTIAL: usize = 64 * 1024;

/// The serial console, fed in chunks as QEMU writes it: cleans terminal escapes, splits lines,
/// and recognises login prompts and failure messages.
#[derive(Debug, Default)]
pub struct Console {
    partial: Vec<u8>,
    lines: VecDeque<String>,
    findings: Vec<Finding>,
    login: Option<String>,
    bytes: u64,
    stage: Stage,
    root_arg: Option<String>,
}

/// How far the boot got, as far as the console tells (in boot order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Firmware and bootloader (nothing from the kernel yet).
    #[default]
    Firmware,
    /// The kernel is up, no initramfs running yet.
    Kernel,
    /// The initramfs runs (it looks for the root device here).
    Initramfs,
    /// The root file system is mounted; the real init runs.
    System,
}

impl Console {
    pub fn new() -> Console {
        Console::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        self.partial.extend_from_slice(bytes);
        let cut = match self.partial.iter().rposition(|&b| b == b'\n' || b == b'\r') {
            Some(i) => i + 1,
            None if self.partial.len() > MAX_PARTIAL => self.partial.len(),
            None => return,
        };
        let done: Vec<u8> = self.partial.drain(..cut).collect();
        let text = clean_terminal(&String::from_utf8_lossy(&done));
        for line in text.split(['\n', '\r']) {
            self.add_line(line);
        }
    }

    fn add_line(&mut self, line: &str) {
        let line = line.trim_end();
        if line.trim().is_empty() {
            return;
        }
        if self.login.is_none() && is_login_prompt(line) {
            self.login = Some(line.trim().to_string());
        }
        if let Some(f) = classify_line(line) {
            self.findings.push(f);
        }
        self.track_stage(line);
        if self.lines.len() == KEEP_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }

    fn track_stage(&mut self, line: &str) {
        let body = strip_kernel_time(line.trim());
        if self.root_arg.is_none()
            && (body.starts_with("Kernel command line:") || body.starts_with("Command line:"))
        {
            self.root_arg = body
                .split_whitespace()
                .find_map(|w| w.strip_prefix("root="))
                .map(str::to_string);
        }
        let next = if body.starts_with("Linux version ") {
            Stage::Kernel
        } else if body.starts_with("Run /init as init process")
            || body.contains("(Initramfs)")
            || body.starts_with("Loading, please wait...")
        {
            Stage::Initramfs
        } else if body.contains("Switching root")
            || body.contains("Switch Root")
            || body.starts_with("Begin: Running /scripts/init-bottom")
            || (body.starts_with("Welcome to") && !body.contains("Initramfs"))
            || body.starts_with("Run /sbin/init as init process")
        {
            Stage::System
        } else {
            return;
        };
        self.stage = self.stage.max(next);
    }

    /// How far the boot got.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// `root=` from the kernel command line, when the kernel printed it.
    pub fn root_arg(&self) -> Option<&str> {
        self.root_arg.as_deref()
    }

    /// The unterminated last line (prompts are printed without a newline), cleaned.
    fn partial_line(&self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let text = clean_terminal(&String::from_utf8_lossy(&self.partial));
        text.split(['\n', '\r'])
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    }

    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The last `n` non-empty lines, the unterminated one included.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let mut v: Vec<String> = self.lines.iter().cloned().collect();
        v.extend(self.partial_line());
        let skip = v.len().saturating_sub(n);
        v.into_iter().skip(skip).collect()
    }

    pub fn last_line(&self) -> Option<String> {
        self.last_lines(1).pop()
    }

    pub fn verdict(&self) -> Verdict {
        if let Some(p) = &self.login {
            return Verdict::Login(p.clone());
        }
        let partial = self.partial_line();
        if let Some(p) = partial.as_deref().filter(|p| is_login_prompt(p)) {
            return Verdict::Login(p.to_string());
        }
        let mut findings: Vec<Finding> = self.findings.clone();
        if let Some(f) = partial.as_deref().and_then(classify_prompt) {
            findings.push(f);
        }
        let device = findings
            .iter()
            .filter(|f| f.strength != Strength::Suspect)
            .find_map(|f| f.device.clone());
        // The most telling failure: the strongest, then one naming a device, then the earliest.
        let best = findings
            .iter()
            .enumerate()
            .filter(|(_, f)| f.strength >= Strength::Fatal)
            .max_by_key(|(i, f)| (f.strength, f.device.is_some(), std::cmp::Reverse(*i)))
            .map(|(_, f)| f.clone());
        if let Some(finding) = best {
            let conclusive = findings.iter().any(|f| f.strength == Strength::Conclusive);
            let device = finding.device.clone().or(device);
            return Verdict::Failed {
                finding,
                device,
                conclusive,
            };
        }
        match findings
            .iter()
            .rev()
            .find(|f| f.strength == Strength::Suspect)
        {
            Some(f) => Verdict::Suspect(f.clone()),
            None => Verdict::Running,
        }
    }
}

/// Remove terminal control sequences; cursor positioning and screen clearing become line breaks
/// (firmware and GRUB draw with them instead of newlines).
pub fn clean_terminal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    // CSI: parameters and intermediates, then one final byte.
                    let mut fin = None;
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            fin = Some(c);
                            break;
                        }
                    }
                    if matches!(fin, Some('H' | 'f' | 'J')) {
                        out.push('\n');
                    }
                }
                Some(']') => {
                    // OSC: up to BEL or ESC \.
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            chars.next();
                            break;
                        }
                    }
                }
                Some('(' | ')' | '*' | '+' | '#' | '%') => {
                    chars.next();
                }
                Some('c') => out.push('\n'),
                _ => {}
            },
            '\n' | '\r' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `host login:` as getty prints it.
fn is_login_prompt(line: &str) -> bool {
    let l = line.trim();
    l == "login:" || (l.ends_with(" login:") && !l.contains("Last login"))
}

/// Prompts a failed boot leaves the guest at (they come without a newline).
fn classify_prompt(line: &str) -> Option<Finding> {
    let l = line.trim();
    let kind = if l.starts_with("(initramfs)")
        || l.starts_with("dracut:/#")
        || (l.starts_with("sh-5") && l.ends_with('#'))
    {
        FailureKind::EmergencyShell
    } else if l.starts_with("Shell>") {
        FailureKind::Firmware
    } else if l.starts_with("grub rescue>") {
        FailureKind::Bootloader
    } else {
        return None;
    };
    Some(Finding {
        kind,
        strength: Strength::Conclusive,
        line: l.to_string(),
        device: None,
    })
}

/// Recognise one console line (already cleaned) that shows a boot failure.
pub fn classify_line(line: &str) -> Option<Finding> {
    if let Some(f) = classify_prompt(line) {
        return Some(f);
    }
    let l = line.trim();
    // Kernel and systemd lines carry a "[   12.345678] " timestamp prefix; GRUB's do not.
    let body = strip_kernel_time(l);
    let hit = |kind, strength, device: Option<String>| {
        Some(Finding {
            kind,
            strength,
            line: l.to_string(),
            device,
        })
    };
    use FailureKind::*;
    use Strength::*;

    // initramfs-tools (scripts/local): the wait for ROOT ends, then "ALERT! ROOT does not exist".
    if l.contains("ALERT!") && l.contains("Dropping to a shell") {
        let device = between(l, "ALERT!", "does not exist");
        let kind = if device.is_some() {
            RootDeviceMissing
        } else {
            EmergencyShell
        };
        return hit(kind, Conclusive, device);
    }
    if l.contains("Gave up waiting for root file system device")
        || l.contains("Gave up waiting for root device")
    {
        return hit(RootDeviceMissing, Fatal, None);
    }
    // dracut: the initqueue gives up, lists the hooks it waited for, then "Could not boot" and
    // "/dev/X does not exist" before the emergency shell.
    if l.contains("dracut-initqueue: timeout") || l.contains("dracut-initqueue timeout") {
        return hit(RootDeviceMissing, Fatal, None);
    }
    if let Some(dev) = dracut_devexists_hook(l) {
        return hit(RootDeviceMissing, Detail, Some(dev));
    }
    if body.contains("Warning: ") && body.contains(" does not exist") {
        if let Some(dev) = between(body, "Warning:", "does not exist") {
            if dev.starts_with('/') || dev.contains('=') {
                return hit(RootDeviceMissing, Conclusive, Some(dev));
            }
        }
    }
    if body.contains("Warning: Could not boot") || body.contains("Could not boot.") {
        return hit(EmergencyShell, Fatal, None);
    }
    if body.contains("Entering emergency mode")
        || body.contains("You are in emergency mode")
        || body.contains("Give root password for maintenance")
        || body.contains("Press Enter for maintenance")
        || body.contains("Cannot open access to console, the root account is locked")
    {
        return hit(EmergencyShell, Conclusive, None);
    }
    // systemd gives up on a device unit (90 s default); fatal only for the root file system.
    if body.contains("Timed out waiting for device") {
        let device = body
            .rsplit_once(" - ")
            .map(|(_, d)| d.trim_end_matches('.').trim().to_string())
            .filter(|d| d.starts_with('/'))
            .or_else(|| between(body, "Timed out waiting for device", "."));
        return hit(RootDeviceMissing, Suspect, device);
    }
    if body.contains("Kernel panic - not syncing") {
        return hit(KernelPanic, Conclusive, None);
    }
    if body.starts_with("VFS: Cannot open root device") {
        let device = between(body, "VFS: Cannot open root device", "or").map(|d| {
            d.trim_matches(|c| c == '"' || c == '\'' || c == ' ')
                .to_string()
        });
        return hit(RootDeviceMissing, Fatal, device);
    }
    // SeaBIOS.
    if l.starts_with("No bootable device") {
        return hit(NoBootableDevice, Conclusive, None);
    }
    if l.starts_with("Boot failed: not a bootable disk") {
        return hit(NoBootableDevice, Fatal, None);
    }
    // OVMF: "BdsDxe: failed to load Boot0001 ...", network boot, no boot option left.
    if l.contains("BdsDxe: No bootable option or device was found") {
        return hit(Firmware, Conclusive, None);
    }
    if l.contains(">>Start PXE over IPv") || l.contains(">>Start HTTP Boot over IPv") {
        return hit(Firmware, Conclusive, None);
    }
    if l.contains("BdsDxe: failed to load") {
        return hit(Firmware, Suspect, None);
    }
    // GRUB.
    if l.starts_with("Entering rescue mode") {
        return hit(Bootloader, Conclusive, None);
    }
    if l.starts_with("error: ") && !l.contains("no suitable video mode") {
        return hit(Bootloader, Suspect, None);
    }
    None
}

fn strip_kernel_time(l: &str) -> &str {
    if let Some(rest) = l.strip_prefix('[') {
        if let Some((ts, after)) = rest.split_once(']') {
            if ts.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
                return after.trim_start();
            }
        }
    }
    l
}

/// The trimmed text between `start` and `end` (first occurrences), when not empty.
fn between(s: &str, start: &str, end: &str) -> Option<String> {
    let from = s.find(start)? + start.len();
    let to = from + s[from..].find(end)?;
    let t = s[from..to].trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// dracut's `…/initqueue/finished/devexists-\x2fdev\x2fmapper\x2fvg0-root.sh` → `/dev/mapper/vg0-root`.
fn dracut_devexists_hook(l: &str) -> Option<String> {
    let i = l.find("devexists-")? + "devexists-".len();
    let rest = &l[i..];
    let name = &rest[..rest.find(".sh")?];
    Some(unescape_systemd(name))
}

/// Undo `\xNN` escaping (systemd unit names, dracut hook names).
fn unescape_systemd(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            if let Some(v) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Firmware: partition table scan (pure) and OVMF
// ---------------------------------------------------------------------------------------------

/// EFI system partition C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as stored on disk.
pub const ESP_TYPE_GUID: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];
/// BIOS boot partition 21686148-6449-6E6F-744E-656564454649 ("Hah!IdontNeedEFI").
pub const BIOS_BOOT_TYPE_GUID: [u8; 16] = *b"Hah!IdontNeedEFI";

/// The partition table at the start of a disk (512-byte sectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionTable {
    Gpt { esp: bool, bios_boot: bool },
    Mbr { esp: bool },
    None,
}

/// Sectors to read for [`scan_partition_table`]: MBR, GPT header and 128 entries.
pub const HEAD_SECTORS: u64 = 34;

/// Look for an EFI system partition in the first sectors of a disk.
pub fn scan_partition_table(head: &[u8]) -> PartitionTable {
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        head.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if head.get(512..520) == Some(b"EFI PART") {
        let entries_lba = u64_at(512 + 72).unwrap_or(2);
        let count = u32_at(512 + 80).unwrap_or(0).min(1024) as usize;
        let size = u32_at(512 + 84).unwrap_or(128) as usize;
        let mut esp = false;
        let mut bios_boot = false;
        if size >= 16 && entries_lba < (head.len() as u64 / 512) {
            let start = entries_lba as usize * 512;
            for i in 0..count {
                let Some(ty) = head.get(start + i * size..start + i * size + 16) else {
                    break;
                };
                esp |= ty == ESP_TYPE_GUID;
                bios_boot |= ty == BIOS_BOOT_TYPE_GUID;
            }
        }
        return PartitionTable::Gpt { esp, bios_boot };
    }
    if head.get(510..512) == Some(&[0x55, 0xaa]) {
        let types: Vec<u8> = (0..4)
            .filter_map(|i| head.get(446 + 16 * i + 4).copied())
            .collect();
        if types.iter().any(|&t| t != 0) {
            return PartitionTable::Mbr {
                esp: types.contains(&0xef),
            };
        }
    }
    PartitionTable::None
}

/// BIOS or UEFI for this partition table, and why.
pub fn firmware_for(table: PartitionTable) -> (Firmware, String) {
    match table {
        PartitionTable::Gpt {
            esp: true,
            bios_boot,
        } => (
            Firmware::Uefi,
            if bios_boot {
                "GPT with an EFI system partition (and a BIOS boot partition: \
                 --firmware bios tests the BIOS path)"
                    .into()
            } else {
                "GPT with an EFI system partition".into()
            },
        ),
        PartitionTable::Gpt { esp: false, .. } => {
            (Firmware::Bios, "GPT without an EFI system partition".into())
        }
        PartitionTable::Mbr { esp: true } => (
            Firmware::Uefi,
            "MBR with an EFI system partition (type 0xEF)".into(),
        ),
        PartitionTable::Mbr { esp: false } => (Firmware::Bios, "MBR partition table".into()),
        PartitionTable::None => (Firmware::Bios, "no partition table found".into()),
    }
}

/// Read the first sectors through qemu-img (any format) and scan them.
fn read_partition_table(
    source: &Source,
    info: &SourceInfo,
    dir: &Path,
) -> Result<PartitionTable, ValidateError> {
    let out_path = dir.join("head.raw");
    let mut of = OsString::from("of=");
    of.push(&out_path);
    let out = process::qemu_img()
        .args(["dd", "-U", "-f", &info.format, "-O", "raw", "bs=512"])
        .arg(format!("count={HEAD_SECTORS}"))
        .arg(format!("if={}", source.qemu_name()))
        .arg(of)
        .output()
        .map_err(spawn_err)?;
    if !out.status.success() {
        return Err(ValidateError::PartitionTable {
            image: source.qemu_name(),
            reason: process::reduce_stderr(&String::from_utf8_lossy(&out.stderr))
                .unwrap_or_else(|| format!("qemu-img exited with {}", out.status)),
        });
    }
    let head = fs::read(&out_path).map_err(io_err(out_path.display()))?;
    let _ = fs::remove_file(&out_path);
    Ok(scan_partition_table(&head))
}

/// OVMF code and variable-store templates, the first pair that exists.
const OVMF_PAIRS: &[(&str, &str)] = &[
    // Debian, Ubuntu
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    // Fedora, RHEL
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
    // Arch
    (
        "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
        "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
    ),
    // openSUSE
    (
        "/usr/share/qemu/ovmf-x86_64-code.bin",
        "/usr/share/qemu/ovmf-x86_64-vars.bin",
    ),
];

/// (code, vars template): H2K_OVMF_CODE/H2K_OVMF_VARS, else the distribution's files.
pub fn find_ovmf() -> Result<(PathBuf, PathBuf), ValidateError> {
    if let (Some(c), Some(v)) = (
        std::env::var_os("H2K_OVMF_CODE"),
        std::env::var_os("H2K_OVMF_VARS"),
    ) {
        let (c, v) = (PathBuf::from(c), PathBuf::from(v));
        if c.is_file() && v.is_file() {
            return Ok((c, v));
        }
        return Err(ValidateError::NoOvmf {
            looked: format!("{} and {} (from H2K_OVMF_*)", c.display(), v.display()),
        });
    }
    OVMF_PAIRS
        .iter()
        .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
        .find(|(c, v)| c.is_file() && v.is_file())
        .ok_or_else(|| ValidateError::NoOvmf {
            looked: OVMF_PAIRS
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

// ---------------------------------------------------------------------------------------------
// The QEMU command line (pure)
// ---------------------------------------------------------------------------------------------

/// Everything the QEMU command line depends on.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub accel: Accel,
    pub cpus: usize,
    pub memory_mib: u32,
    pub firmware: Firmware,
    /// OVMF code and the guest's private copy of the variable store (UEFI only).
    pub ovmf: Option<(PathBuf, PathBuf)>,
    pub bus: Bus,
    /// The qcow2 overlay.
    pub disk: PathBuf,
    pub serial_log: PathBuf,
}

/// A path inside a QEMU `key=value,…` option (commas are doubled).
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

pub fn qemu_args(spec: &GuestSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    let q35 = spec.firmware == Firmware::Uefi || spec.bus == Bus::Sata;
    push("-name");
    push("h2k-validate");
    push("-machine");
    // graphics=off: SeaBIOS prints on the serial port ("No bootable device.").
    push(if q35 {
        "q35,graphics=off"
    } else {
        "pc,graphics=off"
    });
    match spec.accel {
        Accel::Tcg => {
            push("-accel");
            push("tcg,thread=multi");
            // Every feature TCG has (x86-64-v2+ for RHEL 9 and the like), minus nested
            // virtualisation: with SVM visible the guest loads kvm_amd as its getty starts,
            // and a boot was seen to hang there under TCG.
            push("-cpu");
            push("max,svm=off,vmx=off");
        }
        Accel::Kvm => {
            push("-accel");
            push("kvm");
            push("-cpu");
            push("host");
        }
    }
    push("-smp");
    push(&spec.cpus.max(1).to_string());
    push("-m");
    push(&spec.memory_mib.to_string());
    for s in [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-boot",
        "strict=on",
    ] {
        push(s);
    }
    if let Some((code, vars)) = &spec.ovmf {
        push("-drive");
        push(&format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            opt_path(code)
        ));
        push("-drive");
        push(&format!(
            "if=pflash,format=raw,unit=1,file={}",
            opt_path(vars)
        ));
    }
    push("-drive");
    push(&format!(
        "file={},format=qcow2,if=none,id=disk0,cache=unsafe",
        opt_path(&spec.disk)
    ));
    let scsi = |ctrl: &str| {
        vec![
            "-device".to_string(),
            format!("{ctrl},id=scsi0"),
            "-device".to_string(),
            "scsi-hd,drive=disk0,bus=scsi0.0,bootindex=0".to_string(),
        ]
    };
    let disk = match spec.bus {
        Bus::Virtio => vec![
            "-device".to_string(),
            "virtio-blk-pci,drive=disk0,bootindex=0".to_string(),
        ],
        Bus::VirtioScsi => scsi("virtio-scsi-pci"),
        Bus::Pvscsi => scsi("pvscsi"),
        Bus::Lsi => scsi("lsi53c895a"),
        Bus::Sata => vec![
            "-device".to_string(),
            "ide-hd,drive=disk0,bus=ide.0,bootindex=0".to_string(),
        ],
    };
    for s in &disk {
        push(s);
    }
    // No option ROM: the firmware must not fall back to network boot.
    push("-netdev");
    push("user,id=net0");
    push("-device");
    push(&format!("{},netdev=net0,romfile=", spec.bus.nic_model()));
    a.push("-serial".into());
    let mut serial = OsString::from("file:");
    serial.push(&spec.serial_log);
    a.push(serial);
    a
}

// ---------------------------------------------------------------------------------------------
// Running the guest
// ---------------------------------------------------------------------------------------------

const POLL: Duration = Duration::from_millis(200);
/// After a fatal (not yet conclusive) line: time for the more specific one to follow.
const SETTLE: Duration = Duration::from_secs(8);
/// After a suspect line: this much console silence makes it a failure.
const SUSPECT_SILENCE: Duration = Duration::from_secs(60);
/// A KVM QEMU that dies this early under `--accel auto` is retried under TCG.
const KVM_EARLY_EXIT: Duration = Duration::from_secs(15);
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
const LAST_LINES: usize = 15;

/// SIGINT/SIGTERM flag for callers that pass no `cancel`: installed once per process; the
/// first signal sets it, a second one takes the default action (exit).
fn signal_flag() -> Option<Arc<AtomicBool>> {
    static FLAG: OnceLock<Option<Arc<AtomicBool>>> = OnceLock::new();
    FLAG.get_or_init(|| {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            signal_hook::flag::register_conditional_default(sig, Arc::clone(&flag)).ok()?;
            signal_hook::flag::register(sig, Arc::clone(&flag)).ok()?;
        }
        Some(flag)
    })
    .clone()
}

/// How one QEMU run ended.
enum Ended {
    Login {
        prompt: String,
        seconds: f64,
    },
    Failed(BootFailure),
    /// QEMU exited with an error status (`early`: within [`KVM_EARLY_EXIT`]).
    QemuError {
        reason: String,
        early: bool,
    },
    Interrupted,
}

struct Run {
    ended: Ended,
    stage: Stage,
    last_lines: Vec<String>,
}

fn failure(finding: &Finding, device: Option<String>, bus: Bus, seconds: f64) -> BootFailure {
    let mut reason = match (&finding.kind, &device) {
        (FailureKind::RootDeviceMissing, Some(d)) => {
            format!("root device {d} never appeared")
        }
        (kind, Some(d)) if *kind == FailureKind::EmergencyShell => {
            format!("{} (waiting for {d})", kind.describe())
        }
        (kind, _) => kind.describe().to_string(),
    };
    if bus.is_virtio()
        && matches!(
            finding.kind,
            FailureKind::RootDeviceMissing | FailureKind::EmergencyShell
        )
    {
        reason += " (the initramfs probably lacks virtio drivers: `h2k-guest fix` adds them)";
    }
    BootFailure {
        kind: finding.kind,
        reason,
        console_line: Some(finding.line.clone()),
        device,
        seconds,
    }
}

fn run_guest(
    spec: &GuestSpec,
    stderr_path: &Path,
    timeout: Duration,
    cancel: &[Arc<AtomicBool>],
    image: &str,
) -> Result<Run, ValidateError> {
    File::create(&spec.serial_log).map_err(io_err(spec.serial_log.display()))?;
    let stderr = File::create(stderr_path).map_err(io_err(stderr_path.display()))?;
    let qemu = accel::qemu_system_binary();
    if !qemu.contains('/') && process::in_path(&qemu).is_none() {
        return Err(ValidateError::Spawn {
            tool: qemu,
            reason: "not found in PATH: install qemu-system-x86 (scripts/setup.sh does)".into(),
        });
    }
    // The process module gives QEMU its own process group (a terminal's Ctrl-C reaches us,
    // and we stop QEMU), the parent-death signal, and the kill on every path out of here.
    let mut cmd = process::qemu_system();
    cmd.args(qemu_args(spec))
        .stdout(Stdio::null())
        .stderr(stderr);
    log::debug!("running {cmd:?}");
    let mut qemu_proc = cmd.spawn().map_err(spawn_err)?;
    let start = Instant::now();
    let mut log = File::open(&spec.serial_log).map_err(io_err(spec.serial_log.display()))?;
    let mut console = Console::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_output = start;
    let mut fatal_since: Option<Instant> = None;
    let mut next_progress = start + PROGRESS_EVERY;
    let secs = |t: Instant| t.duration_since(start).as_secs_f64();

    let ended = loop {
        let exited: Option<ExitStatus> = qemu_proc.try_wait().map_err(|e| ValidateError::Io {
            what: "waiting for QEMU".into(),
            reason: match e {
                ProcessError::Wait { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        })?;
        loop {
            let n = log
                .read(&mut buf)
                .map_err(io_err(spec.serial_log.display()))?;
            if n == 0 {
                break;
            }
            console.push(&buf[..n]);
            last_output = Instant::now();
        }
        let now = Instant::now();
        match console.verdict() {
            Verdict::Login(prompt) => {
                break Ended::Login {
                    prompt,
                    seconds: secs(now),
                }
            }
            Verdict::Failed {
                finding,
                device,
                conclusive,
            } => {
                let since = *fatal_since.get_or_insert(now);
                if conclusive || now.duration_since(since) >= SETTLE || exited.is_some() {
                    // Waiting for the root device without naming it: root= says which.
                    let device = device.or_else(|| {
                        (finding.kind == FailureKind::RootDeviceMissing)
                            .then(|| console.root_arg().map(str::to_string))
                            .flatten()
                    });
                    break Ended::Failed(failure(&finding, device, spec.bus, secs(now)));
                }
            }
            Verdict::Suspect(finding) => {
                if now.duration_since(last_output) >= SUSPECT_SILENCE || exited.is_some() {
                    let device = finding.device.clone();
                    break Ended::Failed(failure(&finding, device, spec.bus, secs(now)));
                }
            }
            Verdict::Running => {}
        }
        if cancel.iter().any(|c| c.load(Ordering::SeqCst)) {
            break Ended::Interrupted;
        }
        if let Some(status) = exited {
            if status.success() {
                break Ended::Failed(BootFailure {
                    kind: FailureKind::GuestStopped,
                    reason: FailureKind::GuestStopped.describe().into(),
                    console_line: console.last_line(),
                    device: None,
                    seconds: secs(now),
                });
            }
            let text = fs::read_to_string(stderr_path).unwrap_or_default();
            let reason = process::reduce_stderr(&text)
                .unwrap_or_else(|| format!("QEMU exited with {status}"));
            break Ended::QemuError {
                reason,
                early: now.duration_since(start) < KVM_EARLY_EXIT,
            };
        }
        if now.duration_since(start) >= timeout {
            let last = console.last_line();
            let suspect = match console.verdict() {
                Verdict::Suspect(f) => Some(f),
                _ => None,
            };
            let mut reason = format!("no login prompt within {} s", timeout.as_secs());
            if console.bytes() == 0 {
                reason += "; the serial console stayed empty (does the guest log to ttyS0? \
                           add console=ttyS0 to its kernel command line)";
            } else if let Some(f) = &suspect {
                reason += &format!("; earlier: {:?}", f.line);
            } else if console.stage() == Stage::Initramfs {
                reason += &format!(
                    "; the guest was still in its initramfs, where it waits for root={}: \
                     its storage driver may be missing (dracut waits ~3 min under TCG before \
                     it gives up: a longer --timeout shows its verdict)",
                    console.root_arg().unwrap_or("?")
                );
            } else if console.stage() == Stage::System {
                reason += "; the guest reached its init system but no getty printed a login \
                           prompt on ttyS0 (serial-getty@ttyS0 not running?)";
            }
            break Ended::Failed(BootFailure {
                kind: FailureKind::Timeout,
                reason,
                console_line: last,
                device: suspect.and_then(|f| f.device),
                seconds: secs(now),
            });
        }
        if now >= next_progress {
            next_progress += PROGRESS_EVERY;
            log::info!(
                "{image}: still booting after {:.0} s; console: {}",
                secs(now),
                console.last_line().as_deref().unwrap_or("(nothing yet)")
            );
        }
        std::thread::sleep(POLL);
    };
    drop(qemu_proc);
    Ok(Run {
        ended,
        stage: console.stage(),
        last_lines: console.last_lines(LAST_LINES),
    })
}

/// A local path made absolute (the overlay's backing file name must not depend on the
/// directory the overlay lives in); NBD URIs pass through.
fn absolute_source(image: &str) -> Source {
    match Source::parse(image) {
        Source::File(p) => Source::File(std::path::absolute(&p).unwrap_or(p)),
        nbd => nbd,
    }
}

/// Boot the image until `login:` or a failure; see the module documentation.
///
/// A guest that does not boot is an `Ok` outcome with `failure` set; `Err` means the check
/// itself could not run (not an image, QEMU or OVMF missing, interrupted, …).
pub fn boot_check(opts: &BootOptions) -> Result<BootOutcome, ValidateError> {
    let t0 = Instant::now();
    let source = absolute_source(&opts.image);
    let image = source.qemu_name();
    let info = load::probe(&source, opts.format.as_deref())?;
    let tmp = tempfile::Builder::new()
        .prefix("h2k-validate-")
        .tempdir()
        .map_err(io_err("cannot create a temporary directory"))?;
    let (firmware, firmware_reason) = match opts.firmware {
        FirmwareChoice::Bios => (Firmware::Bios, "requested".to_string()),
        FirmwareChoice::Uefi => (Firmware::Uefi, "requested".to_string()),
        FirmwareChoice::Auto => firmware_for(read_partition_table(&source, &info, tmp.path())?),
    };
    if firmware == Firmware::Uefi && !opts.bus.uefi_bootable() {
        return Err(ValidateError::NoUefiDriver {
            image,
            bus: opts.bus,
        });
    }
    let ovmf = match firmware {
        Firmware::Uefi => {
            let (code, vars_template) = find_ovmf()?;
            let vars = tmp.path().join("OVMF_VARS.fd");
            fs::copy(&vars_template, &vars).map_err(io_err(vars_template.display()))?;
            Some((code, vars))
        }
        Firmware::Bios => None,
    };
    let overlay = tmp.path().join("overlay.qcow2");
    load::create_overlay(&info, &overlay)?;

    let mut cancel: Vec<Arc<AtomicBool>> = opts.cancel.iter().cloned().collect();
    if cancel.is_empty() {
        cancel.extend(signal_flag());
    }
    let resolved = opts.accel.resolve();
    let serial_log = opts
        .console_log
        .clone()
        .unwrap_or_else(|| tmp.path().join("console.log"));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut spec = GuestSpec {
        accel: resolved.accel,
        cpus: cores.clamp(1, 4),
        memory_mib: opts.memory_mib.max(256),
        firmware,
        ovmf,
        bus: opts.bus,
        disk: overlay,
        serial_log,
    };
    let mut accel_reason = resolved.reason;
    log::info!(
        "{image}: booting on bus {} ({}: {firmware_reason}; {}: {accel_reason}); waiting up to \
         {} s for a login prompt",
        opts.bus,
        firmware_name(firmware),
        spec.accel,
        opts.timeout.as_secs()
    );
    let stderr_path = tmp.path().join("qemu.stderr");
    let run = loop {
        let run = run_guest(&spec, &stderr_path, opts.timeout, &cancel, &image)?;
        match &run.ended {
            Ended::QemuError {
                reason,
                early: true,
            } if spec.accel == Accel::Kvm && opts.accel == AccelChoice::Auto => {
                log::warn!("{image}: QEMU failed under KVM ({reason}); retrying under TCG");
                accel_reason = format!("KVM failed at boot: {reason}");
                spec.accel = Accel::Tcg;
            }
            _ => break run,
        }
    };

    let mut outcome = BootOutcome {
        image: image.clone(),
        format: info.format.clone(),
        bus: opts.bus,
        firmware,
        firmware_reason,
        accel: spec.accel,
        accel_reason,
        booted: false,
        stage: run.stage,
        seconds_to_login: None,
        login_prompt: None,
        failure: None,
        seconds: 0.0,
        console_log: opts.console_log.clone(),
        last_console_lines: run.last_lines,
    };
    match run.ended {
        Ended::Login { prompt, seconds } => {
            outcome.booted = true;
            outcome.seconds_to_login = Some(seconds);
            outcome.login_prompt = Some(prompt);
        }
        Ended::Failed(f) => {
            outcome.failure = Some(f);
            if outcome.console_log.is_none() {
                outcome.console_log = keep_console_log(&spec.serial_log, &image, opts.bus);
            }
        }
        Ended::QemuError { reason, .. } => {
            return Err(ValidateError::Qemu {
                image,
                bus: opts.bus,
                reason,
            })
        }
        Ended::Interrupted => return Err(ValidateError::Interrupted { image }),
    }
    outcome.seconds = t0.elapsed().as_secs_f64();
    Ok(outcome)
}

/// Copy a failed boot's console out of the temp directory (which is about to go).
fn keep_console_log(log: &Path, image: &str, bus: Bus) -> Option<PathBuf> {
    let stem = Path::new(image)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>();
    let kept = tempfile::Builder::new()
        .prefix(&format!("h2k-guest-console-{stem}-{bus}-"))
        .suffix(".log")
        .tempfile()
        .ok()?;
    fs::copy(log, kept.path()).ok()?;
    kept.keep().ok().map(|(_, p)| p)
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
    fn tracks_the_stage_and_the_root_argument() {
        let mut c = feed("SeaBIOS (version 1.16.3)\r\nBooting from Hard Disk...\r\n");
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
            disk: PathBuf::from("/tmp/v/overlay.qcow2"),
            serial_log: PathBuf::from("/tmp/v/console.log"),
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
        assert!(a.contains("-machine pc,graphics=off"), "{a}");
        assert!(
            a.contains("-accel tcg,thread=multi -cpu max,svm=off,vmx=off -smp 2 -m 1024"),
            "{a}"
        );
        assert!(
            a.contains(
                "-device pvscsi,id=scsi0 -device scsi-hd,drive=disk0,bus=scsi0.0,bootindex=0"
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

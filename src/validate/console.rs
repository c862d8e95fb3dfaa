//! The serial-console parser (pure): login prompts and the lines that prove a failed boot.

use super::*;

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

pub(crate) const KEEP_LINES: usize = 200;
pub(crate) const MAX_PARTIAL: usize = 64 * 1024;

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
        // The probe's report is data: a unit or cmdline in it is no console message.
        if line.trim().is_empty() || line.contains(PROBE_PREFIX) {
            return;
        }
        if self.login.is_none() && is_login_prompt(line) {
            self.login = Some(line.trim().to_string());
        }
        if let Some(f) = classify_line(line) {
            self.findings.push(f);
        }
        // In the initramfs the device jobs systemd shows are the root's (or resume's): one
        // still waited for after INITRAMFS_DEVICE_WAIT has no driver (dracut itself gives up
        // only minutes later, when its initqueue times out).
        if self.stage == Stage::Initramfs {
            if let Some(waited) = device_job_wait(line) {
                if waited >= INITRAMFS_DEVICE_WAIT_SECS {
                    self.findings.push(Finding {
                        kind: FailureKind::RootDeviceMissing,
                        strength: Strength::Fatal,
                        line: line.trim().to_string(),
                        device: None,
                    });
                }
            }
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
            || (body.starts_with("Welcome to")
                && !body.contains("Initramfs")
                && !body.starts_with("Welcome to GRUB"))
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

/// Seconds a device job may run in the initramfs before the boot counts as failed.
pub(crate) const INITRAMFS_DEVICE_WAIT_SECS: f64 = 90.0;

/// How long systemd's status line says a device job has run: "Job dev-disk-by\x2duuid-…
/// start running (1min 5s / no limit)" or "A start job is running for /dev/disk/by-uuid/… (42s
/// / 1min 30s)".
pub(crate) fn device_job_wait(line: &str) -> Option<f64> {
    let is_device_job = line.contains("Job dev-")
        || (line.contains("start job is running for") && line.contains("/dev/"));
    if !is_device_job {
        return None;
    }
    let open = line.rfind('(')?;
    let rest = &line[open + 1..];
    let elapsed = &rest[..rest.find(" / ")?];
    let mut total = 0.0;
    for token in elapsed.split_whitespace() {
        let digits = token
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(token.len());
        let value: f64 = token[..digits].parse().ok()?;
        total += value
            * match &token[digits..] {
                "h" => 3600.0,
                "min" => 60.0,
                "s" => 1.0,
                "ms" => 0.001,
                _ => return None,
            };
    }
    Some(total)
}

/// `host login:` as getty prints it.
pub(crate) fn is_login_prompt(line: &str) -> bool {
    let l = line.trim();
    l == "login:" || (l.ends_with(" login:") && !l.contains("Last login"))
}

/// Prompts a failed boot leaves the guest at (they come without a newline).
pub(crate) fn classify_prompt(line: &str) -> Option<Finding> {
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

pub(crate) fn strip_kernel_time(l: &str) -> &str {
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
pub(crate) fn between(s: &str, start: &str, end: &str) -> Option<String> {
    let from = s.find(start)? + start.len();
    let to = from + s[from..].find(end)?;
    let t = s[from..to].trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// dracut's `…/initqueue/finished/devexists-\x2fdev\x2fmapper\x2fvg0-root.sh` → `/dev/mapper/vg0-root`.
pub(crate) fn dracut_devexists_hook(l: &str) -> Option<String> {
    let i = l.find("devexists-")? + "devexists-".len();
    let rest = &l[i..];
    let name = &rest[..rest.find(".sh")?];
    Some(unescape_systemd(name))
}

/// Undo `\xNN` escaping (systemd unit names, dracut hook names).
pub(crate) fn unescape_systemd(s: &str) -> String {
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

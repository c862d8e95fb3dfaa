//! GRUB and kernel command-line rewriting (pure text transforms).
//!
//! Why each exists:
//! - [`rewrite_cmdline`]: a `root=/dev/sda1` or `resume=/dev/sda5` names the disk as VMware's
//!   controller showed it; on KVM the disk is `/dev/vda`, so the initramfs waits forever for
//!   a root that never appears. `root=UUID=…` follows the filesystem instead.
//! - [`rewrite_default_grub`]: grub-mkconfig appends `GRUB_CMDLINE_LINUX` *after* its own
//!   `root=UUID=…`, and the kernel takes the last `root=`, so a hand-written `root=/dev/sda1`
//!   there wins over the generated one. `GRUB_DISABLE_LINUX_UUID=true` makes grub-mkconfig
//!   write the device the appliance sees (`root=/dev/sdb1`), which is wrong in the guest.
//! - [`rewrite_bls_entry`], [`rewrite_grubenv`]: BootLoaderSpec entries (Fedora, RHEL ≥ 8)
//!   carry their own `options` line, or `$kernelopts` from grubenv, which grub-mkconfig does
//!   not always regenerate.
//! - [`rewrite_grub_cfg_cmdlines`]: patch grub.cfg / menu.lst in place when the guest has no
//!   grub-mkconfig to run (GRUB legacy, broken packages).
//! - [`verify_grub_cfg`]: check a regenerated grub.cfg before trusting it.
//! - [`clean_device_map`]: `/boot/grub/device.map` pins GRUB drives to VMware-era names;
//!   grub-install regenerates what it needs, while stale entries mislead it.
//!
//! All are pure functions of text: lines they do not change are copied byte for byte, and
//! running one on its own output changes nothing.

use serde::Serialize;

use super::text::{field_spans, lines, Change, Line, Rewrite};
use crate::devices::{classify_device, is_unstable_device, usable_uuid, DeviceNameKind};

/// Kernel parameters that name a block device.
const DEVICE_PARAMS: [&str; 2] = ["root", "resume"];

/// grub.cfg / menu.lst commands whose arguments are a kernel path and its command line
/// (`module`/`module2` carry the dom0 kernel of Xen entries).
const KERNEL_COMMANDS: [&str; 6] = [
    "linux", "linux16", "linuxefi", "kernel", "module", "module2",
];

/// How a device name on a kernel command line becomes a UUID: any filesystem's for `root=`,
/// a swap area's for `resume=`. A plain `Fn(&str) -> Option<String>` is both.
pub trait Resolve {
    fn uuid(&self, device: &str) -> Option<String>;
    /// The UUID of the swap area at `device`; None when there is none (the `resume=` is then
    /// removed).
    fn swap_uuid(&self, device: &str) -> Option<String> {
        self.uuid(device)
    }
}

impl<F: Fn(&str) -> Option<String>> Resolve for F {
    fn uuid(&self, device: &str) -> Option<String> {
        self(device)
    }
}

/// A kernel line of a GRUB config whose `root=` will not exist on KVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRoot {
    /// 1-based line number.
    pub line: usize,
    /// The `root=` value, e.g. `/dev/sdb1`.
    pub value: String,
}

/// Rewrite `root=` and `resume=` whose value is an unstable device name (`/dev/sdX…`,
/// `/dev/hdX…`, `/dev/vdX…`, `/dev/xvdX…`, `/dev/nvme…`, `/dev/disk/by-path/…`, disk
/// `/dev/disk/by-id/…`) to `root=UUID=<resolve(dev)>`. Everything else, whitespace included,
/// is kept; a device `resolve` knows nothing about is kept too. Returns the new command line
/// and the `(old, new)` parameters replaced, e.g. `("root=/dev/sda1", "root=UUID=…")`.
pub fn rewrite_cmdline(cmdline: &str, resolve: &dyn Resolve) -> (String, Vec<(String, String)>) {
    let edit = edit_cmdline(cmdline, resolve, &['"']);
    (edit.text, edit.changes)
}

/// The last `root=` of a kernel command line (the one the kernel uses) when it is an
/// unstable device name; None when it is stable or absent.
pub fn unstable_root(cmdline: &str) -> Option<String> {
    unstable_root_in(cmdline, &['"'])
}

/// `/etc/default/grub` (and `/etc/default/grub.d/*.cfg`), shell syntax: apply
/// [`rewrite_cmdline`] inside `GRUB_CMDLINE_LINUX*=` values, quoted with `"`, `'` or not at
/// all, and comment out `GRUB_DISABLE_LINUX_UUID=true`. Other keys and comments are kept.
pub fn rewrite_default_grub(text: &str, resolve: &dyn Resolve) -> Rewrite {
    let mut out = Rewrite {
        text: String::with_capacity(text.len() + 128),
        ..Rewrite::default()
    };
    for line in lines(text) {
        let new_body = default_grub_line(&line, resolve, &mut out);
        out.text.push_str(new_body.as_deref().unwrap_or(line.body));
        out.text.push_str(line.ending);
    }
    out
}

/// A BootLoaderSpec entry (`/boot/loader/entries/*.conf`): the `options` lines' command line.
/// An `options $kernelopts` line takes its `root=` from grubenv: see [`rewrite_grubenv`].
pub fn rewrite_bls_entry(text: &str, resolve: &dyn Resolve) -> Rewrite {
    rewrite_command_lines(
        text,
        resolve,
        "bls entry",
        false,
        |keyword| keyword == "options",
        &['"'],
    )
}

/// A GRUB config patched in place (grub.cfg, or GRUB legacy menu.lst): the command line of
/// every `linux`, `linux16`, `linuxefi`, `kernel`, `module` and `module2` line, indented or
/// not. [`Change::field`] is the title of the menu entry the line belongs to.
pub fn rewrite_grub_cfg_cmdlines(text: &str, resolve: &dyn Resolve) -> Rewrite {
    rewrite_command_lines(
        text,
        resolve,
        "grub config",
        true,
        |keyword| KERNEL_COMMANDS.contains(&keyword),
        &['"', '\''],
    )
}

/// `/boot/grub2/grubenv` (1024-byte block, `#`-padded): the `kernelopts=` variable that BLS
/// entries use as `options $kernelopts`. The padding shrinks or grows so the block keeps its
/// size; when there is no room the text is returned unchanged with a warning.
pub fn rewrite_grubenv(text: &str, resolve: &dyn Resolve) -> Rewrite {
    let (content, padding) = match text.rfind('\n') {
        Some(i) if !text[i + 1..].is_empty() && text[i + 1..].bytes().all(|b| b == b'#') => {
            text.split_at(i + 1)
        }
        _ => (text, ""),
    };
    let mut out = Rewrite {
        text: String::with_capacity(text.len()),
        ..Rewrite::default()
    };
    for line in lines(content) {
        let mut new_body = None;
        if let Some(value) = line.body.strip_prefix("kernelopts=") {
            let edit = edit_cmdline(value, resolve, &['"']);
            record_edit(&line, "kernelopts", "grubenv", &edit, &mut out);
            if !edit.changes.is_empty() {
                new_body = Some(format!("kernelopts={}", edit.text));
            }
        }
        out.text.push_str(new_body.as_deref().unwrap_or(line.body));
        out.text.push_str(line.ending);
    }
    if padding.is_empty() {
        return out;
    }
    let grown = out.text.len() as isize - content.len() as isize;
    let new_padding = padding.len() as isize - grown;
    if new_padding < 0 {
        let mut warnings = out.warnings;
        warnings.push(format!(
            "grubenv: no room for the new kernelopts ({grown} more bytes, {} free); left unchanged",
            padding.len()
        ));
        return Rewrite {
            text: text.to_string(),
            changes: Vec::new(),
            warnings,
        };
    }
    out.text.push_str(&"#".repeat(new_padding as usize));
    out
}

/// Every `linux`/`linux16`/`linuxefi`/`kernel`/`module`/`module2` line, indented inside
/// `menuentry`/`submenu` or not, whose effective (last) `root=` is an unstable device name
/// (`/dev/sdX`, `/dev/hdX`, `/dev/vdX`, `/dev/xvdX`, `/dev/nvme…`, `/dev/disk/by-path/…`, disk
/// `/dev/disk/by-id/…`). Stable values pass: `UUID=`, `LABEL=`, `PARTUUID=`, `PARTLABEL=`,
/// `/dev/mapper/…`, `/dev/VG/LV`, `/dev/disk/by-uuid/…`, `ZFS=…`, `live:…`, `/dev/nfs`.
///
/// A line without `root=` is not flagged: the kernel or the initramfs may get the root from
/// elsewhere (a BLS `$kernelopts`, `rd.lvm.lv=`, systemd's GPT auto-discovery, the initramfs
/// config).
pub fn verify_grub_cfg(text: &str) -> Vec<BadRoot> {
    lines(text)
        .filter_map(|line| {
            let (keyword, start) = first_word(line.body)?;
            if !KERNEL_COMMANDS.contains(&keyword) {
                return None;
            }
            let value = unstable_root_in(&line.body[start..], &['"', '\''])?;
            Some(BadRoot {
                line: line.number,
                value,
            })
        })
        .collect()
}

/// `/boot/grub/device.map`: drop entries whose device is a VMware-era name (`/dev/sdX`,
/// `/dev/hdX`, `/dev/xvdX`, `/dev/nvme…`, by-path, disk by-id); keep comments, `/dev/vdX`
/// (already the KVM name) and anything else. An all-comment result is fine: grub-install
/// regenerates what it needs. [`Change::field`] is the GRUB drive, [`Change::new`] is empty.
pub fn clean_device_map(text: &str) -> Rewrite {
    let mut out = Rewrite {
        text: String::with_capacity(text.len()),
        ..Rewrite::default()
    };
    for line in lines(text) {
        let fields = field_spans(line.body);
        let stale = match fields.as_slice() {
            [(ds, de), (ss, se), ..] if !line.body[*ds..].starts_with('#') => {
                let device = &line.body[*ss..*se];
                let stale = match classify_device(device) {
                    DeviceNameKind::KernelDisk => !device.starts_with("/dev/vd"),
                    DeviceNameKind::ByPath | DeviceNameKind::ById => true,
                    DeviceNameKind::Other => false,
                };
                stale.then(|| line.body[*ds..*de].to_string())
            }
            _ => None,
        };
        match stale {
            Some(drive) => out.changes.push(Change {
                line: line.number,
                field: drive,
                old: line.body.to_string(),
                new: String::new(),
            }),
            None => {
                out.text.push_str(line.body);
                out.text.push_str(line.ending);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------

struct CmdlineEdit {
    text: String,
    /// `(old param, new param)`.
    changes: Vec<(String, String)>,
    /// Parameters with an unstable device `resolve` had no UUID for.
    unresolved: Vec<String>,
    /// `resume=` parameters removed: their device resolves to nothing on KVM, and a resume
    /// device that never appears stalls every boot.
    removed: Vec<String>,
}

/// Byte spans of the whitespace-separated words of `s`; a character of `quotes` opens a
/// group that runs to the same character, whitespace included.
fn word_spans(s: &str, quotes: &[char]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    let mut in_quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        if let Some(q) = in_quote {
            if c == q {
                in_quote = None;
            }
            continue;
        }
        if c == ' ' || c == '\t' {
            if let Some(st) = start.take() {
                spans.push((st, i));
            }
            continue;
        }
        if start.is_none() {
            start = Some(i);
        }
        if quotes.contains(&c) {
            in_quote = Some(c);
        }
    }
    if let Some(st) = start {
        spans.push((st, s.len()));
    }
    spans
}

fn strip_quotes(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// `root=/dev/sda1` (or `"root=/dev/sda1"`, `root="/dev/sda1"`) → (`root`, `/dev/sda1`).
fn device_param(word: &str) -> Option<(&str, &str)> {
    let (key, value) = strip_quotes(word).split_once('=')?;
    DEVICE_PARAMS
        .contains(&key)
        .then(|| (key, strip_quotes(value)))
}

fn edit_cmdline(cmdline: &str, resolve: &dyn Resolve, quotes: &[char]) -> CmdlineEdit {
    let mut edit = CmdlineEdit {
        text: String::with_capacity(cmdline.len() + 64),
        changes: Vec::new(),
        unresolved: Vec::new(),
        removed: Vec::new(),
    };
    let mut copied_to = 0;
    for (s, e) in word_spans(cmdline, quotes) {
        let word = &cmdline[s..e];
        let Some((key, value)) = device_param(word) else {
            continue;
        };
        let stable = if key == "resume" {
            super::resume::is_stable_resume(value)
        } else {
            !is_unstable_device(value)
        };
        if stable {
            continue;
        }
        let uuid = if key == "resume" {
            resolve.swap_uuid(value)
        } else {
            resolve.uuid(value)
        };
        let Some(uuid) = uuid.as_deref().and_then(usable_uuid) else {
            if key == "resume" {
                // The word goes with the blanks before it (after it when it comes first).
                let before = cmdline[copied_to..s].trim_end_matches([' ', '\t']);
                edit.text.push_str(before);
                let after = &cmdline[e..];
                copied_to = if edit.text.is_empty() {
                    e + (after.len() - after.trim_start_matches([' ', '\t']).len())
                } else {
                    e
                };
                edit.changes.push((word.to_string(), String::new()));
                edit.removed.push(word.to_string());
                continue;
            }
            edit.unresolved.push(word.to_string());
            continue;
        };
        let new = format!("{key}=UUID={uuid}");
        edit.text.push_str(&cmdline[copied_to..s]);
        edit.text.push_str(&new);
        copied_to = e;
        edit.changes.push((word.to_string(), new));
    }
    edit.text.push_str(&cmdline[copied_to..]);
    edit
}

fn unstable_root_in(cmdline: &str, quotes: &[char]) -> Option<String> {
    let root = word_spans(cmdline, quotes)
        .into_iter()
        .filter_map(|(s, e)| {
            device_param(&cmdline[s..e])
                .filter(|(key, _)| *key == "root")
                .map(|(_, value)| value)
        })
        .next_back()?;
    is_unstable_device(root).then(|| root.to_string())
}

/// Record a command-line edit made on `line` as changes and warnings.
fn record_edit(line: &Line, field: &str, what: &str, edit: &CmdlineEdit, out: &mut Rewrite) {
    for (old, new) in &edit.changes {
        out.changes.push(Change {
            line: line.number,
            field: field.to_string(),
            old: old.clone(),
            new: new.clone(),
        });
    }
    for param in &edit.removed {
        out.warnings.push(format!(
            "{what} line {}: {param} ({field}) names no swap area that exists on KVM; removed (no resume from hibernation)",
            line.number
        ));
    }
    for param in &edit.unresolved {
        out.warnings.push(format!(
            "{what} line {}: no UUID known for {param} ({field}); left unchanged, the device may not exist on KVM",
            line.number
        ));
    }
}

/// The first word of a line and the byte offset just after it.
fn first_word(body: &str) -> Option<(&str, usize)> {
    let start = body.len() - body.trim_start_matches([' ', '\t']).len();
    let rest = &body[start..];
    let len = rest.find([' ', '\t']).unwrap_or(rest.len());
    (len > 0).then(|| (&rest[..len], start + len))
}

/// The title of a `menuentry 'Title' …` / `submenu "Title" …` (grub.cfg) or `title Title`
/// (menu.lst) line.
fn menu_title(body: &str) -> Option<String> {
    let (keyword, end) = first_word(body)?;
    let rest = body[end..].trim_start_matches([' ', '\t']);
    match keyword {
        "menuentry" | "submenu" => {
            let words = word_spans(rest, &['"', '\'']);
            let &(s, e) = words.first()?;
            Some(strip_quotes(&rest[s..e]).to_string())
        }
        "title" => Some(rest.trim_end().to_string()),
        _ => None,
    }
}

/// Rewrite the command line following every line whose first word `is_command` accepts.
/// With `menu_titles`, changes are named after the enclosing menu entry.
fn rewrite_command_lines(
    text: &str,
    resolve: &dyn Resolve,
    what: &str,
    menu_titles: bool,
    is_command: impl Fn(&str) -> bool,
    quotes: &[char],
) -> Rewrite {
    let mut out = Rewrite {
        text: String::with_capacity(text.len() + 128),
        ..Rewrite::default()
    };
    let mut title: Option<String> = None;
    for line in lines(text) {
        let mut new_body = None;
        if let Some(t) = menu_titles.then(|| menu_title(line.body)).flatten() {
            title = Some(t);
        } else if let Some((keyword, end)) = first_word(line.body).filter(|(k, _)| is_command(k)) {
            let edit = edit_cmdline(&line.body[end..], resolve, quotes);
            record_edit(
                &line,
                title.as_deref().unwrap_or(keyword),
                what,
                &edit,
                &mut out,
            );
            if !edit.changes.is_empty() {
                new_body = Some(format!("{}{}", &line.body[..end], edit.text));
            }
        }
        out.text.push_str(new_body.as_deref().unwrap_or(line.body));
        out.text.push_str(line.ending);
    }
    out
}

/// A shell assignment `[export] KEY=value` on one line.
struct Assignment<'a> {
    key: &'a str,
    /// Span of the value inside its quotes (or of the bare word).
    value: (usize, usize),
    quote: Option<char>,
    /// False when the opening quote is not closed on this line.
    closed: bool,
}

fn parse_assignment(body: &str) -> Option<Assignment<'_>> {
    let (word, end) = first_word(body)?;
    let start = if word == "export" {
        let (next, next_end) = first_word(&body[end..])?;
        end + next_end - next.len()
    } else {
        end - word.len()
    };
    let rest = &body[start..];
    let key_len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    if key_len == 0 || !rest[key_len..].starts_with('=') {
        return None;
    }
    let key = &rest[..key_len];
    let value_start = start + key_len + 1;
    let value = &body[value_start..];
    match value.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let inner = &value[1..];
            let close = if q == '"' {
                find_closing_double_quote(inner)
            } else {
                inner.find('\'')
            };
            let inner_start = value_start + 1;
            let inner_end = close.map_or(body.len(), |c| inner_start + c);
            Some(Assignment {
                key,
                value: (inner_start, inner_end),
                quote: Some(q),
                closed: close.is_some(),
            })
        }
        _ => {
            let len = value.find([' ', '\t', ';']).unwrap_or(value.len());
            Some(Assignment {
                key,
                value: (value_start, value_start + len),
                quote: None,
                closed: true,
            })
        }
    }
}

/// Index of the `"` closing a shell double-quoted string (backslash escapes skipped).
fn find_closing_double_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return Some(i),
            _ => {}
        }
    }
    None
}

fn default_grub_line(line: &Line, resolve: &dyn Resolve, out: &mut Rewrite) -> Option<String> {
    let body = line.body;
    if body.trim_start().starts_with('#') {
        return None;
    }
    let a = parse_assignment(body)?;
    let (s, e) = a.value;
    if a.key == "GRUB_DISABLE_LINUX_UUID" {
        if &body[s..e] != "true" || !a.closed {
            return None;
        }
        let new = format!("# h2k-guest: disabled, it makes grub-mkconfig write root=/dev/… names that change on KVM: {body}");
        out.changes.push(Change {
            line: line.number,
            field: a.key.to_string(),
            old: body.to_string(),
            new: new.clone(),
        });
        return Some(new);
    }
    if !a.key.starts_with("GRUB_CMDLINE_LINUX") {
        return None;
    }
    if !a.closed {
        out.warnings.push(format!(
            "/etc/default/grub line {}: {} spans several lines; left unchanged, check its root= by hand",
            line.number, a.key
        ));
        return None;
    }
    // Inside '…' a kernel "…" group is literal text; inside "…" it would be escaped.
    let quotes: &[char] = if a.quote == Some('\'') { &['"'] } else { &[] };
    let edit = edit_cmdline(&body[s..e], resolve, quotes);
    record_edit(line, a.key, "/etc/default/grub", &edit, out);
    (!edit.changes.is_empty()).then(|| format!("{}{}{}", &body[..s], edit.text, &body[e..]))
}

/// A UEFI-only layout may keep a tiny stub on the ESP that loads the real config from /boot;
/// regenerate the real one, never overwrite the stub.
pub fn is_stub_config(text: &str) -> bool {
    text.len() < 1024 && text.contains("configfile") && !text.contains("menuentry")
}

/// Whether `patched` (grub.cfg `before` after [`rewrite_grub_cfg_cmdlines`]) can stand in
/// for a regenerated config: every device resolved, no unstable root= left, and kernel lines
/// to boot from (a BLS guest's grub.cfg reads the entries instead).
pub fn patch_in_place_suffices(before: &str, patched: &Rewrite, bls: bool) -> bool {
    patched.warnings.is_empty()
        && verify_grub_cfg(&patched.text).is_empty()
        && (has_kernel_lines(before) || bls)
}

/// Whether a GRUB config has a kernel line (`linux`, `linuxefi`, …) at all.
pub fn has_kernel_lines(text: &str) -> bool {
    text.lines()
        .any(|l| first_word(l).is_some_and(|(w, _)| KERNEL_COMMANDS.contains(&w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "9e3c1f7a-2b4d-4c6e-8f10-123456789abc";
    const SWAP: &str = "0f1e2d3c-4b5a-4968-8776-655443322110";

    fn resolve(dev: &str) -> Option<String> {
        match dev {
            "/dev/sda1"
            | "/dev/sdb1"
            | "/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:0:0-part1"
            | "/dev/nvme0n1p1" => Some(ROOT.to_string()),
            "/dev/sda5" => Some(SWAP.to_string()),
            _ => None,
        }
    }

    fn root() -> String {
        format!("root=UUID={ROOT}")
    }

    // --- rewrite_cmdline ---

    #[test]
    fn grub_cfg_with_sdx_roots_is_patched_in_place() {
        let cfg = "menuentry 'Debian' {\n\tsearch --no-floppy --fs-uuid --set=root abcd\n\tlinux /boot/vmlinuz-6.1 root=/dev/sda1 ro quiet\n\tinitrd /boot/initrd.img-6.1\n}\n";
        let patched = rewrite_grub_cfg_cmdlines(cfg, &resolve);
        assert!(patched.text.contains(&format!("{} ro quiet", root())));
        assert!(patch_in_place_suffices(cfg, &patched, false));
    }

    #[test]
    fn grub_cfg_with_an_unresolvable_root_needs_regeneration() {
        let cfg = "menuentry 'Debian' {\n\tlinux /boot/vmlinuz-6.1 root=/dev/sdz9 ro\n}\n";
        let patched = rewrite_grub_cfg_cmdlines(cfg, &resolve);
        assert!(!patch_in_place_suffices(cfg, &patched, false));
    }

    #[test]
    fn grub_cfg_without_kernel_lines_needs_regeneration_unless_bls() {
        let cfg = "set default=0\ninsmod blscfg\nblscfg\n";
        let patched = rewrite_grub_cfg_cmdlines(cfg, &resolve);
        assert!(!has_kernel_lines(cfg));
        assert!(!patch_in_place_suffices(cfg, &patched, false));
        assert!(patch_in_place_suffices(cfg, &patched, true));
    }

    #[test]
    fn kernel_lines_are_found_indented_or_not() {
        assert!(has_kernel_lines("linux16 /vmlinuz root=UUID=x\n"));
        assert!(has_kernel_lines(
            "menuentry x {\n    linuxefi /vmlinuz\n}\n"
        ));
        assert!(has_kernel_lines("title x\n\tkernel /vmlinuz ro\n"));
        assert!(!has_kernel_lines(
            "# linux /vmlinuz root=/dev/sda1\nlinuxfoo x\n"
        ));
        assert!(!has_kernel_lines(""));
    }

    #[test]
    fn cmdline_root_and_resume_are_rewritten() {
        let (text, changes) = rewrite_cmdline(
            "BOOT_IMAGE=/vmlinuz-5.14 root=/dev/sda1 ro resume=/dev/sda5 quiet",
            &resolve,
        );
        assert_eq!(
            text,
            format!(
                "BOOT_IMAGE=/vmlinuz-5.14 {} ro resume=UUID={SWAP} quiet",
                root()
            )
        );
        assert_eq!(
            changes,
            vec![
                ("root=/dev/sda1".to_string(), root()),
                (
                    "resume=/dev/sda5".to_string(),
                    format!("resume=UUID={SWAP}")
                )
            ]
        );
    }

    #[test]
    fn cmdline_resume_without_swap_is_removed_with_a_warning() {
        let (text, changes) = rewrite_cmdline("ro resume=/dev/sdq7 quiet", &resolve);
        assert_eq!(text, "ro quiet");
        assert_eq!(
            changes,
            vec![("resume=/dev/sdq7".to_string(), String::new())]
        );
        let (text, _) = rewrite_cmdline("resume=8:5  quiet", &resolve);
        assert_eq!(text, "quiet");
        let (text, _) = rewrite_cmdline("ro resume=/dev/sdq7", &resolve);
        assert_eq!(text, "ro");
        assert_eq!(rewrite_cmdline("ro", &resolve).1.len(), 0, "idempotent");
        // root= without a UUID is kept (and warned about), never removed.
        let (text, changes) = rewrite_cmdline("root=/dev/sdq1 ro", &resolve);
        assert_eq!((text.as_str(), changes.len()), ("root=/dev/sdq1 ro", 0));
        let out = rewrite_default_grub("GRUB_CMDLINE_LINUX=\"resume=/dev/sdq7 quiet\"\n", &resolve);
        assert_eq!(out.text, "GRUB_CMDLINE_LINUX=\"quiet\"\n");
        assert_eq!(out.warnings.len(), 1);
        assert!(out.warnings[0].contains("removed"), "{:?}", out.warnings);
    }

    /// Every device resolves, but only /dev/sda5 is a swap area.
    struct SwapOnlyOnSda5;

    impl Resolve for SwapOnlyOnSda5 {
        fn uuid(&self, _device: &str) -> Option<String> {
            Some(ROOT.to_string())
        }

        fn swap_uuid(&self, device: &str) -> Option<String> {
            (device == "/dev/sda5").then(|| SWAP.to_string())
        }
    }

    #[test]
    fn cmdline_resume_takes_the_swap_uuid_and_a_non_swap_resume_goes() {
        let (text, _) = rewrite_cmdline("root=/dev/sda1 resume=/dev/sda5", &SwapOnlyOnSda5);
        assert_eq!(text, format!("root=UUID={ROOT} resume=UUID={SWAP}"));
        let (text, changes) =
            rewrite_cmdline("root=/dev/sda1 resume=/dev/sda1 ro", &SwapOnlyOnSda5);
        assert_eq!(text, format!("root=UUID={ROOT} ro"));
        assert_eq!(changes[1], ("resume=/dev/sda1".to_string(), String::new()));
    }

    #[test]
    fn cmdline_stable_values_are_kept() {
        for cmdline in [
            "root=UUID=abc ro",
            "root=LABEL=/ ro",
            "root=PARTUUID=0a1b2c3d-02 rootwait",
            "root=/dev/mapper/rhel-root ro rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap resume=/dev/mapper/rhel-swap",
            "root=/dev/vg0/root ro",
            "root=ZFS=rpool/ROOT/debian boot=zfs",
            "root=live:CDLABEL=Fedora rd.live.image",
            "root=/dev/nfs nfsroot=10.0.0.1:/srv/root ip=dhcp",
            "rootfstype=ext4 resume_offset=34816 rootflags=subvol=@",
            "",
        ] {
            let (text, changes) = rewrite_cmdline(cmdline, &resolve);
            assert_eq!(text, cmdline);
            assert!(changes.is_empty(), "{cmdline}");
        }
    }

    #[test]
    fn cmdline_keeps_whitespace_and_quoted_parts() {
        let cmdline =
            "  root=/dev/sda1\tro  dyndbg=\"file drivers/x.c +p\"   console=ttyS0,115200n8 ";
        let (text, _) = rewrite_cmdline(cmdline, &resolve);
        assert_eq!(
            text,
            format!(
                "  {}\tro  dyndbg=\"file drivers/x.c +p\"   console=ttyS0,115200n8 ",
                root()
            )
        );
    }

    #[test]
    fn cmdline_root_inside_a_quoted_group_is_not_a_parameter() {
        let cmdline = "foo=\"a root=/dev/sda1 b\" ro";
        let (text, changes) = rewrite_cmdline(cmdline, &resolve);
        assert_eq!(text, cmdline);
        assert!(changes.is_empty());
    }

    #[test]
    fn cmdline_quoted_value_and_unknown_device() {
        let (text, _) = rewrite_cmdline("root=\"/dev/sda1\" ro", &resolve);
        assert_eq!(text, format!("{} ro", root()));
        let (text, changes) = rewrite_cmdline("root=/dev/sdc3 ro", &resolve);
        assert_eq!(text, "root=/dev/sdc3 ro");
        assert!(changes.is_empty());
    }

    #[test]
    fn cmdline_by_path_nvme_and_every_root() {
        let (text, changes) = rewrite_cmdline(
            "root=/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:0:0-part1 ro root=/dev/nvme0n1p1",
            &resolve,
        );
        assert_eq!(text, format!("{} ro {}", root(), root()));
        assert_eq!(changes.len(), 2);
    }

    #[test]
    fn cmdline_rejects_a_resolver_answer_that_is_not_a_uuid() {
        let (text, changes) =
            rewrite_cmdline("root=/dev/sda1 ro", &|_: &str| Some("not a uuid".into()));
        assert_eq!(text, "root=/dev/sda1 ro");
        assert!(changes.is_empty());
        let (text, _) = rewrite_cmdline("root=/dev/sda1 ro", &|_: &str| {
            Some(format!("UUID={ROOT}\n"))
        });
        assert_eq!(text, format!("{} ro", root()));
    }

    #[test]
    fn cmdline_is_idempotent() {
        let (once, _) = rewrite_cmdline("root=/dev/sda1 resume=/dev/sda5 ro", &resolve);
        let (twice, changes) = rewrite_cmdline(&once, &resolve);
        assert_eq!(once, twice);
        assert!(changes.is_empty());
    }

    #[test]
    fn unstable_root_uses_the_last_root() {
        assert_eq!(
            unstable_root("root=/dev/sda1 ro").as_deref(),
            Some("/dev/sda1")
        );
        assert_eq!(unstable_root("root=/dev/sda1 root=UUID=abc"), None);
        assert_eq!(
            unstable_root("root=UUID=abc root=/dev/sdb2").as_deref(),
            Some("/dev/sdb2")
        );
        assert_eq!(unstable_root("ro quiet"), None);
    }

    // --- /etc/default/grub ---

    const DEBIAN_DEFAULT_GRUB: &str = "\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
# For full documentation of the options in this file, see:
#   info -f grub -n 'Simple configuration'

GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"
GRUB_CMDLINE_LINUX=\"root=/dev/sda1 net.ifnames=0 biosdevname=0\"

# Uncomment to disable generation of recovery mode menu entries
#GRUB_DISABLE_RECOVERY=\"true\"
# Uncomment if you don't want GRUB to pass \"root=UUID=xxx\" parameter to Linux
GRUB_DISABLE_LINUX_UUID=true
";

    #[test]
    fn default_grub_debian() {
        let r = rewrite_default_grub(DEBIAN_DEFAULT_GRUB, &resolve);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.changes.len(), 2);
        assert_eq!(
            r.changes[0],
            Change {
                line: 10,
                field: "GRUB_CMDLINE_LINUX".into(),
                old: "root=/dev/sda1".into(),
                new: root()
            }
        );
        assert_eq!(r.changes[1].line, 15);
        assert_eq!(r.changes[1].field, "GRUB_DISABLE_LINUX_UUID");
        assert!(r.text.contains(&format!(
            "GRUB_CMDLINE_LINUX=\"{} net.ifnames=0 biosdevname=0\"\n",
            root()
        )));
        assert!(r.text.contains("\n# h2k-guest: disabled"));
        assert!(r.text.ends_with(": GRUB_DISABLE_LINUX_UUID=true\n"));
        let old: Vec<&str> = DEBIAN_DEFAULT_GRUB.lines().collect();
        let new: Vec<&str> = r.text.lines().collect();
        for (i, (o, n)) in old.iter().zip(&new).enumerate() {
            if i + 1 != 10 && i + 1 != 15 {
                assert_eq!(o, n);
            }
        }
        let again = rewrite_default_grub(&r.text, &resolve);
        assert_eq!(again, Rewrite::unchanged(&r.text));
    }

    #[test]
    fn default_grub_quoting_styles() {
        let text = "GRUB_CMDLINE_LINUX='root=/dev/sda1 crashkernel=auto'\nGRUB_CMDLINE_LINUX_DEFAULT=root=/dev/sda1\nexport GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX resume=/dev/sda5\" # swap\n";
        let r = rewrite_default_grub(text, &resolve);
        assert_eq!(
            r.text,
            format!(
                "GRUB_CMDLINE_LINUX='{} crashkernel=auto'\nGRUB_CMDLINE_LINUX_DEFAULT={}\nexport GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX resume=UUID={SWAP}\" # swap\n",
                root(),
                root()
            )
        );
        assert_eq!(
            r.changes.iter().map(|c| c.line).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn default_grub_disable_uuid_any_quoting_and_false_kept() {
        for line in [
            "GRUB_DISABLE_LINUX_UUID=true",
            "GRUB_DISABLE_LINUX_UUID=\"true\"",
            "GRUB_DISABLE_LINUX_UUID='true'",
            "  GRUB_DISABLE_LINUX_UUID=true  # old habit",
        ] {
            let r = rewrite_default_grub(&format!("{line}\n"), &resolve);
            assert_eq!(r.changes.len(), 1, "{line}");
            assert!(r.text.starts_with("# h2k-guest:") && r.text.ends_with(&format!("{line}\n")));
        }
        for line in [
            "GRUB_DISABLE_LINUX_UUID=false",
            "#GRUB_DISABLE_LINUX_UUID=true",
            "GRUB_DISABLE_LINUX_PARTUUID=true",
            "GRUB_DISABLE_UUID=true",
        ] {
            let text = format!("{line}\n");
            assert_eq!(
                rewrite_default_grub(&text, &resolve),
                Rewrite::unchanged(&text),
                "{line}"
            );
        }
    }

    #[test]
    fn default_grub_stable_and_unknown_values() {
        let text = "GRUB_CMDLINE_LINUX=\"crashkernel=auto resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap rhgb quiet\"\nGRUB_TERMINAL_OUTPUT=\"console\"\nGRUB_CMDLINE_LINUX_DEFAULT=\"root=/dev/sdq9\"\n";
        let r = rewrite_default_grub(text, &resolve);
        assert_eq!(r.text, text);
        assert!(r.changes.is_empty());
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("root=/dev/sdq9") && r.warnings[0].contains("line 3"));
    }

    #[test]
    fn default_grub_multi_line_value_is_warned_about() {
        let text = "GRUB_CMDLINE_LINUX=\"root=/dev/sda1\n  quiet\"\n";
        let r = rewrite_default_grub(text, &resolve);
        assert_eq!(r.text, text);
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn default_grub_escaped_quote_inside_value() {
        let text = "GRUB_CMDLINE_LINUX=\"dyndbg=\\\"+p\\\" root=/dev/sda1\"\n";
        let r = rewrite_default_grub(text, &resolve);
        assert_eq!(
            r.text,
            format!("GRUB_CMDLINE_LINUX=\"dyndbg=\\\"+p\\\" {}\"\n", root())
        );
    }

    // --- BLS ---

    #[test]
    fn bls_entry_options_line() {
        let text = "\
title Red Hat Enterprise Linux (5.14.0-362.8.1.el9_3.x86_64) 9.3 (Plow)
version 5.14.0-362.8.1.el9_3.x86_64
linux /vmlinuz-5.14.0-362.8.1.el9_3.x86_64
initrd /initramfs-5.14.0-362.8.1.el9_3.x86_64.img $tuned_initrd
options root=/dev/sda1 ro crashkernel=1G-4G:192M,4G-64G:256M resume=/dev/sda5 rhgb quiet
grub_users $grub_users
grub_arg --unrestricted
grub_class rhel
";
        let r = rewrite_bls_entry(text, &resolve);
        assert_eq!(r.changes.len(), 2);
        assert!(r
            .changes
            .iter()
            .all(|c| c.line == 5 && c.field == "options"));
        assert_eq!(
            r.text,
            text.replace("root=/dev/sda1", &root())
                .replace("resume=/dev/sda5", &format!("resume=UUID={SWAP}"))
        );
        assert_eq!(
            rewrite_bls_entry(&r.text, &resolve),
            Rewrite::unchanged(&r.text)
        );
    }

    #[test]
    fn bls_entry_kernelopts_and_linux_line_untouched() {
        let text = "title Fedora\nlinux /vmlinuz root=/dev/sda1\noptions $kernelopts\n";
        assert_eq!(rewrite_bls_entry(text, &resolve), Rewrite::unchanged(text));
    }

    #[test]
    fn grubenv_keeps_its_size() {
        let body = "# GRUB Environment Block\nsaved_entry=abc-5.14.0\nkernelopts=root=/dev/sda1 ro resume=/dev/sda5 rhgb quiet\nboot_success=0\n";
        let text = format!("{body}{}", "#".repeat(1024 - body.len()));
        let r = rewrite_grubenv(&text, &resolve);
        assert_eq!(r.text.len(), 1024);
        assert_eq!(r.changes.len(), 2);
        assert!(r.text.contains(&format!(
            "\nkernelopts={} ro resume=UUID={SWAP} rhgb quiet\nboot_success=0\n###",
            root()
        )));
        assert_eq!(
            rewrite_grubenv(&r.text, &resolve),
            Rewrite::unchanged(&r.text)
        );
    }

    #[test]
    fn grubenv_without_room_is_unchanged() {
        let body = "# GRUB Environment Block\nkernelopts=root=/dev/sda1 ro\n";
        let text = format!("{body}##");
        let r = rewrite_grubenv(&text, &resolve);
        assert_eq!(r.text, text);
        assert!(r.changes.is_empty());
        assert_eq!(r.warnings.len(), 1);
    }

    // --- grub.cfg ---

    /// Trimmed from a Debian 12 grub.cfg as update-grub writes it.
    const DEBIAN_GRUB_CFG: &str = "\
### BEGIN /etc/grub.d/10_linux ###
function gfxmode {
\tset gfxpayload=\"${1}\"
}
set linux_gfx_mode=
export linux_gfx_mode
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-9e3c1f7a' {
\tload_video
\tinsmod gzio
\tif [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
\tinsmod part_msdos
\tinsmod ext2
\tsearch --no-floppy --fs-uuid --set=root 9e3c1f7a-2b4d-4c6e-8f10-123456789abc
\techo\t'Loading Linux 6.1.0-18-amd64 ...'
\tlinux\t/boot/vmlinuz-6.1.0-18-amd64 root=UUID=9e3c1f7a-2b4d-4c6e-8f10-123456789abc ro  quiet
\techo\t'Loading initial ramdisk ...'
\tinitrd\t/boot/initrd.img-6.1.0-18-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-9e3c1f7a' {
\tmenuentry 'Debian GNU/Linux, with Linux 6.1.0-18-amd64 (recovery mode)' --class debian $menuentry_id_option 'gnulinux-6.1.0-18-amd64-recovery-9e3c1f7a' {
\t\tlinux\t/boot/vmlinuz-6.1.0-18-amd64 root=UUID=9e3c1f7a-2b4d-4c6e-8f10-123456789abc ro single
\t\tinitrd\t/boot/initrd.img-6.1.0-18-amd64
\t}
}
### END /etc/grub.d/10_linux ###
";

    #[test]
    fn verify_accepts_a_uuid_grub_cfg() {
        assert!(verify_grub_cfg(DEBIAN_GRUB_CFG).is_empty());
    }

    #[test]
    fn verify_flags_device_names_including_nested_entries() {
        let bad = DEBIAN_GRUB_CFG.replace(
            "root=UUID=9e3c1f7a-2b4d-4c6e-8f10-123456789abc ro single",
            "root=/dev/sdb1 ro single",
        );
        assert_eq!(
            verify_grub_cfg(&bad),
            vec![BadRoot {
                line: 21,
                value: "/dev/sdb1".into()
            }]
        );
        let bad = DEBIAN_GRUB_CFG.replace(
            "root=UUID=9e3c1f7a-2b4d-4c6e-8f10-123456789abc ro  quiet",
            "root=/dev/sdb1 ro  quiet",
        );
        assert_eq!(
            verify_grub_cfg(&bad),
            vec![BadRoot {
                line: 15,
                value: "/dev/sdb1".into()
            }]
        );
    }

    #[test]
    fn verify_every_kernel_command_and_value() {
        let text = "\
linux16 /vmlinuz root=/dev/hda1
linuxefi /vmlinuz root=/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0-part2 ro
    kernel /vmlinuz-2.6.32 ro root=/dev/xvda1
linux /vmlinuz root=/dev/nvme0n1p2
linux /vmlinuz root='/dev/vda2'
linux /vmlinuz root=/dev/disk/by-id/wwn-0x6000c29a-part2
linux /vmlinuz root=/dev/disk/by-id/dm-name-vg-root
linux /vmlinuz root=LABEL=root
linux /vmlinuz root=PARTUUID=0a-01 root=PARTLABEL=root
linux /vmlinuz root=/dev/mapper/vg-root
linux /vmlinuz root=/dev/vg/root
linux /vmlinuz root=/dev/disk/by-uuid/abc
linux /vmlinuz root=/dev/disk/by-label/root
linux /vmlinuz root=ZFS=rpool/ROOT/debian
linux /vmlinuz root=live:CDLABEL=x
linux /vmlinuz root=/dev/nfs nfsroot=1.2.3.4:/x
linux /vmlinuz ro quiet
initrd /initrd.img root=/dev/sda1
# linux /vmlinuz root=/dev/sda1
echo 'root=/dev/sda1'
";
        let lines: Vec<usize> = verify_grub_cfg(text).iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn grub_cfg_in_place_patch_with_titles() {
        let text = DEBIAN_GRUB_CFG.replace(
            "root=UUID=9e3c1f7a-2b4d-4c6e-8f10-123456789abc",
            "root=/dev/sda1",
        );
        assert_eq!(verify_grub_cfg(&text).len(), 2);
        let r = rewrite_grub_cfg_cmdlines(&text, &resolve);
        assert_eq!(r.text, DEBIAN_GRUB_CFG);
        assert!(verify_grub_cfg(&r.text).is_empty());
        assert_eq!(r.changes[0].field, "Debian GNU/Linux");
        assert_eq!(r.changes[0].line, 15);
        assert_eq!(
            r.changes[1].field,
            "Debian GNU/Linux, with Linux 6.1.0-18-amd64 (recovery mode)"
        );
        assert_eq!(
            rewrite_grub_cfg_cmdlines(&r.text, &resolve),
            Rewrite::unchanged(&r.text)
        );
    }

    #[test]
    fn menu_lst_grub_legacy() {
        let text = "\
default=0
timeout=5
splashimage=(hd0,0)/grub/splash.xpm.gz
hiddenmenu
title CentOS (2.6.32-754.el6.x86_64)
\troot (hd0,0)
\tkernel /vmlinuz-2.6.32-754.el6.x86_64 ro root=/dev/sda2 rd_NO_LUKS LANG=en_US.UTF-8 rhgb quiet
\tinitrd /initramfs-2.6.32-754.el6.x86_64.img
";
        let resolve = |dev: &str| (dev == "/dev/sda2").then(|| ROOT.to_string());
        let r = rewrite_grub_cfg_cmdlines(text, &resolve);
        assert_eq!(r.text, text.replace("root=/dev/sda2", &root()));
        assert_eq!(r.changes[0].field, "CentOS (2.6.32-754.el6.x86_64)");
        assert_eq!(r.changes[0].line, 7);
    }

    #[test]
    fn grub_cfg_unknown_device_warns() {
        let text = "menuentry 'x' {\n  linux /vmlinuz root=/dev/sdz1 ro\n}\n";
        let r = rewrite_grub_cfg_cmdlines(text, &resolve);
        assert_eq!(r.text, text);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("root=/dev/sdz1") && r.warnings[0].contains("line 2"));
    }

    // --- device.map ---

    #[test]
    fn device_map_drops_vmware_era_entries() {
        let text = "\
# this device map was generated by anaconda
(fd0)\t/dev/fd0
(hd0)     /dev/sda
(hd1)\t/dev/disk/by-id/ata-VMware_Virtual_IDE_Hard_Drive_00000000000000000001
(hd2) /dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:1:0
(hd3) /dev/vda
(hd4) /dev/hdb
(hd5) /dev/mapper/mpatha
";
        let r = clean_device_map(text);
        assert_eq!(r.text, "# this device map was generated by anaconda\n(fd0)\t/dev/fd0\n(hd3) /dev/vda\n(hd5) /dev/mapper/mpatha\n");
        assert_eq!(
            r.changes
                .iter()
                .map(|c| (c.line, c.field.as_str()))
                .collect::<Vec<_>>(),
            vec![(3, "(hd0)"), (4, "(hd1)"), (5, "(hd2)"), (7, "(hd4)")]
        );
        assert!(r.changes.iter().all(|c| c.new.is_empty()));
        assert_eq!(clean_device_map(&r.text), Rewrite::unchanged(&r.text));
    }

    #[test]
    fn device_map_only_comments_left() {
        let r = clean_device_map("(hd0) /dev/sda");
        assert_eq!(r.text, "");
        assert_eq!(r.changes.len(), 1);
        assert_eq!(
            clean_device_map("# nothing\n"),
            Rewrite::unchanged("# nothing\n")
        );
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;

    #[test]
    fn fedora_esp_stub_is_recognised() {
        let stub = "search --no-floppy --fs-uuid --set=dev 1234-ABCD\nset prefix=($dev)/grub2\nexport $prefix\nconfigfile $prefix/grub.cfg\n";
        assert!(is_stub_config(stub));
        assert!(!is_stub_config(
            "menuentry 'Debian' {\n linux /vmlinuz root=UUID=x\n}\nconfigfile /x\n"
        ));
    }
}

//! The resume (hibernation) device, wherever the guest names it (pure text transforms).
//!
//! Why: the initramfs waits for the resume device before it mounts the root. A guest made on
//! VMware names it `/dev/sda2`, `/dev/disk/by-path/…` or `8:2`; on KVM that device never
//! appears and every boot stalls for 30 s ("Gave up waiting for suspend/resume device"). The
//! swap's UUID travels with the disk, so such a name becomes `UUID=` of the swap it points at;
//! a name that points at no swap is removed (`RESUME=none`) with a warning.
//!
//! Places: initramfs-tools `RESUME=` (`/etc/initramfs-tools/conf.d/*`, `initramfs.conf`),
//! dracut's `kernel_cmdline`/`add_device` (see [`super::dracut_conf`]) and the kernel command
//! line (`resume=`, handled with `root=` by [`super::grub`]).

use super::text::{lines, Change, Rewrite};
use crate::devices::{is_unstable_device, usable_uuid};

/// What a guest-side device name points at, as the appliance sees the disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapLookup {
    /// A swap area with this UUID.
    Swap(String),
    /// A device holding something else (its filesystem type).
    NotSwap(String),
    /// Nothing known there.
    Unknown,
}

/// What to do with one resume device value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeAction {
    Keep,
    /// The stable value to write instead (`UUID=…`).
    Replace(String),
    /// Remove the device; why.
    Remove(String),
}

/// The action for a resume device `value` (quotes already removed). `UUID=`, `LABEL=`,
/// `PARTUUID=`, `/dev/mapper/…`, `/dev/disk/by-uuid/…`, `none`, `auto` and empty stay.
pub fn resume_action(value: &str, lookup: &dyn Fn(&str) -> SwapLookup) -> ResumeAction {
    if is_device_number(value) {
        return ResumeAction::Remove(format!(
            "{value} is a device number of the VMware disk, which differs on KVM"
        ));
    }
    if !is_unstable_device(value) {
        return ResumeAction::Keep;
    }
    match lookup(value) {
        SwapLookup::Swap(uuid) => match usable_uuid(&uuid) {
            Some(uuid) => ResumeAction::Replace(format!("UUID={uuid}")),
            None => ResumeAction::Remove(format!("{value}: the swap there has no usable UUID")),
        },
        SwapLookup::NotSwap(fs) => {
            ResumeAction::Remove(format!("{value} holds {fs}, not a swap area"))
        }
        SwapLookup::Unknown => ResumeAction::Remove(format!("{value} resolves to no swap area")),
    }
}

/// Whether a resume value is stable on KVM (what the image checks accept).
pub fn is_stable_resume(value: &str) -> bool {
    !is_device_number(value) && !is_unstable_device(value)
}

/// `8:2`, `0x802`-style numbers (the kernel's `resume=` accepts `major:minor`).
fn is_device_number(value: &str) -> bool {
    match value.split_once(':') {
        Some((major, minor)) => {
            !major.is_empty()
                && !minor.is_empty()
                && major.bytes().all(|b| b.is_ascii_digit())
                && minor.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// One `RESUME=` assignment in an initramfs-tools config line.
struct Assignment {
    /// Byte span of the value, quotes included.
    span: (usize, usize),
    quote: Option<char>,
    value: String,
}

/// `RESUME=…`, `export RESUME=…`, `RESUME="…"`, `RESUME='…'`, with anything after the value
/// (a comment) kept. None for comments and other lines.
fn resume_assignment(body: &str) -> Option<Assignment> {
    let start = body.len() - body.trim_start_matches([' ', '\t']).len();
    let mut rest = &body[start..];
    let mut offset = start;
    if let Some(r) = rest.strip_prefix("export") {
        let trimmed = r.trim_start_matches([' ', '\t']);
        if trimmed.len() == r.len() {
            return None;
        }
        offset += rest.len() - trimmed.len();
        rest = trimmed;
    }
    let after = rest.strip_prefix("RESUME=")?;
    let vstart = offset + "RESUME=".len();
    let (quote, len, value) = match after.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let close = after[1..].find(q)?;
            (Some(q), close + 2, after[1..1 + close].to_string())
        }
        _ => {
            let len = after.find([' ', '\t', ';', '#']).unwrap_or(after.len());
            (None, len, after[..len].to_string())
        }
    };
    Some(Assignment {
        span: (vstart, vstart + len),
        quote,
        value,
    })
}

/// initramfs-tools config (`/etc/initramfs-tools/conf.d/resume`, `initramfs.conf`): every
/// `RESUME=` naming a device that will not exist on KVM becomes `UUID=` of its swap, or
/// `none` (with the old value in a comment and a warning) when it points at no swap.
pub fn rewrite_initramfs_tools_resume(text: &str, lookup: &dyn Fn(&str) -> SwapLookup) -> Rewrite {
    let mut out = Rewrite {
        text: String::with_capacity(text.len() + 64),
        ..Rewrite::default()
    };
    for line in lines(text) {
        let Some(a) = resume_assignment(line.body) else {
            out.text.push_str(line.body);
            out.text.push_str(line.ending);
            continue;
        };
        let quoted = |v: &str| match a.quote {
            Some(q) => format!("{q}{v}{q}"),
            None => v.to_string(),
        };
        let (new_value, comment) = match resume_action(&a.value, lookup) {
            ResumeAction::Keep => {
                out.text.push_str(line.body);
                out.text.push_str(line.ending);
                continue;
            }
            ResumeAction::Replace(v) => (quoted(&v), String::new()),
            ResumeAction::Remove(why) => {
                out.warnings.push(format!(
                    "line {}: RESUME={}: {why}; set to none (no resume from hibernation)",
                    line.number, a.value
                ));
                (
                    quoted("none"),
                    format!(" # h2k-guest: was {} ({why})", a.value),
                )
            }
        };
        let body = format!(
            "{}{new_value}{}{comment}",
            &line.body[..a.span.0],
            &line.body[a.span.1..]
        );
        out.changes.push(Change {
            line: line.number,
            field: "RESUME".into(),
            old: format!("RESUME={}", a.value),
            new: format!("RESUME={}", strip_quotes(&new_value)),
        });
        out.text.push_str(&body);
        out.text.push_str(line.ending);
    }
    out
}

/// The `RESUME=` value an initramfs-tools config sets last (quotes removed), if any.
pub fn last_resume_assignment(text: &str) -> Option<String> {
    lines(text)
        .filter_map(|l| resume_assignment(l.body))
        .map(|a| a.value)
        .last()
}

/// The `RESUME=` initramfs-tools uses: the last one over its files in the order it reads them
/// (`initramfs.conf`, then `conf.d/*` by name), with the file that set it.
pub fn effective_resume<'a>(files: &[(&'a str, &str)]) -> Option<(String, &'a str)> {
    files
        .iter()
        .filter_map(|(path, text)| last_resume_assignment(text).map(|v| (v, *path)))
        .next_back()
}

/// A kernel command line (or dracut `kernel_cmdline` value) with its `resume=` words made
/// stable: replaced, or removed with the whitespace before them. Returns the new text, the
/// `(old, new)` words (new empty when removed) and a warning per removal.
pub fn rewrite_resume_words(
    cmdline: &str,
    lookup: &dyn Fn(&str) -> SwapLookup,
) -> (String, Vec<(String, String)>, Vec<String>) {
    let mut out = String::with_capacity(cmdline.len());
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    let mut copied_to = 0;
    for (s, e) in word_spans(cmdline) {
        let word = &cmdline[s..e];
        let Some(value) = word.strip_prefix("resume=") else {
            continue;
        };
        match resume_action(strip_quotes(value), lookup) {
            ResumeAction::Keep => {}
            ResumeAction::Replace(v) => {
                let new = format!("resume={v}");
                out.push_str(&cmdline[copied_to..s]);
                out.push_str(&new);
                copied_to = e;
                changes.push((word.to_string(), new));
            }
            ResumeAction::Remove(why) => {
                // Drop the word and the blanks before it (after it when it comes first).
                let before = cmdline[copied_to..s].trim_end_matches([' ', '\t']);
                out.push_str(before);
                copied_to = if before.is_empty() && out.is_empty() {
                    e + (cmdline[e..].len() - cmdline[e..].trim_start_matches([' ', '\t']).len())
                } else {
                    e
                };
                warnings.push(format!("{word}: {why}; removed"));
                changes.push((word.to_string(), String::new()));
            }
        }
    }
    out.push_str(&cmdline[copied_to..]);
    (out, changes, warnings)
}

/// The `resume=` values of a command line that are not stable on KVM.
pub fn unstable_resume_words(cmdline: &str) -> Vec<String> {
    word_spans(cmdline)
        .into_iter()
        .filter_map(|(s, e)| cmdline[s..e].strip_prefix("resume="))
        .map(strip_quotes)
        .filter(|v| !is_stable_resume(v))
        .map(str::to_string)
        .collect()
}

/// The last `resume=` value of a command line (the one the kernel uses).
pub fn last_resume_word(cmdline: &str) -> Option<String> {
    word_spans(cmdline)
        .into_iter()
        .filter_map(|(s, e)| cmdline[s..e].strip_prefix("resume="))
        .map(|v| strip_quotes(v).to_string())
        .next_back()
}

fn word_spans(s: &str) -> Vec<(usize, usize)> {
    super::text::field_spans(s)
}

fn strip_quotes(s: &str) -> &str {
    crate::devices::unquote(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWAP: &str = "0f1e2d3c-aaaa-4bbb-8ccc-000000000002";

    fn lookup(dev: &str) -> SwapLookup {
        match dev {
            "/dev/sda2" | "/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:0:0-part2" => {
                SwapLookup::Swap(SWAP.into())
            }
            "/dev/sda1" => SwapLookup::NotSwap("ext4".into()),
            _ => SwapLookup::Unknown,
        }
    }

    fn tools(text: &str) -> Rewrite {
        rewrite_initramfs_tools_resume(text, &lookup)
    }

    #[test]
    fn action_per_value_form() {
        let a = |v: &str| resume_action(v, &lookup);
        assert_eq!(
            a("/dev/sda2"),
            ResumeAction::Replace(format!("UUID={SWAP}"))
        );
        assert_eq!(
            a("/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:0:0-part2"),
            ResumeAction::Replace(format!("UUID={SWAP}"))
        );
        for keep in [
            "",
            "none",
            "auto",
            "UUID=abc",
            "LABEL=swap",
            "PARTUUID=0a-02",
            "/dev/mapper/vg0-swap",
            "/dev/vg0/swap",
            "/dev/disk/by-uuid/abc",
        ] {
            assert_eq!(a(keep), ResumeAction::Keep, "{keep}");
        }
        assert!(matches!(a("/dev/sda1"), ResumeAction::Remove(w) if w.contains("ext4")));
        assert!(matches!(a("/dev/sdc5"), ResumeAction::Remove(w) if w.contains("no swap")));
        assert!(matches!(a("8:2"), ResumeAction::Remove(w) if w.contains("device number")));
    }

    #[test]
    fn stable_values() {
        assert!(is_stable_resume(&format!("UUID={SWAP}")));
        assert!(is_stable_resume("none"));
        assert!(is_stable_resume(""));
        assert!(!is_stable_resume("/dev/sda2"));
        assert!(!is_stable_resume("8:2"));
        assert!(!is_stable_resume("/dev/disk/by-id/scsi-36000c29-part2"));
    }

    #[test]
    fn debian_conf_d_resume_by_sdx_becomes_the_swap_uuid() {
        let out = tools("RESUME=/dev/sda2\n");
        assert_eq!(out.text, format!("RESUME=UUID={SWAP}\n"));
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].old, "RESUME=/dev/sda2");
        assert_eq!(out.changes[0].new, format!("RESUME=UUID={SWAP}"));
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn quoting_styles_export_and_comments_are_kept() {
        let out =
            tools("  export RESUME=\"/dev/sda2\" # swap\nRESUME='/dev/sda2'\n# RESUME=/dev/sda2\n");
        assert_eq!(
            out.text,
            format!("  export RESUME=\"UUID={SWAP}\" # swap\nRESUME='UUID={SWAP}'\n# RESUME=/dev/sda2\n")
        );
        assert_eq!(out.changes.len(), 2);
    }

    #[test]
    fn no_swap_means_none_with_the_old_value_in_a_comment() {
        let out = tools("RESUME=/dev/sdc5\r\n");
        assert_eq!(
            out.text,
            "RESUME=none # h2k-guest: was /dev/sdc5 (/dev/sdc5 resolves to no swap area)\r\n"
        );
        assert_eq!(out.warnings.len(), 1);
        assert!(
            out.warnings[0].contains("set to none"),
            "{:?}",
            out.warnings
        );
        assert_eq!(
            tools(&out.text),
            Rewrite::unchanged(&out.text),
            "idempotent"
        );
    }

    #[test]
    fn stable_and_other_lines_are_untouched() {
        for text in [
            "RESUME=UUID=abc\n",
            "RESUME=none\n",
            "RESUME=auto",
            "RESUME=\n",
            "MODULES=most\nBUSYBOX=auto\n",
            "RESUMEX=/dev/sda2\n",
            "exportRESUME=/dev/sda2\n",
            "RESUME=\"/dev/sda2\n",
            "",
        ] {
            assert_eq!(tools(text), Rewrite::unchanged(text), "{text:?}");
        }
    }

    #[test]
    fn rewrite_is_idempotent() {
        let once = tools("RESUME=/dev/sda2\nRESUME=/dev/sda1\n");
        assert_eq!(tools(&once.text).text, once.text);
        assert!(tools(&once.text).changes.is_empty());
    }

    #[test]
    fn effective_resume_is_the_last_assignment_of_the_last_file() {
        let files = [
            ("conf/initramfs.conf", "MODULES=most\nRESUME=/dev/sda2\n"),
            ("conf/conf.d/resume", "RESUME=UUID=abc\n"),
            ("conf/conf.d/zz", "# nothing\n"),
        ];
        assert_eq!(
            effective_resume(&files),
            Some(("UUID=abc".to_string(), "conf/conf.d/resume"))
        );
        assert_eq!(effective_resume(&files[..1]).unwrap().0, "/dev/sda2");
        assert_eq!(effective_resume(&files[2..]), None);
    }

    #[test]
    fn cmdline_words_are_replaced_or_removed() {
        let (text, changes, warnings) =
            rewrite_resume_words(" rd.lvm=1 resume=/dev/sda2 quiet ", &lookup);
        assert_eq!(text, format!(" rd.lvm=1 resume=UUID={SWAP} quiet "));
        assert_eq!(changes.len(), 1);
        assert!(warnings.is_empty());

        let (text, changes, warnings) =
            rewrite_resume_words(" quiet resume=/dev/sdc5 splash ", &lookup);
        assert_eq!(text, " quiet splash ");
        assert_eq!(changes, vec![("resume=/dev/sdc5".into(), String::new())]);
        assert_eq!(warnings.len(), 1);

        let (text, _, _) = rewrite_resume_words("resume=8:2 quiet", &lookup);
        assert_eq!(text, "quiet");
        let (text, _, _) = rewrite_resume_words("resume=8:2", &lookup);
        assert_eq!(text, "");
        let (again, changes, _) = rewrite_resume_words(&text, &lookup);
        assert_eq!((again.as_str(), changes.len()), ("", 0));
    }

    #[test]
    fn unstable_and_last_resume_words() {
        let c = "resume=/dev/sda2 resume=UUID=abc x resume=\"8:3\"";
        assert_eq!(unstable_resume_words(c), vec!["/dev/sda2", "8:3"]);
        assert_eq!(last_resume_word(c).as_deref(), Some("8:3"));
        assert_eq!(last_resume_word("quiet"), None);
    }
}

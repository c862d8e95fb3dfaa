//! The configuration the guest's dracut reads, computed the way dracut computes it, and the
//! edits that keep the virtio drivers in (pure text transforms).
//!
//! Why: dracut sources `/etc/dracut.conf`, then every `*.conf` of `/usr/lib/dracut/dracut.conf.d`
//! and `/etc/dracut.conf.d` sorted by file name (a name in `/etc` replaces the same name in
//! `/usr/lib`). A VMware template's drop-in that omits the virtio drivers
//! (`omit_drivers+=" virtio_blk virtio_pci "`, or the pattern `virtio.*`) wins over a drop-in
//! of ours that sorts before it, and the guest never finds its root on KVM. So the omissions
//! are taken out of the files that make them, and the result is checked on the effective
//! configuration, not on one file.
//!
//! The files are shell. Only assignments `name=value` / `name+=value` (value unquoted, in
//! `"…"` (may span lines) or `'…'`) are understood; other shell is left alone.

use std::collections::BTreeMap;

use super::resume::{rewrite_resume_words, ResumeAction, SwapLookup};
use super::text::{Change, Rewrite};

/// The variables whose effective value is computed and reported.
pub const REPORTED: &[&str] = &[
    "hostonly",
    "hostonly_mode",
    "drivers",
    "add_drivers",
    "force_drivers",
    "omit_drivers",
    "kernel_cmdline",
    "add_device",
];

/// One assignment in a dracut config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// 1-based line of the name.
    pub line: usize,
    pub name: String,
    /// `+=` rather than `=`.
    pub append: bool,
    /// The value with its quotes removed.
    pub value: String,
    /// Byte span of the value in the text, quotes included.
    pub span: (usize, usize),
    pub quote: Option<char>,
}

/// The assignments of a dracut config file, in order.
pub fn assignments(text: &str) -> Vec<Assignment> {
    let mut out = Vec::new();
    let end_of_line = |from: usize| text[from..].find('\n').map_or(text.len(), |i| from + i);
    let mut pos = 0;
    let mut line = 1;
    while pos < text.len() {
        let body = &text[pos..end_of_line(pos)];
        let indent = body.len() - body.trim_start_matches([' ', '\t']).len();
        let mut end = pos + body.len();
        if let Some(a) = assignment_at(text, pos + indent, line) {
            // A quoted value may run over several lines.
            end = end_of_line(a.span.1.max(pos));
            out.push(a);
        }
        let next = (end + 1).min(text.len());
        line += text[pos..next].matches('\n').count();
        pos = next;
    }
    out
}

fn assignment_at(text: &str, start: usize, line: usize) -> Option<Assignment> {
    let rest = &text[start..];
    let name_len = rest
        .char_indices()
        .take_while(|&(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
        .count();
    if name_len == 0 {
        return None;
    }
    let name = &rest[..name_len];
    let after = &rest[name_len..];
    let (append, op_len) = if after.starts_with("+=") {
        (true, 2)
    } else if after.starts_with('=') {
        (false, 1)
    } else {
        return None;
    };
    let vstart = start + name_len + op_len;
    let v = &text[vstart..];
    let (quote, len, value) = match v.chars().next() {
        Some('"') => {
            let mut value = String::new();
            let mut chars = v[1..].char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, n @ ('"' | '\\' | '$' | '`'))) => value.push(n),
                        Some((_, '\n')) => {}
                        Some((_, n)) => {
                            value.push('\\');
                            value.push(n);
                        }
                        None => value.push('\\'),
                    },
                    '"' => {
                        end = Some(i + 2);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (Some('"'), end?, value)
        }
        Some('\'') => {
            let close = v[1..].find('\'')?;
            (Some('\''), close + 2, v[1..1 + close].to_string())
        }
        _ => {
            let len = v.find([' ', '\t', '\n', ';', '#']).unwrap_or(v.len());
            (None, len, v[..len].to_string())
        }
    };
    Some(Assignment {
        line,
        name: name.to_string(),
        append,
        value,
        span: (vstart, vstart + len),
        quote,
    })
}

/// The config files in the order dracut sources them: `etc_conf` (if it exists), then the
/// drop-ins of both directories by file name, `/etc`'s winning a name both have. The
/// arguments are full paths.
pub fn read_order(
    etc_conf: Option<&str>,
    usr_lib_dropins: &[String],
    etc_dropins: &[String],
) -> Vec<String> {
    let mut by_name: BTreeMap<&str, &String> = BTreeMap::new();
    for path in usr_lib_dropins.iter().chain(etc_dropins) {
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.ends_with(".conf") {
            by_name.insert(name, path);
        }
    }
    etc_conf
        .map(str::to_string)
        .into_iter()
        .chain(by_name.into_values().cloned())
        .collect()
}

/// The values dracut ends up with after sourcing `files` (path, text) in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    /// Variable → value (`=` replaces, `+=` appends).
    pub values: BTreeMap<String, String>,
    /// Variable → the `path:line` of every assignment that made its value.
    pub set_by: BTreeMap<String, Vec<String>>,
}

impl Effective {
    pub fn get(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }

    /// The whitespace-separated words of a list variable.
    pub fn words(&self, name: &str) -> Vec<&str> {
        self.get(name).split_whitespace().collect()
    }

    /// One line per reported variable that is set: `name="value" (path:line, …)`.
    pub fn summary(&self) -> Vec<String> {
        REPORTED
            .iter()
            .filter(|n| self.values.contains_key(**n))
            .map(|n| {
                format!(
                    "{n}=\"{}\" ({})",
                    self.words(n).join(" "),
                    self.set_by[*n].join(", ")
                )
            })
            .collect()
    }
}

/// Source `files` as dracut does (assignments only).
pub fn effective(files: &[(String, String)]) -> Effective {
    let mut eff = Effective::default();
    for (path, text) in files {
        for a in assignments(text) {
            let value = eff.values.entry(a.name.clone()).or_default();
            let origins = eff.set_by.entry(a.name.clone()).or_default();
            if !a.append {
                value.clear();
                origins.clear();
            }
            value.push_str(&a.value);
            origins.push(format!("{path}:{}", a.line));
        }
    }
    eff
}

/// Whether the `omit_drivers` entry `entry` drops `module`. Entries are extended regular
/// expressions; dracut matches them anchored (recent) or anywhere in the name (older), so the
/// wider reading is taken. An entry that is not a valid expression is compared as a name.
pub fn omits(entry: &str, module: &str) -> bool {
    let entry = entry.replace('-', "_");
    let module = module.replace('-', "_");
    if entry == module {
        return true;
    }
    regex::Regex::new(&entry).is_ok_and(|re| re.is_match(&module))
}

/// A needed driver the effective configuration leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Omission {
    pub module: String,
    pub entry: String,
}

/// The `needed` modules that `eff` (plus `extra_add`, the `--add-drivers` of the rebuild)
/// omits, after dracut's own correction: an entry equal to a name in `drivers`,
/// `add_drivers` or `force_drivers` is dropped from `omit_drivers`.
pub fn omitted(eff: &Effective, extra_add: &[&str], needed: &[&str]) -> Vec<Omission> {
    let mut named: Vec<&str> = eff.words("drivers");
    named.extend(eff.words("add_drivers"));
    named.extend(eff.words("force_drivers"));
    named.extend(extra_add);
    let named: Vec<String> = named.iter().map(|n| n.replace('-', "_")).collect();
    let mut out = Vec::new();
    for entry in eff.words("omit_drivers") {
        if named.contains(&entry.replace('-', "_")) {
            continue;
        }
        for m in needed {
            if omits(entry, m) {
                out.push(Omission {
                    module: m.to_string(),
                    entry: entry.to_string(),
                });
            }
        }
    }
    out
}

/// Take every `omit_drivers` entry that drops one of `needed` out of the file. A `+=` left
/// with nothing is commented out; a `=` keeps its (now shorter) value, since it also resets
/// what earlier files set. Other entries, lines and quoting are kept.
pub fn lift_omissions(text: &str, needed: &[&str]) -> Rewrite {
    let mut edits: Vec<((usize, usize), String)> = Vec::new();
    let mut changes = Vec::new();
    for a in assignments(text)
        .into_iter()
        .filter(|a| a.name == "omit_drivers")
    {
        let words: Vec<&str> = a.value.split_whitespace().collect();
        let (dropped, kept): (Vec<&str>, Vec<&str>) = words
            .iter()
            .partition(|w| needed.iter().any(|m| omits(w, m)));
        if dropped.is_empty() {
            continue;
        }
        let old = text[line_start(text, a.span.0)..a.span.1].to_string();
        if kept.is_empty() && a.append {
            let start = line_start(text, a.span.0);
            let replaced = text[start..a.span.1].replace('\n', "\n# ");
            edits.push((
                (start, a.span.1),
                format!("# h2k-guest: virtio drivers are needed on KVM: {replaced}"),
            ));
        } else {
            let q = a.quote.unwrap_or('"');
            let value = if kept.is_empty() {
                " ".to_string()
            } else {
                format!(" {} ", kept.join(" "))
            };
            edits.push((a.span, format!("{q}{value}{q}")));
        }
        changes.push(Change {
            line: a.line,
            field: "omit_drivers".into(),
            old: old.trim().to_string(),
            new: format!("without {}", dropped.join(" ")),
        });
    }
    Rewrite {
        text: apply_edits(text, edits),
        changes,
        warnings: Vec::new(),
    }
}

/// dracut's `kernel_cmdline` (`resume=` words) and `add_device` (device names) made stable:
/// see [`super::resume`]. An `add_device` name pointing at a swap becomes
/// `/dev/disk/by-uuid/…`; one pointing at no swap is dropped with a warning.
pub fn rewrite_resume(text: &str, lookup: &dyn Fn(&str) -> SwapLookup) -> Rewrite {
    let mut edits = Vec::new();
    let mut out = Rewrite::default();
    for a in assignments(text) {
        let (new_value, changed, warnings) = match a.name.as_str() {
            "kernel_cmdline" => rewrite_resume_words(&a.value, lookup),
            "add_device" => rewrite_devices(&a.value, lookup),
            _ => continue,
        };
        out.warnings.extend(
            warnings
                .into_iter()
                .map(|w| format!("line {}: {}: {w}", a.line, a.name)),
        );
        if changed.is_empty() {
            continue;
        }
        for (old, new) in changed {
            out.changes.push(Change {
                line: a.line,
                field: a.name.clone(),
                old,
                new,
            });
        }
        let q = a.quote.unwrap_or('"');
        edits.push((a.span, format!("{q}{}{q}", escape_for(q, &new_value))));
    }
    out.text = apply_edits(text, edits);
    out
}

fn rewrite_devices(
    value: &str,
    lookup: &dyn Fn(&str) -> SwapLookup,
) -> (String, Vec<(String, String)>, Vec<String>) {
    let mut words = Vec::new();
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    for w in value.split_whitespace() {
        match super::resume::resume_action(w, lookup) {
            ResumeAction::Keep => words.push(w.to_string()),
            ResumeAction::Replace(uuid) => {
                let new = format!("/dev/disk/by-uuid/{}", uuid.trim_start_matches("UUID="));
                changes.push((w.to_string(), new.clone()));
                words.push(new);
            }
            ResumeAction::Remove(why) => {
                warnings.push(format!("{w}: {why}; removed"));
                changes.push((w.to_string(), String::new()));
            }
        }
    }
    if changes.is_empty() {
        return (value.to_string(), changes, warnings);
    }
    (format!(" {} ", words.join(" ")), changes, warnings)
}

/// A value written back inside `q` quotes.
fn escape_for(q: char, value: &str) -> String {
    if q == '"' {
        value.replace('\\', "\\\\").replace('"', "\\\"")
    } else {
        value.to_string()
    }
}

fn line_start(text: &str, pos: usize) -> usize {
    text[..pos].rfind('\n').map_or(0, |i| i + 1)
}

/// `text` with each span replaced (spans in order, not overlapping).
fn apply_edits(text: &str, edits: Vec<((usize, usize), String)>) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for ((s, e), new) in edits {
        out.push_str(&text[at..s]);
        out.push_str(&new);
        at = e;
    }
    out.push_str(&text[at..]);
    out
}

/// The words of a dracut `build-parameter.txt` (its command line, single-quoted values).
pub fn build_parameters(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// The `--omit-drivers` values of a dracut command line (`--omit-drivers X`, `--omit-drivers=X`).
pub fn omit_drivers_arguments(words: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        if w == "--omit-drivers" {
            out.extend(it.next().cloned());
        } else if let Some(v) = w.strip_prefix("--omit-drivers=") {
            out.push(v.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEEDED: &[&str] = &[
        "virtio_blk",
        "virtio_scsi",
        "virtio_pci",
        "virtio_pci_modern_dev",
        "virtio_net",
        "virtio_console",
        "virtio_ring",
        "virtio",
    ];

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn assignments_in_every_quoting_style() {
        let text = "# comment\nhostonly=\"yes\"\n  add_drivers+=' ahci '\nomit_drivers+=\" a\n  b \" # two lines\nx=plain # c\nnot an assignment\nfor d in 1; do :; done\nesc=\"a\\\"b\"\n";
        let a = assignments(text);
        let got: Vec<(usize, &str, bool, &str)> = a
            .iter()
            .map(|a| (a.line, a.name.as_str(), a.append, a.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "hostonly", false, "yes"),
                (3, "add_drivers", true, " ahci "),
                (4, "omit_drivers", true, " a\n  b "),
                (6, "x", false, "plain"),
                (9, "esc", false, "a\"b"),
            ]
        );
        assert_eq!(&text[a[1].span.0..a[1].span.1], "' ahci '");
    }

    #[test]
    fn unterminated_quotes_and_odd_names_are_not_assignments() {
        assert!(assignments("omit_drivers+=\" virtio_blk\n").is_empty());
        assert!(assignments("9x=1\n-a=2\n=3\nomit_drivers -= x\n").is_empty());
        assert!(assignments("").is_empty());
    }

    #[test]
    fn read_order_sorts_by_name_and_etc_overrides_usr_lib() {
        let usr = vec![
            "/usr/lib/dracut/dracut.conf.d/01-dist.conf".to_string(),
            "/usr/lib/dracut/dracut.conf.d/90-omit.conf".to_string(),
            "/usr/lib/dracut/dracut.conf.d/README".to_string(),
        ];
        let etc = vec![
            "/etc/dracut.conf.d/90-omit.conf".to_string(),
            "/etc/dracut.conf.d/10-vmware.conf".to_string(),
        ];
        assert_eq!(
            read_order(Some("/etc/dracut.conf"), &usr, &etc),
            vec![
                "/etc/dracut.conf",
                "/usr/lib/dracut/dracut.conf.d/01-dist.conf",
                "/etc/dracut.conf.d/10-vmware.conf",
                "/etc/dracut.conf.d/90-omit.conf",
            ]
        );
        assert_eq!(read_order(None, &[], &[]), Vec::<String>::new());
    }

    #[test]
    fn effective_appends_and_replaces_in_order() {
        let eff = effective(&files(&[
            (
                "/etc/dracut.conf",
                "omit_drivers+=\" floppy \"\nhostonly=no\n",
            ),
            (
                "a.conf",
                "omit_drivers+=\" virtio_blk \"\nhostonly=\"yes\"\n",
            ),
            ("b.conf", "add_drivers+=\" ahci \"\n"),
        ]));
        assert_eq!(eff.words("omit_drivers"), vec!["floppy", "virtio_blk"]);
        assert_eq!(eff.get("hostonly"), "yes");
        assert_eq!(eff.set_by["hostonly"], vec!["a.conf:2"]);
        assert_eq!(
            eff.set_by["omit_drivers"],
            vec!["/etc/dracut.conf:1", "a.conf:1"]
        );
        let replaced = effective(&files(&[
            ("a.conf", "omit_drivers+=\" virtio_blk \"\n"),
            ("b.conf", "omit_drivers=\" floppy \"\n"),
        ]));
        assert_eq!(replaced.words("omit_drivers"), vec!["floppy"]);
        assert_eq!(replaced.set_by["omit_drivers"], vec!["b.conf:1"]);
        assert!(eff
            .summary()
            .iter()
            .any(|l| l.starts_with("hostonly=\"yes\"")));
    }

    #[test]
    fn omits_by_name_and_by_pattern() {
        assert!(omits("virtio_blk", "virtio_blk"));
        assert!(omits("virtio-blk", "virtio_blk"));
        assert!(omits("virtio.*", "virtio_pci"));
        assert!(omits("virtio_(blk|scsi)", "virtio_scsi"));
        // Unanchored, as older dracut matched: virtio_pci also drops its helper modules.
        assert!(omits("virtio_pci", "virtio_pci_modern_dev"));
        assert!(!omits("floppy", "virtio_blk"));
        assert!(!omits("virtio_blk", "virtio"));
        assert!(!omits("(", "virtio"));
    }

    #[test]
    fn omitted_applies_dracuts_own_correction() {
        let eff = effective(&files(&[(
            "90-vmware.conf",
            "omit_drivers+=\" virtio_blk virtio_scsi virtio_pci floppy \"\n",
        )]));
        let all = omitted(&eff, &[], NEEDED);
        let modules: Vec<&str> = all.iter().map(|o| o.module.as_str()).collect();
        assert_eq!(
            modules,
            vec![
                "virtio_blk",
                "virtio_scsi",
                "virtio_pci",
                "virtio_pci_modern_dev"
            ]
        );
        // --add-drivers of the same names drops those entries, not their helpers.
        let left = omitted(&eff, &["virtio_blk", "virtio_scsi", "virtio_pci"], NEEDED);
        assert!(left.is_empty(), "{left:?}");
        let pattern = effective(&files(&[("x.conf", "omit_drivers+=\" virtio.* \"\n")]));
        assert_eq!(
            omitted(&pattern, &["virtio_blk"], NEEDED).len(),
            NEEDED.len()
        );
    }

    #[test]
    fn lift_takes_needed_entries_out_and_keeps_the_rest() {
        let text =
            "# template\nomit_drivers+=\" virtio_blk floppy virtio_pci \"\nhostonly=\"yes\"\n";
        let out = lift_omissions(text, NEEDED);
        assert_eq!(
            out.text,
            "# template\nomit_drivers+=\" floppy \"\nhostonly=\"yes\"\n"
        );
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].line, 2);
        assert_eq!(out.changes[0].new, "without virtio_blk virtio_pci");
        assert_eq!(
            lift_omissions(&out.text, NEEDED),
            Rewrite::unchanged(&out.text)
        );
    }

    #[test]
    fn lift_comments_out_an_append_left_empty_and_keeps_a_reset() {
        let text = "omit_drivers+=\" virtio_blk virtio_scsi virtio_pci \"\nomit_drivers='virtio.*'\nomit_drivers+=virtio_net\n";
        let out = lift_omissions(text, NEEDED);
        assert_eq!(
            out.text,
            "# h2k-guest: virtio drivers are needed on KVM: omit_drivers+=\" virtio_blk virtio_scsi virtio_pci \"\nomit_drivers=' '\n# h2k-guest: virtio drivers are needed on KVM: omit_drivers+=virtio_net\n"
        );
        assert_eq!(out.changes.len(), 3);
        let eff = effective(&files(&[("f", out.text.as_str())]));
        assert!(omitted(&eff, &[], NEEDED).is_empty());
        assert_eq!(
            lift_omissions(&out.text, NEEDED).text,
            out.text,
            "idempotent"
        );
    }

    #[test]
    fn lift_handles_several_lines_and_multiline_values() {
        let text = "omit_drivers+=\" floppy\n virtio_blk \"\nomit_drivers+=\" pcspkr \"\nomit_drivers+=\" virtio.* \"\n";
        let out = lift_omissions(text, NEEDED);
        assert_eq!(
            out.text,
            "omit_drivers+=\" floppy \"\nomit_drivers+=\" pcspkr \"\n# h2k-guest: virtio drivers are needed on KVM: omit_drivers+=\" virtio.* \"\n"
        );
        let untouched = "add_drivers+=\" virtio_blk \"\n# omit_drivers+=\" virtio_blk \"\n";
        assert_eq!(
            lift_omissions(untouched, NEEDED),
            Rewrite::unchanged(untouched)
        );
    }

    fn lookup(dev: &str) -> SwapLookup {
        match dev {
            "/dev/sda2" => SwapLookup::Swap("abcd-1".into()),
            _ => SwapLookup::Unknown,
        }
    }

    #[test]
    fn resume_in_kernel_cmdline_and_add_device() {
        let text = "kernel_cmdline+=\" resume=/dev/sda2 quiet \"\nadd_device+=\" /dev/sda2 \"\nadd_device+=\" /dev/sdc1 /dev/mapper/vg-lv \"\nkernel_cmdline=\"resume=UUID=x\"\n";
        let out = rewrite_resume(text, &lookup);
        assert_eq!(
            out.text,
            "kernel_cmdline+=\" resume=UUID=abcd-1 quiet \"\nadd_device+=\" /dev/disk/by-uuid/abcd-1 \"\nadd_device+=\" /dev/mapper/vg-lv \"\nkernel_cmdline=\"resume=UUID=x\"\n"
        );
        assert_eq!(out.changes.len(), 3);
        assert_eq!(out.warnings.len(), 1);
        assert!(
            out.warnings[0].starts_with("line 3: add_device: /dev/sdc1"),
            "{:?}",
            out.warnings
        );
        assert_eq!(
            rewrite_resume(&out.text, &lookup),
            Rewrite::unchanged(&out.text)
        );
    }

    #[test]
    fn build_parameters_and_their_omit_drivers() {
        let words = build_parameters(
            " --force --add-drivers 'virtio_blk virtio_pci' --omit-drivers 'virtio_net' --kver '6.1.0-18-amd64'\n",
        );
        assert_eq!(
            words,
            vec![
                "--force",
                "--add-drivers",
                "virtio_blk virtio_pci",
                "--omit-drivers",
                "virtio_net",
                "--kver",
                "6.1.0-18-amd64"
            ]
        );
        assert_eq!(omit_drivers_arguments(&words), vec!["virtio_net"]);
        assert!(
            omit_drivers_arguments(&build_parameters("--omit-drivers=a"))
                .contains(&"a".to_string())
        );
        assert!(build_parameters("").is_empty());
    }
}

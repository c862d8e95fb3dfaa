//! GRUB environment blocks (pure): Photon's `/boot/photon.cfg` → `linux-<ver>.cfg`,
//! `user.cfg` and `systemd.cfg`, read by grub.cfg's `load_env`.
//!
//! The format is GRUB's own: the header line `# GRUB Environment Block`, then `name=value`
//! lines in which a backslash escapes the byte after it (grub-editenv writes a `\` as `\\`
//! and a newline inside a value as a backslash followed by the newline), other lines starting
//! with `#` are comments, and `#` bytes pad the block to its size. grub-editenv makes blocks
//! of 1024 bytes and never changes a block's size, so an edit here keeps it or fails.
//!
//! Photon's kernel packages write `linux-<ver>.cfg` with a heredoc: the header and the
//! variables, newline-terminated, without padding. GRUB reads those as well; they are kept
//! unpadded, and may not grow past 1024 bytes.
//!
//! Lines that are not edited are written back byte for byte.

/// The first line of every environment block.
pub const HEADER: &str = "# GRUB Environment Block\n";
/// The size grub-editenv gives a block (and the largest unpadded one accepted here).
pub const BLOCK_SIZE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvBlockError {
    #[error("not a GRUB environment block: it does not start with \"# GRUB Environment Block\"")]
    NoHeader,
    #[error(
        "not a GRUB environment block of {BLOCK_SIZE} bytes (grub-editenv's size): {size} bytes"
    )]
    WrongSize { size: usize },
    #[error("not a GRUB environment block: {what} at byte {offset}")]
    Malformed { offset: usize, what: &'static str },
    #[error(
        "the environment block has no room for the change: {needed} bytes needed, {size} available"
    )]
    TooSmall { needed: usize, size: usize },
    #[error("{0:?} is not a variable name grub-editenv accepts")]
    BadName(String),
}

/// How the block is laid out on disk, kept through an edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `#`-padded to this many bytes (grub-editenv).
    Padded(usize),
    /// No padding (Photon's kernel packages).
    Unpadded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Var {
        name: String,
        value: String,
        /// The line as read (newline included); None once the value was set.
        raw: Option<Vec<u8>>,
    },
    /// A comment, or a line GRUB skips (no `=`), newline included.
    Other(Vec<u8>),
}

/// A parsed environment block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvBlock {
    entries: Vec<Entry>,
    layout: Layout,
}

impl EnvBlock {
    /// An empty 1024-byte block, as `grub-editenv FILE create` makes it (minus its warning
    /// comment).
    pub fn new() -> EnvBlock {
        EnvBlock {
            entries: Vec::new(),
            layout: Layout::Padded(BLOCK_SIZE),
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<EnvBlock, EnvBlockError> {
        let body = bytes
            .strip_prefix(HEADER.as_bytes())
            .ok_or(EnvBlockError::NoHeader)?;
        let base = HEADER.len();
        let mut entries = Vec::new();
        let mut layout = Layout::Unpadded;
        let mut i = 0;
        while i < body.len() {
            let start = i;
            let rest = &body[i..];
            if rest[0] == b'#' {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(n) => {
                        entries.push(Entry::Other(rest[..=n].to_vec()));
                        i += n + 1;
                    }
                    None if rest.iter().all(|&b| b == b'#') => {
                        if bytes.len() != BLOCK_SIZE {
                            return Err(EnvBlockError::WrongSize { size: bytes.len() });
                        }
                        layout = Layout::Padded(bytes.len());
                        i = body.len();
                    }
                    None => {
                        return Err(EnvBlockError::Malformed {
                            offset: base + start,
                            what: "a comment without a newline",
                        })
                    }
                }
                continue;
            }
            // name=value up to the first unescaped newline.
            let line_end = unescaped_newline(rest).ok_or(EnvBlockError::Malformed {
                offset: base + start,
                what: "a line without a newline",
            })?;
            let line = &rest[..line_end];
            i += line_end + 1;
            let Some(eq) = line.iter().position(|&b| b == b'=') else {
                entries.push(Entry::Other(rest[..=line_end].to_vec()));
                continue;
            };
            // GRUB stops a name at the first '=' or newline: a name with an escaped newline
            // is no variable to it.
            if line[..eq].contains(&b'\n') {
                entries.push(Entry::Other(rest[..=line_end].to_vec()));
                continue;
            }
            let utf8 = |b: Vec<u8>| {
                String::from_utf8(b).map_err(|_| EnvBlockError::Malformed {
                    offset: base + start,
                    what: "a variable that is not UTF-8",
                })
            };
            let name = utf8(line[..eq].to_vec())?;
            let value = utf8(unescape(&line[eq + 1..]))?;
            entries.push(Entry::Var {
                name,
                value,
                raw: Some(rest[..=line_end].to_vec()),
            });
        }
        if layout == Layout::Unpadded && bytes.len() > BLOCK_SIZE {
            return Err(EnvBlockError::WrongSize { size: bytes.len() });
        }
        Ok(EnvBlock { entries, layout })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The value GRUB ends up with (the last assignment wins in `load_env`).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .last()
    }

    /// Every variable in order, duplicates included.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Var { name, value, .. } => Some((name.as_str(), value.as_str())),
            Entry::Other(_) => None,
        })
    }

    /// Set `name` (every assignment of it, so that whichever GRUB reads last has the value),
    /// or append it. Fails only for a name grub-editenv would not write.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), EnvBlockError> {
        check_name(name)?;
        let mut found = false;
        for e in &mut self.entries {
            if let Entry::Var {
                name: n,
                value: v,
                raw,
            } = e
            {
                if n == name && v != value {
                    *v = value.to_string();
                    *raw = None;
                }
                found |= n == name;
            }
        }
        if !found {
            self.entries.push(Entry::Var {
                name: name.to_string(),
                value: value.to_string(),
                raw: None,
            });
        }
        Ok(())
    }

    /// Remove every assignment of `name`; false when there was none.
    pub fn unset(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|e| !matches!(e, Entry::Var { name: n, .. } if n == name));
        self.entries.len() != before
    }

    /// The block's bytes in its own layout: a padded block keeps its size, an unpadded one
    /// may not exceed [`BLOCK_SIZE`].
    pub fn serialize(&self) -> Result<Vec<u8>, EnvBlockError> {
        let mut out = HEADER.as_bytes().to_vec();
        for e in &self.entries {
            match e {
                Entry::Var { raw: Some(raw), .. } | Entry::Other(raw) => out.extend_from_slice(raw),
                Entry::Var {
                    name,
                    value,
                    raw: None,
                } => {
                    out.extend_from_slice(name.as_bytes());
                    out.push(b'=');
                    for &b in value.as_bytes() {
                        if b == b'\\' || b == b'\n' {
                            out.push(b'\\');
                        }
                        out.push(b);
                    }
                    out.push(b'\n');
                }
            }
        }
        let size = match self.layout {
            Layout::Padded(size) => size,
            Layout::Unpadded => BLOCK_SIZE,
        };
        if out.len() > size {
            return Err(EnvBlockError::TooSmall {
                needed: out.len(),
                size,
            });
        }
        if let Layout::Padded(size) = self.layout {
            out.resize(size, b'#');
        }
        Ok(out)
    }
}

impl Default for EnvBlock {
    fn default() -> Self {
        EnvBlock::new()
    }
}

fn check_name(name: &str) -> Result<(), EnvBlockError> {
    let bad = name.is_empty() || name.starts_with('#') || name.contains(['=', '\n', '\\']);
    if bad {
        return Err(EnvBlockError::BadName(name.to_string()));
    }
    Ok(())
}

/// Index of the first newline not preceded by an escaping backslash.
fn unescaped_newline(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'\n' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            if let Some(&next) = bytes.next() {
                out.push(next);
            }
            continue;
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `grub-editenv F create; grub-editenv F set a='x\y' b='line1<NL>line2' c=` wrote
    /// here (grub-editenv 2.12).
    fn editenv_block() -> Vec<u8> {
        let mut b = b"# GRUB Environment Block\n# WARNING: Do not edit this file by tools other than grub-editenv!!!\na=x\\\\y\nb=line1\\\nline2\nc=\n".to_vec();
        b.resize(1024, b'#');
        b
    }

    fn photon_cfg() -> &'static str {
        "# GRUB Environment Block\nphoton_cmdline=init=/lib/systemd/systemd ro loglevel=3 quiet no-vmw-sta\nphoton_linux=vmlinuz-6.1.10-11.ph5-esx\nphoton_initrd=initrd.img-6.1.10-11.ph5-esx\n"
    }

    #[test]
    fn grub_editenv_output_parses_with_its_escapes() {
        let b = EnvBlock::parse(&editenv_block()).unwrap();
        assert_eq!(b.layout(), Layout::Padded(1024));
        assert_eq!(b.get("a"), Some("x\\y"));
        assert_eq!(b.get("b"), Some("line1\nline2"));
        assert_eq!(b.get("c"), Some(""));
        assert_eq!(b.get("d"), None);
        assert_eq!(b.vars().count(), 3);
    }

    #[test]
    fn untouched_block_serializes_byte_for_byte() {
        let raw = editenv_block();
        assert_eq!(EnvBlock::parse(&raw).unwrap().serialize().unwrap(), raw);
        let photon = photon_cfg().as_bytes();
        assert_eq!(
            EnvBlock::parse(photon).unwrap().serialize().unwrap(),
            photon
        );
    }

    #[test]
    fn odd_escapes_are_kept_as_written_when_not_edited() {
        let mut raw = b"# GRUB Environment Block\nx=\\a\\\\b\n".to_vec();
        raw.resize(1024, b'#');
        let b = EnvBlock::parse(&raw).unwrap();
        assert_eq!(b.get("x"), Some("a\\b"));
        assert_eq!(b.serialize().unwrap(), raw);
    }

    #[test]
    fn set_escapes_as_grub_editenv_does_and_keeps_the_size() {
        let mut b = EnvBlock::parse(&editenv_block()).unwrap();
        b.set("a", "zzz").unwrap();
        b.set("new", "p\\q\nr").unwrap();
        let out = b.serialize().unwrap();
        assert_eq!(out.len(), 1024);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("# GRUB Environment Block\n# WARNING: Do not edit this file by tools other than grub-editenv!!!\na=zzz\nb=line1\\\nline2\nc=\nnew=p\\\\q\\\nr\n#"),
            "{text}"
        );
        let again = EnvBlock::parse(&out).unwrap();
        assert_eq!(again.get("new"), Some("p\\q\nr"));
        assert_eq!(again.get("a"), Some("zzz"));
    }

    #[test]
    fn setting_the_same_value_changes_no_byte() {
        let raw = editenv_block();
        let mut b = EnvBlock::parse(&raw).unwrap();
        b.set("a", "x\\y").unwrap();
        assert_eq!(b.serialize().unwrap(), raw);
    }

    #[test]
    fn unset_removes_every_assignment() {
        let mut raw = b"# GRUB Environment Block\nk=1\nj=2\nk=3\n".to_vec();
        raw.resize(1024, b'#');
        let mut b = EnvBlock::parse(&raw).unwrap();
        assert_eq!(b.get("k"), Some("3"), "the last assignment is GRUB's");
        assert!(b.unset("k"));
        assert!(!b.unset("k"));
        let out = b.serialize().unwrap();
        assert_eq!(out.len(), 1024);
        assert!(out.starts_with(b"# GRUB Environment Block\nj=2\n#"));
    }

    #[test]
    fn duplicates_are_all_set() {
        let mut b = EnvBlock::parse(b"# GRUB Environment Block\nk=1\nk=2\n").unwrap();
        b.set("k", "9").unwrap();
        assert_eq!(
            b.serialize().unwrap(),
            b"# GRUB Environment Block\nk=9\nk=9\n"
        );
    }

    #[test]
    fn a_block_that_would_overflow_is_refused() {
        let mut b = EnvBlock::parse(&editenv_block()).unwrap();
        b.set("big", &"x".repeat(1000)).unwrap();
        let err = b.serialize().unwrap_err();
        assert!(
            matches!(err, EnvBlockError::TooSmall { size: 1024, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("no room"), "{err}");
    }

    #[test]
    fn exactly_full_is_accepted() {
        let mut b = EnvBlock::new();
        // header 25 + "v=" 2 + value + "\n" 1 = 1024
        b.set("v", &"y".repeat(1024 - 28)).unwrap();
        let out = b.serialize().unwrap();
        assert_eq!(out.len(), 1024);
        assert!(!out.ends_with(b"#"));
        b.set("v", &"y".repeat(1024 - 27)).unwrap();
        assert!(b.serialize().is_err());
    }

    #[test]
    fn photon_unpadded_cfg_stays_unpadded() {
        let mut b = EnvBlock::parse(photon_cfg().as_bytes()).unwrap();
        assert_eq!(b.layout(), Layout::Unpadded);
        assert_eq!(b.get("photon_linux"), Some("vmlinuz-6.1.10-11.ph5-esx"));
        b.set(
            "photon_cmdline",
            "init=/lib/systemd/systemd ro root=UUID=abc",
        )
        .unwrap();
        let out = String::from_utf8(b.serialize().unwrap()).unwrap();
        assert_eq!(
            out,
            "# GRUB Environment Block\nphoton_cmdline=init=/lib/systemd/systemd ro root=UUID=abc\nphoton_linux=vmlinuz-6.1.10-11.ph5-esx\nphoton_initrd=initrd.img-6.1.10-11.ph5-esx\n"
        );
        b.set("pad", &"z".repeat(1000)).unwrap();
        assert!(matches!(
            b.serialize(),
            Err(EnvBlockError::TooSmall { size: 1024, .. })
        ));
    }

    #[test]
    fn new_block_is_what_grub_editenv_creates_minus_its_warning() {
        let mut b = EnvBlock::new();
        b.set("photon_linux", "vmlinuz-6.1").unwrap();
        let out = b.serialize().unwrap();
        assert_eq!(out.len(), 1024);
        assert!(out.starts_with(b"# GRUB Environment Block\nphoton_linux=vmlinuz-6.1\n###"));
    }

    #[test]
    fn invalid_blocks_are_refused_with_the_reason() {
        assert_eq!(EnvBlock::parse(b""), Err(EnvBlockError::NoHeader));
        assert_eq!(
            EnvBlock::parse(b"# GRUB Environment\nx=1\n"),
            Err(EnvBlockError::NoHeader)
        );
        assert_eq!(
            EnvBlock::parse(b"x=1\n# GRUB Environment Block\n"),
            Err(EnvBlockError::NoHeader)
        );
        let mut short = b"# GRUB Environment Block\nx=1\n".to_vec();
        short.resize(512, b'#');
        assert_eq!(
            EnvBlock::parse(&short),
            Err(EnvBlockError::WrongSize { size: 512 })
        );
        let mut long = b"# GRUB Environment Block\nx=1\n".to_vec();
        long.resize(2048, b'#');
        assert_eq!(
            EnvBlock::parse(&long),
            Err(EnvBlockError::WrongSize { size: 2048 })
        );
        let mut big = b"# GRUB Environment Block\nx=".to_vec();
        big.extend(vec![b'y'; 1000]);
        big.push(b'\n');
        assert_eq!(
            EnvBlock::parse(&big),
            Err(EnvBlockError::WrongSize { size: 1028 })
        );
        assert!(matches!(
            EnvBlock::parse(b"# GRUB Environment Block\nx=1"),
            Err(EnvBlockError::Malformed { offset: 25, .. })
        ));
        assert!(matches!(
            EnvBlock::parse(b"# GRUB Environment Block\nx=1\\\n"),
            Err(EnvBlockError::Malformed { .. })
        ));
        assert!(matches!(
            EnvBlock::parse(b"# GRUB Environment Block\n#pad#\x00"),
            Err(EnvBlockError::Malformed { .. })
        ));
        assert!(matches!(
            EnvBlock::parse(b"# GRUB Environment Block\nx=\xff\n"),
            Err(EnvBlockError::Malformed { .. })
        ));
        let mut trailing = b"# GRUB Environment Block\nx=1\n".to_vec();
        trailing.resize(1023, b'#');
        trailing.push(b'x');
        assert!(EnvBlock::parse(&trailing).is_err());
    }

    #[test]
    fn lines_grub_skips_are_kept() {
        let raw = b"# GRUB Environment Block\njunk without equals\n# a comment\nx=1\n";
        let mut b = EnvBlock::parse(raw).unwrap();
        assert_eq!(b.vars().collect::<Vec<_>>(), vec![("x", "1")]);
        b.set("x", "2").unwrap();
        assert_eq!(
            b.serialize().unwrap(),
            b"# GRUB Environment Block\njunk without equals\n# a comment\nx=2\n"
        );
    }

    #[test]
    fn values_may_hold_equals_and_names_may_not() {
        let b = EnvBlock::parse(b"# GRUB Environment Block\nk=a=b\n").unwrap();
        assert_eq!(b.get("k"), Some("a=b"));
        let mut b = EnvBlock::new();
        for bad in ["", "a=b", "#x", "a\nb", "a\\b"] {
            assert_eq!(b.set(bad, "v"), Err(EnvBlockError::BadName(bad.into())));
        }
    }

    /// grub-editenv, when the host has it, reads what we write and we read what it writes.
    #[test]
    fn agrees_with_grub_editenv() {
        let Some(editenv) = ["/usr/bin/grub-editenv", "/usr/bin/grub2-editenv"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            eprintln!("no grub-editenv on this host; skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("photon.cfg");
        let run = |args: &[&str]| {
            let out = std::process::Command::new(editenv)
                .arg(&file)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let values = [
            (
                "photon_cmdline",
                "init=/lib/systemd/systemd ro root=/dev/sda3",
            ),
            ("odd", "back\\slash\nand\nnew\nlines="),
            ("empty", ""),
        ];
        run(&["create"]);
        for (k, v) in values {
            run(&["set", &format!("{k}={v}")]);
        }
        let theirs = std::fs::read(&file).unwrap();
        let mut ours = EnvBlock::parse(&theirs).unwrap();
        for (k, v) in values {
            assert_eq!(ours.get(k), Some(v), "{k}");
        }
        ours.set(
            "photon_cmdline",
            "init=/lib/systemd/systemd ro root=UUID=0b9e4e0c-5a8c-4a5e-8f0e-3c8d1b2a7f11",
        )
        .unwrap();
        ours.set("added", "a\\b\nc").unwrap();
        ours.unset("empty");
        std::fs::write(&file, ours.serialize().unwrap()).unwrap();
        assert_eq!(
            run(&["list"]),
            "photon_cmdline=init=/lib/systemd/systemd ro root=UUID=0b9e4e0c-5a8c-4a5e-8f0e-3c8d1b2a7f11\nodd=back\\slash\nand\nnew\nlines=\nadded=a\\b\nc\n"
        );
        // And it can still edit the block we wrote, at its size.
        run(&["set", "more=1"]);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1024);
        assert_eq!(
            EnvBlock::parse(&std::fs::read(&file).unwrap())
                .unwrap()
                .get("more"),
            Some("1")
        );
    }

    #[test]
    fn the_header_alone_is_an_empty_block() {
        let b = EnvBlock::parse(HEADER.as_bytes()).unwrap();
        assert_eq!(b.vars().count(), 0);
        assert_eq!(b.serialize().unwrap(), HEADER.as_bytes());
    }
}

//! Source policy: read image headers ourselves, before qemu-img opens anything, so a hostile
//! backing chain or VMDK extent (host files, `..`, symlinks out, protocols, `json:`) is refused.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::vhdx;
use super::LoadError;

/// Longest backing chain accepted (top image included).
pub const MAX_CHAIN_LENGTH: usize = 16;

const QCOW2_MAGIC: &[u8] = b"QFI\xfb";
const QCOW2_EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
const QCOW2_EXT_DATA_FILE: u32 = 0x4441_5441;
const QCOW2_INCOMPAT_DATA_FILE: u64 = 1 << 2;
const VHD_DIFFERENCING: u32 = 4;
const VDI_SIGNATURE: u32 = 0xBEDA_107F;

/// What an image header says it depends on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dependencies {
    /// qcow2 backing file name and its recorded format, if any.
    pub backing: Option<(String, Option<String>)>,
    /// VMDK extent file names.
    pub extents: Vec<String>,
    /// Why the image needs something we never follow (external data file, differencing disk).
    pub refused: Option<String>,
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn be64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(off..off + 8)?.try_into().ok()?))
}
fn le64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// `len` bytes of `b` from `off`, None when out of range (or when the sum overflows).
fn span(b: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    b.get(off..off.checked_add(len)?)
}

/// Parse a qcow2 header (`head` must hold the first cluster or more). Err: truncated.
pub fn parse_qcow2(head: &[u8]) -> Result<Dependencies, String> {
    let short = || "truncated qcow2 header".to_string();
    let version = be32(head, 4).ok_or_else(short)?;
    let backing_off = usize::try_from(be64(head, 8).ok_or_else(short)?).unwrap_or(usize::MAX);
    let backing_len = be32(head, 16).ok_or_else(short)? as usize;
    let (incompat, header_len) = if version >= 3 {
        (
            be64(head, 72).ok_or_else(short)?,
            be32(head, 100).ok_or_else(short)? as usize,
        )
    } else {
        (0, 72)
    };
    let mut deps = Dependencies::default();
    if incompat & QCOW2_INCOMPAT_DATA_FILE != 0 {
        deps.refused = Some("uses an external data file".into());
    }
    let mut backing_format = None;
    let mut at = header_len;
    // Extensions end at type 0 or where the backing name starts.
    while let (Some(kind), Some(len)) = (be32(head, at), be32(head, at + 4)) {
        if kind == 0 {
            break;
        }
        let len = len as usize;
        let data = span(head, at + 8, len)
            .ok_or_else(|| "truncated qcow2 header extension".to_string())?;
        let text = String::from_utf8_lossy(data).into_owned();
        match kind {
            QCOW2_EXT_BACKING_FORMAT => backing_format = Some(text),
            QCOW2_EXT_DATA_FILE => {
                deps.refused = Some(format!("uses an external data file {text:?}"))
            }
            _ => {}
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    if backing_off != 0 && backing_len != 0 {
        let name = span(head, backing_off, backing_len)
            .ok_or_else(|| "truncated qcow2 backing file name".to_string())?;
        deps.backing = Some((String::from_utf8_lossy(name).into_owned(), backing_format));
    }
    Ok(deps)
}

/// Extent file names of a VMDK text descriptor (`RW 2048 FLAT "disk-flat.vmdk" 0`).
pub fn parse_vmdk_descriptor(text: &str) -> Dependencies {
    let mut deps = Dependencies::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        if matches!(words.next(), Some("RW" | "RDONLY" | "NOACCESS")) {
            if let (Some(start), Some(end)) = (line.find('"'), line.rfind('"')) {
                if end > start {
                    deps.extents.push(line[start + 1..end].to_string());
                }
            }
        } else if let Some(rest) = line.strip_prefix("parentFileNameHint") {
            let name = rest.trim_start_matches([' ', '=']).trim_matches('"');
            deps.refused = Some(format!("is a differencing disk (parent {name:?})"));
        }
    }
    deps
}

/// Dependencies of any image from its first bytes and (for VHD) its last 512 bytes.
pub fn parse_header(head: &[u8], tail: &[u8]) -> Result<Dependencies, String> {
    if head.starts_with(QCOW2_MAGIC) {
        return parse_qcow2(head);
    }
    if head.starts_with(b"KDMV") {
        // Sparse VMDK: embedded descriptor at sector offset 28, size at 36.
        // Sector numbers from the file: checked arithmetic, they may be anything.
        let sectors = |at| le64(head, at).and_then(|n| usize::try_from(n).ok()?.checked_mul(512));
        let off = sectors(28).ok_or("truncated or impossible VMDK header")?;
        let size = sectors(36).ok_or("truncated or impossible VMDK header")?;
        if off == 0 || size == 0 {
            return Ok(Dependencies::default());
        }
        let end = off.saturating_add(size).min(head.len());
        let desc = head.get(off..end).ok_or("truncated VMDK descriptor")?;
        let text = String::from_utf8_lossy(desc);
        let text = text.trim_end_matches('\0');
        return Ok(parse_vmdk_descriptor(text));
    }
    if head.starts_with(b"# Disk DescriptorFile") {
        return Ok(parse_vmdk_descriptor(&String::from_utf8_lossy(head)));
    }
    for footer in [tail, head] {
        if footer.starts_with(b"conectix") && be32(footer, 60) == Some(VHD_DIFFERENCING) {
            return Ok(Dependencies {
                refused: Some("is a differencing VHD (it needs a parent disk)".into()),
                ..Default::default()
            });
        }
    }
    Ok(Dependencies::default())
}

/// The format an image's first bytes declare, by the magic numbers qemu probes; "raw" when
/// none matches. A fixed VHD (footer only at the end) is raw to qemu's probe, and here.
pub fn detect_format(head: &[u8]) -> &'static str {
    let at = |off: usize, magic: &[u8]| span(head, off, magic.len()) == Some(magic);
    if at(0, QCOW2_MAGIC) {
        "qcow2"
    } else if at(0, b"KDMV") || at(0, b"COWD") || at(0, b"# Disk DescriptorFile") {
        "vmdk"
    } else if at(0, vhdx::VHDX_SIGNATURE) {
        "vhdx"
    } else if at(0, b"conectix") {
        "vpc"
    } else if at(0x40, &VDI_SIGNATURE.to_le_bytes()) {
        "vdi"
    } else if at(0, b"QED\0") {
        "qed"
    } else if at(0, b"LUKS\xba\xbe") {
        "luks"
    } else if at(0, b"WithoutFreeSpace") || at(0, b"WithouFreSpacExt") {
        "parallels"
    } else if at(0, b"Bochs Virtual HD Image") {
        "bochs"
    } else {
        "raw"
    }
}

/// What an image's own bytes say its format is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// [`detect_format`] of its first bytes.
    pub format: &'static str,
    /// The last 512 bytes are a VHD footer: a fixed VHD, which qemu opens as `vpc` only when
    /// told to.
    pub vhd_footer: bool,
}

impl Header {
    pub fn of(head: &[u8], tail: &[u8]) -> Header {
        Header {
            format: detect_format(head),
            vhd_footer: tail.starts_with(b"conectix"),
        }
    }

    /// Whether opening the image as `format` (a qemu name) agrees with its header.
    pub fn admits(&self, format: &str) -> bool {
        format == self.format || (format == "vpc" && self.format == "raw" && self.vhd_footer)
    }
}

/// Open without blocking (a FIFO would hang) and accept only regular files and block devices.
pub fn open_source(path: &Path) -> Result<File, LoadError> {
    let p = path.display().to_string();
    // stat first (it never blocks): a socket or device is named by type, not by open's errno.
    if let Ok(meta) = std::fs::metadata(path) {
        let t = meta.file_type();
        if !(t.is_file() || t.is_block_device() || t.is_dir()) {
            return Err(LoadError::NotAnImage {
                path: p,
                reason: format!("it is {}", crate::util::file_type_name(&t)),
            });
        }
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::Missing { path: p.clone() },
            _ if e.raw_os_error() == Some(libc::EISDIR) => LoadError::Directory { path: p.clone() },
            _ => LoadError::Unreadable {
                path: p.clone(),
                reason: e.to_string(),
            },
        })?;
    let t = f
        .metadata()
        .map_err(|e| LoadError::Unreadable {
            path: p.clone(),
            reason: e.to_string(),
        })?
        .file_type();
    if t.is_dir() {
        return Err(LoadError::Directory { path: p });
    }
    if !(t.is_file() || t.is_block_device()) {
        return Err(LoadError::NotAnImage {
            path: p,
            reason: format!("it is {}", crate::util::file_type_name(&t)),
        });
    }
    Ok(f)
}

/// The first MiB and the last 512 bytes of the whole file.
fn read_head_tail(f: &mut File, p: &str) -> Result<(Vec<u8>, Vec<u8>), LoadError> {
    read_image_head_tail(f, p, 0, None)
}

/// The first MiB and the last 512 bytes of an image that is the byte range `start`,
/// `len` (to the end of the file when None) of `f`: a whole file or an OVA member.
pub fn read_image_head_tail(
    f: &mut File,
    p: &str,
    start: u64,
    len: Option<u64>,
) -> Result<(Vec<u8>, Vec<u8>), LoadError> {
    let unreadable = |e: std::io::Error| LoadError::Unreadable {
        path: p.into(),
        reason: e.to_string(),
    };
    let file_len = f.seek(SeekFrom::End(0)).map_err(unreadable)?;
    let end = match len {
        Some(l) => start.saturating_add(l).min(file_len),
        None => file_len,
    };
    let size = end.saturating_sub(start);
    let head = read_range(f, start, size.min(1 << 20)).map_err(unreadable)?;
    let tail = if size >= 512 {
        read_range(f, end - 512, 512).map_err(unreadable)?
    } else {
        Vec::new()
    };
    Ok((head, tail))
}

/// Up to `len` bytes from `offset` (fewer at the end of the file).
fn read_range(f: &mut File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.by_ref().take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// [`Dependencies`] of the image open as `f`: its header, and for a VHDX its metadata.
fn dependencies(f: &mut File, p: &str) -> Result<(Dependencies, Header), LoadError> {
    let (head, tail) = read_head_tail(f, p)?;
    let damaged = |reason| LoadError::Damaged {
        path: p.into(),
        reason,
    };
    let header = Header::of(&head, &tail);
    let mut deps = parse_header(&head, &tail).map_err(damaged)?;
    if header.format == "vhdx" {
        let parent = vhdx::parent_info(&mut |off, len| read_range(f, off, len as u64).ok())
            .map_err(damaged)?;
        if parent.is_differencing() {
            deps.refused = Some(parent.describe());
        }
    }
    Ok((deps, header))
}

const TRUST_HINT: &str = "(use --trust-backing-files to allow)";

/// Resolve a dependency name of `image` and insist it is a regular file in `dir`.
fn approve(image: &Path, dir: &Path, what: &str, name: &str) -> Result<PathBuf, LoadError> {
    let p = image.display().to_string();
    let refuse = |why: &str| LoadError::Policy {
        path: p.clone(),
        reason: format!("{what} {name:?} {why} {TRUST_HINT}"),
    };
    if name.starts_with("json:") {
        return Err(refuse("is a json: specification"));
    }
    if let Some((scheme, _)) = name.split_once(':') {
        if !scheme.contains('/') {
            return Err(refuse("names a protocol"));
        }
    }
    let joined = image.parent().unwrap_or(Path::new(".")).join(name);
    let real = std::fs::canonicalize(&joined).map_err(|_| refuse("does not exist"))?;
    if real.parent() != Some(dir) {
        return Err(refuse("is outside the source's directory"));
    }
    if !std::fs::metadata(&real)
        .map(|m| m.is_file())
        .unwrap_or(false)
    {
        return Err(refuse("is not a regular file"));
    }
    Ok(real)
}

/// What the policy let through: every file qemu may open, and the backing chain (top first)
/// with the format each layer is opened as.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Approved {
    pub files: Vec<PathBuf>,
    /// (resolved path, format): detected for the top, as recorded by its child for the others.
    pub chain: Vec<(PathBuf, String)>,
}

/// Check `path` and everything its headers name, before qemu-img opens any of it.
pub fn check_source(path: &Path) -> Result<Approved, LoadError> {
    let top = open_source(path)?;
    drop(top);
    let p = path.display().to_string();
    let real = std::fs::canonicalize(path).map_err(|e| LoadError::Unreadable {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    let dir = real.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut approved = Approved {
        files: vec![real.clone()],
        chain: Vec::new(),
    };
    let mut current = path.to_path_buf();
    let mut current_real = real;
    // (format, child, entry) of the backing file `current` is, as its child records it.
    let mut recorded: Option<(String, String, String)> = None;
    loop {
        let cp = current.display().to_string();
        let mut f = open_source(&current)?;
        let (deps, header) = dependencies(&mut f, &cp)?;
        // The child names the entry, so the child is the file the refusal names.
        let format = match recorded.take() {
            Some((rec, child, name)) if !header.admits(&rec) => {
                return Err(LoadError::Policy {
                    path: child,
                    reason: format!(
                        "backing file {name:?} is recorded as {rec} but its header says {}",
                        header.format
                    ),
                })
            }
            Some((rec, ..)) => rec,
            None => header.format.to_string(),
        };
        approved.chain.push((current_real.clone(), format));
        if let Some(reason) = deps.refused {
            return Err(LoadError::Policy {
                path: cp,
                reason: format!("{reason} {TRUST_HINT}"),
            });
        }
        for extent in &deps.extents {
            let e = approve(&current, &dir, "extent", extent)?;
            approved.files.push(e);
        }
        let Some((backing, format)) = deps.backing else {
            return Ok(approved);
        };
        let next = approve(&current, &dir, "backing file", &backing)?;
        let Some(format) = format else {
            return Err(LoadError::Policy {
                path: cp,
                reason: format!("backing file {backing:?} has no recorded format {TRUST_HINT}"),
            });
        };
        if approved.files.len() >= MAX_CHAIN_LENGTH {
            return Err(LoadError::Policy {
                path: p,
                reason: format!("backing chain longer than {MAX_CHAIN_LENGTH} images {TRUST_HINT}"),
            });
        }
        if approved.files.contains(&next) {
            return Err(LoadError::Policy {
                path: cp,
                reason: format!("backing file {backing:?} makes a loop"),
            });
        }
        approved.files.push(next.clone());
        recorded = Some((format, cp, backing));
        current = next.clone();
        current_real = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2(backing: Option<&str>, fmt: Option<&str>, incompat: u64) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[72..80].copy_from_slice(&incompat.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        let mut at = 112;
        if let Some(f) = fmt {
            h[at..at + 4].copy_from_slice(&QCOW2_EXT_BACKING_FORMAT.to_be_bytes());
            h[at + 4..at + 8].copy_from_slice(&(f.len() as u32).to_be_bytes());
            h[at + 8..at + 8 + f.len()].copy_from_slice(f.as_bytes());
            at += 8 + f.len().div_ceil(8) * 8;
        }
        at += 8; // end-of-extensions
        if let Some(b) = backing {
            h[8..16].copy_from_slice(&(at as u64).to_be_bytes());
            h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
            h[at..at + b.len()].copy_from_slice(b.as_bytes());
        }
        h
    }

    #[test]
    fn qcow2_backing_and_format_are_read() {
        let d = parse_qcow2(&qcow2(Some("/etc/shadow"), Some("raw"), 0)).unwrap();
        assert_eq!(d.backing, Some(("/etc/shadow".into(), Some("raw".into()))));
        let d = parse_qcow2(&qcow2(Some("base.qcow2"), None, 0)).unwrap();
        assert_eq!(d.backing, Some(("base.qcow2".into(), None)));
        assert_eq!(
            parse_qcow2(&qcow2(None, None, 0)).unwrap(),
            Dependencies::default()
        );
    }

    #[test]
    fn qcow2_external_data_file_is_refused() {
        let d = parse_qcow2(&qcow2(None, None, QCOW2_INCOMPAT_DATA_FILE)).unwrap();
        assert!(d.refused.unwrap().contains("external data file"));
    }

    #[test]
    fn truncated_qcow2_is_an_error() {
        assert!(parse_qcow2(&qcow2(Some("x"), None, 0)[..50]).is_err());
    }

    #[test]
    fn vmdk_extents_are_read() {
        let d = parse_vmdk_descriptor(
            "# Disk DescriptorFile\nversion=1\nRW 2048 FLAT \"../../etc/passwd\" 0\nRDONLY 8 FLAT \"b.vmdk\" 0\n",
        );
        assert_eq!(d.extents, vec!["../../etc/passwd", "b.vmdk"]);
        assert!(parse_vmdk_descriptor("parentFileNameHint=\"p.vmdk\"\n")
            .refused
            .is_some());
    }

    #[test]
    fn vhd_differencing_is_refused() {
        let mut footer = vec![0u8; 512];
        footer[..8].copy_from_slice(b"conectix");
        footer[60..64].copy_from_slice(&4u32.to_be_bytes());
        assert!(parse_header(&[0u8; 512], &footer)
            .unwrap()
            .refused
            .is_some());
        footer[60..64].copy_from_slice(&2u32.to_be_bytes());
        assert!(parse_header(&[0u8; 512], &footer)
            .unwrap()
            .refused
            .is_none());
    }

    #[test]
    fn formats_are_detected_from_magic_numbers() {
        assert_eq!(detect_format(&qcow2(None, None, 0)), "qcow2");
        assert_eq!(detect_format(b"KDMV\x01\0\0\0"), "vmdk");
        assert_eq!(detect_format(b"# Disk DescriptorFile\n"), "vmdk");
        assert_eq!(detect_format(b"vhdxfile"), "vhdx");
        assert_eq!(detect_format(b"conectix"), "vpc");
        let mut vdi = vec![0u8; 512];
        vdi[0x40..0x44].copy_from_slice(&VDI_SIGNATURE.to_le_bytes());
        assert_eq!(detect_format(&vdi), "vdi");
        assert_eq!(detect_format(b"QED\0"), "qed");
        assert_eq!(detect_format(&[0u8; 4096]), "raw");
        assert_eq!(detect_format(b""), "raw");
    }

    #[test]
    fn a_fixed_vhd_is_raw_unless_declared_vpc() {
        let h = Header::of(&[0u8; 512], b"conectix\0\0");
        assert_eq!(h.format, "raw");
        assert!(h.admits("raw") && h.admits("vpc") && !h.admits("qcow2"));
        let plain = Header::of(&[0u8; 512], &[0u8; 512]);
        assert!(!plain.admits("vpc"));
    }

    #[test]
    fn the_chain_carries_each_layers_recorded_format() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("base.img"), vec![0u8; 8192]).unwrap();
        std::fs::write(d.join("top.qcow2"), qcow2(Some("base.img"), Some("raw"), 0)).unwrap();
        let approved = check_source(&d.join("top.qcow2")).unwrap();
        let real = std::fs::canonicalize(d).unwrap();
        assert_eq!(
            approved.chain,
            vec![
                (real.join("top.qcow2"), "qcow2".to_string()),
                (real.join("base.img"), "raw".to_string())
            ]
        );
        // A backing recorded as qcow2 that is raw by its header is refused by name.
        std::fs::write(
            d.join("lie.qcow2"),
            qcow2(Some("base.img"), Some("qcow2"), 0),
        )
        .unwrap();
        let err = check_source(&d.join("lie.qcow2")).unwrap_err().to_string();
        assert!(
            err.contains(
                "lie.qcow2: backing file \"base.img\" is recorded as qcow2 but its header says raw"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_differencing_vhdx_is_refused_naming_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("diff.vhdx");
        std::fs::write(
            &p,
            vhdx::synthetic(
                true,
                &[
                    ("relative_path", "..\\shadow"),
                    ("absolute_win32_path", "C:\\p.vhdx"),
                ],
            ),
        )
        .unwrap();
        let err = check_source(&p).unwrap_err().to_string();
        assert!(
            err.contains("diff.vhdx")
                && err.contains("differencing VHDX")
                && err.contains(r#"relative_path "..\\shadow""#)
                && err.contains("--trust-backing-files"),
            "{err}"
        );
        std::fs::write(&p, vhdx::synthetic(false, &[])).unwrap();
        assert!(check_source(&p).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_never_panic(head in proptest::collection::vec(0u8..=255, 0..2048),
                                         tail in proptest::collection::vec(0u8..=255, 0..512)) {
            let _ = parse_header(&head, &tail);
            let mut q = QCOW2_MAGIC.to_vec();
            q.extend_from_slice(&head);
            let _ = parse_header(&q, &tail);
            let mut v = b"KDMV".to_vec();
            v.extend_from_slice(&head);
            let _ = parse_header(&v, &tail);
            let _ = detect_format(&head);
        }
    }
}

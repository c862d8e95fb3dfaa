//! LOAD: identify the source image, refuse what cannot be converted, and put a throw-away
//! qcow2 overlay in front of it so nothing downstream can write the source.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: no such file")]
    Missing { path: String },
    #[error("{path}: cannot read: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: is a directory, not a disk image")]
    Directory { path: String },
    #[error("{path}: not a disk image ({reason})")]
    NotAnImage { path: String, reason: String },
    #[error(
        "{path}: unsupported image format {format:?} (supported: vmdk, qcow2, raw, vhd, vhdx, vdi)"
    )]
    UnsupportedFormat { path: String, format: String },
    #[error("{path}: qemu-img cannot open it: {reason}")]
    QemuImg { path: String, reason: String },
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
    #[error("{path}: the image is damaged ({reason}); was the export or copy cut short?")]
    Damaged { path: String, reason: String },
    #[error("{tool} not found in PATH: install qemu-utils (scripts/setup.sh does)")]
    ToolMissing { tool: String },
    #[error("cannot create the overlay {path}: {reason}")]
    Overlay { path: String, reason: String },
    #[error("{path}: {reason}")]
    Policy { path: String, reason: String },
    #[error("{path}: the declared format is {declared} but its header says {detected}")]
    FormatMismatch {
        path: String,
        declared: String,
        detected: String,
    },
}

pub mod ova;
pub mod ovf;
pub mod policy;
pub mod space;
pub mod vhdx;

pub use ova::{ova_disks, OvaMember};

/// How long `qemu-img info` / `create` may take: they read headers only, so a hang means a
/// hostile or unreachable image (an NBD server that never answers), not a big one.
const QEMU_IMG_INFO_LIMIT: Duration = Duration::from_secs(60);
/// `qemu-img check` reads all metadata (for a 2 TiB qcow2, a few hundred MiB of tables).
const QEMU_IMG_CHECK_LIMIT: Duration = Duration::from_secs(600);

/// Where the source comes from: a local file, a disk inside an OVA (read in place, never
/// unpacked), or an NBD URI (`nbd://…`, `nbd+unix://…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Source {
    File(PathBuf),
    Ova {
        ova: PathBuf,
        /// The VMDK member (the first one: an OVA lists its boot disk first).
        member: String,
        offset: u64,
        size: u64,
    },
    Nbd(String),
}

impl Source {
    /// A path, an OVA (detected by its tar header), or an NBD URI.
    pub fn parse(s: &str) -> Source {
        if s.starts_with("nbd://") || s.starts_with("nbd+unix://") || s.starts_with("nbd+tcp://") {
            return Source::Nbd(s.to_string());
        }
        let path = PathBuf::from(s);
        match ova_disks(&path).into_iter().next() {
            // Absolute: the json: name ends up as an overlay's backing file.
            Some(m) => Source::Ova {
                ova: std::path::absolute(&path).unwrap_or(path),
                member: m.name,
                offset: m.offset,
                size: m.size,
            },
            None => Source::File(path),
        }
    }

    /// The string qemu opens. An OVA member is a byte range of the tar, which qemu's `raw`
    /// driver exposes with offset/size under the `vmdk` driver.
    pub fn qemu_name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Ova {
                ova, offset, size, ..
            } => {
                let spec = serde_json::json!({
                    "driver": "vmdk",
                    "file": {"driver": "raw", "offset": offset, "size": size,
                             "file": {"driver": "file", "filename": ova}}
                });
                format!("json:{spec}")
            }
            Source::Nbd(u) => u.clone(),
        }
    }

    /// The source of one disk of a plan: its OVA member when the plan names one (see
    /// [`ova::expand_plan`]), else as [`Source::parse`] reads it.
    pub fn of_disk(disk: &crate::plan::DiskPlan) -> Result<Source, LoadError> {
        match &disk.ova_member {
            None => Ok(Source::parse(&disk.source)),
            Some(name) => {
                let path = PathBuf::from(&disk.source);
                let m = ova::member(&path, name)?;
                Ok(Source::Ova {
                    ova: std::path::absolute(&path).unwrap_or(path),
                    member: m.name,
                    offset: m.offset,
                    size: m.size,
                })
            }
        }
    }

    /// The local file behind the source (the OVA itself for an OVA member).
    pub fn local_file(&self) -> Option<&Path> {
        match self {
            Source::File(p) | Source::Ova { ova: p, .. } => Some(p),
            Source::Nbd(_) => None,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Ova { ova, member, .. } => write!(f, "{} ({member})", ova.display()),
            other => f.write_str(&other.qemu_name()),
        }
    }
}

/// What qemu-img says about one layer of the image chain.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ImageLayer {
    pub filename: String,
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: Option<u64>,
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
    #[serde(rename = "format-specific", default, skip_serializing)]
    pub format_specific: Option<serde_json::Value>,
}

/// The probed source, as recorded in the report.
#[derive(Debug, Clone, Serialize)]
pub struct SourceInfo {
    pub source: Source,
    pub format: String,
    pub virtual_size: u64,
    pub actual_size: Option<u64>,
    /// VMDK subformat (monolithicSparse, streamOptimized, …) when the source is a VMDK.
    pub vmdk_subformat: Option<String>,
    /// Every layer, top first (length 1 unless the source has a backing file).
    pub chain: Vec<ImageLayer>,
}

pub const SUPPORTED_FORMATS: &[&str] = &["vmdk", "qcow2", "raw", "vpc", "vhdx", "vdi"];

/// Fail early, with a pointer to the fix, when a needed tool is absent.
pub fn require_tool(tool: &str) -> Result<(), LoadError> {
    if process::in_path(tool).is_some() {
        Ok(())
    } else {
        Err(LoadError::ToolMissing { tool: tool.into() })
    }
}

/// Map a user's format name (manifest `source_format`, `--format`) to qemu's.
pub fn qemu_format_name(user: &str) -> String {
    match user.to_ascii_lowercase().as_str() {
        "vhd" => "vpc".into(),
        "img" => "raw".into(),
        // An OVA's disks are VMDKs read in place (see Source::Ova).
        "ova" => "vmdk".into(),
        other => other.into(),
    }
}

/// Probe `source` with `qemu-img info --backing-chain`; `format` forces a format.
/// The source policy ([`policy::check_source`]) runs first: qemu-img never opens a hostile chain.
pub fn probe(source: &Source, format: Option<&str>) -> Result<SourceInfo, LoadError> {
    probe_with(source, format, false)
}

/// [`probe`]; `trust_backing_files` skips the backing-file/extent policy (the file-type check stays).
///
/// Formats are explicit everywhere: the source's comes from our own read of its header (or
/// from the user, who must agree with the header), and its backing files' are the ones their
/// children record (the policy insists on one), so qemu never probes.
pub fn probe_with(
    source: &Source,
    format: Option<&str>,
    trust_backing_files: bool,
) -> Result<SourceInfo, LoadError> {
    require_tool(process::QEMU_IMG)?;
    let name = source.to_string();
    let mut approved = None;
    if let Some(path) = source.local_file() {
        check_readable(path)?;
        if let (Source::File(p), false) = (source, trust_backing_files) {
            approved = Some(policy::check_source(p)?);
        }
    }
    let format = source_format(source, format)?;
    if !SUPPORTED_FORMATS.contains(&format.as_str()) {
        return Err(LoadError::UnsupportedFormat { path: name, format });
    }
    let mut cmd = process::qemu_img();
    cmd.args([
        "info",
        "--output=json",
        "--backing-chain",
        "-U",
        "-f",
        &format,
    ]);
    cmd.arg(source.qemu_name());
    let out = cmd
        .output_with_timeout(QEMU_IMG_INFO_LIMIT)
        .map_err(|e| LoadError::QemuImg {
            path: name.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LoadError::QemuImg {
            path: name,
            reason: qemu_img_reason(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    let chain: Vec<ImageLayer> =
        serde_json::from_slice(&out.stdout).map_err(|e| LoadError::QemuImg {
            path: name.clone(),
            reason: format!("unexpected qemu-img output: {e}"),
        })?;
    // Defence in depth: qemu-img must have opened only the files the policy approved, each
    // backing file with the format its child records.
    if let Some(approved) = &approved {
        for (i, layer) in chain.iter().enumerate() {
            let real = std::fs::canonicalize(&layer.filename).ok();
            if !real.as_ref().is_some_and(|r| approved.files.contains(r)) {
                return Err(LoadError::Policy {
                    path: name,
                    reason: format!(
                        "qemu-img opened {:?}, which the source policy did not approve",
                        layer.filename
                    ),
                });
            }
            let recorded = approved.chain.get(i).map(|(_, f)| f.as_str());
            if i > 0 && recorded != Some(layer.format.as_str()) {
                return Err(LoadError::Policy {
                    path: name,
                    reason: format!(
                        "qemu-img opened {:?} as {}, not as the recorded {}",
                        layer.filename,
                        layer.format,
                        recorded.unwrap_or("(nothing)")
                    ),
                });
            }
        }
    }
    let top = chain.first().cloned().ok_or_else(|| LoadError::QemuImg {
        path: name.clone(),
        reason: "qemu-img reported no image".into(),
    })?;
    if let (Source::File(path), "raw") = (source, top.format.as_str()) {
        sniff_raw(path)?;
    }
    if source.local_file().is_some() {
        check_structure(&source.qemu_name(), &name, &top.format)?;
    }
    if top.virtual_size == 0 {
        return Err(LoadError::NotAnImage {
            path: name,
            reason: "virtual size is 0".into(),
        });
    }
    let vmdk_subformat = top
        .format_specific
        .as_ref()
        .and_then(|v| v.pointer("/data/create-type"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Ok(SourceInfo {
        source: source.clone(),
        format: top.format.clone(),
        virtual_size: top.virtual_size,
        actual_size: top.actual_size,
        vmdk_subformat,
        chain,
    })
}

/// The qemu format to open `source` as: what its header says (an NBD export, which we do not
/// read, is raw unless the user says otherwise: qemu-nbd serves the guest's disk, not a file),
/// or the user's `declared` format when it agrees with the header.
fn source_format(source: &Source, declared: Option<&str>) -> Result<String, LoadError> {
    let declared_qemu = declared.map(qemu_format_name);
    let header = match source {
        Source::File(p) => Some(read_header(p, 0, None)?),
        Source::Ova {
            ova, offset, size, ..
        } => Some(read_header(ova, *offset, Some(*size))?),
        Source::Nbd(_) => None,
    };
    match (header, declared_qemu) {
        (Some(h), Some(d)) if !h.admits(&d) => Err(LoadError::FormatMismatch {
            path: source.to_string(),
            declared: declared.unwrap_or_default().to_string(),
            detected: h.format.to_string(),
        }),
        (_, Some(d)) => Ok(d),
        (Some(h), None) => Ok(h.format.to_string()),
        (None, None) => Ok("raw".into()),
    }
}

/// The [`policy::Header`] of the image at `offset` (of `size` bytes) in `path`.
fn read_header(path: &Path, offset: u64, size: Option<u64>) -> Result<policy::Header, LoadError> {
    let p = path.display().to_string();
    let mut f = policy::open_source(path)?;
    let (head, tail) = policy::read_image_head_tail(&mut f, &p, offset, size)?;
    Ok(policy::Header::of(&head, &tail))
}

/// `qemu-img check` the metadata of formats that have it (cheap: it reads tables, not data),
/// so a truncated or corrupted export is refused here by name rather than later as "no
/// operating system found". Leaked clusters (exit 3) are harmless and accepted.
fn check_structure(qemu_name: &str, name: &str, format: &str) -> Result<(), LoadError> {
    if !matches!(format, "vmdk" | "qcow2" | "vdi" | "vhdx" | "vpc") {
        return Ok(());
    }
    let out = process::qemu_img()
        .args(["check", "-U", "-f", format, qemu_name])
        .output_with_timeout(QEMU_IMG_CHECK_LIMIT)
        .map_err(|e| LoadError::QemuImg {
            path: name.into(),
            reason: e.to_string(),
        })?;
    match out.status.code() {
        Some(0) | Some(3) => Ok(()),
        // 63: the format has no check; nothing more to learn.
        Some(63) => Ok(()),
        _ => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let reason = text
                .lines()
                .find(|l| l.starts_with("ERROR"))
                .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("qemu-img check failed")
                .trim()
                .trim_start_matches("ERROR: ")
                .to_string();
            Err(LoadError::Damaged {
                path: name.into(),
                reason,
            })
        }
    }
}

/// qemu-img's stderr, reduced to its last, most specific clause.
fn qemu_img_reason(stderr: &str) -> String {
    // The one reducer of the process module: last meaningful line, program prefix stripped.
    let reduced = process::reduce_stderr(stderr).unwrap_or_else(|| "failed".into());
    let line = reduced.as_str();
    // "Could not open 'x': Could not open 'x-flat.vmdk': No such file or directory" → keep the innermost open.
    match line.rfind("Could not open") {
        Some(i) if i > 0 => line[i..].to_string(),
        _ => line.to_string(),
    }
}

fn check_readable(path: &Path) -> Result<(), LoadError> {
    policy::open_source(path)?;
    let p = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::Missing { path: p.clone() },
        _ => LoadError::Unreadable {
            path: p.clone(),
            reason: e.to_string(),
        },
    })?;
    if meta.is_dir() {
        return Err(LoadError::Directory { path: p });
    }
    File::open(path).map_err(|e| LoadError::Unreadable {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    Ok(())
}

/// qemu-img calls any file "raw"; accept it only if it starts like a disk or a filesystem.
fn sniff_raw(path: &Path) -> Result<(), LoadError> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|e| LoadError::Unreadable {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    let mut head = vec![0u8; 0x10100];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                return Err(LoadError::Unreadable {
                    path: p,
                    reason: e.to_string(),
                })
            }
        }
    }
    head.truncate(n);
    if looks_like_disk(&head) {
        return Ok(());
    }
    // A tar (OVA) is the one archive users hand us by mistake often enough to name.
    if head.len() > 262 && &head[257..262] == b"ustar" {
        return Err(LoadError::NotAnImage {
            path: p,
            reason: "it is a tar archive with no .vmdk disk in it".into(),
        });
    }
    let _ = f.seek(SeekFrom::Start(0));
    Err(LoadError::NotAnImage {
        path: p,
        reason: "no partition table or filesystem signature in its first 64 KiB".into(),
    })
}

/// Partition table (MBR/GPT) or a filesystem/LVM/swap signature near the start.
pub fn looks_like_disk(head: &[u8]) -> bool {
    let at = |off: usize, magic: &[u8]| {
        head.len() >= off + magic.len() && &head[off..off + magic.len()] == magic
    };
    at(510, &[0x55, 0xAA])                      // MBR (also protective MBR of GPT)
        || at(512, b"EFI PART")                  // GPT header
        || at(1080, &[0x53, 0xEF])               // ext2/3/4 superblock magic
        || at(0, b"XFSB")                        // XFS
        || at(512 + 24, b"LVM2 001") || at(512, b"LABELONE") // LVM PV label
        || at(0x10040, b"_BHRfS_M")              // btrfs
        || at(4086, b"SWAPSPACE2") // swap (4 KiB pages)
}

/// Create `overlay` (qcow2) backed by the source; all guest writes land there.
pub fn create_overlay(info: &SourceInfo, overlay: &Path) -> Result<(), LoadError> {
    let out = process::qemu_img()
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            &info.format,
            "-b",
            &info.source.qemu_name(),
        ])
        .arg(overlay)
        .output_with_timeout(QEMU_IMG_INFO_LIMIT)
        .map_err(|e| LoadError::Overlay {
            path: overlay.display().to_string(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LoadError::Overlay {
            path: overlay.display().to_string(),
            reason: qemu_img_reason(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbd_uris_are_not_paths() {
        assert_eq!(
            Source::parse("nbd+unix:///?socket=/tmp/s"),
            Source::Nbd("nbd+unix:///?socket=/tmp/s".into())
        );
        assert_eq!(
            Source::parse("nbd://localhost:10809/disk"),
            Source::Nbd("nbd://localhost:10809/disk".into())
        );
        assert_eq!(
            Source::parse("/data/vm.vmdk"),
            Source::File("/data/vm.vmdk".into())
        );
    }

    #[test]
    fn ova_members_are_found_in_place_and_plain_files_are_not_ovas() {
        let dir = tempfile::tempdir().unwrap();
        let ova = dir.path().join("vm.ova");
        let mut b = tar::Builder::new(File::create(&ova).unwrap());
        for (name, data) in [
            ("vm.ovf", &b"<Envelope/>"[..]),
            ("vm-disk1.vmdk", &b"KDMV-disk-one"[..]),
            ("vm-disk2.VMDK", &b"second"[..]),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        let disks = ova_disks(&ova);
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].name, "vm-disk1.vmdk");
        assert_eq!(disks[0].size, 13);
        let bytes = std::fs::read(&ova).unwrap();
        let o = disks[0].offset as usize;
        assert_eq!(&bytes[o..o + 13], b"KDMV-disk-one");
        match Source::parse(ova.to_str().unwrap()) {
            Source::Ova { member, .. } => assert_eq!(member, "vm-disk1.vmdk"),
            other => panic!("{other:?}"),
        }
        let q = Source::parse(ova.to_str().unwrap()).qemu_name();
        assert!(
            q.starts_with("json:{")
                && q.contains("\"offset\":")
                && q.contains("\"driver\":\"vmdk\""),
            "{q}"
        );
        let plain = dir.path().join("disk.img");
        std::fs::write(&plain, vec![0u8; 4096]).unwrap();
        assert!(ova_disks(&plain).is_empty());
        assert_eq!(
            Source::parse(plain.to_str().unwrap()),
            Source::File(plain.clone())
        );
    }

    #[test]
    fn user_format_names_map_to_qemu() {
        assert_eq!(qemu_format_name("VHD"), "vpc");
        assert_eq!(qemu_format_name("vmdk"), "vmdk");
    }

    #[test]
    fn disk_signatures() {
        let mut mbr = vec![0u8; 1024];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert!(looks_like_disk(&mbr));
        let mut ext4 = vec![0u8; 2048];
        ext4[1080] = 0x53;
        ext4[1081] = 0xEF;
        assert!(looks_like_disk(&ext4));
        assert!(!looks_like_disk(b"hello world\n"));
        assert!(!looks_like_disk(&vec![0u8; 70000]));
    }

    #[test]
    fn qemu_img_errors_keep_the_innermost_cause() {
        let e = "qemu-img: Could not open 'a.vmdk': Could not open '/x/a-flat.vmdk': No such file or directory\n";
        assert_eq!(
            qemu_img_reason(e),
            "Could not open '/x/a-flat.vmdk': No such file or directory"
        );
        assert_eq!(
            qemu_img_reason("qemu-img: Image is corrupt\n"),
            "Image is corrupt"
        );
    }
}

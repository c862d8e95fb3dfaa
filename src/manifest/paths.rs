//! Sources and outputs: source checks, confinement of outputs to the output directory, placement clashes.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use super::io_reason;
use super::value::*;
use crate::plan::OutputFormat;

/// A source: an absolute path to a regular file or block device, or a well-formed NBD URI.
pub(super) fn check_source(key: &str, given: &str) -> Res<String> {
    if given.is_empty() {
        return Err(bad(key, "empty path"));
    }
    no_control_chars(key, given)?;
    if is_nbd(given) {
        check_nbd_uri(key, given)?;
        return Ok(given.to_string());
    }
    if given.contains("://") {
        return Err(bad(
            key,
            format!(
                "{}: unsupported URI (only nbd://, nbd+unix:// and nbd+tcp:// URIs, or absolute paths)",
                quote(given)
            ),
        ));
    }
    if !Path::new(given).is_absolute() {
        return Err(bad(
            key,
            format!("{} is not an absolute path", quote(given)),
        ));
    }
    // stat, never open: opening a FIFO or a tape device could block or have side effects.
    let meta = fs::metadata(given).map_err(|e| bad(key, format!("{given}: {}", io_reason(&e))))?;
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(bad(
            key,
            format!(
                "{given}: is {}, not a disk image",
                super::file_type_name(&kind)
            ),
        ));
    }
    // /proc and /sys files stat as regular files (/proc/self/mem) but are not images.
    if let Ok(fs) = nix::sys::statfs::statfs(given) {
        let kernel = [
            nix::sys::statfs::PROC_SUPER_MAGIC,
            nix::sys::statfs::SYSFS_MAGIC,
        ];
        if kernel.contains(&fs.filesystem_type()) {
            return Err(bad(
                key,
                format!("{given}: is a kernel pseudo-file (/proc or /sys), not a disk image"),
            ));
        }
    }
    Ok(given.to_string())
}

/// `nbd://host[:port]/export`, `nbd+tcp://…` or `nbd+unix:///export?socket=PATH`.
fn check_nbd_uri(key: &str, given: &str) -> Res<()> {
    let invalid = |why: String| bad(key, format!("{}: invalid NBD URI ({why})", quote(given)));
    let uri = url::Url::parse(given).map_err(|e| invalid(e.to_string()))?;
    if uri.scheme() == "nbd+unix" {
        let socket = uri.query_pairs().find(|(k, _)| k == "socket");
        if !socket.is_some_and(|(_, v)| v.starts_with('/')) {
            return Err(invalid("nbd+unix needs ?socket=/absolute/path".into()));
        }
    } else if uri.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Output paths

pub(super) fn output_root(origin: &Path, output_dir: Option<&Path>) -> PathBuf {
    let dir = match output_dir {
        Some(dir) => dir,
        None => origin
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    };
    // Resolved once, so confinement compares real paths (a symlinked output dir is fine itself).
    let dir = absolute(dir);
    fs::canonicalize(&dir).unwrap_or(dir)
}

/// Refuse an output reached through a symlink below `root`, or that is itself an existing symlink:
/// lexical confinement alone would let `evil/x.qcow2` (with `evil -> /elsewhere`) write outside.
pub(super) fn check_no_symlinks(key: &str, output: &Path, root: &Path) -> Res<()> {
    let Ok(below) = output.strip_prefix(root) else {
        return Err(escapes(key, &output.display().to_string(), root));
    };
    let mut at = root.to_path_buf();
    for component in below.components() {
        at.push(component);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(bad(
                    key,
                    format!(
                        "{} is a symlink; outputs must not go through symlinks below the output directory {}",
                        at.display(),
                        root.display()
                    ),
                ));
            }
            Ok(_) => {}
            // Nothing below a missing component exists, so no symlink either.
            Err(_) => break,
        }
    }
    Ok(())
}

pub(super) fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        normalize(path)
    } else {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        normalize(&cwd.join(path))
    }
}

/// Resolve `.` and `..` without touching the filesystem (`..` at `/` stays at `/`).
pub(super) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::Normal(_) => out.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
        }
    }
    out
}

pub(super) fn escapes(key: &str, given: &str, root: &Path) -> Bad {
    bad(
        key,
        format!(
            "{} escapes the output directory {}",
            quote(given),
            root.display()
        ),
    )
}

/// A directory inside `root` (or `root` itself).
pub(super) fn resolve_dir(key: &str, given: &str, root: &Path) -> Res<PathBuf> {
    if given.is_empty() {
        return Err(bad(key, "empty path"));
    }
    no_control_chars(key, given)?;
    let dir = normalize(&root.join(given));
    if dir.starts_with(root) {
        Ok(dir)
    } else {
        Err(escapes(key, given, root))
    }
}

/// An output file: relative to `base`, confined to `root`, given the format's extension if it has none.
pub(super) fn resolve_output(
    key: &str,
    given: &str,
    base: &Path,
    root: &Path,
    (format, ext): (OutputFormat, &str),
    w: &mut Vec<String>,
) -> Res<PathBuf> {
    if given.is_empty() {
        return Err(bad(key, "empty path"));
    }
    no_control_chars(key, given)?;
    // Joining an absolute path replaces `base`, so both kinds go through the same confinement check.
    let path = normalize(&base.join(given));
    if !path.starts_with(root) || path == root {
        return Err(escapes(key, given, root));
    }
    if given.ends_with('/') {
        return Err(bad(
            key,
            format!("{} names a directory, not a file", quote(given)),
        ));
    }
    let existing = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .filter(|e| IMAGE_EXTENSIONS.contains(&e.as_str()));
    match existing {
        Some(existing) => {
            let fits = match format {
                OutputFormat::Qcow2 => existing == "qcow2",
                OutputFormat::Raw => existing == "raw" || existing == "img",
            };
            if !fits {
                w.push(format!(
                    "{key}: extension .{existing} does not match the output format {}",
                    format.as_str()
                ));
            }
            Ok(path)
        }
        None => {
            let mut name = path.into_os_string();
            name.push(".");
            name.push(ext);
            Ok(PathBuf::from(name))
        }
    }
}

/// One disk's source and output, with the keys to blame when they clash.
pub(super) struct Placement<'a> {
    pub(super) source: &'a str,
    pub(super) source_key: String,
    pub(super) output: &'a Path,
    /// The key that named the output, if the manifest named it.
    pub(super) output_key: Option<String>,
    pub(super) label: String,
}

/// Where a path really is: canonical if it exists, else its canonical parent plus its name, else
/// lexical. Two paths with the same key are the same file.
fn real_path(path: &Path) -> PathBuf {
    fs::canonicalize(path)
        .ok()
        .or_else(|| {
            let parent = fs::canonicalize(path.parent()?).ok()?;
            Some(parent.join(path.file_name()?))
        })
        .unwrap_or_else(|| normalize(path))
}

/// Refuse an output reached through a symlink, or that would overwrite a source or another disk's
/// output. One hash lookup per disk, so a long `disks[]` stays linear.
pub(super) fn check_placements(placements: &[Placement], root: &Path) -> Res<()> {
    let mut sources: HashMap<PathBuf, &Placement> = HashMap::new();
    for p in placements.iter().filter(|p| !is_nbd(p.source)) {
        sources.entry(real_path(Path::new(p.source))).or_insert(p);
    }
    let mut outputs: HashMap<PathBuf, &Placement> = HashMap::new();
    for this in placements {
        let key = this
            .output_key
            .clone()
            .unwrap_or_else(|| this.label.clone());
        check_no_symlinks(&key, this.output, root)?;
        let real = real_path(this.output);
        if let Some(other) = sources.get(&real) {
            let key = this.output_key.as_deref().unwrap_or(&other.source_key);
            return Err(bad(
                key,
                format!(
                    "output {} would overwrite the source {} ({}); choose another output path or directory",
                    this.output.display(),
                    other.source,
                    other.label
                ),
            ));
        }
        if let Some(other) = outputs.get(&real) {
            return Err(bad(
                &key,
                format!(
                    "output {} is also the output of {}",
                    this.output.display(),
                    other.label
                ),
            ));
        }
        outputs.insert(real, this);
    }
    Ok(())
}

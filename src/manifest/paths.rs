//! Sources and outputs: source checks, confinement of outputs to the output directory, placement clashes.

use std::fs;
use std::path::{Component, Path, PathBuf};

use super::io_reason;
use super::value::*;
use crate::plan::OutputFormat;

/// A source: an absolute path to an existing file, or an NBD URI (not checked here).
pub(super) fn check_source(key: &str, given: &str) -> Res<String> {
    if given.is_empty() {
        return Err(bad(key, "empty path"));
    }
    if NBD_SCHEMES.iter().any(|scheme| given.starts_with(scheme)) {
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
    match fs::metadata(given) {
        Ok(meta) if meta.is_dir() => Err(bad(
            key,
            format!("{given}: is a directory, not a disk image"),
        )),
        Ok(_) => Ok(given.to_string()),
        Err(e) => Err(bad(key, format!("{given}: {}", io_reason(&e)))),
    }
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
    absolute(dir)
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

/// Lexically equal, or the same file once symlinks are resolved (as far as the paths exist).
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    if normalize(a) == normalize(b) {
        return true;
    }
    let real = |p: &Path| {
        fs::canonicalize(p).ok().or_else(|| {
            let parent = fs::canonicalize(p.parent()?).ok()?;
            Some(parent.join(p.file_name()?))
        })
    };
    matches!((real(a), real(b)), (Some(x), Some(y)) if x == y)
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

/// Refuse an output that would overwrite a source, or another disk's output.
pub(super) fn check_placements(placements: &[Placement]) -> Res<()> {
    for (i, this) in placements.iter().enumerate() {
        for other in placements {
            if !is_nbd(other.source) && same_file(this.output, Path::new(other.source)) {
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
        }
        for other in &placements[..i] {
            if same_file(this.output, other.output) {
                let key = this
                    .output_key
                    .clone()
                    .unwrap_or_else(|| this.label.clone());
                return Err(bad(
                    &key,
                    format!(
                        "output {} is also the output of {}",
                        this.output.display(),
                        other.label
                    ),
                ));
            }
        }
    }
    Ok(())
}

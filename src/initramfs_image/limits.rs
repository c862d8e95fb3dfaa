//! Hard caps on what an image from a hostile guest can make the host spend. Each cap that is
//! reached is an [`InitramfsImageError::OverCap`]: the listing is dropped whole (never a
//! partial list) and the caller falls back to the guest's own lister, as for any other
//! image it cannot read.

use std::fmt;

use super::{InitramfsImageError, Result};

/// The largest image listed on the host: dracut and initramfs-tools images are 10-150 MiB.
/// The caller that downloads the image checks the guest file's size with
/// [`check_image_size`] first, so that a huge file never fills the host's temp directory.
pub const MAX_IMAGE_BYTES: u64 = 512 << 20;

/// The most bytes decoded from all the compressed segments of one image together (what a
/// decompression bomb would spend in CPU time; nothing decoded is kept).
pub const MAX_DECOMPRESSED_BYTES: u64 = 2 << 30;

/// The most cpio entries (headers, trailers included) in one image; real images hold a few
/// thousand.
pub const MAX_ENTRIES: usize = 200_000;

/// The most bytes of collected path names (the memory of the returned list, with
/// [`MAX_ENTRIES`] bounding its per-entry overhead).
pub const MAX_NAME_BYTES: usize = 32 << 20;

/// The longest name a cpio header may declare, its nul byte included: the kernel's PATH_MAX.
pub const MAX_NAME_LEN: usize = 4096;

/// The largest file whose contents are kept when a caller asks for them (a full kernel's
/// `modules.dep` is ~0.5 MiB); larger ones are listed but not kept.
pub const MAX_KEPT_FILE_BYTES: u64 = 4 << 20;

/// The most bytes of file contents kept from one image together.
pub const MAX_KEPT_BYTES: u64 = 16 << 20;

/// Which cap an image reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    ImageBytes,
    DecompressedBytes,
    Entries,
    NameBytes,
    NameLen,
    KeptBytes,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cap::ImageBytes => "image size",
            Cap::DecompressedBytes => "decompressed size",
            Cap::Entries => "cpio entry count",
            Cap::NameBytes => "total name size",
            Cap::NameLen => "name length",
            Cap::KeptBytes => "kept file contents size",
        })
    }
}

/// The caps in force; [`Limits::default`] is the `MAX_*` constants (tests inject small ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub image_bytes: u64,
    pub decompressed_bytes: u64,
    pub entries: usize,
    pub name_bytes: usize,
    pub name_len: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            image_bytes: MAX_IMAGE_BYTES,
            decompressed_bytes: MAX_DECOMPRESSED_BYTES,
            entries: MAX_ENTRIES,
            name_bytes: MAX_NAME_BYTES,
            name_len: MAX_NAME_LEN,
        }
    }
}

impl Limits {
    /// An error unless an image of `size` bytes is within [`Limits::image_bytes`].
    pub fn check_image_size(&self, size: u64) -> Result<()> {
        over(Cap::ImageBytes, size, self.image_bytes)
    }
}

/// An error unless an image of `size` bytes may be listed on the host ([`MAX_IMAGE_BYTES`]):
/// call it with the guest file's size before downloading it.
pub fn check_image_size(size: u64) -> Result<()> {
    Limits::default().check_image_size(size)
}

fn over(cap: Cap, used: u64, limit: u64) -> Result<()> {
    if used > limit {
        return Err(InitramfsImageError::OverCap { cap, limit });
    }
    Ok(())
}

/// The names collected so far, the contents kept, and what the image has spent of each cap.
pub(super) struct Listing {
    pub(super) paths: Vec<String>,
    /// Contents of the regular files `keep` picked, by path (a later copy replaces an earlier
    /// one, as when the kernel unpacks the image).
    pub(super) kept: std::collections::BTreeMap<String, Vec<u8>>,
    keep: Option<fn(&str) -> bool>,
    limits: Limits,
    entries: usize,
    name_bytes: usize,
    decompressed: u64,
    kept_bytes: u64,
}

impl Listing {
    pub(super) fn new(limits: Limits) -> Listing {
        Listing {
            paths: Vec::new(),
            kept: std::collections::BTreeMap::new(),
            keep: None,
            limits,
            entries: 0,
            name_bytes: 0,
            decompressed: 0,
            kept_bytes: 0,
        }
    }

    pub(super) fn limits(&self) -> Limits {
        self.limits
    }

    /// Keep the contents of the regular files whose path `keep` accepts.
    pub(super) fn keeping(mut self, keep: fn(&str) -> bool) -> Listing {
        self.keep = Some(keep);
        self
    }

    /// Whether the contents of a regular file of `size` bytes at `path` are to be kept.
    pub(super) fn wants(&self, path: &str, size: u64) -> bool {
        size <= MAX_KEPT_FILE_BYTES && self.keep.is_some_and(|keep| keep(path))
    }

    /// The whole contents of a file [`Listing::wants`] accepted.
    pub(super) fn store(&mut self, path: String, data: Vec<u8>) -> Result<()> {
        self.kept_bytes += data.len() as u64;
        over(Cap::KeptBytes, self.kept_bytes, MAX_KEPT_BYTES)?;
        self.kept.insert(path, data);
        Ok(())
    }

    /// A cpio header declaring a name of `name_len` bytes was read.
    pub(super) fn entry(&mut self, name_len: usize) -> Result<()> {
        self.entries += 1;
        over(
            Cap::Entries,
            self.entries as u64,
            self.limits.entries as u64,
        )?;
        over(Cap::NameLen, name_len as u64, self.limits.name_len as u64)
    }

    pub(super) fn push(&mut self, path: &str) -> Result<()> {
        self.name_bytes += path.len();
        over(
            Cap::NameBytes,
            self.name_bytes as u64,
            self.limits.name_bytes as u64,
        )?;
        self.paths.push(path.to_string());
        Ok(())
    }

    /// A decoder produced `n` more bytes.
    pub(super) fn decompressed(&mut self, n: usize) -> Result<()> {
        self.decompressed += n as u64;
        over(
            Cap::DecompressedBytes,
            self.decompressed,
            self.limits.decompressed_bytes,
        )
    }
}

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

/// Which cap an image reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    ImageBytes,
    DecompressedBytes,
    Entries,
    NameBytes,
    NameLen,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cap::ImageBytes => "image size",
            Cap::DecompressedBytes => "decompressed size",
            Cap::Entries => "cpio entry count",
            Cap::NameBytes => "total name size",
            Cap::NameLen => "name length",
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

/// The names collected so far, and what the image has spent of each cap.
pub(super) struct Listing {
    pub(super) paths: Vec<String>,
    limits: Limits,
    entries: usize,
    name_bytes: usize,
    decompressed: u64,
}

impl Listing {
    pub(super) fn new(limits: Limits) -> Listing {
        Listing {
            paths: Vec::new(),
            limits,
            entries: 0,
            name_bytes: 0,
            decompressed: 0,
        }
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

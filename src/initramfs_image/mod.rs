//! List the files in a Linux initramfs image on the host, without running the guest's
//! `lsinitramfs`/`lsinitrd` inside the appliance, and keep the contents of the few small files
//! a caller asks for ([`read_image`]: the image's own `modules.dep`, `modprobe.d`, config).
//!
//! An image is what the kernel's `init/initramfs.c` unpacks (see the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`): a sequence of segments, each
//! either an uncompressed cpio archive in "newc" (`070701`) or "crc" (`070702`) format, or a
//! compressed stream whose output is itself one or more such archives. Zero bytes may pad
//! anything that follows a trailer (`TRAILER!!!`) or a compressed stream.
//!
//! gzip and zstd are decoded here in pure Rust, xz with liblzma; any other compression the kernel knows
//! (lz4, lzma, bzip2, lzo) is an [`InitramfsImageError::UnsupportedCompression`], so the
//! caller can fall back to the guest's own tool. Nothing partial is ever returned: whatever
//! cannot be read to the end of the image is an error.
//!
//! The image is read as a stream ([`list_paths_from_file`] never holds the whole file), and
//! decompressed output is parsed as it is produced (nothing holds a decompressed copy of the
//! image), so the memory used is about one read buffer and one decoder window (for zstd,
//! the frame's window, at most [`MAX_ZSTD_WINDOW`]; for xz, the dictionary, at most
//! [`MAX_XZ_MEMORY`]) plus the list of names.
//!
//! An image from a hostile guest is held to hard caps ([`Limits`], the `MAX_*` constants of
//! `limits.rs`): its size, the bytes decoded from it, its entries, the bytes of the names
//! listed and the length of each name. Reaching one is an [`InitramfsImageError::OverCap`],
//! like any other error: no list at all.

mod cpio;
mod decompress;
mod input;
mod limits;
pub mod newc;

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Seek};
use std::path::{Path, PathBuf};

use cpio::CpioParser;
use decompress::{compression_at, decompress};
use input::{one_line, Input, PEEK_LEN};
use limits::Listing;
pub use limits::{
    check_image_size, Cap, Limits, MAX_DECOMPRESSED_BYTES, MAX_ENTRIES, MAX_IMAGE_BYTES,
    MAX_KEPT_BYTES, MAX_KEPT_FILE_BYTES, MAX_NAME_BYTES, MAX_NAME_LEN,
};

/// The compressed formats decoded here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    Xz,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        })
    }
}

/// A compressed stream of the image: its format and the byte offset in the image where it
/// starts. Offsets in errors about the cpio data inside it count decompressed bytes from
/// its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub compression: Compression,
    pub offset: usize,
}

/// Why an initramfs image could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsImageError {
    #[error("empty initramfs image")]
    Empty,
    #[error("no cpio archive in the initramfs image ({len} bytes)")]
    NoArchive { len: usize },
    #[error("unsupported compression at byte {offset} ({magic})")]
    UnsupportedCompression { offset: usize, magic: String },
    #[error("truncated cpio archive at byte {offset}{}: {what}", within(.stream))]
    Truncated {
        offset: u64,
        stream: Option<Stream>,
        what: String,
    },
    #[error("bad cpio header at byte {offset}{}: {reason}", within(.stream))]
    BadHeader {
        offset: u64,
        stream: Option<Stream>,
        reason: String,
    },
    #[error("bad data checksum for {name:?} at byte {offset}{}", within(.stream))]
    BadChecksum {
        offset: u64,
        stream: Option<Stream>,
        name: String,
    },
    #[error("cannot decompress the {compression} stream at byte {offset}: {reason}")]
    Decompress {
        offset: usize,
        compression: Compression,
        reason: String,
    },
    /// Reading the image failed (`path` is the file read, if it was one; `offset` is the
    /// byte of the image being read).
    #[error("cannot read the initramfs image{} at byte {offset}: {reason}", of_path(.path))]
    Io {
        path: Option<PathBuf>,
        offset: u64,
        reason: String,
    },
    /// The image reached one of the caps of [`Limits`] (see the `MAX_*` constants).
    #[error("initramfs image over the {cap} limit of {limit}")]
    OverCap { cap: Cap, limit: u64 },
}

fn within(stream: &Option<Stream>) -> String {
    match stream {
        None => String::new(),
        Some(s) => format!(
            " of the data decompressed from the {} stream at byte {}",
            s.compression, s.offset
        ),
    }
}

fn of_path(path: &Option<PathBuf>) -> String {
    match path {
        None => String::new(),
        Some(p) => format!(" {p:?}"),
    }
}

type Result<T> = std::result::Result<T, InitramfsImageError>;

/// The capacity of the buffer [`list_paths_from_file`] reads the file through.
const FILE_BUFFER_LEN: usize = 512 * 1024;

/// The largest zstd window accepted (a frame's declared window is allocated whole). `zstd -19`
/// uses 8 MiB, `--ultra -20` 32 MiB; larger windows (`--ultra -21/-22`, `--long`) are a
/// [`InitramfsImageError::Decompress`] error rather than a 64-128 MiB allocation, so the
/// caller falls back to the guest's lister.
pub const MAX_ZSTD_WINDOW: u64 = 32 << 20;

/// The most memory the xz decoder may use (its dictionary, mostly): 32 MiB takes every preset
/// up to `xz -7`; `-8`/`-9` images are listed by the guest's own tool instead.
pub const MAX_XZ_MEMORY: u64 = 32 << 20;

/// Paths inside a Linux initramfs image (all concatenated cpio segments), in archive order,
/// without a leading "./" or "/" (e.g. "usr/lib/modules/6.1.0-56-amd64/kernel/drivers/block/virtio_blk.ko").
///
/// The root entry of each archive ("." or "/") is not a path and is left out, as is each
/// archive's `TRAILER!!!`; a name stored twice is listed twice. Names that are not UTF-8 are
/// converted lossily.
pub fn list_paths(image: &[u8]) -> std::result::Result<Vec<String>, InitramfsImageError> {
    list_paths_within(Cursor::new(image), image.len() as u64, Limits::default())
}

/// The paths of an image and the contents of the small regular files a caller asked for
/// (configuration the image carries: `modules.dep`, `modprobe.d`, `conf/conf.d/resume`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFiles {
    /// As [`list_paths`] gives them.
    pub paths: Vec<String>,
    /// Path (as in `paths`) → contents, for the regular files `keep` accepted that are at
    /// most [`MAX_KEPT_FILE_BYTES`]; all of them together at most [`MAX_KEPT_BYTES`].
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
}

/// [`list_paths`], keeping the contents of the files whose path `keep` accepts.
pub fn read_image(
    image: &[u8],
    keep: fn(&str) -> bool,
) -> std::result::Result<ImageFiles, InitramfsImageError> {
    let listing = Listing::new(Limits::default()).keeping(keep);
    read_within(Cursor::new(image), image.len() as u64, listing)
}

/// [`read_image`] of the image in the file at `path`, read as a stream like
/// [`list_paths_from_file`].
pub fn read_image_from_file(
    path: &Path,
    keep: fn(&str) -> bool,
) -> std::result::Result<ImageFiles, InitramfsImageError> {
    let io = |e: std::io::Error| InitramfsImageError::Io {
        path: Some(path.to_path_buf()),
        offset: 0,
        reason: one_line(&e.to_string()),
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let listing = Listing::new(Limits::default()).keeping(keep);
    read_within(
        BufReader::with_capacity(FILE_BUFFER_LEN, file),
        len,
        listing,
    )
    .map_err(|e| match e {
        InitramfsImageError::Io { offset, reason, .. } => InitramfsImageError::Io {
            path: Some(path.to_path_buf()),
            offset,
            reason,
        },
        e => e,
    })
}

/// [`list_paths`] of the image in the file at `path`, read as a stream: the memory used does
/// not depend on the size of the image (see the module documentation). A file over
/// [`MAX_IMAGE_BYTES`] is refused before it is read.
pub fn list_paths_from_file(path: &Path) -> std::result::Result<Vec<String>, InitramfsImageError> {
    list_paths_from_file_with_capacity(path, FILE_BUFFER_LEN)
}

/// [`list_paths_from_file`] with a read buffer of `capacity` bytes (tests use tiny ones).
pub(crate) fn list_paths_from_file_with_capacity(
    path: &Path,
    capacity: usize,
) -> std::result::Result<Vec<String>, InitramfsImageError> {
    let listed = match File::open(path) {
        // Checked before reading, whatever the caller checked before downloading.
        Ok(file) => match file.metadata() {
            Ok(meta) => list_paths_within(
                BufReader::with_capacity(capacity, file),
                meta.len(),
                Limits::default(),
            ),
            Err(e) => Err(InitramfsImageError::Io {
                path: None,
                offset: 0,
                reason: one_line(&e.to_string()),
            }),
        },
        Err(e) => Err(InitramfsImageError::Io {
            path: None,
            offset: 0,
            reason: one_line(&e.to_string()),
        }),
    };
    listed.map_err(|e| match e {
        InitramfsImageError::Io { offset, reason, .. } => InitramfsImageError::Io {
            path: Some(path.to_path_buf()),
            offset,
            reason,
        },
        e => e,
    })
}

/// [`list_paths`] of the image read from `reader` (from its current position, which is byte
/// 0 of the image). Seeking is only ever a few bytes back, after peeking at a magic number.
#[cfg(test)]
pub(crate) fn list_paths_from_reader<R: BufRead + Seek>(
    mut reader: R,
) -> std::result::Result<Vec<String>, InitramfsImageError> {
    let len = remaining_len(&mut reader)?;
    list_paths_within(reader, len, Limits::default())
}

/// [`list_paths_from_reader`] of an image of `len` bytes, within the caps of `limits`.
pub(crate) fn list_paths_within<R: BufRead + Seek>(
    reader: R,
    len: u64,
    limits: Limits,
) -> std::result::Result<Vec<String>, InitramfsImageError> {
    read_within(reader, len, Listing::new(limits)).map(|files| files.paths)
}

fn read_within<R: BufRead + Seek>(
    reader: R,
    len: u64,
    mut listing: Listing,
) -> std::result::Result<ImageFiles, InitramfsImageError> {
    listing.limits().check_image_size(len)?;
    let mut input = Input::new(reader);
    // Uncompressed archives and zero padding between segments: offsets are image offsets, and
    // headers must sit on 4-byte boundaries of the image, as in the kernel.
    let mut top = CpioParser::new(None);
    let mut archives = 0;
    loop {
        // Up to the next compressed segment, or the end of the image.
        let more = loop {
            let chunk = match input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) => return Err(input.io_error(e)),
            };
            if chunk.is_empty() {
                break false;
            }
            let len = chunk.len();
            let used = top.feed(chunk, &mut listing)?;
            input.consume(used);
            if used < len {
                break true;
            }
        };
        if !more {
            break;
        }
        let offset = input.offset();
        let mut head = [0u8; PEEK_LEN];
        let head = input.peek(&mut head)?;
        let compression = compression_at(offset, head)?;
        let mut parser = CpioParser::new(Some(Stream {
            compression,
            offset,
        }));
        let used = decompress(compression, offset, &mut input, &mut parser, &mut listing)?;
        if used == 0 {
            // Cannot happen (a decoder takes at least the magic), but never loop forever.
            return Err(InitramfsImageError::Decompress {
                offset,
                compression,
                reason: "the decoder took no input".to_string(),
            });
        }
        parser.finish()?;
        archives += parser.archives;
        top.skip(used);
    }
    if input.pos == 0 {
        return Err(InitramfsImageError::Empty);
    }
    top.finish()?;
    archives += top.archives;
    if archives == 0 {
        return Err(InitramfsImageError::NoArchive {
            len: input.offset(),
        });
    }
    Ok(ImageFiles {
        paths: listing.paths,
        files: listing.kept,
    })
}

/// The bytes from the current position of `reader` to its end (it is left where it was).
#[cfg(test)]
fn remaining_len(reader: &mut impl Seek) -> Result<u64> {
    let measured = (|| {
        let start = reader.stream_position()?;
        let end = reader.seek(std::io::SeekFrom::End(0))?;
        reader.seek(std::io::SeekFrom::Start(start))?;
        Ok(end.saturating_sub(start))
    })();
    measured.map_err(|e: std::io::Error| InitramfsImageError::Io {
        path: None,
        offset: 0,
        reason: one_line(&e.to_string()),
    })
}

#[cfg(test)]
mod tests;

//! List the files in a Linux initramfs image on the host, without running the guest's
//! `lsinitramfs`/`lsinitrd` inside the appliance.
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

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read, Seek, Write};
use std::path::{Path, PathBuf};

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
    list_paths_from_reader(Cursor::new(image))
}

/// [`list_paths`] of the image in the file at `path`, read as a stream: the memory used does
/// not depend on the size of the image (see the module documentation).
pub fn list_paths_from_file(path: &Path) -> std::result::Result<Vec<String>, InitramfsImageError> {
    list_paths_from_file_with_capacity(path, FILE_BUFFER_LEN)
}

/// [`list_paths_from_file`] with a read buffer of `capacity` bytes (tests use tiny ones).
pub(crate) fn list_paths_from_file_with_capacity(
    path: &Path,
    capacity: usize,
) -> std::result::Result<Vec<String>, InitramfsImageError> {
    let listed = match File::open(path) {
        Ok(file) => list_paths_from_reader(BufReader::with_capacity(capacity, file)),
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
pub(crate) fn list_paths_from_reader<R: BufRead + Seek>(
    reader: R,
) -> std::result::Result<Vec<String>, InitramfsImageError> {
    let mut input = Input::new(reader);
    let mut paths = Vec::new();
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
            let used = top.feed(chunk, &mut paths)?;
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
        let used = decompress(compression, offset, &mut input, &mut parser, &mut paths)?;
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
    Ok(paths)
}

/// How many bytes [`Input::peek`] looks at: the longest magic, and enough of an unknown one
/// to show in an error.
const PEEK_LEN: usize = 8;

/// The image being read: counts the bytes taken from `inner` (the image offset of the next
/// byte), peeks ahead, and keeps the first error of `inner` so that a decoder's complaint
/// about its input can be told apart from a failure to read the file.
struct Input<R> {
    inner: R,
    /// Bytes taken so far.
    pos: u64,
    /// The first read error: where, and why.
    error: Option<(u64, String)>,
}

impl<R> Input<R> {
    fn new(inner: R) -> Input<R> {
        Input {
            inner,
            pos: 0,
            error: None,
        }
    }

    /// The image offset of the next byte.
    fn offset(&self) -> usize {
        self.pos as usize
    }

    /// `inner` failed: keep the first failure.
    fn note(&mut self, e: &io::Error) {
        if self.error.is_none() {
            self.error = Some((self.pos, one_line(&e.to_string())));
        }
    }

    /// The error for `e`, a failure to read the image.
    fn io_error(&mut self, e: io::Error) -> InitramfsImageError {
        self.note(&e);
        let (offset, reason) = self.error.take().unwrap_or_default();
        InitramfsImageError::Io {
            path: None,
            offset,
            reason,
        }
    }

    /// The error for a decoder that failed with `reason`: a read error if reading failed.
    fn decode_error(
        &mut self,
        compression: Compression,
        offset: usize,
        reason: String,
    ) -> InitramfsImageError {
        match self.error.take() {
            Some((at, why)) => InitramfsImageError::Io {
                path: None,
                offset: at,
                reason: why,
            },
            None => InitramfsImageError::Decompress {
                offset,
                compression,
                reason: one_line(&reason),
            },
        }
    }
}

impl<R: BufRead + Seek> Input<R> {
    /// The next bytes (up to [`PEEK_LEN`], fewer only at the end of the image), without taking
    /// them. They may straddle the end of `inner`'s buffer: then they are read and `inner`
    /// seeks back.
    fn peek<'b>(&mut self, buf: &'b mut [u8; PEEK_LEN]) -> Result<&'b [u8]> {
        let available = match self.fill_buf() {
            Ok(chunk) => {
                let n = chunk.len().min(PEEK_LEN);
                buf[..n].copy_from_slice(&chunk[..n]);
                n
            }
            Err(e) => return Err(self.io_error(e)),
        };
        if available == PEEK_LEN || available == 0 {
            return Ok(&buf[..available]);
        }
        let mut n = 0;
        while n < PEEK_LEN {
            match self.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(self.io_error(e)),
            }
        }
        if let Err(e) = self.inner.seek_relative(-(n as i64)) {
            return Err(self.io_error(e));
        }
        self.pos -= n as u64;
        Ok(&buf[..n])
    }

    fn starts_with(&mut self, magic: &[u8]) -> Result<bool> {
        let mut buf = [0u8; PEEK_LEN];
        Ok(self.peek(&mut buf)?.starts_with(magic))
    }
}

impl<R: BufRead> Read for Input<R> {
    /// Straight from `inner`'s buffer when it holds enough (ruzstd reads each frame header,
    /// block header and block with `read_exact`).
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if let Ok(chunk) = self.inner.fill_buf() {
            if chunk.len() >= buf.len() {
                buf.copy_from_slice(&chunk[..buf.len()]);
                self.consume(buf.len());
                return Ok(());
            }
        }
        // Across a refill, at the end of the input, or after an error (met again, and noted,
        // by `read`).
        let mut rest = buf;
        while !rest.is_empty() {
            match self.read(rest)? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ))
                }
                n => rest = &mut rest[n..],
            }
        }
        Ok(())
    }

    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.note(&e);
                    return Err(e);
                }
            }
        }
    }
}

impl<R: BufRead> BufRead for Input<R> {
    #[inline]
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        loop {
            match self.inner.fill_buf() {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.note(&e);
                    return Err(e);
                }
            }
        }
        // Already filled: this only returns the buffered bytes (or, at the end, reads 0).
        self.inner.fill_buf()
    }

    #[inline]
    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
        self.pos += amt as u64;
    }
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// The compression of the segment at `offset` (`rest` starts there with a byte that is neither
/// zero padding nor the start of a cpio header), or why it is not one decoded here.
fn compression_at(offset: usize, rest: &[u8]) -> Result<Compression> {
    if rest.starts_with(GZIP_MAGIC) {
        return Ok(Compression::Gzip);
    }
    if rest.starts_with(ZSTD_MAGIC) {
        return Ok(Compression::Zstd);
    }
    if rest.starts_with(XZ_MAGIC) {
        return Ok(Compression::Xz);
    }
    // The other formats of the kernel's `lib/decompress.c`, and lz4's frame format.
    const OTHERS: &[(&[u8], &str)] = &[
        (&[0x02, 0x21, 0x4c, 0x18], "lz4 legacy frame"),
        (&[0x04, 0x22, 0x4d, 0x18], "lz4 frame"),
        (&[0x5d, 0x00, 0x00], "lzma"),
        (b"BZh", "bzip2"),
        (&[0x89, b'L', b'Z', b'O'], "lzo"),
        (&[0x1f, 0x9e], "old gzip"),
    ];
    let magic = match OTHERS.iter().find(|(m, _)| rest.starts_with(m)) {
        Some((_, name)) => (*name).to_string(),
        None => format!("unknown magic {}", hex_bytes(&rest[..rest.len().min(8)])),
    };
    Err(InitramfsImageError::UnsupportedCompression { offset, magic })
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decompresses the stream at the current position of `input` (image offset `offset`) into
/// `parser`, and returns how many bytes of `input` it took. Members (gzip), frames (zstd) or
/// streams (xz) of the same format that follow each other directly are one stream: an archive
/// may span them. Each decoder takes from `input` exactly the bytes of its member, frame or
/// stream, so whatever follows is left for the caller.
fn decompress<R: BufRead + Seek>(
    compression: Compression,
    offset: usize,
    input: &mut Input<R>,
    parser: &mut CpioParser,
    paths: &mut Vec<String>,
) -> Result<usize> {
    let start = input.pos;
    let mut sink = Sink::new(parser, paths);
    // The decoder failed: the parser's error comes first (it met bad data before the decoder
    // did), then a failure to read the input, then the decoder's complaint.
    let fail = |input: &mut Input<R>, sink: &mut Sink, reason: String| {
        sink.failure()
            .unwrap_or_else(|| input.decode_error(compression, offset, reason))
    };
    match compression {
        Compression::Gzip => {
            let mut chunk = vec![0u8; 64 * 1024];
            while input.starts_with(GZIP_MAGIC)? {
                sink.parser.new_member();
                // The bufread decoder takes from `input` exactly the bytes of one member.
                let mut member = flate2::bufread::GzDecoder::new(&mut *input);
                if let Some(reason) = drain(&mut member, &mut chunk, &mut sink)? {
                    return Err(fail(input, &mut sink, reason));
                }
            }
        }
        Compression::Zstd => {
            let mut frames = ruzstd::decoding::FrameDecoder::new();
            frames.set_max_window_size(MAX_ZSTD_WINDOW);
            loop {
                let mut head = [0u8; PEEK_LEN];
                let head = input.peek(&mut head)?;
                if head.starts_with(ZSTD_MAGIC) {
                    sink.parser.new_member();
                    // The decoder reads exactly what it needs (a header, a block, a checksum)
                    // with `read_exact`, so `input` ends up just after the frame.
                    frames
                        .reset(&mut *input)
                        .map_err(|e| fail(input, &mut sink, e.to_string()))?;
                    loop {
                        // One block (at most 128 KiB) at a time: the decoder's buffer then stays
                        // at the window size plus a block.
                        frames
                            .decode_blocks(
                                &mut *input,
                                ruzstd::decoding::BlockDecodingStrategy::UptoBlocks(1),
                            )
                            .map_err(|e| fail(input, &mut sink, e.to_string()))?;
                        let finished = frames.is_finished();
                        if let Err(e) = frames.collect_to_writer(&mut sink) {
                            return Err(fail(input, &mut sink, e.to_string()));
                        }
                        if finished {
                            break;
                        }
                    }
                    if let (Some(stored), Some(computed)) = (
                        frames.get_checksum_from_data(),
                        frames.get_calculated_checksum(),
                    ) {
                        if stored != computed {
                            return Err(fail(
                                input,
                                &mut sink,
                                format!(
                                    "content checksum mismatch (stored {stored:08x}, computed {computed:08x})"
                                ),
                            ));
                        }
                    }
                } else if is_skippable_zstd_frame(head) {
                    let len =
                        8 + u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
                    let skipped = io::copy(&mut (&mut *input).take(len), &mut io::sink())
                        .map_err(|e| fail(input, &mut sink, e.to_string()))?;
                    if skipped < len {
                        return Err(fail(input, &mut sink, "truncated skippable frame".into()));
                    }
                } else {
                    break;
                }
            }
        }
        Compression::Xz => {
            let mut chunk = vec![0u8; 64 * 1024];
            while input.starts_with(XZ_MAGIC)? {
                sink.parser.new_member();
                // liblzma hands its output over as it decodes, whatever the block size; the
                // memory limit refuses dictionaries over MAX_XZ_MEMORY (`xz -9` uses 64 MiB),
                // and the caller falls back to the guest's lister.
                let stream = liblzma::stream::Stream::new_stream_decoder(MAX_XZ_MEMORY, 0)
                    .map_err(|e| fail(input, &mut sink, e.to_string()))?;
                // Without LZMA_CONCATENATED the decoder stops at the end of this stream, and
                // the bufread decoder takes from `input` exactly the stream's bytes.
                let mut one = liblzma::bufread::XzDecoder::new_stream(&mut *input, stream);
                if let Some(reason) = drain(&mut one, &mut chunk, &mut sink)? {
                    return Err(fail(input, &mut sink, reason));
                }
            }
        }
    }
    sink.finish()?;
    Ok((input.pos - start) as usize)
}

/// Feed everything `decoder` produces to `sink`. A parse error is returned as such; a decoder
/// error is returned as its reason, for the caller to place (it holds the input).
fn drain(decoder: &mut impl Read, chunk: &mut [u8], sink: &mut Sink) -> Result<Option<String>> {
    loop {
        match decoder.read(chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => sink.feed(&chunk[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Ok(Some(e.to_string())),
        }
    }
}

fn is_skippable_zstd_frame(head: &[u8]) -> bool {
    head.len() >= 8 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18]
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Feeds decompressed bytes to a parser; as an `io::Write` for decoders that push their
/// output, keeping the parser's own error for the caller.
struct Sink<'a> {
    parser: &'a mut CpioParser,
    paths: &'a mut Vec<String>,
    error: Option<InitramfsImageError>,
    /// Where the parser met a byte that is neither a cpio header nor zero padding, and the
    /// first [`PEEK_LEN`] bytes from there (collected across the decoder's output chunks, so
    /// that the error shows the same bytes however the output is cut).
    garbage: Option<(u64, Vec<u8>)>,
}

impl<'a> Sink<'a> {
    fn new(parser: &'a mut CpioParser, paths: &'a mut Vec<String>) -> Sink<'a> {
        Sink {
            parser,
            paths,
            error: None,
            garbage: None,
        }
    }

    /// Inside a compressed stream, everything must be cpio archives or zero padding.
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        let rest = match self.garbage {
            Some(_) => data,
            None => {
                let used = self.parser.feed(data, self.paths)?;
                if used == data.len() {
                    return Ok(());
                }
                self.garbage = Some((self.parser.pos, Vec::with_capacity(PEEK_LEN)));
                &data[used..]
            }
        };
        if let Some((_, seen)) = &mut self.garbage {
            let n = (PEEK_LEN - seen.len()).min(rest.len());
            seen.extend_from_slice(&rest[..n]);
            if seen.len() == PEEK_LEN {
                return self.finish();
            }
        }
        Ok(())
    }

    /// The decoder's output ended: an error if it was not all archives and padding.
    fn finish(&mut self) -> Result<()> {
        match self.garbage.take() {
            None => Ok(()),
            Some((offset, seen)) => Err(InitramfsImageError::BadHeader {
                offset,
                stream: self.parser.stream,
                reason: format!(
                    "neither a cpio header nor zero padding (found {})",
                    hex_bytes(&seen)
                ),
            }),
        }
    }

    /// The decoder failed: the error the parser met first, if any.
    fn failure(&mut self) -> Option<InitramfsImageError> {
        self.error.take().or_else(|| self.finish().err())
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Err(io::Error::other("cpio parsing already failed"));
        }
        match self.feed(data) {
            Ok(()) => Ok(data.len()),
            Err(e) => {
                self.error = Some(e);
                Err(io::Error::other("cpio parsing failed"))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const HEADER_LEN: usize = 110;
const MAGIC_LEN: usize = 6;
/// Longer names are garbage (the kernel's limit is PATH_MAX, 4096), not worth buffering.
const MAX_NAME_LEN: usize = 64 * 1024;
const TRAILER: &[u8] = b"TRAILER!!!";

fn pad4(n: u64) -> u64 {
    (4 - n % 4) % 4
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Before an archive or after a trailer: zero padding, or the start of a header.
    Gap,
    /// Inside an archive, collecting a header into `buf` (empty: the next entry is due).
    Header,
    /// Collecting the name and its padding (`total` bytes) into `buf`.
    Name {
        name_len: usize,
        total: usize,
        file_size: u64,
        /// The header's check field, for a regular file of a "crc" archive.
        check: Option<u32>,
    },
    /// Skipping the file data, then its padding.
    Data {
        data_left: u64,
        pad_left: u64,
        check: Option<u32>,
        sum: u32,
        trailer: bool,
    },
}

/// A push parser for a sequence of newc/crc cpio archives, fed in pieces of any size.
struct CpioParser {
    /// The compressed stream the bytes come from, or `None` for the image itself.
    stream: Option<Stream>,
    /// Offset of the next byte fed.
    pos: u64,
    /// Headers are on 4-byte boundaries counted from here.
    align_base: u64,
    state: State,
    buf: Vec<u8>,
    /// Offset of the entry (header) being read.
    entry_start: u64,
    /// Name of the entry whose data is being read (for the crc checksum error).
    entry_name: String,
    /// Archives begun.
    archives: usize,
}

impl CpioParser {
    fn new(stream: Option<Stream>) -> CpioParser {
        CpioParser {
            stream,
            pos: 0,
            align_base: 0,
            state: State::Gap,
            buf: Vec::with_capacity(HEADER_LEN),
            entry_start: 0,
            entry_name: String::new(),
            archives: 0,
        }
    }

    /// `n` bytes were taken by something else (a compressed stream in the image).
    fn skip(&mut self, n: usize) {
        self.pos += n as u64;
    }

    /// A new gzip member, zstd frame or xz stream starts: as for the kernel (which decodes
    /// each one on its own), an archive starting in it is aligned from its start.
    fn new_member(&mut self) {
        if matches!(self.state, State::Gap) {
            self.align_base = self.pos;
        }
    }

    fn bad_header(&self, reason: String) -> InitramfsImageError {
        InitramfsImageError::BadHeader {
            offset: self.entry_start,
            stream: self.stream,
            reason,
        }
    }

    /// Parses `data`, appending names to `paths`. Returns how many bytes it took: all of
    /// them, unless it met, between archives, a byte that is neither zero padding nor the
    /// start of a cpio header (where the next segment of an image starts).
    fn feed(&mut self, data: &[u8], paths: &mut Vec<String>) -> Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            match self.state {
                State::Gap => {
                    let zeros = rest.iter().take_while(|&&b| b == 0).count();
                    self.pos += zeros as u64;
                    rest = &rest[zeros..];
                    match rest.first() {
                        None => break,
                        Some(b'0') => {}
                        Some(_) => return Ok(data.len() - rest.len()),
                    }
                    self.entry_start = self.pos;
                    if !(self.pos - self.align_base).is_multiple_of(4) {
                        return Err(
                            self.bad_header("cpio archive not on a 4-byte boundary".to_string())
                        );
                    }
                    self.archives += 1;
                    self.buf.clear();
                    self.state = State::Header;
                }
                State::Header => {
                    if self.buf.is_empty() {
                        self.entry_start = self.pos;
                    }
                    let n = (HEADER_LEN - self.buf.len()).min(rest.len());
                    self.buf.extend_from_slice(&rest[..n]);
                    self.pos += n as u64;
                    rest = &rest[n..];
                    // Say "bad header" rather than "truncated" for a short non-cpio tail.
                    let len = self.buf.len();
                    if len >= MAGIC_LEN && len - n < MAGIC_LEN {
                        self.check_magic()?;
                    }
                    if len == HEADER_LEN {
                        self.state = self.parse_header()?;
                        self.buf.clear();
                    }
                }
                State::Name {
                    name_len,
                    total,
                    file_size,
                    check,
                } => {
                    let n = (total - self.buf.len()).min(rest.len());
                    self.buf.extend_from_slice(&rest[..n]);
                    self.pos += n as u64;
                    rest = &rest[n..];
                    if self.buf.len() == total {
                        self.state = self.got_name(name_len, file_size, check, paths)?;
                        self.buf.clear();
                    }
                }
                State::Data {
                    data_left,
                    pad_left,
                    check,
                    sum,
                    trailer,
                } => {
                    let n = (data_left as usize).min(rest.len());
                    let sum = match check {
                        Some(_) => rest[..n]
                            .iter()
                            .fold(sum, |s, &b| s.wrapping_add(u32::from(b))),
                        None => sum,
                    };
                    let data_left = data_left - n as u64;
                    let p = (pad_left as usize).min(rest.len() - n);
                    let pad_left = pad_left - p as u64;
                    self.pos += (n + p) as u64;
                    rest = &rest[n + p..];
                    self.state = State::Data {
                        data_left,
                        pad_left,
                        check,
                        sum,
                        trailer,
                    };
                    if data_left == 0 && pad_left == 0 {
                        self.state = self.end_entry(check, sum, trailer)?;
                    }
                }
            }
        }
        Ok(data.len())
    }

    /// Whether the header being collected (at least its magic) is of the "crc" format.
    fn check_magic(&self) -> Result<bool> {
        match &self.buf[..MAGIC_LEN] {
            b"070701" => Ok(false),
            b"070702" => Ok(true),
            magic => Err(self.bad_header(format!(
                "no newc or crc cpio magic (found {:?})",
                String::from_utf8_lossy(magic)
            ))),
        }
    }

    fn parse_header(&self) -> Result<State> {
        let h = &self.buf;
        let with_check = self.check_magic()?;
        const FIELDS: [&str; 13] = [
            "ino",
            "mode",
            "uid",
            "gid",
            "nlink",
            "mtime",
            "filesize",
            "devmajor",
            "devminor",
            "rdevmajor",
            "rdevminor",
            "namesize",
            "check",
        ];
        let mut f = [0u32; 13];
        for (i, field) in f.iter_mut().enumerate() {
            let text = &h[6 + 8 * i..14 + 8 * i];
            *field = std::str::from_utf8(text)
                .ok()
                .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .ok_or_else(|| {
                    self.bad_header(format!(
                        "{} field is not 8 hex digits (found {:?})",
                        FIELDS[i],
                        String::from_utf8_lossy(text)
                    ))
                })?;
        }
        let (mode, file_size, name_len, check) = (f[1], f[6], f[11] as usize, f[12]);
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(self.bad_header(format!("name size {name_len}")));
        }
        let total = name_len + pad4((HEADER_LEN + name_len) as u64) as usize;
        let regular = mode & 0o170000 == 0o100000;
        Ok(State::Name {
            name_len,
            total,
            file_size: u64::from(file_size),
            check: (with_check && regular).then_some(check),
        })
    }

    fn got_name(
        &mut self,
        name_len: usize,
        file_size: u64,
        check: Option<u32>,
        paths: &mut Vec<String>,
    ) -> Result<State> {
        let raw = &self.buf[..name_len];
        if raw[name_len - 1] != 0 {
            return Err(self.bad_header("name not terminated by a nul byte".to_string()));
        }
        // A C string, as the kernel reads it.
        let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
        let trailer = raw == TRAILER;
        if trailer {
            self.entry_name.clear();
        } else {
            self.entry_name = String::from_utf8_lossy(raw).into_owned();
            if let Some(path) = normalise(&self.entry_name) {
                paths.push(path.to_string());
            }
        }
        let state = State::Data {
            data_left: file_size,
            pad_left: pad4(file_size),
            check,
            sum: 0,
            trailer,
        };
        if file_size == 0 {
            return self.end_entry(check, 0, trailer);
        }
        Ok(state)
    }

    fn end_entry(&mut self, check: Option<u32>, sum: u32, trailer: bool) -> Result<State> {
        if let Some(expected) = check {
            if expected != sum {
                return Err(InitramfsImageError::BadChecksum {
                    offset: self.entry_start,
                    stream: self.stream,
                    name: std::mem::take(&mut self.entry_name),
                });
            }
        }
        Ok(if trailer { State::Gap } else { State::Header })
    }

    /// The input ended: it must not end inside an archive.
    fn finish(&self) -> Result<()> {
        let (offset, what) = match self.state {
            State::Gap => return Ok(()),
            State::Header if self.buf.is_empty() => {
                (self.pos, "the archive ends without a trailer".to_string())
            }
            State::Header => (self.entry_start, "entry header cut short".to_string()),
            State::Name { .. } => (self.entry_start, "entry name cut short".to_string()),
            State::Data { .. } => (
                self.entry_start,
                format!("data of {:?} cut short", self.entry_name),
            ),
        };
        Err(InitramfsImageError::Truncated {
            offset,
            stream: self.stream,
            what,
        })
    }
}

/// The path of a cpio name: no leading "./" or "/"; `None` for the root (".", "/", "").
fn normalise(name: &str) -> Option<&str> {
    let mut name = name;
    loop {
        if let Some(rest) = name.strip_prefix("./") {
            name = rest;
        } else if let Some(rest) = name.strip_prefix('/') {
            name = rest;
        } else {
            break;
        }
    }
    (!name.is_empty() && name != ".").then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: u32 = 0o040755;
    const FILE: u32 = 0o100644;
    const LINK: u32 = 0o120777;

    /// Writes one newc (or crc) entry.
    fn entry(out: &mut Vec<u8>, crc: bool, name: &str, mode: u32, data: &[u8]) {
        let check = if crc {
            data.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)))
        } else {
            0
        };
        let fields = [
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            check,
        ];
        let start = out.len();
        out.extend_from_slice(if crc { b"070702" } else { b"070701" });
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !(out.len() - start).is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !(out.len() - start).is_multiple_of(4) {
            out.push(0);
        }
    }

    /// A whole archive (with its trailer) of `(name, mode, data)` entries.
    fn archive_fmt(crc: bool, entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, mode, data) in entries {
            entry(&mut out, crc, name, *mode, data);
        }
        entry(&mut out, crc, "TRAILER!!!", 0, b"");
        out
    }

    fn archive(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        archive_fmt(false, entries)
    }

    fn pad_to(mut v: Vec<u8>, block: usize) -> Vec<u8> {
        v.resize(v.len().div_ceil(block) * block, 0);
        v
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn early() -> Vec<u8> {
        pad_to(
            archive(&[
                (".", DIR, b""),
                ("kernel", DIR, b""),
                ("kernel/x86", DIR, b""),
                ("kernel/x86/microcode", DIR, b""),
                ("kernel/x86/microcode/AuthenticAMD.bin", FILE, b"ucode"),
            ]),
            512,
        )
    }

    const EARLY: &[&str] = &[
        "kernel",
        "kernel/x86",
        "kernel/x86/microcode",
        "kernel/x86/microcode/AuthenticAMD.bin",
    ];

    fn main_archive() -> Vec<u8> {
        archive(&[
            (".", DIR, b""),
            ("bin", LINK, b"usr/bin"),
            ("init", 0o100755, b"#!/bin/sh\nexec /sbin/init\n"),
            ("usr", DIR, b""),
            ("usr/lib", DIR, b""),
            (
                "usr/lib/modules/6.1.0-56-amd64/kernel/drivers/block/virtio_blk.ko",
                FILE,
                &[7u8; 1000],
            ),
        ])
    }

    const MAIN: &[&str] = &[
        "bin",
        "init",
        "usr",
        "usr/lib",
        "usr/lib/modules/6.1.0-56-amd64/kernel/drivers/block/virtio_blk.ko",
    ];

    /// `super::list_paths`, checked against every other way of reading the same image: through
    /// `BufReader`s so small that buffer boundaries fall inside every magic, header and
    /// segment boundary, and from a file (also with a tiny buffer, and with the default one).
    /// Every test that lists an image goes through here, so the whole matrix runs with each
    /// reader.
    fn list_paths(image: &[u8]) -> std::result::Result<Vec<String>, InitramfsImageError> {
        let whole = super::list_paths(image);
        let expected = format!("{whole:?}");
        for capacity in [1, 7, 64, 4096] {
            let got =
                list_paths_from_reader(BufReader::with_capacity(capacity, Cursor::new(image)));
            assert_eq!(
                format!("{got:?}"),
                expected,
                "read through {capacity} bytes"
            );
        }
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(image).unwrap();
        file.flush().unwrap();
        for capacity in [7, FILE_BUFFER_LEN] {
            let got = list_paths_from_file_with_capacity(file.path(), capacity);
            assert_eq!(
                format!("{got:?}"),
                expected,
                "file read through {capacity} bytes"
            );
        }
        whole
    }

    fn list(image: &[u8]) -> Vec<String> {
        match list_paths(image) {
            Ok(paths) => paths,
            Err(e) => panic!("list_paths failed: {e}"),
        }
    }

    fn strs(lists: &[&[&str]]) -> Vec<String> {
        lists.concat().iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn uncompressed_single_archive() {
        assert_eq!(list(&main_archive()), strs(&[MAIN]));
    }

    #[test]
    fn uncompressed_single_archive_without_padding_or_root() {
        let image = archive(&[("a", FILE, b"x"), ("b", DIR, b"")]);
        assert_eq!(list(&image), strs(&[&["a", "b"]]));
    }

    #[test]
    fn early_cpio_then_gzip_main() {
        let image = cat(&[&early(), &gzip(&main_archive())]);
        assert_eq!(list(&image), strs(&[EARLY, MAIN]));
    }

    #[test]
    fn early_cpio_then_zstd_main() {
        let image = cat(&[&early(), &zstd(&main_archive())]);
        assert_eq!(list(&image), strs(&[EARLY, MAIN]));
    }

    #[test]
    fn early_cpio_then_xz_main() {
        let image = cat(&[&early(), &xz(&main_archive())]);
        assert_eq!(list(&image), strs(&[EARLY, MAIN]));
    }

    #[test]
    fn compressed_main_alone() {
        for image in [
            gzip(&main_archive()),
            zstd(&main_archive()),
            xz(&main_archive()),
        ] {
            assert_eq!(list(&image), strs(&[MAIN]));
        }
    }

    #[test]
    fn uncompressed_zstd_frame() {
        let frame = ruzstd::encoding::compress_to_vec(
            &main_archive()[..],
            ruzstd::encoding::CompressionLevel::Uncompressed,
        );
        assert_eq!(list(&frame), strs(&[MAIN]));
    }

    #[test]
    fn compressed_then_zero_padding() {
        for main in [
            gzip(&main_archive()),
            zstd(&main_archive()),
            xz(&main_archive()),
        ] {
            let image = pad_to(cat(&[&early(), &main, &[0]]), 4096);
            assert_eq!(list(&image), strs(&[EARLY, MAIN]));
        }
    }

    #[test]
    fn two_gzip_members() {
        let second = archive(&[("etc", DIR, b""), ("etc/fstab", FILE, b"none\n")]);
        let image = cat(&[&early(), &gzip(&main_archive()), &gzip(&second)]);
        assert_eq!(list(&image), strs(&[EARLY, MAIN, &["etc", "etc/fstab"]]));
    }

    #[test]
    fn two_zstd_frames_and_a_skippable_frame() {
        let second = archive(&[("etc", DIR, b"")]);
        let skippable = cat(&[&[0x5e, 0x2a, 0x4d, 0x18, 3, 0, 0, 0], b"abc"]);
        let image = cat(&[&zstd(&main_archive()), &skippable, &zstd(&second)]);
        assert_eq!(list(&image), strs(&[MAIN, &["etc"]]));
    }

    #[test]
    fn two_xz_streams() {
        let second = archive(&[("etc", DIR, b"")]);
        let image = cat(&[&xz(&main_archive()), &xz(&second)]);
        assert_eq!(list(&image), strs(&[MAIN, &["etc"]]));
    }

    #[test]
    fn archive_split_across_gzip_members_and_zstd_frames() {
        let a = main_archive();
        let (head, tail) = a.split_at(333);
        assert_eq!(list(&cat(&[&gzip(head), &gzip(tail)])), strs(&[MAIN]));
        assert_eq!(list(&cat(&[&zstd(head), &zstd(tail)])), strs(&[MAIN]));
    }

    #[test]
    fn several_compressed_segments_of_different_formats() {
        let second = archive(&[("etc", DIR, b"")]);
        let third = archive(&[("lib", DIR, b"")]);
        let image = cat(&[
            &early(),
            &gzip(&main_archive()),
            &[0; 3],
            &zstd(&second),
            &[0; 100],
            &xz(&third),
            &[0; 8],
        ]);
        assert_eq!(list(&image), strs(&[EARLY, MAIN, &["etc"], &["lib"]]));
    }

    #[test]
    fn uncompressed_archive_after_compressed_segment() {
        // The kernel accepts an uncompressed archive after a stream if it is 4-byte aligned.
        let mut image = cat(&[&early(), &gzip(&main_archive())]);
        image.resize(image.len().div_ceil(4) * 4, 0);
        image.extend_from_slice(&archive(&[("late", FILE, b"1")]));
        assert_eq!(list(&image), strs(&[EARLY, MAIN, &["late"]]));
    }

    #[test]
    fn unaligned_uncompressed_archive_is_an_error() {
        let mut image = early();
        image.push(0);
        image.extend_from_slice(&main_archive());
        let err = list_paths(&image).unwrap_err();
        assert!(
            matches!(
                err,
                InitramfsImageError::BadHeader {
                    offset: 1025,
                    stream: None,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn compressed_main_with_two_concatenated_archives() {
        let second = pad_to(
            archive(&[("etc", DIR, b""), ("etc/hosts", FILE, b"h")]),
            512,
        );
        let content = cat(&[&pad_to(main_archive(), 512), &second, &[0; 1024]]);
        let expected = strs(&[MAIN, &["etc", "etc/hosts"]]);
        for image in [gzip(&content), zstd(&content), xz(&content)] {
            assert_eq!(list(&image), expected);
        }
        // Also without any padding between them.
        let content = cat(&[
            &main_archive(),
            &archive(&[("etc", DIR, b""), ("etc/hosts", FILE, b"h")]),
        ]);
        assert_eq!(list(&gzip(&content)), expected);
    }

    #[test]
    fn names_are_normalised() {
        let image = archive(&[
            ("./", DIR, b""),
            ("./usr", DIR, b""),
            ("/etc", DIR, b""),
            ("/", DIR, b""),
            ("./.", DIR, b""),
            (".//lib/x.ko", FILE, b"k"),
            ("usr/./a", FILE, b""),
            (".hidden", FILE, b""),
            ("..weird", FILE, b""),
        ]);
        assert_eq!(
            list(&image),
            strs(&[&["usr", "etc", "lib/x.ko", "usr/./a", ".hidden", "..weird"]])
        );
    }

    #[test]
    fn directories_symlinks_devices_and_empty_files_are_listed() {
        let image = archive(&[
            ("dev", DIR, b""),
            ("dev/console", 0o020600, b""),
            ("sbin", LINK, b"usr/sbin"),
            ("empty", FILE, b""),
            ("run", DIR, b""),
        ]);
        assert_eq!(
            list(&image),
            strs(&[&["dev", "dev/console", "sbin", "empty", "run"]])
        );
    }

    #[test]
    fn trailer_is_not_listed() {
        let paths = list(&cat(&[&early(), &zstd(&main_archive())]));
        assert!(!paths.iter().any(|p| p.contains("TRAILER")));
        // Only the exact name is a trailer.
        let image = archive(&[("TRAILER!!!x", FILE, b""), ("dir/TRAILER!!!", FILE, b"")]);
        assert_eq!(list(&image), strs(&[&["TRAILER!!!x", "dir/TRAILER!!!"]]));
    }

    #[test]
    fn names_stored_twice_are_listed_twice() {
        let image = cat(&[&early(), &early()]);
        assert_eq!(list(&image), strs(&[EARLY, EARLY]));
    }

    #[test]
    fn data_with_odd_sizes_and_name_lengths() {
        let mut entries = Vec::new();
        let names: Vec<String> = (1..=9).map(|n| "n".repeat(n)).collect();
        let datas: Vec<Vec<u8>> = (0..9).map(|n| vec![b'0'; n]).collect();
        for (name, data) in names.iter().zip(&datas) {
            entries.push((name.as_str(), FILE, data.as_slice()));
        }
        let a = archive(&entries);
        let expected: Vec<String> = names.clone();
        assert_eq!(list(&a), expected);
        assert_eq!(list(&archive_fmt(true, &entries)), expected);
        assert_eq!(list(&zstd(&a)), expected);
    }

    #[test]
    fn parser_takes_input_in_any_pieces() {
        let content = cat(&[&early(), &main_archive()]);
        for piece in [1, 2, 3, 7, 109, 110, 111, 4096] {
            let mut parser = CpioParser::new(None);
            let mut paths = Vec::new();
            for chunk in content.chunks(piece) {
                assert_eq!(parser.feed(chunk, &mut paths).unwrap(), chunk.len());
            }
            parser.finish().unwrap();
            assert_eq!(paths, strs(&[EARLY, MAIN]), "pieces of {piece}");
        }
    }

    #[test]
    fn crc_archive() {
        let a = archive_fmt(
            true,
            &[
                (".", DIR, b""),
                ("etc", DIR, b""),
                ("etc/passwd", FILE, b"root:x:0:0::/root:/bin/sh\n"),
                ("bin", LINK, b"usr/bin"),
            ],
        );
        assert_eq!(list(&a), strs(&[&["etc", "etc/passwd", "bin"]]));
        assert_eq!(
            list(&cat(&[&early(), &gzip(&a)])),
            strs(&[EARLY, &["etc", "etc/passwd", "bin"]])
        );
    }

    #[test]
    fn crc_archive_with_a_bad_checksum_is_an_error() {
        let mut a = archive_fmt(true, &[("etc/passwd", FILE, b"root")]);
        // The data starts after the header and the name "etc/passwd\0", padded: 110 + 11 + 3.
        a[124] = b'R';
        let err = list_paths(&a).unwrap_err();
        assert!(
            matches!(err, InitramfsImageError::BadChecksum { offset: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("etc/passwd"), "{err}");
    }

    #[test]
    fn truncated_header_is_an_error() {
        let a = main_archive();
        for cut in [1, 6, 50, 109] {
            let err = list_paths(&a[..cut]).unwrap_err();
            assert!(
                matches!(
                    err,
                    InitramfsImageError::Truncated {
                        offset: 0,
                        stream: None,
                        ..
                    }
                ),
                "cut at {cut}: {err}"
            );
        }
        // Inside a compressed stream.
        let image = cat(&[&early(), &zstd(&main_archive()[..200])]);
        let err = list_paths(&image).unwrap_err();
        assert!(
            matches!(
                err,
                InitramfsImageError::Truncated {
                    stream: Some(Stream {
                        compression: Compression::Zstd,
                        offset: 1024
                    }),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncated_name_is_an_error() {
        let err = list_paths(&main_archive()[..111]).unwrap_err();
        assert!(
            matches!(err, InitramfsImageError::Truncated { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("name cut short"), "{err}");
    }

    #[test]
    fn truncated_file_data_is_an_error() {
        let a = archive(&[("big", FILE, &[1u8; 5000])]);
        let cut = &a[..2000];
        let err = list_paths(cut).unwrap_err();
        assert!(
            matches!(err, InitramfsImageError::Truncated { offset: 0, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "truncated cpio archive at byte 0: data of \"big\" cut short"
        );
        for image in [gzip(cut), zstd(cut), xz(cut)] {
            let err = list_paths(&image).unwrap_err();
            assert!(
                matches!(err, InitramfsImageError::Truncated { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn missing_trailer_is_an_error() {
        let mut a = Vec::new();
        entry(&mut a, false, "usr", DIR, b"");
        let err = list_paths(&a).unwrap_err();
        assert!(
            matches!(err, InitramfsImageError::Truncated { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("without a trailer"), "{err}");
        let err = list_paths(&gzip(&a)).unwrap_err();
        assert!(
            matches!(err, InitramfsImageError::Truncated { .. }),
            "{err}"
        );
    }

    #[test]
    fn truncated_compressed_stream_is_an_error() {
        let content = pad_to(main_archive(), 512);
        for (c, main) in [
            (Compression::Gzip, gzip(&content)),
            (Compression::Zstd, zstd(&content)),
            (Compression::Xz, xz(&content)),
        ] {
            for cut in [main.len() / 2, main.len() - 1] {
                let image = cat(&[&early(), &main[..cut]]);
                let err = list_paths(&image).unwrap_err();
                assert!(
                    matches!(
                        &err,
                        InitramfsImageError::Decompress { offset: 1024, compression, .. }
                            | InitramfsImageError::Truncated {
                                stream: Some(Stream { compression, offset: 1024 }),
                                ..
                            } if *compression == c
                    ),
                    "{c} cut at {cut}: {err}"
                );
            }
        }
    }

    #[test]
    fn corrupt_compressed_stream_is_an_error() {
        for main in [
            gzip(&main_archive()),
            zstd(&main_archive()),
            xz(&main_archive()),
        ] {
            let mut image = cat(&[&early(), &main]);
            let last = image.len() - 5;
            image[last] ^= 0x55;
            let err = list_paths(&image).unwrap_err();
            assert!(
                matches!(
                    err,
                    InitramfsImageError::Decompress { offset: 1024, .. }
                        | InitramfsImageError::BadHeader { .. }
                        | InitramfsImageError::Truncated { .. }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn garbage_after_trailer_is_an_error() {
        let image = cat(&[&early(), b"garbage!"]);
        let err = list_paths(&image).unwrap_err();
        assert!(
            matches!(&err, InitramfsImageError::UnsupportedCompression { offset: 1024, magic }
                if magic == "unknown magic 67 61 72 62 61 67 65 21"),
            "{err}"
        );
        // Not a cpio header although it starts with '0'.
        let image = cat(&[&early(), b"0123456789"]);
        let err = list_paths(&image).unwrap_err();
        assert!(
            matches!(err, InitramfsImageError::BadHeader { offset: 1024, .. }),
            "{err}"
        );
        // Inside a compressed stream.
        let content = cat(&[&main_archive(), b"\x01junk"]);
        for image in [gzip(&content), zstd(&content), xz(&content)] {
            let err = list_paths(&image).unwrap_err();
            assert!(
                matches!(err, InitramfsImageError::BadHeader { .. }),
                "{err}"
            );
            // The same bytes however the decoder cuts its output.
            assert!(
                err.to_string()
                    .contains("neither a cpio header nor zero padding (found 01 6a 75 6e 6b)"),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_header_fields_are_errors() {
        let good = main_archive();
        // Magic "070707" (odc), a non-hex digit in the mode, a name size of 0.
        for (at, byte) in [(5, b'7'), (14, b'g'), (101, b'0')] {
            let mut a = good.clone();
            a[at] = byte;
            if at == 101 {
                a[94..102].copy_from_slice(b"00000000");
            }
            let err = list_paths(&a).unwrap_err();
            assert!(
                matches!(
                    err,
                    InitramfsImageError::BadHeader {
                        offset: 0,
                        stream: None,
                        ..
                    }
                ),
                "{err}"
            );
        }
        // The name not ending in a nul byte.
        let mut a = good.clone();
        a[94..102].copy_from_slice(b"00000001");
        let err = list_paths(&a).unwrap_err();
        assert!(err.to_string().contains("nul"), "{err}");
    }

    #[test]
    fn lz4_and_other_compressions_are_unsupported() {
        for (magic, name) in [
            (&[0x02u8, 0x21, 0x4c, 0x18][..], "lz4 legacy frame"),
            (&[0x5d, 0x00, 0x00, 0x80], "lzma"),
            (b"BZh9", "bzip2"),
            (&[0x89, b'L', b'Z', b'O', 0], "lzo"),
        ] {
            let image = cat(&[&early(), magic, &[0x11; 64]]);
            let err = list_paths(&image).unwrap_err();
            assert!(
                matches!(&err, InitramfsImageError::UnsupportedCompression { offset: 1024, magic }
                    if magic == name),
                "{err}"
            );
            assert_eq!(
                err.to_string(),
                format!("unsupported compression at byte 1024 ({name})")
            );
        }
    }

    #[test]
    fn empty_and_all_zero_input_are_errors() {
        assert!(matches!(list_paths(b""), Err(InitramfsImageError::Empty)));
        assert!(matches!(
            list_paths(&[0; 4096]),
            Err(InitramfsImageError::NoArchive { len: 4096 })
        ));
    }

    #[test]
    fn error_messages_are_one_lower_case_line() {
        let images = [
            cat(&[&early(), &[0x02, 0x21, 0x4c, 0x18]]),
            main_archive()[..50].to_vec(),
            cat(&[&early(), &gzip(&main_archive())[..40]]),
            cat(&[&early(), &zstd(&main_archive())[..40]]),
            cat(&[&early(), &xz(&main_archive())[..40]]),
            cat(&[&early(), b"0707011"]),
        ];
        for image in images {
            let msg = list_paths(&image).unwrap_err().to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
            assert!(msg.contains("byte "), "{msg}");
        }
    }

    // Fixtures made by the real tools (src/testdata/initramfs/gen.sh): GNU cpio, gzip, zstd,
    // xz with dracut's options, lz4 -l.
    const FIX_EARLY: &[u8] = include_bytes!("testdata/initramfs/early.cpio");
    const FIX_GZ: &[u8] = include_bytes!("testdata/initramfs/main.cpio.gz");
    const FIX_ZST: &[u8] = include_bytes!("testdata/initramfs/main.cpio.zst");
    const FIX_XZ: &[u8] = include_bytes!("testdata/initramfs/main.cpio.xz");
    const FIX_LZ4: &[u8] = include_bytes!("testdata/initramfs/main.cpio.lz4");
    const FIX_CRC: &[u8] = include_bytes!("testdata/initramfs/main-crc.cpio");
    const FIX_LIST: &str = include_str!("testdata/initramfs/main.list");

    fn fixture_main() -> Vec<String> {
        FIX_LIST
            .lines()
            .filter(|l| *l != ".")
            .map(String::from)
            .collect()
    }

    #[test]
    fn fixtures_made_by_the_real_tools() {
        let early: Vec<String> = list(FIX_EARLY);
        assert_eq!(
            early,
            strs(&[&[
                "kernel",
                "kernel/x86",
                "kernel/x86/microcode",
                "kernel/x86/microcode/GenuineIntel.bin"
            ]])
        );
        let main = fixture_main();
        assert!(main.contains(
            &"usr/lib/modules/6.1.0-56-amd64/kernel/drivers/block/virtio_blk.ko".to_string()
        ));
        assert!(main.contains(&"bin".to_string()));
        for compressed in [FIX_GZ, FIX_ZST, FIX_XZ] {
            assert_eq!(list(compressed), main);
            let image = cat(&[FIX_EARLY, compressed]);
            assert_eq!(list(&image), [early.clone(), main.clone()].concat());
        }
        assert_eq!(list(FIX_CRC), main);
        let err = list_paths(&cat(&[FIX_EARLY, FIX_LZ4])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported compression at byte 1024 (lz4 legacy frame)"
        );
    }

    #[test]
    fn fixture_streams_concatenated_with_padding() {
        let main = fixture_main();
        let image = cat(&[
            FIX_EARLY, FIX_ZST, FIX_ZST, &[0; 7], FIX_GZ, FIX_GZ, &[0; 9], FIX_XZ, &[0; 4], FIX_XZ,
        ]);
        let expected: Vec<String> = [&main[..]; 6].concat();
        assert_eq!(list(&image)[4..], expected[..]);
    }

    fn temp_file(data: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(data).unwrap();
        file.flush().unwrap();
        file
    }

    #[test]
    fn file_of_each_compression() {
        let second = archive(&[("etc", DIR, b""), ("etc/hosts", FILE, b"h")]);
        let content = cat(&[&pad_to(main_archive(), 512), &second]);
        let expected = strs(&[EARLY, MAIN, &["etc", "etc/hosts"]]);
        for image in [
            cat(&[&early(), &content]),
            cat(&[&early(), &gzip(&content), &[0; 5]]),
            cat(&[&early(), &zstd(&content), &[0; 6]]),
            cat(&[&early(), &xz(&content), &[0; 8]]),
        ] {
            let file = temp_file(&image);
            assert_eq!(list_paths_from_file(file.path()).unwrap(), expected);
        }
        for fixture in [FIX_GZ, FIX_ZST, FIX_XZ, FIX_CRC] {
            let file = temp_file(&cat(&[FIX_EARLY, fixture]));
            let paths = list_paths_from_file(file.path()).unwrap();
            assert_eq!(paths[4..], fixture_main()[..]);
        }
    }

    #[test]
    fn magic_across_a_buffer_boundary() {
        // The early archive is 1024 bytes: with these capacities a refill falls after 1, 2,
        // ..., 5 bytes of the next segment's magic, or inside its header.
        let content = main_archive();
        for compressed in [gzip(&content), zstd(&content), xz(&content)] {
            let image = cat(&[&early(), &compressed, &[0; 3], &compressed]);
            let expected = strs(&[EARLY, MAIN, MAIN]);
            let end = 1024 + compressed.len() + 3;
            for capacity in [1021, 1022, 1023, 1025, 1026, 1027, 1029, 1030, 1031] {
                let reader = BufReader::with_capacity(capacity, Cursor::new(&image[..]));
                assert_eq!(list_paths_from_reader(reader).unwrap(), expected);
            }
            // And the second stream's magic straddling a refill of the file's buffer.
            let file = temp_file(&image);
            for capacity in [end - 3, end - 1, end + 1, end + 4] {
                let paths = list_paths_from_file_with_capacity(file.path(), capacity).unwrap();
                assert_eq!(paths, expected, "capacity {capacity}");
            }
        }
        // An unsupported magic found across a boundary is reported whole.
        let image = cat(&[&early(), b"garbage!"]);
        for capacity in [1020, 1025, 1027, 1031] {
            let reader = BufReader::with_capacity(capacity, Cursor::new(&image[..]));
            let err = list_paths_from_reader(reader).unwrap_err();
            assert_eq!(
                err.to_string(),
                "unsupported compression at byte 1024 (unknown magic 67 61 72 62 61 67 65 21)"
            );
        }
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd.img");
        let err = list_paths_from_file(&path).unwrap_err();
        assert!(
            matches!(&err, InitramfsImageError::Io { path: Some(p), offset: 0, .. } if *p == path),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot read the initramfs image \"") && msg.contains(" at byte 0: "),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        // A directory opens but cannot be read.
        let err = list_paths_from_file(dir.path()).unwrap_err();
        assert!(
            matches!(err, InitramfsImageError::Io { offset: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn empty_file_is_empty() {
        let file = temp_file(b"");
        assert!(matches!(
            list_paths_from_file(file.path()),
            Err(InitramfsImageError::Empty)
        ));
    }

    /// Serves `data`, then fails to read at byte `fail_at`.
    struct FailingReader {
        data: Cursor<Vec<u8>>,
        fail_at: u64,
    }

    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = {
                let chunk = self.fill_buf()?;
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                n
            };
            self.consume(n);
            Ok(n)
        }
    }

    impl BufRead for FailingReader {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            let pos = self.data.position();
            if pos >= self.fail_at {
                return Err(io::Error::other("disk on fire"));
            }
            let n = (self.fail_at - pos) as usize;
            let chunk = self.data.fill_buf()?;
            Ok(&chunk[..n.min(chunk.len())])
        }

        fn consume(&mut self, amt: usize) {
            self.data.consume(amt);
        }
    }

    impl Seek for FailingReader {
        fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
            self.data.seek(to)
        }
    }

    #[test]
    fn read_errors_are_io_errors_not_bad_data() {
        let content = pad_to(main_archive(), 512);
        for main in [
            gzip(&content),
            zstd(&content),
            xz(&content),
            content.clone(),
        ] {
            let image = cat(&[&early(), &main]);
            for fail_at in [0, 500, 1024, 1027, 1024 + main.len() as u64 / 2] {
                let reader = FailingReader {
                    data: Cursor::new(image.clone()),
                    fail_at,
                };
                let err = list_paths_from_reader(reader).unwrap_err();
                assert!(
                    matches!(err, InitramfsImageError::Io { path: None, offset, .. }
                        if offset == fail_at),
                    "failing at {fail_at}: {err}"
                );
                assert_eq!(
                    err.to_string(),
                    format!("cannot read the initramfs image at byte {fail_at}: disk on fire")
                );
            }
        }
    }

    #[test]
    fn zstd_window_over_the_limit_is_an_error() {
        // A frame header declaring a 64 MiB window (Window_Descriptor exponent 16), then an
        // empty last raw block.
        let frame = cat(&[ZSTD_MAGIC, &[0x00, 0x80], &[0x01, 0x00, 0x00]]);
        let err = list_paths(&cat(&[&early(), &frame])).unwrap_err();
        assert!(
            matches!(
                err,
                InitramfsImageError::Decompress {
                    offset: 1024,
                    compression: Compression::Zstd,
                    ..
                }
            ),
            "{err}"
        );
        // The same frame with a 32 MiB window (exponent 15) is accepted.
        let frame = cat(&[ZSTD_MAGIC, &[0x00, 0x78], &[0x01, 0x00, 0x00]]);
        assert_eq!(list(&cat(&[&early(), &frame])), strs(&[EARLY]));
    }

    /// An xz stream whose LZMA2 dictionary is `dict` bytes (the decoder's memory need).
    fn xz_with_dict(data: &[u8], dict: u32) -> Vec<u8> {
        use liblzma::stream::{Check, Filters, LzmaOptions, Stream};
        let mut opts = LzmaOptions::new_preset(0).unwrap();
        opts.dict_size(dict);
        let mut filters = Filters::new();
        filters.lzma2(&opts);
        let stream = Stream::new_stream_encoder(&filters, Check::Crc32).unwrap();
        let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn xz_dictionary_over_the_memory_limit_is_an_error() {
        let main = main_archive();
        let err = list_paths(&cat(&[&early(), &xz_with_dict(&main, 64 << 20)])).unwrap_err();
        assert!(
            matches!(
                err,
                InitramfsImageError::Decompress {
                    offset: 1024,
                    compression: Compression::Xz,
                    ..
                }
            ),
            "{err}"
        );
        // dracut's 1 MiB and xz -6's 8 MiB dictionaries are within the limit.
        for dict in [1 << 20, 8 << 20] {
            let listed = list(&cat(&[&early(), &xz_with_dict(&main, dict)]));
            assert_eq!(listed, strs(&[EARLY, MAIN]));
        }
    }
}

//! Telling the compressed segments apart by their magic, and decoding them (gzip, zstd, xz)
//! into a cpio parser as the output is produced.

use std::io::{self, BufRead, Read, Seek, Write};

use super::cpio::CpioParser;
use super::input::{Input, PEEK_LEN};
use super::limits::Listing;
use super::{Compression, InitramfsImageError, Result, MAX_XZ_MEMORY, MAX_ZSTD_WINDOW};

pub(super) const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
pub(super) const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
pub(super) const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// The compression of the segment at `offset` (`rest` starts there with a byte that is neither
/// zero padding nor the start of a cpio header), or why it is not one decoded here.
pub(super) fn compression_at(offset: usize, rest: &[u8]) -> Result<Compression> {
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

pub(super) fn hex_bytes(bytes: &[u8]) -> String {
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
pub(super) fn decompress<R: BufRead + Seek>(
    compression: Compression,
    offset: usize,
    input: &mut Input<R>,
    parser: &mut CpioParser,
    listing: &mut Listing,
) -> Result<usize> {
    let start = input.pos;
    let mut sink = Sink::new(parser, listing);
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

/// Feeds decompressed bytes to a parser; as an `io::Write` for decoders that push their
/// output, keeping the parser's own error for the caller.
struct Sink<'a> {
    parser: &'a mut CpioParser,
    listing: &'a mut Listing,
    error: Option<InitramfsImageError>,
    /// Where the parser met a byte that is neither a cpio header nor zero padding, and the
    /// first [`PEEK_LEN`] bytes from there (collected across the decoder's output chunks, so
    /// that the error shows the same bytes however the output is cut).
    garbage: Option<(u64, Vec<u8>)>,
}

impl<'a> Sink<'a> {
    fn new(parser: &'a mut CpioParser, listing: &'a mut Listing) -> Sink<'a> {
        Sink {
            parser,
            listing,
            error: None,
            garbage: None,
        }
    }

    /// Inside a compressed stream, everything must be cpio archives or zero padding.
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        self.listing.decompressed(data.len())?;
        let rest = match self.garbage {
            Some(_) => data,
            None => {
                let used = self.parser.feed(data, self.listing)?;
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

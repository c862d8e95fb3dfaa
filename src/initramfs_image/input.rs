//! The image as read: byte offsets, peeking at magic numbers, and read errors kept apart
//! from the decoders' complaints.

use std::io::{self, BufRead, Read, Seek};

use super::{Compression, InitramfsImageError, Result};

/// How many bytes [`Input::peek`] looks at: the longest magic, and enough of an unknown one
/// to show in an error.
pub(super) const PEEK_LEN: usize = 8;

/// The image being read: counts the bytes taken from `inner` (the image offset of the next
/// byte), peeks ahead, and keeps the first error of `inner` so that a decoder's complaint
/// about its input can be told apart from a failure to read the file.
pub(super) struct Input<R> {
    inner: R,
    /// Bytes taken so far.
    pub(super) pos: u64,
    /// The first read error: where, and why.
    error: Option<(u64, String)>,
}

impl<R> Input<R> {
    pub(super) fn new(inner: R) -> Input<R> {
        Input {
            inner,
            pos: 0,
            error: None,
        }
    }

    /// The image offset of the next byte.
    pub(super) fn offset(&self) -> usize {
        self.pos as usize
    }

    /// `inner` failed: keep the first failure.
    fn note(&mut self, e: &io::Error) {
        if self.error.is_none() {
            self.error = Some((self.pos, one_line(&e.to_string())));
        }
    }

    /// The error for `e`, a failure to read the image.
    pub(super) fn io_error(&mut self, e: io::Error) -> InitramfsImageError {
        self.note(&e);
        let (offset, reason) = self.error.take().unwrap_or_default();
        InitramfsImageError::Io {
            path: None,
            offset,
            reason,
        }
    }

    /// The error for a decoder that failed with `reason`: a read error if reading failed.
    pub(super) fn decode_error(
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
    pub(super) fn peek<'b>(&mut self, buf: &'b mut [u8; PEEK_LEN]) -> Result<&'b [u8]> {
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

    pub(super) fn starts_with(&mut self, magic: &[u8]) -> Result<bool> {
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

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

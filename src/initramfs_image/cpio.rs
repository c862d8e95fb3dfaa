//! A push parser for sequences of newc/crc cpio archives, fed in pieces of any size.

use super::limits::Listing;
use super::{InitramfsImageError, Result, Stream};

const HEADER_LEN: usize = 110;
const MAGIC_LEN: usize = 6;
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
        regular: bool,
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
pub(super) struct CpioParser {
    /// The compressed stream the bytes come from, or `None` for the image itself.
    pub(super) stream: Option<Stream>,
    /// Offset of the next byte fed.
    pub(super) pos: u64,
    /// Headers are on 4-byte boundaries counted from here.
    align_base: u64,
    state: State,
    buf: Vec<u8>,
    /// Offset of the entry (header) being read.
    entry_start: u64,
    /// Name of the entry whose data is being read (for the crc checksum error).
    entry_name: String,
    /// The data of the entry being read, when the listing keeps it.
    kept: Option<Vec<u8>>,
    /// Archives begun.
    pub(super) archives: usize,
}

impl CpioParser {
    pub(super) fn new(stream: Option<Stream>) -> CpioParser {
        CpioParser {
            stream,
            pos: 0,
            align_base: 0,
            state: State::Gap,
            buf: Vec::with_capacity(HEADER_LEN),
            entry_start: 0,
            entry_name: String::new(),
            kept: None,
            archives: 0,
        }
    }

    /// `n` bytes were taken by something else (a compressed stream in the image).
    pub(super) fn skip(&mut self, n: usize) {
        self.pos += n as u64;
    }

    /// A new gzip member, zstd frame or xz stream starts: as for the kernel (which decodes
    /// each one on its own), an archive starting in it is aligned from its start.
    pub(super) fn new_member(&mut self) {
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

    /// Parses `data`, adding names to `listing`. Returns how many bytes it took: all of
    /// them, unless it met, between archives, a byte that is neither zero padding nor the
    /// start of a cpio header (where the next segment of an image starts).
    pub(super) fn feed(&mut self, data: &[u8], listing: &mut Listing) -> Result<usize> {
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
                        self.state = self.parse_header(listing)?;
                        self.buf.clear();
                    }
                }
                State::Name {
                    name_len,
                    total,
                    file_size,
                    check,
                    regular,
                } => {
                    let n = (total - self.buf.len()).min(rest.len());
                    self.buf.extend_from_slice(&rest[..n]);
                    self.pos += n as u64;
                    rest = &rest[n..];
                    if self.buf.len() == total {
                        self.state = self.got_name(name_len, file_size, check, regular, listing)?;
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
                    if let Some(kept) = self.kept.as_mut() {
                        kept.extend_from_slice(&rest[..n]);
                    }
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
                        self.state = self.end_entry(check, sum, trailer, listing)?;
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

    fn parse_header(&self, listing: &mut Listing) -> Result<State> {
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
        listing.entry(name_len)?;
        if name_len == 0 {
            return Err(self.bad_header(format!("name size {name_len}")));
        }
        let total = name_len + pad4((HEADER_LEN + name_len) as u64) as usize;
        let regular = mode & 0o170000 == 0o100000;
        Ok(State::Name {
            name_len,
            total,
            file_size: u64::from(file_size),
            check: (with_check && regular).then_some(check),
            regular,
        })
    }

    fn got_name(
        &mut self,
        name_len: usize,
        file_size: u64,
        check: Option<u32>,
        regular: bool,
        listing: &mut Listing,
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
                listing.push(path)?;
                if regular && listing.wants(path, file_size) {
                    self.kept = Some(Vec::with_capacity(file_size as usize));
                }
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
            return self.end_entry(check, 0, trailer, listing);
        }
        Ok(state)
    }

    fn end_entry(
        &mut self,
        check: Option<u32>,
        sum: u32,
        trailer: bool,
        listing: &mut Listing,
    ) -> Result<State> {
        if let Some(expected) = check {
            if expected != sum {
                return Err(InitramfsImageError::BadChecksum {
                    offset: self.entry_start,
                    stream: self.stream,
                    name: std::mem::take(&mut self.entry_name),
                });
            }
        }
        if let Some(kept) = self.kept.take() {
            if let Some(path) = normalise(&self.entry_name) {
                listing.store(path.to_string(), kept)?;
            }
        }
        Ok(if trailer { State::Gap } else { State::Header })
    }

    /// The input ended: it must not end inside an archive.
    pub(super) fn finish(&self) -> Result<()> {
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

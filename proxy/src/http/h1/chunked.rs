//! The chunked transfer coding (RFC 9112 §7.1), both ways.
//!
//! Decoding is strict where a lenient reader would disagree with another about where a
//! chunk ends: the size is 1–16 hex digits, an extension is `;` name [`=` value] with a
//! token name and a token or quoted-string value (only whitespace may sit beside `;` and
//! `=`), and the size line and each chunk's data end in CRLF (a bare CR or LF is an
//! error). Trailer field lines end in CRLF or LF, as head field lines do, and the section
//! is scanned once as it arrives (each read resumes where the last stopped). Data comes
//! out as slices of the read buffer (no copy). Only whole units are consumed, so input
//! split anywhere decodes the same.

use super::error::{Error, Kind};
use crate::http::fault::Side;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The longest chunk-size line (size and extensions) accepted.
pub const MAX_LINE: usize = 4096;
/// The largest trailer section accepted.
pub const MAX_TRAILERS: usize = 64 * 1024;
/// The most trailer fields accepted.
const MAX_TRAILER_FIELDS: usize = 64;

/// What the decoder made of the buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    /// The last chunk and a non-empty trailer section: the body's end.
    Trailers(HeaderMap),
    /// The body's end.
    End,
    /// More input is needed.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    /// In the trailer section: where its current line starts, and how far it has been
    /// scanned for a line end (both under `MAX_TRAILERS`).
    Trailers {
        line: u32,
        scanned: u32,
    },
    Done,
}

/// Chunked decoder state between reads.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Self { state: State::Size }
    }
}

impl Decoder {
    /// Decodes what `buf` holds, consuming what it uses; errors are `side`'s fault.
    pub fn decode(&mut self, buf: &mut BytesMut, side: Side) -> Result<Decoded, Error> {
        let err = |why| Error::new(side, Kind::Chunked(why));
        loop {
            match self.state {
                State::Size => {
                    let Some(nl) = buf.iter().take(MAX_LINE + 1).position(|&b| b == b'\n') else {
                        if buf.len() > MAX_LINE {
                            return Err(err("chunk size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let size = size_line(&buf[..=nl]).map_err(err)?;
                    buf.advance(nl + 1);
                    self.state = if size == 0 { State::Trailers { line: 0, scanned: 0 } } else { State::Data(size) };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 { State::DataEnd } else { State::Data(left) };
                    return Ok(Decoded::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(err("chunk data not followed by CRLF"));
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(err("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers { line, scanned } => {
                    let (mut line, mut from) = (line as usize, scanned.max(line) as usize);
                    loop {
                        let Some(i) = buf[from..].iter().position(|&b| b == b'\n') else {
                            if buf.len() > MAX_TRAILERS {
                                return Err(err("trailer section too large"));
                            }
                            self.state = State::Trailers { line: line as u32, scanned: buf.len() as u32 };
                            return Ok(Decoded::NeedMore);
                        };
                        let nl = from + i;
                        // An empty line (CRLF or LF) ends the section.
                        if nl == line || (nl == line + 1 && buf[line] == b'\r') {
                            let section = buf.split_to(nl + 1);
                            self.state = State::Done;
                            if line == 0 {
                                return Ok(Decoded::End);
                            }
                            return trailers(&section).map(Decoded::Trailers).map_err(err);
                        }
                        line = nl + 1;
                        from = line;
                        if line > MAX_TRAILERS {
                            return Err(err("trailer section too large"));
                        }
                    }
                }
                State::Done => return Ok(Decoded::End),
            }
        }
    }

    /// The last chunk (and trailers) have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

/// The size of a chunk from its whole size line (ending in `\n`), or why the line is
/// not one.
fn size_line(line: &[u8]) -> Result<u64, &'static str> {
    let Some(line) = line.strip_suffix(b"\r\n") else { return Err("chunk size line not ended by CRLF") };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("chunk size is not hexadecimal");
    }
    if digits > 16 {
        return Err("chunk size too large");
    }
    let size = line[..digits].iter().fold(0u64, |acc, &b| acc << 4 | u64::from(hex(b)));
    extensions(&line[digits..])?;
    Ok(size)
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Checks `*( BWS ";" BWS name [ BWS "=" BWS value ] )` followed by nothing but BWS.
fn extensions(mut rest: &[u8]) -> Result<(), &'static str> {
    const BAD: &str = "malformed chunk extension";
    loop {
        rest = skip_ws(rest);
        match rest.split_first() {
            None => return Ok(()),
            Some((b';', after)) => rest = skip_ws(after),
            Some(_) => return Err(BAD),
        }
        let name = token_len(rest);
        if name == 0 {
            return Err(BAD);
        }
        rest = skip_ws(&rest[name..]);
        if let Some((b'=', after)) = rest.split_first() {
            rest = skip_ws(after);
            let value = match rest.first() {
                Some(b'"') => quoted_len(rest).ok_or(BAD)?,
                _ => token_len(rest),
            };
            if value == 0 {
                return Err(BAD);
            }
            rest = &rest[value..];
        }
    }
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

/// RFC 9110 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn token_len(s: &[u8]) -> usize {
    s.iter().take_while(|&&b| is_tchar(b)).count()
}

/// The length of the quoted-string at the start of `s` (which starts with `"`).
fn quoted_len(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            b'\\' if i + 1 < s.len() && is_qd_or_pair(s[i + 1], true) => i += 2,
            b if is_qd_or_pair(b, false) => i += 1,
            _ => return None,
        }
    }
    None
}

/// qdtext (or, for a quoted-pair, the escaped octet).
fn is_qd_or_pair(b: u8, pair: bool) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) && (pair || (b != b'"' && b != b'\\')) || b >= 0x80
}

/// The trailer section (field lines and the empty line) as a map, with fields that may
/// not be trailers dropped.
fn trailers(section: &[u8]) -> Result<HeaderMap, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let parsed = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err("malformed trailer section"),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for f in parsed {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "malformed trailer name")?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| "malformed trailer value")?;
        if valid_trailer(&name) {
            map.append(name, value);
        }
    }
    Ok(map)
}

/// Appends the size line of a chunk of `len` bytes (its data and CRLF follow).
pub fn size_line_into(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk with `trailers`, leaving out fields that may not be trailers
/// (RFC 9110 §6.5.1), as hyper does.
pub fn last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if valid_trailer(name) {
            super::encode::header_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Fields that frame, route or authenticate a message may not come as trailers.
fn valid_trailer(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

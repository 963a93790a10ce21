//! The `transfer-encoding: chunked` decoder for upstream response bodies (RFC 9112 §7.1):
//! data comes out as slices of the connection's read buffer (no copy), chunk extensions are
//! ignored, a trailer section becomes a `HeaderMap`. It consumes only whole units (a size
//! line, the CRLF after a chunk, the trailer section), so input split anywhere decodes the
//! same.

use super::Error;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// The longest chunk-size line (size, extensions) accepted.
const MAX_LINE: usize = 4096;
/// The largest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;

/// What the decoder made of the buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    /// The last chunk and a non-empty trailer section: the body's end.
    Trailers(HeaderMap),
    /// The last chunk and no trailers: the body's end.
    End,
    /// More input is needed.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Decoder state between reads.
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
    /// Decodes what `buf` holds, consuming what it uses.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            match self.state {
                State::Size => {
                    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_LINE {
                            return Err(Error::Framing("chunk size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    if nl == 0 || buf[nl - 1] != b'\r' || nl > MAX_LINE {
                        return Err(Error::Framing("bad chunk size line"));
                    }
                    let size = parse_size(&buf[..nl - 1])?;
                    buf.advance(nl + 1);
                    self.state = if size == 0 { State::Trailers } else { State::Data(size) };
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
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Framing("chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] == b"\r\n" {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if buf.len() > MAX_TRAILERS {
                            return Err(Error::Framing("trailer section too large"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let section = buf.split_to(end + 4);
                    self.state = State::Done;
                    return parse_trailers(&section).map(Decoded::Trailers);
                }
                State::Done => return Ok(Decoded::End),
            }
        }
    }

    /// The last chunk (and trailers) have been read.
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

/// The hex size before any `;extension` or whitespace.
fn parse_size(line: &[u8]) -> Result<u64, Error> {
    let mut size: u64 = 0;
    let mut digits = 0;
    for &b in line {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b';' | b' ' | b'\t' => break,
            _ => return Err(Error::Framing("bad chunk size")),
        };
        digits += 1;
        if digits > 16 {
            return Err(Error::Framing("chunk size too large"));
        }
        size = size << 4 | u64::from(d);
    }
    if digits == 0 {
        return Err(Error::Framing("bad chunk size"));
    }
    Ok(size)
}

fn parse_trailers(section: &[u8]) -> Result<HeaderMap, Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let parsed = match httparse::parse_headers(section, &mut headers) {
        Ok(httparse::Status::Complete((_, h))) => h,
        _ => return Err(Error::Framing("bad trailer section")),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Framing("bad trailer name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Error::Framing("bad trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the data, trailers, and whether the
    /// end was reached.
    fn run(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Option<HeaderMap>, bool), Error> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut from = 0;
        let mut ends = cuts.to_vec();
        ends.push(input.len());
        for to in ends {
            buf.extend_from_slice(&input[from..to]);
            from = to;
            loop {
                match d.decode(&mut buf)? {
                    Decoded::Data(b) => data.extend_from_slice(&b),
                    Decoded::Trailers(t) => return Ok((data, Some(t), true)),
                    Decoded::End => return Ok((data, None, true)),
                    Decoded::NeedMore => break,
                }
            }
        }
        Ok((data, None, false))
    }

    const BODY: &[u8] = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-sum: 42\r\nx-b: c\r\n\r\n";

    #[test]
    fn decodes_split_at_every_boundary() {
        for i in 0..=BODY.len() {
            for j in i..=BODY.len() {
                let (data, trailers, done) = run(BODY, &[i, j]).unwrap();
                assert_eq!(data, b"hello 0123456789", "cut at {i},{j}");
                let t = trailers.unwrap();
                assert_eq!(t["x-sum"], "42");
                assert_eq!(t["x-b"], "c");
                assert!(done);
            }
        }
    }

    #[test]
    fn end_without_trailers_and_leftover_kept() {
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nNEXT"[..]);
        let mut d = Decoder::default();
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::Data(Bytes::from_static(b"abc")));
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::End);
        assert!(d.is_done());
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [&b"zz\r\n"[..], b"\r\n", b"5\nhello", b"3\r\nabcXY", b"11111111111111111\r\n", b"0\r\n:bad\r\n\r\n"]
        {
            assert!(run(bad, &[]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn premature_end_is_not_done() {
        for cut in [1, 4, 8, 12, BODY.len() - 1] {
            let (_, _, done) = run(&BODY[..cut], &[]).unwrap();
            assert!(!done, "{cut}");
        }
    }

    #[test]
    fn long_size_line_is_an_error() {
        let line = vec![b'1'; MAX_LINE + 10];
        assert!(run(&line, &[]).is_err());
    }
}

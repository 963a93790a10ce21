//! Parsing an upstream response head with `httparse`: status, version and headers (values
//! are slices of the read buffer, not copies), and what frames the body (RFC 9112 §6.3) and
//! whether the connection may carry another request.

use super::Error;
use crate::http::wire;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version, header};
use std::mem::MaybeUninit;

/// The largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024 - 1;
/// The most header fields accepted (hyper's client default).
const MAX_HEADERS: usize = 100;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, `content-length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the upstream closes.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Parses a response head from the front of `buf`, consuming it; `None` if incomplete.
/// `head_request`: the request was HEAD, so the response has no body whatever it says.
pub fn parse(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, Error> {
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    // Offsets into the head (at most MAX_HEAD bytes, so they fit in u16).
    let mut idx = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let (len, code, minor, count) = {
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut raw)
            .map_err(Error::Parse)?;
        let httparse::Status::Complete(len) = status else {
            if buf.len() > MAX_HEAD {
                return Err(Error::HeadTooLarge);
            }
            return Ok(None);
        };
        if len > MAX_HEAD {
            return Err(Error::HeadTooLarge);
        }
        let base = buf.as_ptr() as usize;
        let off = |p: *const u8, l: usize| {
            let start = p as usize - base;
            (start as u16, (start + l) as u16)
        };
        for (slot, h) in idx.iter_mut().zip(res.headers.iter()) {
            let (n0, n1) = off(h.name.as_ptr(), h.name.len());
            let (v0, v1) = off(h.value.as_ptr(), h.value.len());
            *slot = (n0, n1, v0, v1);
        }
        (len, res.code.unwrap_or(0), res.version.unwrap_or(1), res.headers.len())
    };
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("bad status code"))?;
    let head = buf.split_to(len).freeze();
    let mut headers = crate::http::header_maps::take(count);
    // Noted while building the map: most responses have neither, and looking for an absent
    // header costs a hash and a probe.
    let (mut te, mut connection) = (false, false);
    for &(n0, n1, v0, v1) in &idx[..count] {
        let (n0, n1, v0, v1) = (usize::from(n0), usize::from(n1), usize::from(v0), usize::from(v1));
        let name = HeaderName::from_bytes(&head[n0..n1]).map_err(|_| Error::Invalid("bad header name"))?;
        te |= name == header::TRANSFER_ENCODING;
        connection |= name == header::CONNECTION;
        let value =
            HeaderValue::from_maybe_shared(head.slice(v0..v1)).map_err(|_| Error::Invalid("bad header value"))?;
        headers.append(name, value);
    }
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let (framing, mut keep_alive) = framing(status, &headers, te, head_request)?;
    keep_alive &= match version {
        Version::HTTP_10 => connection && connection_has(&headers, b"keep-alive"),
        _ => !(connection && connection_has(&headers, b"close")),
    };
    Ok(Some(Head { status, version, headers, framing, keep_alive }))
}

/// The body's framing and whether it leaves the connection reusable.
/// `te`: the head has a `transfer-encoding` field.
fn framing(status: StatusCode, h: &HeaderMap, te: bool, head_request: bool) -> Result<(Framing, bool), Error> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    if te {
        // Chunked must be the final coding; otherwise only the close delimits the body.
        let chunked = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii))
            .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"));
        // Both framings present: honour chunked, but do not trust the connection after.
        let clean = !h.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked { (Framing::Chunked, clean) } else { (Framing::Close, false) });
    }
    let mut length: Option<u64> = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let n = parse_len(part.trim_ascii()).ok_or(Error::Invalid("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Invalid("conflicting content-length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Empty, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

fn parse_len(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0')))
}

/// Whether the `Connection` header lists `token`.
fn connection_has(h: &HeaderMap, token: &[u8]) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| wire::has_token(v.as_bytes(), token))
}

/// The body bytes of a `Length` body already in the buffer, when all of it is there.
pub fn take_whole(buf: &mut BytesMut, framing: Framing) -> Option<Bytes> {
    match framing {
        Framing::Length(n) if buf.len() as u64 >= n => Some(buf.split_to(n as usize).freeze()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(s: &str, head_request: bool) -> Result<Option<Head>, Error> {
        parse(&mut BytesMut::from(s.as_bytes()), head_request)
    }

    #[test]
    fn parses_head_and_leaves_the_body() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nhiNEXT"[..]);
        let h = parse(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.keep_alive);
        assert_eq!(h.headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(take_whole(&mut buf, h.framing).unwrap(), "hi");
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn incomplete_head_is_none_at_every_cut() {
        let full = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n";
        for cut in 0..full.len() {
            assert!(parse(&mut BytesMut::from(&full[..cut]), false).unwrap().is_none(), "{cut}");
        }
        let h = parse(&mut BytesMut::from(&full[..]), false).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn framing_rules() {
        let f = |s: &str, head| parse_all(s, head).unwrap().map(|h| (h.framing, h.keep_alive)).unwrap();
        assert_eq!(f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true), (Framing::Empty, true));
        assert_eq!(f("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n", false), (Framing::Empty, true));
        assert_eq!(f("HTTP/1.1 100 Continue\r\n\r\n", false), (Framing::Empty, true));
        assert_eq!(f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n", false), (Framing::Chunked, true));
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n", false),
            (Framing::Chunked, false)
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false), (Framing::Close, false));
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n", false), (Framing::Close, false));
        assert_eq!(f("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n", false), (Framing::Length(7), true));
        assert_eq!(f("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false), (Framing::Empty, true));
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nconnection: foo, close\r\ncontent-length: 1\r\n\r\n", false),
            (Framing::Length(1), false)
        );
        assert_eq!(f("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false), (Framing::Length(1), false));
        assert_eq!(
            f("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n", false),
            (Framing::Length(1), true)
        );
    }

    #[test]
    fn rejects_bad_heads() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(parse_all(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn head_size_limit() {
        let mut big = String::from("HTTP/1.1 200 OK\r\n");
        while big.len() <= MAX_HEAD {
            big.push_str(&format!("x-filler: {}\r\n", "0".repeat(1000)));
        }
        assert!(matches!(parse_all(&big, false), Err(Error::HeadTooLarge)));
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(parse_all(&many, false).is_err());
    }
}

//! Writing heads, both directions: a response head for the server (status line for the
//! client's version, the fields as given plus `date`, and the framing fields, which are
//! always the codec's own: a `Content-Length` or `Transfer-Encoding` in the map is never
//! copied), and a request head for the client (the framing hyper's client chose).

use super::framing::{self, Framing};
use http::header;
use http::{Method, StatusCode, Version, request, response};

/// Field lines a request head gets after its map's (the proxy's forwarding fields,
/// `headers::Forwarding`), written straight into the head.
pub trait ExtraLines {
    /// Their size in bytes, as written.
    fn size(&self) -> usize;
    /// Appends them, each `name: value\r\n`.
    fn write(&self, out: &mut Vec<u8>);
}

/// No extra lines.
impl ExtraLines for () {
    fn size(&self) -> usize {
        0
    }

    fn write(&self, _: &mut Vec<u8>) {}
}

/// Appends `name: value\r\n`.
pub fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written into `buf` (no allocation).
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// What a response body looks like before its first frame: nothing (`None`), or a body
/// of this exact size if known.
pub type BodyHint = Option<Option<u64>>;

/// What the request asked of the response written for it.
#[derive(Debug, Clone, Copy)]
pub struct Answering {
    pub version: Version,
    /// A HEAD request: no body.
    pub head: bool,
}

/// Appends the response head to `out` and returns how its body goes. `close` (the
/// connection ends after this response) becomes true if the response says
/// `connection: close` or its body is read to the close; the field is added when set and
/// absent, and `connection: keep-alive` is added for an HTTP/1.0 client kept open.
pub fn response_head(
    out: &mut Vec<u8>,
    parts: &response::Parts,
    body: BodyHint,
    to: Answering,
    close: &mut bool,
) -> Framing {
    let status = parts.status;
    let v10 = to.version == Version::HTTP_10;
    if status == StatusCode::OK && !v10 {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if v10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // 1xx and 204 carry no length at all; a HEAD or 304 answer's own length describes the
    // body it would have had and is passed on.
    let no_length = status.is_informational() || status == StatusCode::NO_CONTENT;
    let informative = to.head || status == StatusCode::NOT_MODIFIED;
    let framing = if no_length || informative {
        Framing::None
    } else {
        match body {
            None | Some(Some(0)) => Framing::None,
            Some(Some(n)) => Framing::Length(n),
            // HTTP/1.0 has no chunked coding: the close ends the body.
            Some(None) if v10 => Framing::Close,
            Some(None) => Framing::Chunked,
        }
    };
    *close |= framing == Framing::Close;
    let (mut wrote_date, mut wrote_close, mut wrote_length) = (false, false, false);
    for (name, value) in parts.headers.iter() {
        match *name {
            header::CONTENT_LENGTH if informative && !wrote_length => wrote_length = true,
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING => continue,
            header::CONNECTION if framing::has_token(value.as_bytes(), b"close") => {
                *close = true;
                wrote_close = true;
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let mut digits = [0; 20];
    match framing {
        Framing::Length(n) => header_line(out, b"content-length", decimal(n, &mut digits)),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None if no_length => {}
        Framing::None if informative => {
            if !wrote_length && let Some(Some(n)) = body.filter(|_| to.head).filter(|b| *b != Some(0)) {
                header_line(out, b"content-length", decimal(n, &mut digits));
            }
        }
        Framing::None => out.extend_from_slice(b"content-length: 0\r\n"),
        Framing::Close => {}
    }
    if *close && !wrote_close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if v10 && !*close {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        crate::http::date::with(|v| out.extend_from_slice(v.as_bytes()));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Whether `m` defines a meaning for enclosed content (POST, PUT, PATCH and extension
/// methods): its empty body is sent as `content-length: 0`.
fn payload_method(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::CONNECT | Method::TRACE)
}

/// Encodes the request line and fields, with the framing fields for the body: none for
/// an empty body (`content-length: 0` for a method that defines a body), its length when
/// known, else chunked, except for GET, HEAD and CONNECT, which are sent without one (as
/// hyper's client did). `extra` lines follow the map's fields. Returns the head and how
/// the body goes.
pub fn request_head<E: ExtraLines + ?Sized>(
    parts: &request::Parts,
    extra: &E,
    empty: bool,
    exact: Option<u64>,
) -> (Vec<u8>, Framing) {
    let h = &parts.headers;
    let framing = match exact {
        _ if empty => Framing::None,
        Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
        None if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) => Framing::None,
        None => Framing::Chunked,
    };
    // An absolute-form target (rare) is formatted first so the head's size is known.
    let absolute;
    let target = match parts.uri.path_and_query() {
        Some(pq) if parts.uri.scheme().is_none() => pq.as_str().as_bytes(),
        _ => {
            absolute = parts.uri.to_string();
            absolute.as_bytes()
        }
    };
    let mut digits = [0; 20];
    let added: Option<(&[u8], &[u8])> = match framing {
        Framing::Length(n) => Some((b"content-length", decimal(n, &mut digits))),
        Framing::Chunked => Some((b"transfer-encoding", b"chunked")),
        // An empty body of a method that defines one is announced (RFC 9110 §8.6).
        _ if payload_method(&parts.method) => Some((b"content-length", b"0")),
        _ => None,
    };
    let sent = |k: &header::HeaderName| k != header::TRANSFER_ENCODING && k != header::CONTENT_LENGTH;
    let line = |k: &[u8], v: &[u8]| k.len() + v.len() + 4;
    // Sized exactly: a `Bytes` made from a full vector needs no second allocation.
    let size = parts.method.as_str().len()
        + 1
        + target.len()
        + 11
        + h.iter().filter(|(k, _)| sent(k)).map(|(k, v)| line(k.as_str().as_bytes(), v.as_bytes())).sum::<usize>()
        + extra.size()
        + added.map_or(0, |(k, v)| line(k, v))
        + 2;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in h.iter().filter(|(k, _)| sent(k)) {
        header_line(&mut out, k.as_str().as_bytes(), v.as_bytes());
    }
    extra.write(&mut out);
    if let Some((k, v)) = added {
        header_line(&mut out, k, v);
    }
    out.extend_from_slice(b"\r\n");
    debug_assert_eq!(out.len(), size);
    (out, framing)
}

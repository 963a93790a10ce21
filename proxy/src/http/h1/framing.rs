//! How an HTTP/1 message body is delimited (RFC 9112 §6), decided once per head for both
//! directions from what its fields say (`Fields`, noted while the head is parsed): the
//! one `Content-Length` parser, the `Transfer-Encoding` rules, and what the connection
//! may do after the message.
//!
//! Requests are held to the strict reading (anything ambiguous is a 400 and the
//! connection closes): both `Content-Length` and `Transfer-Encoding`, a
//! `Transfer-Encoding` that does not end in chunked or applies it twice, one in an
//! HTTP/1.0 request, differing or malformed lengths. Responses are read as RFC 9112 §6.3
//! says a recipient must: `Transfer-Encoding` overrides `Content-Length` (which is then
//! dropped and the connection not reused), a coding list not ending in chunked is read
//! to the close.

use super::error::{Error, Kind};
use super::head::Requested;
use http::{HeaderMap, HeaderName, StatusCode, Version, header};

/// How a body goes on the wire, in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes (not 0: that is `None`).
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// What a head's fields say about its framing and its connection, noted field by field
/// as the head is parsed (most heads carry none of these, so the hot path pays one
/// compare of each name).
#[derive(Debug, Default)]
pub struct Fields {
    length: Option<u64>,
    length_seen: bool,
    /// More than one `Content-Length` field line, or a list in one.
    length_repeated: bool,
    bad_length: bool,
    te_seen: bool,
    /// Transfer codings listed, how many of them are chunked, and whether chunked is last.
    codings: u32,
    chunked: u32,
    last_chunked: bool,
    /// `Host` field lines, and whether one is not a valid host.
    pub hosts: u32,
    pub bad_host: bool,
    /// `Connection: close` / `Connection: keep-alive`.
    pub close: bool,
    pub keep_alive: bool,
    /// `Connection: upgrade`.
    pub upgrade: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `TE: trailers`.
    pub trailers: bool,
}

impl Fields {
    /// Notes one field.
    #[inline]
    pub fn note(&mut self, name: &HeaderName, value: &[u8]) {
        match *name {
            header::CONTENT_LENGTH => {
                self.length_repeated |= self.length_seen || value.contains(&b',');
                self.length_seen = true;
                match parse_length(value) {
                    Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                    _ => self.bad_length = true,
                }
            }
            header::TRANSFER_ENCODING => {
                self.te_seen = true;
                for coding in tokens(value) {
                    self.codings += 1;
                    self.last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                    self.chunked += u32::from(self.last_chunked);
                }
            }
            header::HOST => {
                self.hosts += 1;
                // An empty Host is what a client sends for a target with no authority.
                self.bad_host |= !value.is_empty() && !valid_host(value);
            }
            header::CONNECTION => {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        self.upgrade = true;
                    }
                }
            }
            header::TE => self.trailers |= has_token(value, b"trailers"),
            header::EXPECT => self.expect_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue"),
            _ => {}
        }
    }

    /// Whether the message's `Content-Length` came repeated (the same length more than
    /// once): it is to be sent on as one field.
    pub fn length_repeated(&self) -> bool {
        self.length_repeated
    }

    /// Whether the connection may carry another message after this one, by version and
    /// `Connection` alone.
    pub fn persistent(&self, version: Version) -> bool {
        match version {
            Version::HTTP_10 => self.keep_alive && !self.close,
            _ => !self.close,
        }
    }
}

/// The framing of a request body (RFC 9112 §6.3, strictly: every ambiguity is an error
/// of the client's).
pub fn request(version: Version, f: &Fields) -> Result<Framing, Error> {
    let invalid = |why| Err(Error::client(Kind::Invalid(why)));
    if f.te_seen {
        if version == Version::HTTP_10 {
            return invalid("transfer-encoding in an HTTP/1.0 request");
        }
        if f.length_seen {
            return invalid("both content-length and transfer-encoding");
        }
        if !f.last_chunked {
            return invalid("transfer-encoding does not end in chunked");
        }
        if f.chunked > 1 {
            return invalid("chunked applied more than once");
        }
        if f.codings > 1 {
            return Err(Error::client(Kind::Unsupported("only chunked is")));
        }
        return Ok(Framing::Chunked);
    }
    if f.bad_length {
        return invalid("invalid or differing content-length");
    }
    Ok(match f.length {
        None | Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

/// What a response's head says about its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFraming {
    pub framing: Framing,
    /// The connection may carry another exchange afterwards (by framing; `Connection`
    /// and version are the caller's to add).
    pub reusable: bool,
    /// `Content-Length` must be dropped from the head: `Transfer-Encoding` overrides it.
    pub drop_length: bool,
}

/// The framing of a response body to a request (`to`; RFC 9112 §6.3, as a recipient must
/// read it; what cannot be read is an error of the upstream's).
pub fn response(to: Requested, status: StatusCode, version: Version, f: &Fields) -> Result<ResponseFraming, Error> {
    let framed = |framing, reusable| Ok(ResponseFraming { framing, reusable, drop_length: false });
    if to.head || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return framed(Framing::None, true);
    }
    // A tunnel starts right after the head: no body, and the connection is not HTTP any more.
    if to.connect && status.is_success() {
        return framed(Framing::None, false);
    }
    let invalid = |why| Err(Error::upstream(Kind::Invalid(why)));
    if f.te_seen {
        if version == Version::HTTP_10 {
            return invalid("transfer-encoding in an HTTP/1.0 response");
        }
        if f.chunked > 1 {
            return invalid("chunked applied more than once");
        }
        let framing = if f.last_chunked { Framing::Chunked } else { Framing::Close };
        // Both framings: chunked wins, the length goes, and the connection is not trusted.
        return Ok(ResponseFraming {
            framing,
            reusable: framing == Framing::Chunked && !f.length_seen,
            drop_length: f.length_seen,
        });
    }
    if f.bad_length {
        return invalid("invalid or differing content-length");
    }
    match f.length {
        Some(0) => framed(Framing::None, true),
        Some(n) => framed(Framing::Length(n), true),
        None => framed(Framing::Close, false),
    }
}

/// The one `Content-Length` parser: a field value that is a decimal length, or a list of
/// the same length repeated (RFC 9110 §8.6); `None` for anything else (empty, signed,
/// non-digits, over 19 digits, differing members).
pub fn parse_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for member in value.split(|&b| b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() || member.len() > 19 {
            return None;
        }
        let n = member.iter().try_fold(0u64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0')))?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// `Content-Length` fields that are malformed or disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid or differing content-length")]
pub struct BadLength;

/// The length every `Content-Length` field of `headers` agrees on (`Ok(None)` without
/// one).
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, BadLength> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let n = parse_length(value.as_bytes()).ok_or(BadLength)?;
        if length.is_some_and(|l| l != n) {
            return Err(BadLength);
        }
        length = Some(n);
    }
    Ok(length)
}

/// Replaces every `Content-Length` field of `headers` by one saying `n` (a length that
/// came repeated goes on once).
pub fn set_length(headers: &mut HeaderMap, n: u64) {
    headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(n));
}

/// The octets of a reg-name or IPv4 address (RFC 3986 §3.2.2: unreserved, pct-encoded and
/// sub-delims), as a table: a `Host` is checked on every request.
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&')
            || matches!(c, b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=');
        b += 1;
    }
    t
};

/// A `Host` value's host and port (RFC 9110 §7.2: `uri-host [ ":" port ]`), or `None` when
/// it is not one. Checked in place, in one pass: no allocation on the request path.
pub fn host(v: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let end = if v.first() == Some(&b'[') {
        let end = v.iter().position(|&b| b == b']')?;
        let literal = &v[1..end];
        if literal.is_empty() || !literal.iter().all(|&b| b.is_ascii_hexdigit() || b":.vV%-_~".contains(&b)) {
            return None;
        }
        end + 1
    } else {
        v.iter().position(|&b| !REG_NAME[usize::from(b)]).unwrap_or(v.len())
    };
    let name = &v[..end];
    let port = match &v[end..] {
        [] | [b':'] => None,
        [b':', digits @ ..] if digits.len() <= 5 => {
            let mut n = 0u32;
            for &d in digits {
                if !d.is_ascii_digit() {
                    return None;
                }
                n = n * 10 + u32::from(d - b'0');
            }
            Some(u16::try_from(n).ok()?)
        }
        _ => return None,
    };
    (!name.is_empty()).then_some((name, port))
}

thread_local! {
    /// The last `Host` value this thread found valid: keep-alive clients send the same one
    /// on every request, and comparing is cheaper than checking again.
    static VALID_HOST: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `value` is a valid `Host` (see [`host`]).
fn valid_host(value: &[u8]) -> bool {
    VALID_HOST.with_borrow_mut(|last| {
        if last.as_slice() == value {
            return true;
        }
        let ok = host(value).is_some();
        if ok && value.len() <= 255 {
            last.clear();
            last.extend_from_slice(value);
        }
        ok
    })
}

/// The non-empty, trimmed members of a comma-separated field value.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// Whether a comma-separated field value lists `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

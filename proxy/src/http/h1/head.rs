//! Parsing heads with `httparse`, both directions: a request head at the front of the
//! server's read buffer, a response head at the front of the client's. Field values and
//! the request target are slices of the buffer (no copies); the fields' framing is noted
//! in the same pass (`framing::Fields`). The server's maps come from the per-thread stock
//! with room for the forwarding headers the proxy adds.

use super::error::{Error, Kind};
use super::framing::{self, Fields, Framing, ResponseFraming};
use super::{MAX_HEADERS, MAX_URI_LEN};
use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

/// The largest upstream response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024 - 1;

/// A parsed request head and what the connection must know about it.
#[derive(Debug)]
pub struct RequestHead<B> {
    /// Method, target, version and fields, with an empty body (`B::default()`) that the
    /// server replaces when the framing says there is one.
    pub req: Request<B>,
    pub framing: Framing,
    /// The connection closes after this exchange (`Connection: close`, or HTTP/1.0
    /// without keep-alive).
    pub close: bool,
    /// The client accepts trailers (`TE: trailers`).
    pub trailers: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// `Connection` lists `upgrade`: the request may ask to switch protocols (only such
    /// requests pay for the `Upgrade` lookup).
    pub upgrade: bool,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Each field's name and value range in the head being parsed: the server's scratch,
/// kept per thread and reused by every request.
pub type Scratch = Vec<(HeaderName, u32, u32)>;

/// Parses the request head at the front of `buf`, taking it off the buffer; `Ok(None)` if
/// the head is not whole yet. An error means the request is the client's mistake: the
/// connection answers it and closes. `scratch` holds the fields between the two passes.
pub fn request<B: Default>(buf: &mut BytesMut, scratch: &mut Scratch) -> Result<Option<RequestHead<B>>, Error> {
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::client(Kind::TooManyHeaders)),
        Err(e) => return Err(Error::client(Kind::Parse(e))),
    };
    let bad = |why| Error::client(Kind::Invalid(why));
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else { return Err(bad("no request line")) };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("invalid method"))?;
    if target.len() > MAX_URI_LEN {
        return Err(Error::client(Kind::UriTooLong));
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let target = (offset(target.as_bytes()), offset(target.as_bytes()) + target.len() as u32);
    scratch.clear();
    let mut fields = Fields::default();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("invalid field name"))?;
        fields.note(&name, h.value);
        let start = offset(h.value);
        scratch.push((name, start, start + h.value.len() as u32));
    }
    let framing = framing::request(version, &fields)?;
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0 as usize..target.1 as usize))
        .map_err(|_| bad("invalid request target"))?;
    check_target(&method, &uri)?;
    // RFC 9112 §3.2: one Host, and one at all in HTTP/1.1 unless the target is absolute
    // (its authority then wins); checked here, as the fields are read.
    if fields.hosts > 1 {
        return Err(Error::client(Kind::Host("more than one Host field")));
    }
    if fields.bad_host {
        return Err(Error::client(Kind::Host("invalid Host")));
    }
    if fields.hosts == 0 && version == Version::HTTP_11 && uri.authority().is_none() {
        return Err(Error::client(Kind::Host("an HTTP/1.1 request without Host")));
    }
    // Room for the forwarding headers `prepare_request` adds: growing the map (a new
    // table and a rehash) was ~5% of the proxy's user time.
    let mut headers = crate::http::header_maps::take(scratch.len() + crate::http::headers::ADDED_TO_REQUESTS);
    for (name, start, end) in scratch.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(start as usize..end as usize))
            .map_err(|_| bad("invalid field value"))?;
        headers.append(name, value);
    }
    if fields.length_repeated() {
        let n = if let Framing::Length(n) = framing { n } else { 0 };
        framing::set_length(&mut headers, n);
    }
    let mut req = Request::new(B::default());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some(RequestHead {
        req,
        framing,
        close: !fields.persistent(version),
        trailers: fields.trailers,
        // HTTP/1.0 has no 100 Continue (RFC 9110 §10.1.1).
        expect_continue: fields.expect_continue && framing != Framing::None && version == Version::HTTP_11,
        upgrade: fields.upgrade,
    }))
}

/// The request-target forms RFC 9112 §3.2 allows: authority-form only for CONNECT (and
/// CONNECT only so), asterisk-form only for OPTIONS.
fn check_target(method: &Method, uri: &Uri) -> Result<(), Error> {
    let bad = |why| Err(Error::client(Kind::Invalid(why)));
    let authority_form = uri.scheme().is_none() && uri.authority().is_some();
    if (*method == Method::CONNECT) != authority_form {
        return bad("authority-form target is for CONNECT only");
    }
    if uri.path() == "*" && *method != Method::OPTIONS {
        return bad("asterisk-form target is for OPTIONS only");
    }
    Ok(())
}

/// What a response's framing depends on in its request (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requested {
    /// A HEAD request: no body, whatever the head says.
    pub head: bool,
    /// A CONNECT: a 2xx answer starts a tunnel.
    pub connect: bool,
}

impl Requested {
    pub fn new(method: &Method) -> Self {
        Self { head: *method == Method::HEAD, connect: *method == Method::CONNECT }
    }
}

/// Parses a response to a request (as `to` says) from the front of `buf`, taking it off
/// the buffer; `Ok(None)` if incomplete. Interim (1xx) responses come back like any other.
pub fn response(buf: &mut BytesMut, to: Requested) -> Result<Option<ResponseHead>, Error> {
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let bad = |kind| Error::upstream(kind);
    let status = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut raw);
    let len = match status {
        Ok(httparse::Status::Complete(len)) if len <= MAX_RESPONSE_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => return Ok(None),
        Ok(_) => return Err(bad(Kind::HeadTooLarge(MAX_RESPONSE_HEAD))),
        Err(httparse::Error::TooManyHeaders) => return Err(bad(Kind::TooManyHeaders)),
        Err(e) => return Err(bad(Kind::Parse(e))),
    };
    let status =
        StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|_| bad(Kind::Invalid("invalid status code")))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Offsets into the head (at most MAX_RESPONSE_HEAD bytes, so they fit in u16): names
    // are made after the head is split off, as the map is built.
    let base = buf.as_ptr() as usize;
    let mut idx = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let off = |s: &[u8]| ((s.as_ptr() as usize - base) as u16, (s.as_ptr() as usize - base + s.len()) as u16);
    for (slot, h) in idx.iter_mut().zip(parsed.headers.iter()) {
        let ((n0, n1), (v0, v1)) = (off(h.name.as_bytes()), off(h.value));
        *slot = (n0, n1, v0, v1);
    }
    let count = parsed.headers.len();
    let head = buf.split_to(len).freeze();
    let mut headers = crate::http::header_maps::take(count);
    let mut fields = Fields::default();
    for &(n0, n1, v0, v1) in &idx[..count] {
        let (n0, n1, v0, v1) = (usize::from(n0), usize::from(n1), usize::from(v0), usize::from(v1));
        let name = HeaderName::from_bytes(&head[n0..n1]).map_err(|_| bad(Kind::Invalid("invalid field name")))?;
        fields.note(&name, &head[v0..v1]);
        let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
            .map_err(|_| bad(Kind::Invalid("invalid field value")))?;
        headers.append(name, value);
    }
    let ResponseFraming { framing, reusable, drop_length } = framing::response(to, status, version, &fields)?;
    if drop_length {
        headers.remove(http::header::CONTENT_LENGTH);
    } else if fields.length_repeated() {
        let n = framing::parse_length(headers[http::header::CONTENT_LENGTH].as_bytes()).unwrap_or(0);
        framing::set_length(&mut headers, n);
    }
    let keep_alive = reusable && fields.persistent(version);
    Ok(Some(ResponseHead { status, version, headers, framing, keep_alive }))
}

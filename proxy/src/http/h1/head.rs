//! Parsing heads with `httparse`, both directions: a request head at the front of the
//! server's read buffer, a response head at the front of the client's. Field values and
//! the request target are slices of the buffer (no copies); the fields' framing is noted
//! in the same pass (`framing::Fields`). The server's maps come from the per-thread stock
//! with room for the forwarding headers the proxy adds.

use super::error::{Error, Kind};
use super::framing::{self, Fields, Framing, ResponseFraming};
use super::{MAX_HEADERS, MAX_URI_LEN};
use crate::http::fault::Side;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// The largest upstream response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024 - 1;

/// A parsed request head and what the connection must know about it.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and fields; the body is the server's to attach.
    pub req: Request<()>,
    pub framing: Framing,
    /// The connection closes after this exchange (`Connection: close`, or HTTP/1.0
    /// without keep-alive).
    pub close: bool,
    /// The client accepts trailers (`TE: trailers`).
    pub trailers: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
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

thread_local! {
    /// Each field's name and value range in the head being parsed.
    static SCRATCH: RefCell<Vec<(HeaderName, u32, u32)>> = const { RefCell::new(Vec::new()) };
}

/// Parses the request head at the front of `buf`, taking it off the buffer; `Ok(None)` if
/// the head is not whole yet. An error leaves the buffer as it was: the request is the
/// client's mistake and the connection answers it and closes.
pub fn request(buf: &mut BytesMut) -> Result<Option<RequestHead>, Error> {
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
    let fields = SCRATCH.with_borrow_mut(|scratch| note_fields(scratch, parsed.headers, base, Side::Client))?;
    let framing = framing::request(version, &fields)?;
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0 as usize..target.1 as usize))
        .map_err(|_| bad("invalid request target"))?;
    check_target(&method, &uri)?;
    // Room for the forwarding headers `prepare_request` adds: growing the map (a new
    // table and a rehash) was ~5% of the proxy's user time.
    let extra = crate::http::headers::ADDED_TO_REQUESTS;
    let mut headers = SCRATCH.with_borrow_mut(|scratch| fields_map(&head, scratch, extra, Side::Client))?;
    if fields.length_repeated() {
        let n = if let Framing::Length(n) = framing { n } else { 0 };
        framing::set_length(&mut headers, n);
    }
    let mut req = Request::new(());
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
    }))
}

/// Notes each field's name and value range (offsets from `base`, the buffer's start) in
/// `scratch`, and what they say about framing.
fn note_fields(
    scratch: &mut Vec<(HeaderName, u32, u32)>,
    parsed: &[httparse::Header<'_>],
    base: usize,
    side: Side,
) -> Result<Fields, Error> {
    scratch.clear();
    let mut fields = Fields::default();
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Error::new(side, Kind::Invalid("invalid field name")))?;
        fields.note(&name, h.value);
        let start = (h.value.as_ptr() as usize - base) as u32;
        scratch.push((name, start, start + h.value.len() as u32));
    }
    Ok(fields)
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

/// The fields noted in `scratch`, as a map sharing `head` (room for `extra` more).
fn fields_map(
    head: &Bytes,
    scratch: &mut Vec<(HeaderName, u32, u32)>,
    extra: usize,
    side: Side,
) -> Result<HeaderMap, Error> {
    let mut map = crate::http::header_maps::take(scratch.len() + extra);
    for (name, start, end) in scratch.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(start as usize..end as usize))
            .map_err(|_| Error::new(side, Kind::Invalid("invalid field value")))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Parses a response to a `method` request from the front of `buf`, taking it off the
/// buffer; `Ok(None)` if incomplete. Interim (1xx) responses come back like any other.
pub fn response(buf: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, Error> {
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
    let base = buf.as_ptr() as usize;
    let fields = SCRATCH.with_borrow_mut(|scratch| note_fields(scratch, parsed.headers, base, Side::Upstream))?;
    let ResponseFraming { framing, reusable, drop_length } = framing::response(method, status, version, &fields)?;
    let head = buf.split_to(len).freeze();
    let mut headers = SCRATCH.with_borrow_mut(|scratch| fields_map(&head, scratch, 0, Side::Upstream))?;
    if drop_length {
        headers.remove(http::header::CONTENT_LENGTH);
    } else if fields.length_repeated() {
        let n = framing::parse_length(headers[http::header::CONTENT_LENGTH].as_bytes()).unwrap_or(0);
        framing::set_length(&mut headers, n);
    }
    let keep_alive = reusable && fields.persistent(version);
    Ok(Some(ResponseHead { status, version, headers, framing, keep_alive }))
}

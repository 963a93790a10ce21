//! Request heads: parses the front of the read buffer with `httparse` into an
//! `http::Request<ClientBody::Empty>`, and decides whether the fast path may serve it. It
//! serves only HTTP/1.1 requests without a body, `Upgrade`, `Expect` or CONNECT; for anything
//! else, malformed heads included, the buffer is left as it was and hyper takes over.

use crate::http::body::ClientBody;
use crate::http::wire;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use std::mem::MaybeUninit;

/// The most header lines in a head, as hyper allows (more is a 431, from hyper).
pub const MAX_HEADERS: usize = 100;

/// Longest request target hyper accepts (beyond it hyper answers 414).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// What the front of the buffer holds.
// Moved once per request; boxing the head would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request for the fast path; its head was taken off the buffer.
    Ready(Head),
    /// A request the fast path does not serve (or a malformed one): the buffer is untouched,
    /// hyper gets it.
    Fallback,
}

/// A parsed request and what the connection must know about it.
#[derive(Debug)]
pub struct Head {
    pub req: Request<ClientBody>,
    /// The client sent `Connection: close`.
    pub close: bool,
    /// The client accepts trailers (`TE: trailers`).
    pub trailers: bool,
    /// A HEAD request: the response has no body.
    pub head: bool,
}

/// Scratch space reused across requests: each header's name and value range in the head.
pub type Scratch = Vec<(HeaderName, usize, usize)>;

/// Parses the head at the front of `buf`.
pub fn parse(buf: &mut BytesMut, scratch: &mut Scratch) -> Parsed {
    scratch.clear();
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Fallback,
    };
    if req.version != Some(1) {
        return Parsed::Fallback;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else { return Parsed::Fallback };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::Fallback };
    if method == Method::CONNECT || path.len() > MAX_URI_LEN {
        return Parsed::Fallback;
    }
    let base = buf.as_ptr() as usize;
    let path = (path.as_ptr() as usize - base, path.as_ptr() as usize - base + path.len());
    let (mut close, mut trailers, mut length) = (false, false, false);
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else { return Parsed::Fallback };
        match name {
            header::CONTENT_LENGTH if !length && h.value == b"0" => length = true,
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::UPGRADE | header::EXPECT => {
                return Parsed::Fallback;
            }
            header::CONNECTION => {
                for token in wire::tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return Parsed::Fallback;
                    }
                }
            }
            header::TE => trailers |= wire::has_token(h.value, b"trailers"),
            _ => {}
        }
        let start = h.value.as_ptr() as usize - base;
        scratch.push((name, start, start + h.value.len()));
    }

    let bytes = buf.split_to(len).freeze();
    match build(&bytes, method, path, scratch) {
        Some(req) => {
            let head = req.method() == Method::HEAD;
            Parsed::Ready(Head { req, close, trailers, head })
        }
        None => {
            // Put the head back in front of what follows it, for hyper.
            let mut whole = BytesMut::with_capacity(bytes.len() + buf.len());
            whole.extend_from_slice(&bytes);
            whole.extend_from_slice(buf);
            *buf = whole;
            Parsed::Fallback
        }
    }
}

/// The request, its target and header values sharing `bytes` (no copies).
fn build(bytes: &Bytes, method: Method, path: (usize, usize), scratch: &mut Scratch) -> Option<Request<ClientBody>> {
    let uri = Uri::from_maybe_shared(bytes.slice(path.0..path.1)).ok()?;
    // Room for the forwarding headers `prepare_request` adds: growing the map (a new table
    // and a rehash) was ~5% of the proxy's user time.
    let mut map = crate::http::header_maps::take(scratch.len() + crate::http::headers::ADDED_TO_REQUESTS);
    for (name, start, end) in scratch.drain(..) {
        let value = HeaderValue::from_maybe_shared(bytes.slice(start..end)).ok()?;
        map.append(name, value);
    }
    let mut req = Request::new(ClientBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = map;
    Some(req)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse_str(s: &str) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(s.as_bytes());
        let p = parse(&mut buf, &mut Vec::new());
        (p, buf)
    }

    fn ready(p: Parsed) -> Head {
        match p {
            Parsed::Ready(h) => h,
            other => panic!("not ready: {other:?}"),
        }
    }

    #[test]
    fn origin_form_get() {
        let (p, rest) = parse_str("GET /a?b=1 HTTP/1.1\r\nHost: x.test\r\nX-Two: 1\r\nx-two: 2\r\n\r\n");
        let h = ready(p);
        assert!(rest.is_empty());
        assert_eq!(h.req.method(), Method::GET);
        assert_eq!(h.req.uri().path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(h.req.version(), Version::HTTP_11);
        assert_eq!(h.req.headers()["host"], "x.test");
        let two: Vec<_> = h.req.headers().get_all("X-TWO").iter().collect();
        assert_eq!(two, ["1", "2"]);
        assert!(!h.close && !h.trailers && !h.head);
    }

    #[test]
    fn absolute_form_and_flags() {
        let (p, _) = parse_str(
            "HEAD http://api.test:8080/x HTTP/1.1\r\nConnection: keep-alive, Close\r\nTE: trailers\r\nContent-Length: 0\r\n\r\n",
        );
        let h = ready(p);
        assert_eq!(h.req.uri().host(), Some("api.test"));
        assert_eq!(h.req.uri().port_u16(), Some(8080));
        assert!(h.close && h.trailers && h.head);
    }

    #[test]
    fn partial_then_pipelined() {
        let mut buf = BytesMut::from(&b"GET /1 HTTP/1.1\r\nHost: x\r\n"[..]);
        let mut scratch = Vec::new();
        assert!(matches!(parse(&mut buf, &mut scratch), Parsed::Partial));
        buf.extend_from_slice(b"\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HT");
        assert_eq!(ready(parse(&mut buf, &mut scratch)).req.uri().path(), "/1");
        assert_eq!(ready(parse(&mut buf, &mut scratch)).req.uri().path(), "/2");
        assert!(matches!(parse(&mut buf, &mut scratch), Parsed::Partial));
        assert_eq!(&buf[..], b"GET /3 HT");
    }

    #[test]
    fn others_go_to_hyper_untouched() {
        for head in [
            "POST /u HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /u HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET /u HTTP/1.0\r\n\r\n",
            "GET /u HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET /u HTTP/1.1\r\nConnection: Upgrade\r\n\r\n",
            "PUT /u HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "CONNECT x.test:443 HTTP/1.1\r\n\r\n",
            "BAD LINE\r\n\r\n",
            "GET /u HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET /u HTTP/1.1\r\nx: \x01\r\n\r\n",
        ] {
            let (p, rest) = parse_str(head);
            assert!(matches!(p, Parsed::Fallback), "{head:?}: {p:?}");
            assert_eq!(&rest[..], head.as_bytes(), "{head:?}");
        }
    }

    #[test]
    fn too_many_headers_go_to_hyper() {
        let mut head = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            head.push_str(&format!("x-{i}: y\r\n"));
        }
        let (p, _) = parse_str(&head);
        assert!(matches!(p, Parsed::Fallback));
        let ok = format!("GET / HTTP/1.1\r\n{}\r\n", "x: y\r\n".repeat(MAX_HEADERS));
        assert_eq!(ready(parse_str(&ok).0).req.headers().len(), MAX_HEADERS);
    }
}

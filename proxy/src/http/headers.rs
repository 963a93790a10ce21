//! Header rewriting between client and upstream: hop-by-hop headers out, forwarding
//! headers (`x-forwarded-for`, `x-forwarded-proto`, `x-request-id`, `traceparent`) in, the
//! route's rules applied, and the request target reshaped for the upstream's HTTP version.

use crate::upstream::Wire;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Version};
use std::net::IpAddr;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
/// `TE: trailers` is end-to-end in practice (gRPC needs it) and is kept.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names first: most requests and responses carry none of these.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| crate::http::h1::framing::tokens(v.as_bytes()))
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .collect();
    h.remove(header::CONNECTION);
    for name in listed {
        // The hop count is the proxies' own: a client cannot have it dropped (and the
        // loop guard skipped) by listing it in `Connection`.
        if name != header::TE && name != crate::http::forward::HOPS_HEADER {
            h.remove(name);
        }
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &header::TRANSFER_ENCODING, &header::UPGRADE, &header::TRAILER] {
        h.remove(name);
    }
    if let Some(te) = h.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        h.remove(header::TE);
    }
}

/// Whether `k` is a hop-by-hop header (those HTTP/2 forbids among them).
pub(crate) fn is_hop_by_hop(k: &HeaderName) -> bool {
    k == header::CONNECTION
        || k == header::TRANSFER_ENCODING
        || k == header::TE
        || k == header::UPGRADE
        || k == header::TRAILER
        || k == KEEP_ALIVE
        || k == PROXY_CONNECTION
}

/// Who is on the other side of the downstream connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ip: IpAddr,
    pub tls: bool,
    /// `ip` as a header value, made once per connection for `x-forwarded-for`.
    ip_value: HeaderValue,
}

impl Peer {
    pub fn new(ip: IpAddr, tls: bool) -> Self {
        let ip_value = HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { ip, tls, ip_value }
    }
}

/// How many headers the proxy may add to a request on its way: `x-trellis-hops` (the loop
/// guard, `forward`) and what [`prepare_request`] adds (x-forwarded-for, x-forwarded-proto,
/// x-request-id, traceparent, host).
pub const ADDED_TO_REQUESTS: usize = 6;

/// Rewrites a downstream request in place for forwarding to an upstream over `wire`.
pub fn prepare_request<B>(req: &mut Request<B>, peer: &Peer, wire: Wire) {
    // `forward::route_for` made room for what is added below (ADDED_TO_REQUESTS).
    let h = req.headers_mut();
    strip_hop_by_hop(h);

    // Entries: one lookup per header whether it is there or not.
    match h.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(peer.ip_value.clone());
        }
        // Several x-forwarded-for lines are one list (RFC 9110 §5.3): keep the whole chain.
        Entry::Occupied(mut e) => {
            let mut chain = e.iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(", ");
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            chain.push_str(peer.ip_value.to_str().unwrap_or(""));
            if let Ok(v) = HeaderValue::try_from(chain) {
                e.insert(v);
            }
        }
    }
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if peer.tls { "https" } else { "http" }));
    if let Entry::Vacant(e) = h.entry(&X_REQUEST_ID) {
        e.insert(request_id(fastrand::u128(..)));
    }
    if let Entry::Vacant(e) = h.entry(&TRACEPARENT) {
        e.insert(traceparent(fastrand::u128(1..), fastrand::u64(1..)));
    }

    set_form(req, wire);
}

/// Puts `req` in `wire`'s form: HTTP/1.1 with `Host` and an origin-form target, or
/// HTTP/2 with `:authority` (also used when an endpoint's ALPN decides the version after
/// [`prepare_request`] ran, `upstream::pool`).
#[inline]
pub fn set_form<B>(req: &mut Request<B>, wire: Wire) {
    // Parsed only when needed: an HTTP/1.1 request with a Host header keeps it as it is.
    let authority = |req: &Request<B>| -> Option<Authority> {
        req.uri()
            .authority()
            .cloned()
            .or_else(|| req.headers().get(header::HOST).and_then(|v| Authority::try_from(v.as_bytes()).ok()))
    };
    let path = |req: &Request<B>| req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    match wire {
        Wire::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            // The request target's authority (absolute-form, or h2's :authority) wins over a
            // Host header (RFC 9112 §3.2.2); otherwise Host is kept as sent.
            if (req.uri().authority().is_some() || !req.headers().contains_key(header::HOST))
                && let Some(v) = authority(req).and_then(|a| HeaderValue::try_from(a.as_str()).ok())
            {
                req.headers_mut().insert(header::HOST, v);
            }
            if req.uri().scheme().is_some() {
                *req.uri_mut() = Uri::from(path(req));
            }
            // h2 may split cookies into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
            let h = req.headers_mut();
            if h.get_all(header::COOKIE).iter().nth(1).is_some() {
                let joined =
                    h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join("; ");
                if let Ok(v) = HeaderValue::try_from(joined) {
                    h.insert(header::COOKIE, v);
                }
            }
        }
        Wire::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = authority(req);
            parts.path_and_query = Some(path(req));
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
                // :authority carries it now.
                req.headers_mut().remove(header::HOST);
            }
        }
    }
}

/// Rewrites an upstream response's headers for the client.
pub fn prepare_response(h: &mut HeaderMap) {
    strip_hop_by_hop(h);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn hex_into(out: &mut Vec<u8>, mut v: u128, digits: usize) {
    let start = out.len();
    out.resize(start + digits, b'0');
    for i in (0..digits).rev() {
        out[start + i] = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// A value made for this request only. Marked sensitive so HTTP/2 sends it as a
/// never-indexed literal: entering it in the HPACK tables of both peers would only evict
/// entries that do repeat (and cost a table insert on each side).
pub(crate) fn unique_value(out: Vec<u8>) -> HeaderValue {
    let mut v =
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).unwrap_or_else(|_| HeaderValue::from_static("0"));
    v.set_sensitive(true);
    v
}

/// A random UUID-v4-shaped request id.
fn request_id(r: u128) -> HeaderValue {
    let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut out = Vec::with_capacity(36);
    hex_into(&mut out, r >> 96, 8);
    out.push(b'-');
    hex_into(&mut out, (r >> 80) & 0xffff, 4);
    out.push(b'-');
    hex_into(&mut out, (r >> 64) & 0xffff, 4);
    out.push(b'-');
    hex_into(&mut out, (r >> 48) & 0xffff, 4);
    out.push(b'-');
    hex_into(&mut out, r & 0xffff_ffff_ffff, 12);
    unique_value(out)
}

/// A W3C trace context starting a new sampled trace.
fn traceparent(trace: u128, span: u64) -> HeaderValue {
    crate::trace::context::format(trace, span, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["te", "x-keep"]);
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key(header::TE));
    }

    #[test]
    fn request_gets_forwarding_headers_and_h2_target() {
        let mut req =
            Request::get("/a?b=1").header("host", "svc:80").header("x-forwarded-for", "10.0.0.1").body(()).unwrap();
        prepare_request(&mut req, &Peer::new("127.0.0.9".parse().unwrap(), false), Wire::Http2);
        assert_eq!(req.uri().to_string(), "http://svc:80/a?b=1");
        assert!(req.headers().get(header::HOST).is_none());
        assert_eq!(req.headers()["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(req.headers()["x-forwarded-proto"], "http");
        assert_eq!(req.headers()["x-request-id"].len(), 36);
        assert_eq!(req.headers()["traceparent"].len(), 55);
    }

    #[test]
    fn h2_request_to_h1_gets_host_and_origin_form() {
        let mut req = Request::get("http://svc.local/p").header("x-request-id", "keep").body(()).unwrap();
        prepare_request(&mut req, &Peer::new("::1".parse().unwrap(), true), Wire::Http1);
        assert_eq!(req.uri().to_string(), "/p");
        assert_eq!(req.headers()[header::HOST], "svc.local");
        assert_eq!(req.headers()["x-request-id"], "keep");
        assert_eq!(req.headers()["x-forwarded-proto"], "https");
    }

    #[test]
    fn the_room_reserved_takes_every_added_header_without_growing_the_map() {
        // As h2's decoder sizes a map: exactly the client's fields, no room to spare.
        let mut req = Request::get("http://svc.local/p").body(()).unwrap();
        *req.headers_mut() = HeaderMap::with_capacity(2);
        req.headers_mut().insert(header::USER_AGENT, HeaderValue::from_static("h2load"));
        req.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        req.headers_mut().reserve(ADDED_TO_REQUESTS);
        let room = req.headers().capacity();
        req.headers_mut().insert(crate::http::forward::HOPS_HEADER, HeaderValue::from_static("1"));
        prepare_request(&mut req, &Peer::new("127.0.0.9".parse().unwrap(), false), Wire::Http1);
        assert_eq!(req.headers().len(), 2 + ADDED_TO_REQUESTS, "every header the proxy adds is counted");
        assert_eq!(req.headers().capacity(), room, "added without growing the map");
    }

    #[test]
    fn ids_are_well_formed() {
        let id = request_id(u128::MAX);
        // Never indexed by HPACK: unique per request.
        assert!(id.is_sensitive() && traceparent(1, 2).is_sensitive());
        let s = id.to_str().unwrap();
        assert_eq!(s.as_bytes()[14], b'4');
        assert_eq!(s.split('-').map(str::len).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
        assert_eq!(traceparent(1, 2).to_str().unwrap(), "00-00000000000000000000000000000001-0000000000000002-01");
    }
}

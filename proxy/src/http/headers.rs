//! Header rewriting between client and upstream: hop-by-hop headers out, forwarding
//! headers (`x-forwarded-for`, `x-forwarded-proto`, `x-request-id`, `traceparent`) in, the
//! route's rules applied, and the request target reshaped for the upstream's HTTP version.

use crate::http::h1::encode::{ExtraLines, header_line};
use crate::upstream::Wire;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Version};
use std::net::IpAddr;

const HOPS: &str = "x-trellis-hops";
const FORWARDED_FOR: &str = "x-forwarded-for";
const FORWARDED_PROTO: &str = "x-forwarded-proto";
const REQUEST_ID: &str = "x-request-id";
const TRACE_CONTEXT: &str = "traceparent";
/// Request header counting the proxies a request has passed (DESIGN §13): each one adds 1,
/// and a listener answers 508 once it has reached `max_hops` (`forward::route_for`).
pub const HOPS_HEADER: HeaderName = HeaderName::from_static(HOPS);
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static(FORWARDED_FOR);
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static(FORWARDED_PROTO);
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID);
pub static TRACEPARENT: HeaderName = HeaderName::from_static(TRACE_CONTEXT);
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
/// `TE: trailers` is end-to-end in practice (gRPC needs it) and is kept.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names first: most requests and responses carry none of these.
    if h.keys().any(is_hop_by_hop) {
        strip_listed(h);
    }
}

/// [`strip_hop_by_hop`] for a map known to hold at least one hop-by-hop field.
fn strip_listed(h: &mut HeaderMap) {
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
        if name != header::TE && name != HOPS_HEADER {
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

/// Whether `k` is one of the fields [`Forwarding`] adds.
pub(crate) fn is_forwarding(k: &HeaderName) -> bool {
    matches!(k.as_str(), HOPS | FORWARDED_FOR | FORWARDED_PROTO | REQUEST_ID | TRACE_CONTEXT)
}

/// Which of the fields the proxy rewrites or checks a request's map holds: one pass over
/// its names, where a lookup of each would hash each name (a custom name's hash is ~100
/// instructions; a lookup of a standard one, ~90 with the probe and the iterator).
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    pub hop_by_hop: bool,
    pub hops: bool,
    pub forwarded_for: bool,
    pub forwarded_proto: bool,
    pub request_id: bool,
    pub traceparent: bool,
    /// A `Host` field (`forward::check_host` looks at an HTTP/2 request's only then).
    pub host: bool,
}

impl Seen {
    pub fn of(h: &HeaderMap) -> Self {
        let mut seen = Self::default();
        for k in h.keys() {
            match k.as_str() {
                "host" => seen.host = true,
                HOPS => seen.hops = true,
                FORWARDED_FOR => seen.forwarded_for = true,
                FORWARDED_PROTO => seen.forwarded_proto = true,
                REQUEST_ID => seen.request_id = true,
                TRACE_CONTEXT => seen.traceparent = true,
                _ => seen.hop_by_hop |= is_hop_by_hop(k),
            }
        }
        seen
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
/// guard) and the forwarding fields (x-forwarded-for, x-forwarded-proto, x-request-id,
/// traceparent), and `host`. Maps are made with this much room: entering the fields one by
/// one must not grow them.
pub const ADDED_TO_REQUESTS: usize = 6;

/// The fields the proxy adds to a request that its client did not send: the hop count,
/// `x-forwarded-for`, `x-forwarded-proto`, `x-request-id` and `traceparent`. They are kept
/// here, beside the request, rather than entered in its header map: the HTTP/1.1 encoder
/// writes them after the map's fields (its [`ExtraLines`]), so a request pays no hash and
/// no table insert for them, and the ids are formatted straight into the head; an HTTP/2
/// upstream's HPACK encoder sends them after the map's fields too ([`Forwarding::fields`]).
/// A request whose route's header rules name one of them, or sent to an upstream whose
/// version is being learned, gets them entered in its map ([`Forwarding::enter`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Forwarding<'a> {
    /// `x-trellis-hops: 1`: the request came with no hop count.
    pub hops: bool,
    /// The peer's address (`Peer::ip_value`).
    pub forwarded_for: Option<&'a HeaderValue>,
    pub forwarded_proto: Option<&'static str>,
    /// The random bits of a new request id ([`request_id`]).
    pub request_id: Option<u128>,
    /// A new sampled trace context: trace and span id.
    pub traceparent: Option<(u128, u64)>,
}

impl Forwarding<'_> {
    /// Enters the fields in `h`, for a request whose fields all go in its map (routes whose
    /// header rules name one of them, an upstream whose version is being learned).
    pub fn enter(&self, h: &mut HeaderMap) {
        for (name, value) in self.fields() {
            h.insert(name, value);
        }
    }

    /// The fields, for an HTTP/2 upstream's encoder to send after the request's own
    /// (`h2::client::SendRequest::send_request_with_fields`, vendor/README.md): entering
    /// them in the map cost ~330 instructions each (a custom name's hash, the insert, and
    /// the encoder draining it again).
    pub fn fields(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(5);
        if self.hops {
            out.push((HOPS_HEADER, HeaderValue::from_static("1")));
        }
        if let Some(v) = self.forwarded_for {
            out.push((X_FORWARDED_FOR.clone(), v.clone()));
        }
        if let Some(v) = self.forwarded_proto {
            out.push((X_FORWARDED_PROTO.clone(), HeaderValue::from_static(v)));
        }
        if let Some(v) = self.request_id() {
            out.push((X_REQUEST_ID.clone(), v));
        }
        if let Some((trace, span)) = self.traceparent {
            out.push((TRACEPARENT.clone(), crate::trace::context::format(trace, span, true)));
        }
        out
    }

    /// The request id this request goes out with, if the proxy made it.
    pub fn request_id(&self) -> Option<HeaderValue> {
        self.request_id.map(|r| unique_value(request_id(r).to_vec()))
    }
}

impl ExtraLines for Forwarding<'_> {
    fn size(&self) -> usize {
        let line = |name: &str, value: usize| name.len() + value + 4;
        let mut n = 0;
        if self.hops {
            n += line(HOPS, 1);
        }
        if let Some(v) = self.forwarded_for {
            n += line(FORWARDED_FOR, v.len());
        }
        if let Some(v) = self.forwarded_proto {
            n += line(FORWARDED_PROTO, v.len());
        }
        if self.request_id.is_some() {
            n += line(REQUEST_ID, 36);
        }
        if self.traceparent.is_some() {
            n += line(TRACE_CONTEXT, 55);
        }
        n
    }

    fn write(&self, out: &mut Vec<u8>) {
        if self.hops {
            header_line(out, HOPS.as_bytes(), b"1");
        }
        if let Some(v) = self.forwarded_for {
            header_line(out, FORWARDED_FOR.as_bytes(), v.as_bytes());
        }
        if let Some(v) = self.forwarded_proto {
            header_line(out, FORWARDED_PROTO.as_bytes(), v.as_bytes());
        }
        if let Some(r) = self.request_id {
            header_line(out, REQUEST_ID.as_bytes(), &request_id(r));
        }
        if let Some((trace, span)) = self.traceparent {
            header_line(out, TRACE_CONTEXT.as_bytes(), &crate::trace::context::write(trace, span, true));
        }
    }
}

/// Rewrites a downstream request in place for forwarding to an upstream over `wire`, and
/// returns the fields to add that its client did not send. `seen` is what [`Seen::of`] found
/// in its map (`forward::route_for` looked, and dealt with the hop count).
pub fn prepare_request<'a, B>(req: &mut Request<B>, peer: &'a Peer, wire: Wire, mut seen: Seen) -> Forwarding<'a> {
    let h = req.headers_mut();
    if seen.hop_by_hop {
        strip_listed(h);
        // A client may list any field in `Connection`: what was there may be gone.
        seen = Seen { hops: seen.hops, ..Seen::of(h) };
    }
    let mut fwd = Forwarding { hops: !seen.hops, ..Forwarding::default() };
    if seen.forwarded_for {
        // Several x-forwarded-for lines are one list (RFC 9110 §5.3): keep the whole chain.
        if let Entry::Occupied(mut e) = h.entry(&X_FORWARDED_FOR) {
            let mut chain = e.iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(", ");
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            chain.push_str(peer.ip_value.to_str().unwrap_or(""));
            if let Ok(v) = HeaderValue::try_from(chain) {
                e.insert(v);
            }
        }
    } else {
        fwd.forwarded_for = Some(&peer.ip_value);
    }
    // The proxy says how the client reached it, whatever the client claimed.
    if seen.forwarded_proto {
        h.remove(&X_FORWARDED_PROTO);
    }
    fwd.forwarded_proto = Some(if peer.tls { "https" } else { "http" });
    if !seen.request_id {
        fwd.request_id = Some(fastrand::u128(..));
    }
    if !seen.traceparent {
        fwd.traceparent = Some((fastrand::u128(1..), fastrand::u64(1..)));
    }
    set_form(req, wire);
    fwd
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
            // Only HTTP/2 and HTTP/3 split cookies (an HTTP/1.1 client sends one field).
            let split_cookies = req.version() >= Version::HTTP_2;
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
            if split_cookies && h.get_all(header::COOKIE).iter().nth(1).is_some() {
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

/// The two hex digits of each byte value: ids are written a byte at a time.
static HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// Fills `out` (an even number of digits) with the low hex digits of `v`, most
/// significant first.
pub(crate) fn hex_into(out: &mut [u8], mut v: u128) {
    debug_assert!(out.len().is_multiple_of(2));
    for pair in out.rchunks_exact_mut(2) {
        pair.copy_from_slice(&HEX_PAIRS[(v & 0xff) as usize]);
        v >>= 8;
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
fn request_id(r: u128) -> [u8; 36] {
    let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut out = [b'-'; 36];
    hex_into(&mut out[..8], r >> 96);
    hex_into(&mut out[9..13], r >> 80);
    hex_into(&mut out[14..18], r >> 64);
    hex_into(&mut out[19..23], r >> 48);
    hex_into(&mut out[24..], r);
    out
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

    /// What `forward` does: look, prepare, and (here) enter the kept-aside fields.
    fn prepared<B>(req: &mut Request<B>, peer: &Peer, wire: Wire) {
        let fwd = prepare_request(req, peer, wire, Seen::of(req.headers()));
        fwd.enter(req.headers_mut());
    }

    #[test]
    fn request_gets_forwarding_headers_and_h2_target() {
        let mut req =
            Request::get("/a?b=1").header("host", "svc:80").header("x-forwarded-for", "10.0.0.1").body(()).unwrap();
        prepared(&mut req, &Peer::new("127.0.0.9".parse().unwrap(), false), Wire::Http2);
        assert_eq!(req.uri().to_string(), "http://svc:80/a?b=1");
        assert!(req.headers().get(header::HOST).is_none());
        assert_eq!(req.headers()["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(req.headers()["x-forwarded-proto"], "http");
        assert_eq!(req.headers()["x-request-id"].len(), 36);
        assert_eq!(req.headers()["traceparent"].len(), 55);
        assert_eq!(req.headers()[HOPS_HEADER], "1");
        // Unique per request: never indexed by HPACK.
        assert!(req.headers()["x-request-id"].is_sensitive() && req.headers()["traceparent"].is_sensitive());
    }

    /// HTTP/2 and HTTP/3 may split `cookie` (RFC 9113 §8.2.3): joined for HTTP/1.1. An
    /// HTTP/1.1 request's lines go as they came (its client sends one), unlooked at.
    #[test]
    fn split_cookies_are_joined_only_for_requests_that_may_split_them() {
        for (version, want) in [
            (Version::HTTP_2, vec!["a=1; b=2"]),
            (Version::HTTP_3, vec!["a=1; b=2"]),
            (Version::HTTP_11, vec!["a=1", "b=2"]),
        ] {
            let mut req =
                Request::get("http://svc/p").header("cookie", "a=1").header("cookie", "b=2").body(()).unwrap();
            *req.version_mut() = version;
            set_form(&mut req, Wire::Http1);
            let got: Vec<_> = req.headers().get_all(header::COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
            assert_eq!(got, want, "{version:?}");
        }
    }

    #[test]
    fn seen_notes_a_host_field() {
        let with = Request::get("/").header("Host", "svc").body(()).unwrap();
        assert!(Seen::of(with.headers()).host);
        assert!(!Seen::of(Request::get("http://svc/").body(()).unwrap().headers()).host);
    }

    #[test]
    fn h2_request_to_h1_gets_host_and_origin_form() {
        let mut req = Request::get("http://svc.local/p").header("x-request-id", "keep").body(()).unwrap();
        prepared(&mut req, &Peer::new("::1".parse().unwrap(), true), Wire::Http1);
        assert_eq!(req.uri().to_string(), "/p");
        assert_eq!(req.headers()[header::HOST], "svc.local");
        assert_eq!(req.headers()["x-request-id"], "keep");
        assert_eq!(req.headers()["x-forwarded-proto"], "https");
    }

    #[test]
    fn kept_aside_fields_are_only_those_the_client_did_not_send() {
        // The client's own proto is replaced, its id, trace context and hop count kept; a
        // field it listed in `Connection` is gone, and the proxy's own takes its place.
        let mut req = Request::get("/")
            .header("host", "svc")
            .header("x-forwarded-proto", "https")
            .header("x-trellis-hops", "2")
            .header("traceparent", "00-00000000000000000000000000000abc-0000000000000012-01")
            .header("x-request-id", "listed")
            .header("connection", "x-request-id")
            .body(())
            .unwrap();
        let seen = Seen::of(req.headers());
        assert!(seen.hop_by_hop && seen.hops && seen.forwarded_proto && seen.request_id && seen.traceparent);
        let peer = Peer::new("127.0.0.9".parse().unwrap(), false);
        let fwd = prepare_request(&mut req, &peer, Wire::Http1, seen);
        let h = req.headers();
        assert!(
            h.get("x-forwarded-proto").is_none() && h.get("x-request-id").is_none() && h.get("connection").is_none()
        );
        assert_eq!((h["x-trellis-hops"].as_bytes(), h["traceparent"].len()), (b"2".as_slice(), 55));
        let mut lines = Vec::new();
        fwd.write(&mut lines);
        assert_eq!(lines.len(), fwd.size());
        let lines = String::from_utf8(lines).unwrap();
        let names: Vec<_> = lines.lines().map(|l| l.split_once(": ").unwrap().0).collect();
        assert_eq!(names, ["x-forwarded-for", "x-forwarded-proto", "x-request-id"], "{lines}");
        assert!(lines.starts_with("x-forwarded-for: 127.0.0.9\r\nx-forwarded-proto: http\r\nx-request-id: "));
        assert_eq!(
            lines.len(),
            "x-forwarded-for: 127.0.0.9\r\nx-forwarded-proto: http\r\nx-request-id: \r\n".len() + 36
        );
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
        prepared(&mut req, &Peer::new("127.0.0.9".parse().unwrap(), false), Wire::Http1);
        assert_eq!(req.headers().len(), 2 + ADDED_TO_REQUESTS, "every header the proxy adds is counted");
        assert_eq!(req.headers().capacity(), room, "added without growing the map");
    }

    #[test]
    fn ids_are_well_formed() {
        let id = request_id(u128::MAX);
        let s = std::str::from_utf8(&id).unwrap();
        assert_eq!(s.as_bytes()[14], b'4');
        assert_eq!(s.split('-').map(str::len).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
        assert!(s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        assert_eq!(&request_id(0)[..], b"00000000-0000-4000-8000-000000000000");
        let tp = crate::trace::context::write(1, 2, true);
        assert_eq!(&tp[..], b"00-00000000000000000000000000000001-0000000000000002-01");
    }

    #[test]
    fn hex_digits_are_those_format_writes() {
        let mut values = vec![0, 1, 9, 10, 15, 16, 0x9a, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210];
        values.extend((0..128).map(|i| 1u128 << i));
        values.extend((0..64).map(|_| fastrand::u128(..)));
        for v in values {
            for len in [4, 8, 12, 16, 32] {
                let mut out = [0u8; 32];
                hex_into(&mut out[..len], v);
                let want = format!("{v:032x}");
                assert_eq!(std::str::from_utf8(&out[..len]), Ok(&want[32 - len..]), "{v:#x}, {len} digits");
            }
        }
    }
}

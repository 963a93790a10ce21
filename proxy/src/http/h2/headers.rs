//! Header rules both HTTP/2 ends apply: the connection-specific headers HTTP/2 forbids
//! (RFC 9113 §8.2.2), which h2 refuses to send. (`content-length` is parsed by the one
//! parser in `http::h1::framing`.)

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};

/// Which kind of message a header map heads: `te: trailers` is allowed on requests only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// Removes what HTTP/2 forbids, as hyper did on both ends; h2 refuses the whole message
/// otherwise. `forward` drops hop-by-hop headers already: this is the last guard before
/// the wire.
pub fn strip_connection_headers(headers: &mut HeaderMap, kind: Kind) {
    // One pass over the names first: after `forward` almost no message has any, and each
    // removal below is a lookup.
    if !headers.keys().any(crate::http::headers::is_hop_by_hop) {
        return;
    }
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    for name in [KEEP_ALIVE, PROXY_CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    if kind == Kind::Response || headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| crate::http::h1::framing::tokens(v.as_bytes()))
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .collect();
    headers.remove(CONNECTION);
    for name in listed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_connection_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "x-hop, keep-alive"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn connection_specific_headers_are_stripped() {
        for kind in [Kind::Request, Kind::Response] {
            let mut h = with_connection_headers();
            strip_connection_headers(&mut h, kind);
            assert_eq!(h.len(), 1, "{kind:?}: {h:?}");
            assert!(h.contains_key("x-kept"));
        }
    }

    #[test]
    fn te_trailers_is_kept_on_requests_only() {
        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_connection_headers(&mut h, Kind::Request);
        assert_eq!(h.get(TE).map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        strip_connection_headers(&mut h, Kind::Response);
        assert!(h.get(TE).is_none());
    }
}

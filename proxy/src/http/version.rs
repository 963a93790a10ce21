//! Which HTTP version a request goes upstream in, and what the next proxy is told about it.
//!
//! Each app is spoken to in its own protocol (DESIGN §9, §11). `protocol: http1 | http2`
//! on a cluster decides alone. Under `auto` a request goes:
//! - to a mesh endpoint (a sidecar): as h2, one multiplexed mTLS connection between the
//!   proxies (Linkerd's model: upgrade between proxies, downgrade at the inbound), with
//!   `x-trellis-orig-proto: HTTP/2` when the destination app is known to speak h2. Without
//!   it the next proxy speaks HTTP/1.1 to the app (or h2 for gRPC), which is what it would
//!   be told in every other case: so the common request (an HTTP/1.1 app's) carries nothing
//!   extra between the proxies;
//! - elsewhere: in the version the destination app is known to speak, else HTTP/1.1.
//!
//! What is known of the destination app's version, first that holds:
//! 1. a mesh peer's `x-trellis-orig-proto` (trusted only from an mTLS-authenticated proxy,
//!    and removed there);
//! 2. on a transparent plaintext connection, the client's own version: it addressed the
//!    app itself, so it chose that version for it;
//! 3. an HTTP/1.x client: HTTP/1.1 (an HTTP/1.1 request reaches the app as HTTP/1.1);
//! 4. a gRPC request (`content-type: application/grpc…`): h2, which gRPC needs.
//!
//! Otherwise (an h2 client of an `auto` cluster, nothing else said) it is unknown and
//! HTTP/1.1 is spoken: an h2 client of an HTTP/1.1-only app gets a 200, not a 502.

use crate::upstream::Wire;
use http::Request;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use trellis_api::ClusterProtocol;

/// Between proxies: the destination app speaks h2 (`HTTP/2`). `HTTP/1.1` is taken too,
/// though it is never sent: it is what the header's absence means.
pub static ORIG_PROTO: HeaderName = HeaderName::from_static("x-trellis-orig-proto");

/// What a downstream connection tells about the destination app's HTTP version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hint {
    /// Nothing beyond the request itself.
    #[default]
    None,
    /// A transparent plaintext connection: the client addressed the app itself.
    Downstream,
    /// An mTLS-authenticated proxy: its `x-trellis-orig-proto` is trusted.
    MeshHeader,
}

/// The downstream side of a request: its version and what its connection tells.
#[derive(Clone, Copy, Debug)]
pub struct Downstream {
    pub h2: bool,
    pub hint: Hint,
}

/// The wire version for `req` to an upstream of `protocol` (`mesh`: a sidecar, reached
/// over mesh mTLS), and the `x-trellis-orig-proto` value to send with it.
pub fn choose<B>(
    req: &mut Request<B>,
    ctx: Downstream,
    protocol: ClusterProtocol,
    mesh: bool,
) -> (Wire, Option<HeaderValue>) {
    // The common case, decided without looking at the request.
    if !mesh && ctx.hint == Hint::None {
        match protocol {
            ClusterProtocol::Http1 => return (Wire::Http1, None),
            ClusterProtocol::Http2 => return (Wire::Http2, None),
            ClusterProtocol::Auto if !ctx.h2 => return (Wire::Http1, None),
            ClusterProtocol::Auto => {}
        }
    }
    let app = app_version(req, ctx);
    let wire = match protocol {
        ClusterProtocol::Http1 => Wire::Http1,
        ClusterProtocol::Http2 => Wire::Http2,
        ClusterProtocol::Auto if mesh => Wire::Http2,
        ClusterProtocol::Auto => app.unwrap_or(Wire::Http1),
    };
    if !mesh {
        return (wire, None);
    }
    // Only this proxy speaks for the app to the next one.
    if ctx.hint != Hint::MeshHeader {
        req.headers_mut().remove(&ORIG_PROTO);
    }
    let told = (app == Some(Wire::Http2)).then(|| HeaderValue::from_static("HTTP/2"));
    (wire, told)
}

/// What is known of the destination app's version (see the module docs), taking a
/// trusted `x-trellis-orig-proto` off the request.
fn app_version<B>(req: &mut Request<B>, ctx: Downstream) -> Option<Wire> {
    if ctx.hint == Hint::MeshHeader
        && let Some(v) = req.headers_mut().remove(&ORIG_PROTO)
    {
        match v.as_bytes() {
            b"HTTP/2" => return Some(Wire::Http2),
            b"HTTP/1.1" | b"HTTP/1.0" => return Some(Wire::Http1),
            _ => {}
        }
    }
    if ctx.hint == Hint::Downstream || !ctx.h2 {
        return Some(if ctx.h2 { Wire::Http2 } else { Wire::Http1 });
    }
    is_grpc(req).then_some(Wire::Http2)
}

/// `content-type: application/grpc` (or `+proto`, `+json`, `;…`), not gRPC-Web, which
/// runs over HTTP/1.1 as well.
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers().get(CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"+") || rest.starts_with(b";"))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const H1: Downstream = Downstream { h2: false, hint: Hint::None };
    const H2: Downstream = Downstream { h2: true, hint: Hint::None };
    const H2_TRANSPARENT: Downstream = Downstream { h2: true, hint: Hint::Downstream };
    const FROM_MESH_H2: Downstream = Downstream { h2: true, hint: Hint::MeshHeader };

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    /// (wire, told) for a request with `headers`.
    fn pick(headers: &[(&str, &str)], ctx: Downstream, p: ClusterProtocol, mesh: bool) -> (Wire, Option<String>) {
        let mut r = req(headers);
        let (wire, told) = choose(&mut r, ctx, p, mesh);
        (wire, told.map(|v| v.to_str().unwrap().to_owned()))
    }

    #[test]
    fn auto_speaks_what_the_app_is_known_to_speak_else_http1() {
        use ClusterProtocol::{Auto, Http1, Http2};
        // Configured versions decide alone.
        assert_eq!(pick(&[], H2, Http1, false), (Wire::Http1, None));
        assert_eq!(pick(&[], H1, Http2, false), (Wire::Http2, None));
        // An HTTP/1.1 client: HTTP/1.1. An h2 client, unknown app: HTTP/1.1, not a 502.
        assert_eq!(pick(&[], H1, Auto, false), (Wire::Http1, None));
        assert_eq!(pick(&[], H2, Auto, false), (Wire::Http1, None));
        // gRPC needs h2; a transparent client chose its version for the app itself.
        assert_eq!(pick(&[("content-type", "application/grpc+proto")], H2, Auto, false), (Wire::Http2, None));
        assert_eq!(pick(&[("content-type", "application/grpc")], H2, Auto, false), (Wire::Http2, None));
        // gRPC-Web is HTTP/1.1-friendly: not a reason for h2.
        assert_eq!(pick(&[("content-type", "application/grpc-web+proto")], H2, Auto, false), (Wire::Http1, None));
        assert_eq!(pick(&[], H2_TRANSPARENT, Auto, false), (Wire::Http2, None));
    }

    #[test]
    fn between_sidecars_h2_and_the_apps_version_travels_along() {
        use ClusterProtocol::{Auto, Http1, Http2};
        // Outbound: an HTTP/1.1 request is upgraded between the proxies, and needs nothing
        // said (that is what no header means); an app known to speak h2 is named.
        assert_eq!(pick(&[], H1, Auto, true), (Wire::Http2, None));
        assert_eq!(pick(&[], H1, Http2, true), (Wire::Http2, None));
        assert_eq!(pick(&[], H2_TRANSPARENT, Auto, true), (Wire::Http2, Some("HTTP/2".into())));
        let grpc = [("content-type", "application/grpc+proto")];
        assert_eq!(pick(&grpc, H2, Auto, true), (Wire::Http2, Some("HTTP/2".into())));
        // Unknown: nothing is said, and what the app sent is not passed on as ours.
        let mut r = req(&[("x-trellis-orig-proto", "HTTP/2")]);
        assert_eq!(choose(&mut r, H2, Http1, true).1, None);
        assert!(r.headers().get(&ORIG_PROTO).is_none());
        // Inbound: a mesh peer's word decides for an `auto` app and is taken off.
        let mut r = req(&[("x-trellis-orig-proto", "HTTP/1.1")]);
        assert_eq!(choose(&mut r, FROM_MESH_H2, Auto, false), (Wire::Http1, None));
        assert!(r.headers().get(&ORIG_PROTO).is_none());
        assert_eq!(pick(&[("x-trellis-orig-proto", "HTTP/2")], FROM_MESH_H2, Auto, false), (Wire::Http2, None));
        // A mesh peer that says nothing (not a Trellis proxy): the general rule.
        assert_eq!(pick(&[], FROM_MESH_H2, Auto, false), (Wire::Http1, None));
        // From anyone else the header is not trusted.
        assert_eq!(pick(&[("x-trellis-orig-proto", "HTTP/2")], H2, Auto, false), (Wire::Http1, None));
    }
}

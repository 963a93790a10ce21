//! The pod's inbound side (and any `permissive` listener): mTLS terminated and the caller's
//! SPIFFE ID authorized by the listener's policy (403 for HTTP, closed for TCP), then the
//! connection goes to the app at 127.0.0.1:<original port>. HTTP between proxies arrives as
//! h2 or HTTP/1.1 (by ALPN); opaque TCP under the ALPN `trellis/tcp`. A `permissive`
//! listener also takes plaintext, told apart by the first byte (a TLS handshake record is
//! 0x16), and counts it.

use super::sniff::{Sniffed, sniff};
use super::{Conn, Refused, Transparent, count, orig_dst, refuse, serve_http, serve_opaque};
use crate::detect::Protocol;
use crate::http::version::Hint;
use crate::telemetry;
use crate::tls::{ALPN_H2, ALPN_OPAQUE};
use crate::upstream::Endpoint;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Where a connection goes when no route takes it.
struct Dest<'a> {
    t: Option<&'a Transparent>,
    orig: Option<SocketAddr>,
    /// The app in this pod; `None` for a listener that is not transparent, or a connection
    /// addressed to the listener itself.
    target: Option<Arc<Endpoint>>,
}

pub(super) async fn serve(stream: TcpStream, conn: Conn, stop: &CancellationToken) {
    let listener = conn.listener.clone();
    let t = listener.transparent.as_deref();
    let orig = t.and_then(|_| orig_dst::of(&stream));
    let to_self = orig.is_some_and(|o| orig_dst::is_listener(o, listener.addr));
    if let Some(o) = orig
        && to_self
        && listener.routes.is_empty()
    {
        return refuse(&conn.shared.name, conn.peer, o, Refused::Loop);
    }
    let target = match (t, orig) {
        (Some(t), Some(o)) if !to_self => Some(t.endpoints.endpoint(orig_dst::app(o), None, None, &t.cluster)),
        _ => None,
    };
    let dest = Dest { t, orig, target };
    if listener.permissive {
        match first_byte(&stream, listener.header_timeout(), stop).await {
            Some(TLS_HANDSHAKE) => {}
            Some(_) => return plaintext(stream, conn, dest, stop).await,
            None => return,
        }
    }
    let Some(tls) = listener.server_tls.clone() else { return };
    let accepted = tokio::select! {
        s = crate::tls::accept(stream, tls, listener.header_timeout(), &conn.shared.name) => s,
        () = stop.cancelled() => return,
    };
    let Some(stream) = accepted else { return };
    let (_, session) = stream.get_ref();
    let peer_id = crate::tls::mesh::peer_id(session.peer_certificates());
    let alpn = session.alpn_protocol();
    if alpn == Some(ALPN_OPAQUE) {
        let (Some(t), Some(ep)) = (dest.t, dest.target) else {
            if let Some(o) = dest.orig {
                refuse(&conn.shared.name, conn.peer, o, Refused::Loop);
            }
            return;
        };
        if crate::listener::authorized_l4(&listener, &conn.shared.name, peer_id.as_deref(), conn.peer) {
            count(&conn.shared.name, "opaque", true);
            serve_opaque(stream, &conn, t, ep, peer_id.as_ref()).await;
        }
        return;
    }
    let proto = if alpn == Some(ALPN_H2) { Protocol::Http2 } else { Protocol::Http1 };
    if dest.t.is_some() {
        count(&conn.shared.name, "http", true);
    }
    // A verified mesh peer's word on the app's HTTP version is taken (`http::version`).
    let hint = if peer_id.is_some() { Hint::MeshHeader } else { Hint::None };
    let target = dest.t.zip(dest.target).map(|(t, e)| t.target(e));
    serve_http(stream, proto, conn, true, peer_id, target, hint, stop).await;
}

/// A plaintext connection on a permissive listener: counted, then HTTP (no identity for the
/// policy) or, on a transparent listener, opaque TCP authorized as an anonymous peer.
async fn plaintext(stream: TcpStream, conn: Conn, dest: Dest<'_>, stop: &CancellationToken) {
    metrics::counter!(telemetry::INBOUND_PLAINTEXT_TOTAL, "listener" => conn.shared.name.to_string()).increment(1);
    let sniffed = match (dest.t, dest.orig) {
        (Some(t), Some(o)) if t.opaque_port(o.port()) => Some(Sniffed::Opaque),
        (Some(t), _) => {
            tokio::select! {
                r = sniff(&stream, t.detect_timeout) => r.ok(),
                () = stop.cancelled() => None,
            }
        }
        (None, _) => {
            tokio::select! {
                r = crate::detect::sniff(&stream, conn.listener.header_timeout()) => r.ok().flatten().map(Sniffed::Http),
                () = stop.cancelled() => None,
            }
        }
    };
    match (sniffed, dest.t, dest.target) {
        (Some(Sniffed::Http(proto)), t, target) => {
            if t.is_some() {
                count(&conn.shared.name, "http", false);
            }
            // A plaintext client of a transparent listener addressed the app itself.
            let hint = if target.is_some() { Hint::Downstream } else { Hint::None };
            let target = t.zip(target).map(|(t, e)| t.target(e));
            serve_http(stream, proto, conn, false, None, target, hint, stop).await;
        }
        (Some(Sniffed::Opaque), Some(t), Some(ep)) => {
            if crate::listener::authorized_l4(&conn.listener, &conn.shared.name, None, conn.peer) {
                count(&conn.shared.name, "opaque", false);
                serve_opaque(stream, &conn, t, ep, None).await;
            }
        }
        (Some(Sniffed::Opaque), _, _) => {
            if let Some(o) = dest.orig {
                refuse(&conn.shared.name, conn.peer, o, Refused::Loop);
            }
        }
        (None, _, _) => {}
    }
}

/// The first byte the client sends, left in the socket; `None` if it sends nothing in time.
async fn first_byte(stream: &TcpStream, timeout: Duration, stop: &CancellationToken) -> Option<u8> {
    let mut b = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(timeout, stream.peek(&mut b)) => match r {
            Ok(Ok(1)) => Some(b[0]),
            _ => None,
        },
        () = stop.cancelled() => None,
    }
}

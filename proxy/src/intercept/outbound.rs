//! The pod's outbound side: a connection the app opened, redirected here, goes to its
//! original destination — over mTLS checking the destination's identity when it is in the
//! mesh, as it was sent otherwise (or not at all under `registry_only`).

use super::sniff::{Sniffed, sniff};
use super::{Conn, Refused, count, orig_dst, refuse, serve_http, serve_opaque};
use crate::http::version::Hint;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub(super) async fn serve(stream: TcpStream, conn: Conn, stop: &CancellationToken) {
    let listener = conn.listener.clone();
    let Some(t) = listener.transparent.as_deref() else { return };
    let Some(orig) = orig_dst::of(&stream) else { return };
    // Addressed to the listener itself: an app using it as an explicit proxy, served by
    // the listener's routes; with none, there is nowhere to go but back here.
    let to_self = orig_dst::is_listener(orig, listener.addr);
    if to_self && listener.routes.is_empty() {
        return refuse(&conn.shared.name, conn.peer, orig, Refused::Loop);
    }
    let target = if to_self {
        None
    } else {
        let snap = conn.shared.config.load();
        if t.registry_only && !snap.destinations.known(orig) {
            return refuse(&conn.shared.name, conn.peer, orig, Refused::RegistryOnly);
        }
        let identity = snap.destinations.identity(orig.ip()).cloned();
        let tls = match &identity {
            None => None,
            Some(id) => match snap.mesh_clients.get(id) {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::error!(listener = %conn.shared.name, identity = %id, error = %e, "no mesh TLS for the destination");
                    return;
                }
            },
        };
        Some(t.endpoints.endpoint(orig, identity.as_ref(), tls, &t.cluster))
    };
    let mesh = target.as_ref().is_some_and(|e| e.identity.is_some());
    let sniffed = if t.opaque_port(orig.port()) {
        Sniffed::Opaque
    } else {
        tokio::select! {
            r = sniff(&stream, t.detect_timeout) => match r {
                Ok(s) => s,
                Err(_) => return,
            },
            () = stop.cancelled() => return,
        }
    };
    match (sniffed, target) {
        (Sniffed::Http(proto), target) => {
            count(&conn.shared.name, "http", mesh);
            // The app addressed the destination itself: its HTTP version is the one the
            // destination speaks.
            let hint = if to_self { Hint::None } else { Hint::Downstream };
            let target = target.map(|e| t.target(e));
            serve_http(stream, proto, conn, false, None, target, hint, stop).await;
        }
        (Sniffed::Opaque, Some(ep)) => {
            count(&conn.shared.name, "opaque", mesh);
            serve_opaque(stream, &conn, t, ep, None).await;
        }
        (Sniffed::Opaque, None) => refuse(&conn.shared.name, conn.peer, orig, Refused::Loop),
    }
}

//! Transparent interception (DESIGN §9): a pod's connections, redirected to the sidecar by
//! `trellis proxy-init`, are taken where they were going.
//!
//! Per accepted connection on a transparent (or `permissive`) listener:
//! `orig_dst` (SO_ORIGINAL_DST; one addressed to the listener itself is refused unless the
//! listener has routes to serve it by) → `outbound` or `inbound` → `sniff` (HTTP/1, h2, or
//! opaque bytes, with a timeout; `opaque_ports` skip it) → HTTP through the ordinary
//! request path (`http::server`, listener routes first, then the original destination as
//! the `passthrough` route) or opaque TCP (`tcp::forward_to`).
//!
//! - Outbound (no `tls`): a destination in the mesh (`destinations`: an endpoint with an
//!   identity, or a registered sidecar) is reached over mTLS checking its identity, HTTP as
//!   h2 between the proxies and opaque TCP under the ALPN `trellis/tcp`; others pass
//!   through as the app sent them, or are refused under `outbound_policy: registry_only`.
//! - Inbound (`tls: mesh | permissive`): mTLS terminated, the caller's identity authorized
//!   by the listener's policy, the connection forwarded to 127.0.0.1:<original port>;
//!   `permissive` also takes plaintext (counted).

pub mod destinations;
mod inbound;
mod orig_dst;
mod outbound;
pub mod sniff;

pub use destinations::{Destinations, Passthrough};

use crate::config::{ConfigError, Listener};
use crate::http::forward::{ConnCtx, Target};
use crate::http::headers::Peer;
use crate::http::route::{Life, Route};
use crate::http::version::Hint;
use crate::listener::{Open, Shared};
use crate::telemetry;
use crate::upstream::{Cluster, Endpoint};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use trellis_api as api;

/// The route and cluster names (and metric labels) of original-destination traffic.
pub const PASSTHROUGH: &str = "passthrough";

/// A transparent listener's runtime settings.
#[derive(Debug)]
pub struct Transparent {
    /// `tls: mesh | permissive`: the pod's inbound side; else its outbound side.
    pub inbound: bool,
    pub registry_only: bool,
    pub detect_timeout: Duration,
    /// Destination ports carried as opaque TCP without detection.
    pub opaque_ports: Vec<u16>,
    /// Requests no listener route takes: to the original destination.
    pub route: Arc<Route>,
    pub cluster: Arc<Cluster>,
    /// The original destinations' endpoint objects, kept across reloads.
    pub endpoints: Arc<Passthrough>,
}

impl Transparent {
    /// The settings of listener `l` (`inbound`: it terminates mesh TLS); `prev` (the same
    /// listener in the config being replaced) lends its destinations' pools.
    pub fn build(
        l: &api::Listener,
        inbound: bool,
        prev: Option<&Transparent>,
        workers: usize,
    ) -> Result<Transparent, ConfigError> {
        // Parsed rather than spelled out, so new fields take their defaults here too.
        let spec: api::Cluster = api::parse::parse(r#"{"name":"passthrough","lb":"random","endpoints":[]}"#)?;
        let cluster = Arc::new(Cluster::build(&spec, Vec::new(), prev.map(|p| &*p.cluster), workers, None, None));
        let route_spec: api::Route =
            api::parse::parse(r#"{"name":"passthrough","backends":[{"cluster":"passthrough"}]}"#)?;
        let clusters = HashMap::from([(PASSTHROUGH.to_owned(), cluster.clone())]);
        let life = prev.map_or_else(|| Arc::new(Life::default()), |p| p.route.life.clone());
        let route = Route::build(&l.name, &route_spec, &clusters, life).map_err(ConfigError::Build)?;
        let mut opaque_ports = l.opaque_ports.clone().unwrap_or_else(|| api::DEFAULT_OPAQUE_PORTS.to_vec());
        opaque_ports.sort_unstable();
        Ok(Transparent {
            inbound,
            registry_only: l.outbound_policy == Some(api::OutboundPolicy::RegistryOnly),
            detect_timeout: l.detect_timeout.unwrap_or(api::DEFAULT_DETECT_TIMEOUT).get(),
            opaque_ports,
            route: Arc::new(route),
            cluster,
            endpoints: prev.map_or_else(|| Arc::new(Passthrough::new(workers)), |p| p.endpoints.clone()),
        })
    }

    fn opaque_port(&self, port: u16) -> bool {
        self.opaque_ports.binary_search(&port).is_ok()
    }

    /// The target of requests and bytes no route takes.
    fn target(&self, endpoint: Arc<Endpoint>) -> Target {
        Target { endpoint, route: self.route.clone() }
    }
}

/// What the task of an accepted connection on an intercepting listener needs beside the
/// stream.
pub(crate) struct Conn {
    pub(crate) peer: SocketAddr,
    pub(crate) listener: Arc<Listener>,
    /// The accept loop's name, config and stop token, and its count of open connections
    /// (a drain waits for the HTTP and opaque ones).
    pub(crate) shared: Arc<Shared>,
    pub(crate) log: Option<Arc<crate::access_log::AccessLog>>,
}

/// Serves one connection until it ends or the listener stops.
pub(crate) async fn serve(stream: TcpStream, conn: Conn) {
    let stop = conn.shared.stop.clone();
    match conn.listener.transparent.as_deref() {
        Some(t) if !t.inbound => outbound::serve(stream, conn, &stop).await,
        _ => inbound::serve(stream, conn, &stop).await,
    }
}

/// Why a connection was closed at once.
#[derive(Clone, Copy, Debug)]
enum Refused {
    /// Its original destination is this listener: following it would loop.
    Loop,
    /// `outbound_policy: registry_only` and the destination is outside the registry.
    RegistryOnly,
}

fn refuse(name: &str, peer: SocketAddr, orig: SocketAddr, why: Refused) {
    let reason = match why {
        Refused::Loop => "loop",
        Refused::RegistryOnly => "registry_only",
    };
    metrics::counter!(telemetry::TRANSPARENT_REFUSED_TOTAL, "listener" => name.to_owned(), "reason" => reason)
        .increment(1);
    match why {
        Refused::Loop => tracing::warn!(
            listener = name, %peer, original_destination = %orig,
            "connection refused: its original destination is this listener (it would loop)"
        ),
        Refused::RegistryOnly => tracing::info!(
            listener = name, %peer, original_destination = %orig,
            "connection refused: destination outside the mesh registry (outbound_policy: registry_only)"
        ),
    }
}

/// Counts one connection by what it carries: `protocol` http or opaque, `mesh` whether
/// the peer (inbound) or the destination (outbound) is a mesh proxy.
fn count(name: &str, protocol: &'static str, mesh: bool) {
    metrics::counter!(
        telemetry::TRANSPARENT_CONNECTIONS_TOTAL,
        "listener" => name.to_owned(), "protocol" => protocol, "mesh" => if mesh { "true" } else { "false" }
    )
    .increment(1);
}

/// Serves an HTTP connection through the ordinary request path.
#[allow(clippy::too_many_arguments)]
async fn serve_http<S>(
    stream: S,
    proto: crate::detect::Protocol,
    conn: Conn,
    tls: bool,
    peer_id: Option<Arc<str>>,
    target: Option<Target>,
    hint: Hint,
    stop: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ConnCtx {
        config: conn.shared.config.clone(),
        listener: conn.shared.name.clone(),
        peer: Peer::new(conn.peer.ip(), tls),
        peer_id,
        h2: proto == crate::detect::Protocol::Http2,
        target,
        hint,
    });
    // Boxed: the connection's task is allocated at the size of its largest state for its
    // whole life, and this one (an HTTP server, over TLS on the inbound side) is the largest.
    let open = Open::new(&conn.shared);
    let switched = Box::pin(crate::http::server::serve(stream, proto, ctx, &conn.listener, open, stop)).await;
    if let Some(s) = switched {
        Box::pin(s.run()).await;
    }
}

/// Carries a connection as opaque TCP to `target`, counted for the drain.
async fn serve_opaque<S>(stream: S, conn: &Conn, t: &Transparent, target: Arc<Endpoint>, peer_id: Option<&Arc<str>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _open = Open::new(&conn.shared);
    let client = crate::tcp::Client { listener: &conn.shared.name, ip: conn.peer.ip(), peer_id };
    crate::tcp::forward_to(stream, client, &t.cluster, target, conn.log.clone()).await;
}

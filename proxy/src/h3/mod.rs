//! HTTP/3 on `terminate` listeners with `tls.http3` (DESIGN §11): QUIC on the listener's
//! port over UDP (quinn), HTTP/3 on it (h3), each request handed to the same
//! `http::forward::handle` the HTTP/1.1 and HTTP/2 servers use.
//!
//! - `endpoint`: the UDP socket and quinn endpoint of a listener, its accept loop (one
//!   worker drives the socket; each connection is served on a worker picked in turn), the
//!   connection limit (`tls.http3_max_connections`), and the registry that reloads start, stop and re-key.
//! - `conn`: one connection: handshake (0-RTT when `early_data` allows it), requests as
//!   concurrent futures in the connection's task, GOAWAY when draining.
//! - `body`: a request stream's data and trailers as a body; a response body copied to
//!   its stream.
//!
//! The limits below bound what one connection can make the proxy hold: flow-control windows
//! (what a client can send that is not yet forwarded, and what is sent but not yet
//! acknowledged), concurrent streams, and the QPACK tables (h3 uses none: static only).

mod body;
mod conn;
pub mod endpoint;

pub use body::{RecvBody, RecvError};
pub use endpoint::Endpoints;

use crate::tls::TlsError;
use http::HeaderValue;
use std::sync::Arc;
use std::time::Duration;

/// Request streams one connection may have open at once (RFC 9114 §6.1: at least 100).
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Unidirectional streams a client may open: control and the two QPACK streams, plus room
/// for the reserved (grease) streams some clients open.
const MAX_UNI_STREAMS: u32 = 8;
/// Request body bytes one stream may have in flight to us, not yet forwarded (as h2's
/// stream window).
const STREAM_WINDOW: u32 = 1024 * 1024;
/// The same for the whole connection.
const CONN_WINDOW: u32 = 2 * 1024 * 1024;
/// Response bytes sent but not yet acknowledged, per connection.
const SEND_WINDOW: u64 = 2 * 1024 * 1024;
/// A connection without a packet this long is closed (QUIC has no FIN/RST to learn a
/// client is gone).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Handshakes in progress beyond which a client whose address is not yet validated is sent
/// a Retry first (RFC 9000 §8.1.2), so a flood of spoofed Initials costs one stateless
/// packet each instead of a handshake.
const RETRY_ABOVE: usize = 256;
/// Connection attempts quinn buffers before the accept loop takes them, and the datagrams
/// it buffers for them.
const MAX_INCOMING: usize = 1024;
const INCOMING_BUFFER: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL: u64 = 8 * 1024 * 1024;

/// A listener's HTTP/3 settings, compiled into the config snapshot.
#[derive(Debug, Clone)]
pub struct ListenerH3 {
    /// The QUIC server config: TLS (certificates by SNI, ALPN h3), transport limits.
    pub server: quinn::ServerConfig,
    /// `alt-svc` for the listener's TCP responses.
    pub alt_svc: HeaderValue,
    /// 0-RTT is accepted (`tls.early_data`).
    pub early_data: bool,
    /// Connections served at once, per proxy (`tls.http3_max_connections`); further
    /// attempts are refused (CONNECTION_REFUSED).
    pub max_connections: usize,
}

impl ListenerH3 {
    /// The settings of a listener on `port` whose QUIC TLS config is `tls`.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        port: u16,
        early_data: bool,
        max_connections: usize,
    ) -> Result<Self, TlsError> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Invalid(format!("QUIC TLS config: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server
            .transport_config(Arc::new(transport()))
            .max_incoming(MAX_INCOMING)
            .incoming_buffer_size(INCOMING_BUFFER)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
        let alt_svc = HeaderValue::try_from(format!("h3=\":{port}\"; ma=86400"))
            .map_err(|e| TlsError::Invalid(format!("alt-svc: {e}")))?;
        Ok(Self { server, alt_svc, early_data, max_connections })
    }
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONN_WINDOW.into())
        .send_window(SEND_WINDOW)
        .max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok())
        // HTTP/3 datagrams (RFC 9297) are not offered.
        .datagram_receive_buffer_size(None);
    t
}

/// Marks a request that arrived in 0-RTT data, before the handshake completed: `forward`
/// answers 425 to one whose method is not safe.
#[derive(Debug, Clone, Copy)]
pub struct EarlyData;

//! HTTP upgrades (DESIGN §11): a request asking for another protocol on its connection
//! (HTTP/1.1 `Upgrade`, e.g. WebSocket) is forwarded to an HTTP/1.1 upstream with its
//! `Upgrade` and `Connection: upgrade`; when the upstream answers 101 its connection is
//! not returned to the pool but handed, with the response, to the downstream connection,
//! which writes the 101 and then splices the two connections into one byte stream
//! (`tcp::duplex`, the copier L4 forwarding uses) under the route's idle timeout. Any other
//! answer is an ordinary response.
//!
//! The access log line of an upgraded request is written when the stream ends (status
//! 101, the stream's life as duration, the bytes sent downstream).

use crate::access_log::Pending;
use crate::http::h1::framing::has_token;
use crate::listener::Open;
use crate::tcp::duplex;
use crate::telemetry;
use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Request extension: the request asks to switch to this protocol (the `Upgrade` value).
#[derive(Debug, Clone)]
pub struct Requested(pub HeaderValue);

/// The `Upgrade` value if `h` asks for a WebSocket upgrade (`Upgrade: websocket` and the
/// `upgrade` token in `Connection`). One lookup for the usual request, which has no
/// `Upgrade`. Other protocols (`h2c`…) are not carried: their `Upgrade` is dropped as
/// hop-by-hop and the request goes on as an ordinary one, so a client cannot open an
/// HTTP/2 connection of its own to the upstream past the proxy's per-request routing and
/// policy ("h2c smuggling").
#[inline]
pub fn requested(h: &HeaderMap) -> Option<Requested> {
    let up = h.get(header::UPGRADE)?;
    if !has_token(up.as_bytes(), b"websocket") {
        return None;
    }
    h.get_all(header::CONNECTION).iter().any(|v| has_token(v.as_bytes(), b"upgrade")).then(|| Requested(up.clone()))
}

/// Puts back what `headers::prepare_request` removed (hop-by-hop) for an upgrade request.
pub fn restore(h: &mut HeaderMap, up: &Requested) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, up.0.clone());
}

/// The metric label for an upgrade's protocol: the usual ones by name, others as `other`
/// (the value is the client's: it must not make label values).
pub fn protocol_label(up: &HeaderValue) -> &'static str {
    let v = up.as_bytes();
    if has_token(v, b"websocket") {
        "websocket"
    } else if v.eq_ignore_ascii_case(b"connect") {
        "connect"
    } else {
        "other"
    }
}

/// Counts an upgrade that succeeded.
pub fn count(listener: &str, protocol: &'static str) {
    metrics::counter!(telemetry::UPGRADES_TOTAL, "listener" => listener.to_owned(), "protocol" => protocol)
        .increment(1);
}

/// The upstream side of an upgrade: its connection (with the bytes it sent past its 101,
/// and its `max_connections` unit) and what the splice needs to know.
pub struct Tunnel {
    pub upstream: crate::upstream::h1::Conn,
    /// The route's idle timeout.
    pub idle: Option<Duration>,
    /// The access log entry, written when the stream ends.
    pub log: Option<Pending>,
}

/// Response extension: the upgraded upstream connection, taken once by the downstream
/// connection that writes the 101. (Extensions must be `Clone`: hence the shared slot.)
#[derive(Clone)]
pub struct Upgraded(Arc<Mutex<Option<Tunnel>>>);

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upgraded")
    }
}

impl Upgraded {
    pub fn new(upstream: crate::upstream::h1::Conn) -> Self {
        Self(Arc::new(Mutex::new(Some(Tunnel { upstream, idle: None, log: None }))))
    }

    /// Changes the tunnel, if it is still there.
    pub fn with(&self, f: impl FnOnce(&mut Tunnel)) {
        if let Ok(mut t) = self.0.lock()
            && let Some(t) = t.as_mut()
        {
            f(t);
        }
    }

    /// Takes the tunnel (once).
    pub fn take(&self) -> Option<Tunnel> {
        self.0.lock().ok()?.take()
    }
}

/// A downstream HTTP/1.1 connection whose 101 (or CONNECT 2xx) is written, handed out of
/// the HTTP server so that its serving state (sized for a request's whole forwarding) is
/// freed: an idle WebSocket then holds only its stream, the tunnel and this.
pub struct Switched<S> {
    pub io: S,
    /// Bytes the client sent past its request head.
    pub early: BytesMut,
    pub tunnel: Tunnel,
    /// Counts the connection as open (for the drain) until the stream ends.
    pub open: Open,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Switched<S> {
    /// Carries the stream to its end ([`splice`]).
    pub async fn run(self) {
        let Switched { mut io, early, tunnel, open } = self;
        splice(&mut io, early, tunnel).await;
        drop(open);
    }
}

/// Copies bytes both ways between the client (`down`, with `early`: bytes it sent past its
/// request head) and the upstream until both have closed or the route's idle timeout
/// passes with no byte either way; then writes the access log line.
pub async fn splice<D>(down: &mut D, early: BytesMut, tunnel: Tunnel)
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let Tunnel { upstream, idle, mut log } = tunnel;
    let (mut up, late, _slot) = upstream.into_parts();
    // What each side sent before the switch (a client's first frame, the upstream's first
    // message right after its 101) goes first.
    let sent_before = async {
        if !early.is_empty() {
            up.write_all(&early).await?;
        }
        if !late.is_empty() {
            down.write_all(&late).await?;
            down.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let before = match idle {
        Some(d) => {
            tokio::time::timeout(d, sent_before).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        }
        None => sent_before.await,
    };
    let (early_len, late_len) = (early.len() as u64, late.len() as u64);
    // Not kept for the stream's life.
    drop((early, late));
    let (early, late) = (early_len, late_len);
    let result = match before {
        Ok(()) => duplex::copy_until_idle(&mut *down, &mut up, idle).await,
        Err(error) => Err(duplex::Stopped { error, copied: (0, 0) }),
    };
    let (copied, error) = match result {
        Ok(c) => (c, None),
        Err(s) if s.error.kind() == std::io::ErrorKind::TimedOut => (s.copied, Some("idle timeout".to_owned())),
        Err(s) => (s.copied, Some(s.error.to_string())),
    };
    tracing::debug!(up = copied.0 + early, down = copied.1 + late, error = ?error, "upgraded stream ended");
    if let Some(p) = log.as_mut() {
        p.entry.bytes = copied.1 + late;
        p.entry.error = error;
    }
}

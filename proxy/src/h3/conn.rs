//! One HTTP/3 connection, served inside its own task on the worker it was handed to: the
//! QUIC handshake, then request streams accepted and each exchange run as a boxed future
//! in a `FuturesUnordered` (no task per stream, as the HTTP/2 server). An exchange reads
//! the request head, hands the request to `forward::handle` with the stream's data as its
//! body, and sends the response back. Draining sends GOAWAY, lets the streams in flight
//! finish, then closes the connection.
//!
//! 0-RTT (`tls.early_data`): the connection is used before the handshake completes, and a
//! request whose head arrives before then is early data, which an attacker could have
//! replayed: it is marked [`EarlyData`] (`forward` answers 425 unless the method is safe)
//! and carries `early-data: 1` upstream (RFC 8470 §5.1). Once the client's Finished has
//! arrived, requests are ordinary again.

use super::EarlyData;
use super::body::{self, RecvBody};
use crate::config::Snapshot;
use crate::http::body::ClientBody;
use crate::http::forward::{self, ConnCtx};
use crate::http::h1::content_length;
use crate::http::headers::Peer;
use crate::http::server::{StreamFuture, stream_future};
use crate::telemetry;
use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::{FutureExt, Shared};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h3::error::Code;
use http::{HeaderName, HeaderValue, Method, Request};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;
/// The handshake's completion, shared by the exchanges that must know whether their
/// request came before it.
type Handshake = Shared<quinn::ZeroRttAccepted>;

static EARLY_DATA_HEADER: HeaderName = HeaderName::from_static("early-data");

/// What a connection's task needs from its listener.
pub(super) struct Settings {
    pub name: Arc<str>,
    pub config: Arc<ArcSwap<Snapshot>>,
    pub early_data: bool,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    /// Handshakes in progress on the listener (the accept loop sends Retries above a mark).
    pub handshaking: Arc<AtomicUsize>,
}

/// Counts one handshake in progress until dropped.
struct Handshaking(Arc<AtomicUsize>);

impl Handshaking {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type H3Conn = h3::server::Connection<h3_quinn::Connection, Bytes>;

/// A connection whose handshake and HTTP/3 setup are done.
struct Ready {
    quic: quinn::Connection,
    h3: H3Conn,
    /// A 0-RTT connection's handshake, until it completes.
    pending: Option<Handshake>,
}

/// Serves one connection attempt until the connection ends, or draining (`stop`) has sent
/// GOAWAY and the requests in flight have finished.
pub(super) async fn serve(incoming: quinn::Incoming, s: Settings, stop: CancellationToken) {
    let peer = incoming.remote_address();
    let mut handshaking = Some(Handshaking::new(&s.handshaking));
    // Boxed, and gone once done: the handshake's and the HTTP/3 setup's futures are large,
    // and this task is allocated at its future's largest for the connection's whole life.
    let Some(Ready { quic, mut h3, mut pending }) = Box::pin(setup(incoming, &s, &stop)).await else { return };
    if pending.is_none() {
        handshaking = None;
    }
    let _open = Open::new(&s.name);
    let ctx = Arc::new(ConnCtx {
        config: s.config.clone(),
        listener: s.name.clone(),
        peer: Peer::new(peer.ip(), true),
        peer_id: None,
        // Multiplexed like HTTP/2: no `connection: close`.
        h2: true,
        target: None,
        hint: crate::http::version::Hint::None,
    });

    let mut streams: FuturesUnordered<StreamFuture> = FuturesUnordered::new();
    let mut draining = false;
    // Whether the loop ended with every request answered (drained, or the client's GOAWAY).
    let mut graceful = false;
    // A 0-RTT connection must complete its handshake within the header timeout.
    let mut handshake_deadline = pending.as_ref().map(|_| Box::pin(tokio::time::sleep(s.header_timeout)));
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled(), if !draining => {
                draining = true;
                // GOAWAY naming the first stream not taken (RFC 9114 §5.2). h3 still lets that
                // one stream through; `reject` refuses it.
                // Bounded: a client that gives the control stream no credit cannot hold it.
                match tokio::time::timeout(s.header_timeout, h3.shutdown(1)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(listener = %s.name, error = %e, "HTTP/3 GOAWAY not sent");
                        break;
                    }
                    Err(_) => break,
                }
                if streams.is_empty() {
                    graceful = true;
                    break;
                }
            }
            () = completed(&mut pending), if pending.is_some() => {
                pending = None;
                handshaking = None;
                handshake_deadline = None;
            }
            () = expired(&mut handshake_deadline), if handshake_deadline.is_some() => {
                tracing::debug!(listener = %s.name, "HTTP/3 0-RTT handshake not completed in time");
                handshake_failed_reason(&s.name, "timeout");
                break;
            }
            Some(()) = streams.next(), if !streams.is_empty() => {
                if draining && streams.is_empty() {
                    graceful = true;
                    break;
                }
            }
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) if draining => streams.push(Box::pin(reject(resolver, s.header_timeout))),
                Ok(Some(resolver)) => {
                    streams.push(stream_future(|| exchange(resolver, ctx.clone(), pending.clone(), s.header_timeout)))
                }
                // The client sent GOAWAY and its requests are done.
                Ok(None) => {
                    graceful = true;
                    break;
                }
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(listener = %s.name, error = %e, "HTTP/3 connection ended with an error");
                    }
                    break;
                }
            }
        }
    }
    drop(handshaking);
    if graceful {
        linger(&quic).await;
    }
    // Dropping `h3` closes the connection (H3_NO_ERROR); exchanges still running are dropped
    // with it, which cancels their upstream requests.
    drop(h3);
}

/// Before a graceful close: QUIC's CONNECTION_CLOSE discards stream data not yet
/// delivered, and a finished response may still sit in quinn's send buffer (h3 gives no
/// way to await its acknowledgement). So the connection stays open until the client
/// closes it, or for about three probe timeouts (RFC 9002 §6.2: 2·RTT plus the peer's ACK
/// delay) — enough for what was sent to be acknowledged or retransmitted.
async fn linger(quic: &quinn::Connection) {
    let pto = quic.rtt() * 2 + Duration::from_millis(25);
    let wait = (pto * 3).clamp(Duration::from_millis(50), Duration::from_secs(2));
    let _ = tokio::time::timeout(wait, quic.closed()).await;
}

/// Waits until the handshake of a 0-RTT connection is over. (quinn's value says whether
/// 0-RTT was accepted, not whether the handshake succeeded: a failed one ends the
/// connection, which `accept` reports.)
async fn completed(pending: &mut Option<Handshake>) {
    if let Some(h) = pending.as_mut() {
        h.await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// Waits for `deadline`, if there is one.
async fn expired(deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    if let Some(d) = deadline.as_mut() {
        d.as_mut().await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// The QUIC handshake, then HTTP/3's (control and QPACK streams, SETTINGS), each within
/// the header timeout.
async fn setup(incoming: quinn::Incoming, s: &Settings, stop: &CancellationToken) -> Option<Ready> {
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            handshake_failed(&s.name, &e);
            return None;
        }
    };
    let (quic, pending) = handshake(connecting, s, stop).await?;
    let mut builder = h3::server::builder();
    builder.max_field_section_size(s.max_header_bytes as u64 * 2);
    let built = tokio::select! {
        biased;
        () = stop.cancelled() => return None,
        built = tokio::time::timeout(s.header_timeout, builder.build(h3_quinn::Connection::new(quic.clone()))) => built,
    };
    match built {
        Ok(Ok(h3)) => Some(Ready { quic, h3, pending }),
        Ok(Err(e)) => {
            tracing::debug!(listener = %s.name, error = %e, "HTTP/3 connection setup failed");
            None
        }
        Err(_) => {
            tracing::debug!(listener = %s.name, "HTTP/3 connection setup timed out");
            None
        }
    }
}

/// The handshake: with early data, the connection at once (0.5-RTT) and the handshake's
/// completion to wait for; without, the completed connection, within the header timeout.
async fn handshake(
    connecting: quinn::Connecting,
    s: &Settings,
    stop: &CancellationToken,
) -> Option<(quinn::Connection, Option<Handshake>)> {
    let connecting = if s.early_data {
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => return Some((conn, Some(accepted.shared()))),
            // Never on a server (quinn: "conversion to 0.5-RTT will always fully succeed").
            Err(c) => c,
        }
    } else {
        connecting
    };
    let done = tokio::select! {
        biased;
        () = stop.cancelled() => return None,
        r = tokio::time::timeout(s.header_timeout, connecting) => r,
    };
    match done {
        Ok(Ok(conn)) => Some((conn, None)),
        Ok(Err(e)) => {
            handshake_failed(&s.name, &e);
            None
        }
        Err(_) => {
            handshake_failed_reason(&s.name, "timeout");
            None
        }
    }
}

fn handshake_failed(listener: &str, e: &quinn::ConnectionError) {
    use quinn::ConnectionError as E;
    let reason = match e {
        E::TimedOut => "timeout",
        // TLS alerts are QUIC's CRYPTO_ERROR range (RFC 9001 §4.8); 120: no_application_protocol.
        E::TransportError(t) if u64::from(t.code) == 0x100 + 120 => "incompatible",
        E::TransportError(t) if (0x100..0x200).contains(&u64::from(t.code)) => "tls_error",
        E::ConnectionClosed(c) if (0x100..0x200).contains(&u64::from(c.error_code)) => "alert_received",
        E::VersionMismatch => "incompatible",
        _ => "io_error",
    };
    tracing::debug!(listener, reason, error = %e, "QUIC handshake failed");
    handshake_failed_reason(listener, reason);
}

fn handshake_failed_reason(listener: &str, reason: &'static str) {
    metrics::counter!(telemetry::TLS_HANDSHAKE_ERRORS_TOTAL, "listener" => listener.to_owned(), "reason" => reason)
        .increment(1);
}

/// One request stream: its head (within the header timeout), forwarded, and the response
/// sent back on it.
async fn exchange(resolver: Resolver, ctx: Arc<ConnCtx>, handshake: Option<Handshake>, header_timeout: Duration) {
    let (req, stream) = match tokio::time::timeout(header_timeout, resolver.resolve_request()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return tracing::debug!(error = %e, "HTTP/3 request refused"),
        Err(_) => return tracing::debug!("HTTP/3 request head not received within header_timeout"),
    };
    // Before the client's Finished, a request is 0-RTT data.
    let early = handshake.is_some_and(|h| h.now_or_never().is_none());
    // Malformed or disagreeing `content-length` fields make a malformed request
    // (RFC 9114 §4.1.2): a stream error, as HTTP/2 resets such a stream.
    let Ok(len) = content_length(req.headers()) else {
        tracing::debug!("HTTP/3 request with malformed content-length");
        let mut stream = stream;
        stream.stop_sending(Code::H3_MESSAGE_ERROR);
        stream.stop_stream(Code::H3_MESSAGE_ERROR);
        return;
    };
    let (mut send, recv) = stream.split();
    let (mut parts, ()) = req.into_parts();
    let mut body = RecvBody::new(recv, len);
    // A CONNECT carries no body here (as on the HTTP/2 server); an ended stream needs none.
    let body = if parts.method == Method::CONNECT || body.ended_with_head() {
        ClientBody::Empty
    } else {
        ClientBody::H3(Box::new(body))
    };
    if early {
        parts.extensions.insert(EarlyData);
        parts.headers.insert(EARLY_DATA_HEADER.clone(), HeaderValue::from_static("1"));
    }
    let resp = forward::handle(Request::from_parts(parts, body), &ctx).await;
    let (mut head, body) = crate::http::h2::server::response_head(resp);
    // The listener's routes advertise HTTP/3 to TCP clients; this one uses it already.
    head.headers_mut().remove(http::header::ALT_SVC);
    let eos = http_body::Body::is_end_stream(&body);
    if let Err(e) = send.send_response(head).await {
        return tracing::debug!(error = %e, "HTTP/3 response head not sent");
    }
    let sent = if eos { send.finish().await.map_err(Into::into) } else { body::send(body, &mut send).await };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "HTTP/3 response body stopped");
    }
}

/// A stream opened past the GOAWAY: refused (H3_REQUEST_REJECTED: the client may retry it
/// on another connection, RFC 9114 §4.1.1).
async fn reject(resolver: Resolver, header_timeout: Duration) {
    if let Ok(Ok((_, mut stream))) = tokio::time::timeout(header_timeout, resolver.resolve_request()).await {
        stream.stop_sending(Code::H3_REQUEST_REJECTED);
        stream.stop_stream(Code::H3_REQUEST_REJECTED);
    }
}

/// Counts an open connection in `trellis_http3_connections` while alive.
struct Open(metrics::Gauge);

impl Open {
    fn new(listener: &str) -> Self {
        let gauge = metrics::gauge!(telemetry::HTTP3_CONNECTIONS, "listener" => listener.to_owned());
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

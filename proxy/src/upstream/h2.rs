//! The HTTP/2 client, on the `h2` crate directly: the handshake (with the settings hyper's
//! client used before), the one task per connection that drives it and pings it while it
//! carries requests, sending a request from the request's own task (its body piped to the
//! stream with flow control, in a spawned task only while the body is still streaming when
//! the head goes out), and the response body. The body and header pieces are shared with
//! the downstream server (`http::h2`). Which connection a request goes on is `pool`'s
//! business.

use crate::http::body::{ClientBodyError, RequestBody};
use crate::http::h1::content_length;
pub use crate::http::h2::body::RecvBody;
use crate::http::h2::body::{Pipe, PipeError};
use crate::http::h2::headers::{Kind, strip_connection_headers};
use crate::tls::io::MaybeTls;
use crate::upstream::pool::{ConnSlot, UpstreamError};
use bytes::Bytes;
use h2::client::{Builder, Connection, SendRequest};
use h2::{Ping, Reason, RecvStream, SendStream};
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Request, Response};
use http_body::Body;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::oneshot;

// hyper 1.x's HTTP/2 client defaults (hyper/src/proto/h2/client.rs), which this client
// replaced: kept so the switch changes nothing on the wire.
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUF_SIZE: usize = 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
// Streams opened before the server's SETTINGS arrive: the spec's recommended minimum.
const INITIAL_MAX_SEND_STREAMS: usize = 100;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// How often a connection carrying requests is pinged, and how long a ping may go
/// unanswered before the connection is given up.
#[derive(Clone, Copy, Debug)]
struct KeepAlive {
    interval: Duration,
    timeout: Duration,
}

const KEEP_ALIVE: KeepAlive = KeepAlive { interval: Duration::from_secs(30), timeout: Duration::from_secs(10) };

/// A handle to open streams on a connection.
pub(crate) type Sender = SendRequest<Bytes>;

/// What the pool and the connection's task share about one connection.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Streams in use (requests whose response is not read to its end).
    pub(crate) streams: AtomicU32,
    /// The connection ended or refuses new streams (GOAWAY): not to be handed out again.
    closed: AtomicBool,
}

impl ConnState {
    /// A new connection, with the stream of the request that opened it.
    pub(crate) fn opened() -> Self {
        Self { streams: AtomicU32::new(1), closed: AtomicBool::new(false) }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// Whether the connection of `sender` (the pool's own handle, which never has a stream
/// queued) still takes new streams: it has not ended, failed, or been told GOAWAY. A
/// GOAWAY shows only here until the connection's last stream ends, so this asks h2 rather
/// than waiting for the driver. Never waits.
pub(crate) fn takes_streams(sender: &mut Sender, state: &ConnState) -> bool {
    if state.is_closed() {
        return false;
    }
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match sender.poll_ready(&mut cx) {
        Poll::Ready(Err(_)) => {
            state.close();
            false
        }
        Poll::Ready(Ok(())) | Poll::Pending => true,
    }
}

/// Why a connection's task ended.
#[derive(Debug, Error)]
enum ConnEnd {
    #[error("{0}")]
    H2(#[from] h2::Error),
    #[error("no ping answer within {0:?}")]
    KeepAliveTimeout(Duration),
}

fn builder() -> Builder {
    let mut b = Builder::new();
    b.initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUF_SIZE)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .enable_push(false)
        // Responses' maps from, and requests' maps back to, the worker's stock.
        .header_maps(crate::http::header_maps::for_h2());
    b
}

/// Starts HTTP/2 on a fresh connection (the preface and our SETTINGS).
pub(crate) async fn handshake(io: MaybeTls) -> Result<(Sender, Connection<MaybeTls, Bytes>), h2::Error> {
    builder().handshake(io).await
}

/// Drives `conn` to its end in its own task, which holds the connection's
/// `max_connections` unit (`slot`) until then and marks it closed for the pool.
pub(crate) fn spawn_driver(conn: Connection<MaybeTls, Bytes>, state: Arc<ConnState>, slot: ConnSlot) {
    tokio::spawn(async move {
        let _slot = slot;
        let ended = drive(conn, &state, KEEP_ALIVE).await;
        state.close();
        if let Err(e) = ended {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
}

/// Polls the connection (which does all its reading and writing) and, while it carries
/// requests, pings it every `keep_alive.interval`, giving it up when a ping goes unanswered
/// for `keep_alive.timeout` (dropping it fails its streams).
async fn drive<T>(mut conn: Connection<T, Bytes>, state: &ConnState, keep_alive: KeepAlive) -> Result<(), ConnEnd>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(mut pings) = conn.ping_pong() else {
        return Ok(conn.await?);
    };
    loop {
        tokio::select! {
            ended = &mut conn => return Ok(ended?),
            () = tokio::time::sleep(keep_alive.interval) => {}
        }
        // As hyper's client did (keep_alive_while_idle off): an idle connection is not
        // pinged, so it costs the upstream nothing.
        if state.streams.load(Ordering::Acquire) == 0 {
            continue;
        }
        pings.send_ping(Ping::opaque())?;
        let pong = tokio::time::timeout(keep_alive.timeout, std::future::poll_fn(|cx| pings.poll_pong(cx)));
        tokio::select! {
            ended = &mut conn => return Ok(ended?),
            answered = pong => match answered {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ConnEnd::KeepAliveTimeout(keep_alive.timeout)),
            },
        }
    }
}

/// Sends `req` on the connection of `sender`, with the `forwarding` fields after its own
/// (never entered in its map), and waits for the response head. A body that
/// is still streaming when the head goes out is piped by a task of its own, so that it can
/// go on while the response streams back (full duplex); otherwise nothing is spawned.
///
/// The head is prepared before the returned future exists (no await needed): as an `async
/// fn` its state kept the request (an argument slot) besides its head and body. This future
/// is part of every request's future that goes upstream over HTTP/2.
pub(crate) fn send(
    mut sender: Sender,
    state: &ConnState,
    req: Request<RequestBody>,
    forwarding: Vec<(http::HeaderName, http::HeaderValue)>,
) -> impl Future<Output = Result<Response<RecvBody>, UpstreamError>> {
    let (parts, body) = req.into_parts();
    let mut head = Request::from_parts(parts, ());
    strip_connection_headers(head.headers_mut(), Kind::Request);
    set_content_length(&mut head, &body);
    async move {
        // Waits only while this handle's previous stream is still queued; the connection
        // queues streams over the server's concurrency limit itself.
        std::future::poll_fn(|cx| sender.poll_ready(cx)).await.map_err(|e| {
            state.close();
            UpstreamError::Reset(e.into())
        })?;
        let eos = body.is_end_stream();
        let (response, stream) =
            sender.send_request_with_fields(head, forwarding, eos).map_err(|e| send_failed(state, e))?;
        let cancel = if eos { None } else { send_body(body, stream).await? };
        let resp = response.await.map_err(|e| match cancel.as_ref().and_then(CancelPipe::client_failure) {
            // The pipe reset the stream because the client's body failed.
            Some(b) => UpstreamError::ClientBody(b),
            None => conn_failed(state, e),
        })?;
        // The response came: a still-running pipe carries on.
        if let Some(c) = cancel {
            c.disarm();
        }
        Ok(into_response(resp))
    }
}

fn into_response(resp: Response<RecvStream>) -> Response<RecvBody> {
    // h2 itself refuses a response whose `content-length` is malformed or broken by its DATA.
    let remaining = content_length(resp.headers()).ok().flatten();
    resp.map(|recv| RecvBody::new(recv, remaining))
}

/// A stream's failure; when it is the connection's (GOAWAY, I/O), no more streams go on it.
fn conn_failed(state: &ConnState, e: h2::Error) -> UpstreamError {
    if e.is_go_away() || e.is_io() {
        state.close();
    }
    UpstreamError::Reset(e.into())
}

/// `send_request` fails on requests h2 will not send (a user error: no reason, no I/O) or
/// because the connection is going away.
fn send_failed(state: &ConnState, e: h2::Error) -> UpstreamError {
    if e.reason().is_none() && !e.is_io() {
        return UpstreamError::Unsendable(e);
    }
    conn_failed(state, e)
}

/// Sends the rest of the request after its head. A body held in memory is handed to h2
/// whole (it is in memory already, so waiting for flow-control capacity would bound
/// nothing); a streamed one is piped under flow control, in a task of its own if it has not
/// finished at once. Returns the spawned pipe's cancel guard; fails when the client's body
/// failed at once.
async fn send_body(body: RequestBody, mut stream: SendStream<Bytes>) -> Result<Option<CancelPipe>, UpstreamError> {
    if let RequestBody::Replay(bytes) = body {
        // A failure here (the stream was reset) shows on the response future.
        let _ = stream.send_data(bytes.unwrap_or_default(), true);
        return Ok(None);
    }
    let mut pipe = Pipe::new(body, stream);
    // One eager poll: a body that is already complete needs no task.
    let done = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut pipe).poll(cx))).await;
    if let Poll::Ready(result) = done {
        return match client_failure(result) {
            Some(b) => Err(UpstreamError::ClientBody(b)),
            None => Ok(None),
        };
    }
    let (tx, rx) = oneshot::channel();
    let failed = Arc::new(std::sync::Mutex::new(None));
    tokio::spawn(Cancellable { pipe, cancel: Some(rx), failed: failed.clone() });
    Ok(Some(CancelPipe(Some(tx), failed)))
}

/// Logs how a pipe ended; the client's body error when that is why.
fn client_failure(result: Result<(), PipeError>) -> Option<ClientBodyError> {
    let e = result.err()?;
    tracing::debug!(error = %e, "request body to upstream stopped");
    match e {
        PipeError::Body(b) => b.downcast::<ClientBodyError>().ok().map(|b| *b),
        _ => None,
    }
}

/// Tells a spawned pipe to reset its stream when the request is dropped before its
/// response head came (the client went away): the pipe's hold on the stream would
/// otherwise keep it open. Holds the client's body error if that is why the pipe stopped.
struct CancelPipe(Option<oneshot::Sender<()>>, Arc<std::sync::Mutex<Option<ClientBodyError>>>);

impl CancelPipe {
    fn disarm(mut self) {
        self.0 = None;
    }

    fn client_failure(&self) -> Option<ClientBodyError> {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for CancelPipe {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A spawned pipe, reset with CANCEL if its request is dropped before the response head.
struct Cancellable {
    pipe: Pipe<RequestBody>,
    cancel: Option<oneshot::Receiver<()>>,
    /// Where the client's body error goes (the response future sees only the reset).
    failed: Arc<std::sync::Mutex<Option<ClientBodyError>>>,
}

impl Future for Cancellable {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(rx) = this.cancel.as_mut()
            && let Poll::Ready(fired) = Pin::new(rx).poll(cx)
        {
            if fired.is_ok() {
                this.pipe.send_reset(Reason::CANCEL);
                return Poll::Ready(());
            }
            // Disarmed: the response came, the pipe runs on by itself.
            this.cancel = None;
        }
        let result = std::task::ready!(Pin::new(&mut this.pipe).poll(cx));
        if let Some(b) = client_failure(result) {
            *this.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
        }
        Poll::Ready(())
    }
}

/// Announces a body of known size, as hyper's client did: always for methods with payload
/// semantics, and for the others when the body is not empty.
fn set_content_length(head: &mut Request<()>, body: &RequestBody) {
    let Some(len) = body.size_hint().exact() else { return };
    let defined = !matches!(*head.method(), Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT);
    if len != 0 || defined {
        head.headers_mut().entry(CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: KeepAlive = KeepAlive { interval: Duration::from_millis(50), timeout: Duration::from_millis(50) };

    /// A client connection over an in-memory pipe, its handle, and the server's end.
    async fn client_conn() -> (Sender, Connection<tokio::io::DuplexStream, Bytes>, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (tx, conn) = builder().handshake(client).await.unwrap();
        (tx, conn, server)
    }

    fn busy() -> ConnState {
        ConnState::opened()
    }

    #[tokio::test]
    async fn unanswered_ping_ends_a_busy_connection() {
        // The server end is never read: no pong can come.
        let (_tx, conn, _server) = client_conn().await;
        let ended = tokio::time::timeout(Duration::from_secs(5), drive(conn, &busy(), QUICK)).await;
        assert!(matches!(ended, Ok(Err(ConnEnd::KeepAliveTimeout(_)))), "{ended:?}");
    }

    #[tokio::test]
    async fn idle_connection_is_not_pinged() {
        let (_tx, conn, _server) = client_conn().await;
        let idle = ConnState::opened();
        idle.streams.store(0, Ordering::Release);
        let running = tokio::time::timeout(Duration::from_millis(400), drive(conn, &idle, QUICK)).await;
        assert!(running.is_err(), "{running:?}");
    }

    #[tokio::test]
    async fn answered_pings_keep_a_busy_connection() {
        let (_tx, conn, server) = client_conn().await;
        // An h2 server answers pings while its connection is polled.
        let serve = tokio::spawn(async move {
            let mut s = h2::server::handshake(server).await.unwrap();
            while s.accept().await.is_some() {}
        });
        let running = tokio::time::timeout(Duration::from_millis(400), drive(conn, &busy(), QUICK)).await;
        assert!(running.is_err(), "{running:?}");
        serve.abort();
    }

    #[test]
    fn content_length_is_set_as_hyper_did() {
        let head = |m: Method, body: &RequestBody| {
            let mut r = Request::builder().method(m).body(()).unwrap_or_default();
            set_content_length(&mut r, body);
            r.headers().get(CONTENT_LENGTH).cloned()
        };
        let empty = RequestBody::Replay(None);
        let some = RequestBody::Replay(Some(Bytes::from_static(b"abc")));
        assert_eq!(head(Method::GET, &empty), None);
        assert_eq!(head(Method::POST, &empty), Some(HeaderValue::from(0u64)));
        assert_eq!(head(Method::GET, &some), Some(HeaderValue::from(3u64)));
    }
}

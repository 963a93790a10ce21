//! One downstream HTTP/2 connection (h2c with prior knowledge, or h2 after TLS ALPN) on the
//! `h2` crate, served inside the connection's own task: streams are accepted and each
//! request runs through `forward::handle` concurrently with the others, as a boxed future
//! in a `FuturesUnordered` (no task per stream). A stream's future sends the response head
//! and pipes its body under flow control; it is dropped (cancelling the upstream request)
//! when the client resets the stream or the connection ends. A response finished before
//! the request body keeps the stream open to read the rest of it (`linger`), so the
//! client's later frames on it get the stream and connection errors the spec asks for
//! rather than being ignored after an early reset. When draining starts the connection
//! sends GOAWAY, lets its streams finish, then closes. A connection that opens with bytes
//! that are not the preface gets GOAWAY(PROTOCOL_ERROR).

use crate::config::Listener;
use crate::http::body::{ClientBody, ProxyBody};
use crate::http::forward::{self, ConnCtx};
use crate::http::h1::content_length;
use crate::http::h2::body::{Pipe, RecvBody, Returned};
use crate::http::h2::headers::{Kind, strip_connection_headers};
use crate::http::h2::tunnel::H2Io;
use crate::http::server::{StreamFuture, stream_future};
use crate::http::upgrade;
use crate::listener::Open;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use h2::server::{Builder, Connection, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use http::header::{CONTENT_LENGTH, DATE};
use http::{HeaderValue, Method, Request, Response};
use http_body::Body;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

// hyper 1.x's HTTP/2 server defaults (hyper/src/proto/h2/server.rs), which this server
// replaced: kept so the switch changes nothing on the wire.
const CONN_WINDOW: u32 = 1024 * 1024;
const STREAM_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUF_SIZE: usize = 400 * 1024;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Streams one connection may have open at once (as configured on hyper before).
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// How long, and for how many bytes, a stream answered before the end of its request body
/// goes on reading it (then it is reset with NO_ERROR, RFC 9113 §8.1).
const LINGER: (Duration, usize) = (Duration::from_secs(5), 1024 * 1024);
/// GOAWAY(last stream 0, PROTOCOL_ERROR): the answer to a connection preface that is not one.
const GOAWAY_PROTOCOL_ERROR: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn builder(listener: &Listener) -> Builder {
    let mut b = Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        // Room above the limit so most oversized heads reach `forward`, which answers 431
        // like every other proxy error; far larger ones are refused by h2 itself.
        .max_header_list_size(u32::try_from(listener.max_header_bytes() * 2).unwrap_or(u32::MAX))
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .max_send_buffer_size(MAX_SEND_BUF_SIZE)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // Each request's map is made with room for the headers `forward` adds (a grow and
        // rehash of every request's map saved: vendor/README.md).
        .header_map_headroom(crate::http::headers::ADDED_TO_REQUESTS)
        // Requests' maps from, and responses' maps back to, the worker's stock.
        .header_maps(crate::http::header_maps::for_h2())
        // RFC 8441: WebSocket over HTTP/2 (extended CONNECT with `:protocol`).
        .enable_connect_protocol();
    b
}

/// Serves `io` until the client leaves, the connection fails, or draining (`stop`) has
/// sent GOAWAY and the streams in flight have finished. `open` is held for the life of the
/// connection so a drain waits for it.
pub async fn serve<S>(mut io: S, ctx: Arc<ConnCtx>, listener: &Listener, open: Open, stop: &CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = open;
    let Some(refused) = serve_on(&mut io, &ctx, listener, stop).await else { return };
    // A preface that is not one (RFC 9113 §3.4) is a connection error: our SETTINGS went
    // out first, GOAWAY follows.
    if refused.reason() == Some(Reason::PROTOCOL_ERROR) && !refused.is_io() {
        let _ = tokio::time::timeout(listener.header_timeout(), async {
            io.write_all(&GOAWAY_PROTOCOL_ERROR).await?;
            io.shutdown().await
        })
        .await;
    }
}

/// Serves the connection on a borrowed stream (so a failed handshake can still be
/// answered on it); the handshake's error if it failed.
async fn serve_on<S>(io: &mut S, ctx: &Arc<ConnCtx>, listener: &Listener, stop: &CancellationToken) -> Option<h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A connection still in its handshake when draining starts has no request in flight:
    // it is dropped, not waited for. (No timeout here, as with hyper: the preface was
    // sniffed, or TLS accepted, within the header timeout.)
    let handshake = tokio::select! {
        biased;
        () = stop.cancelled() => return None,
        c = builder(listener).handshake::<&mut S, Bytes>(io) => c,
    };
    match handshake {
        Ok(mut conn) => {
            if let Err(e) = run(&mut conn, ctx, stop).await {
                tracing::debug!(error = %e, "downstream connection ended with an error");
            }
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "downstream HTTP/2 handshake failed");
            Some(e)
        }
    }
}

/// Accepts streams and drives their exchanges until the connection closes. Returning drops
/// the exchanges still running (the connection is gone: their requests are cancelled).
async fn run<S>(conn: &mut Connection<S, Bytes>, ctx: &Arc<ConnCtx>, stop: &CancellationToken) -> Result<(), h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut streams: FuturesUnordered<StreamFuture> = FuturesUnordered::new();
    let mut stopped = pin!(stop.cancelled());
    let mut draining = false;
    poll_fn(|cx| {
        if !draining && stopped.as_mut().poll(cx).is_ready() {
            // GOAWAY; h2 closes the connection once the streams in flight are done.
            draining = true;
            conn.graceful_shutdown();
        }
        // Every stream that is ready runs before the connection is polled again, so the
        // frames they queue leave together in its next write (one TLS record and one
        // syscall for many responses). Polling the connection after each one instead
        // tripled the TLS work per request.
        loop {
            let mut progress = false;
            // Accepting also drives the connection: all reading and writing happen here.
            while let Poll::Ready(accepted) = conn.poll_accept(cx) {
                match accepted {
                    Some(Ok((req, respond))) => streams.push(stream_future(|| exchange(req, respond, ctx.clone()))),
                    Some(Err(e)) => return Poll::Ready(Err(e)),
                    None => return Poll::Ready(Ok(())),
                }
                progress = true;
            }
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
                progress = true;
            }
            if !progress {
                return Poll::Pending;
            }
        }
    })
    .await
}

/// One stream: forwards the request and sends the response back.
async fn exchange(req: Request<RecvStream>, mut respond: SendResponse<Bytes>, ctx: Arc<ConnCtx>) {
    let Incoming { req, back, tunnel } = match into_request(req) {
        Ok(r) => r,
        Err(reason) => {
            respond.send_reset(reason);
            return;
        }
    };
    let Some(mut resp) = forward_unless_reset(req, &mut respond, &ctx).await else { return };
    // A tunnel comes with a 101 (the upstream switched: WebSocket) or a 200 (CONNECT).
    if let Some(recv) = tunnel
        && matches!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS | http::StatusCode::OK)
        && let Some(t) = resp.extensions_mut().remove::<upgrade::Upgraded>().and_then(|u| u.take())
    {
        // A 200 opens the tunnel (RFC 8441 §5, RFC 9113 §8.5), the stream carries it.
        let mut head = Response::new(());
        for name in [http::header::SEC_WEBSOCKET_PROTOCOL, http::header::SEC_WEBSOCKET_EXTENSIONS] {
            if let Some(v) = resp.headers().get(&name) {
                head.headers_mut().insert(name, v.clone());
            }
        }
        head.headers_mut().insert(DATE, crate::http::date::value());
        match respond.send_response(head, false) {
            Ok(send) => upgrade::splice(&mut H2Io::new(send, recv), bytes::BytesMut::new(), t).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT: 200 not sent"),
        }
        return;
    }
    let (head, body) = response_head(resp);
    let eos = body.is_end_stream();
    let stream = match respond.send_response(head, eos) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(error = %e, "downstream response head not sent");
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    if !eos {
        send_body(body, stream).await;
    }
    if let Some(back) = back {
        linger(&back).await;
    }
}

/// The request as `forward` takes it: the head as h2 built it (method, URI from the
/// pseudo-headers, version HTTP/2, headers), the stream's data as its body, and where a
/// body dropped before its end hands the stream back. A CONNECT has no body, as hyper's
/// server gave it (it kept the stream for a tunnel); one announcing a body is refused, as
/// hyper did; so is one whose `content-length` fields are malformed or disagree (h2 checks
/// only the first): the reset to send.
fn into_request(req: Request<RecvStream>) -> Result<Incoming, Reason> {
    let (mut parts, recv) = req.into_parts();
    let Ok(len) = content_length(&parts.headers) else {
        tracing::debug!("h2 request with malformed content-length");
        return Err(Reason::PROTOCOL_ERROR);
    };
    // The same length given more than once goes on once.
    if let Some(n) = len
        && parts.headers.get_all(http::header::CONTENT_LENGTH).iter().nth(1).is_some()
    {
        crate::http::h1::framing::set_length(&mut parts.headers, n);
    }
    if parts.method == Method::CONNECT {
        if let Some(protocol) = parts.extensions.remove::<h2::ext::Protocol>() {
            return websocket_request(parts, &protocol, recv);
        }
        if len.is_some_and(|n| n != 0) {
            tracing::debug!("h2 CONNECT with a body is not supported");
            return Err(Reason::INTERNAL_ERROR);
        }
        // RFC 9113 §8.5: the stream carries the tunnel once answered 2xx (`forward` checks
        // the listener's `connect` and `connect_ports`).
        return Ok(Incoming { req: Request::from_parts(parts, ClientBody::Empty), back: None, tunnel: Some(recv) });
    }
    // A request whose HEADERS ended the stream (a GET) has no body to read: its stream's
    // handle goes now, and the body's end is known without asking h2 (each question is a
    // lock of the connection's state).
    if recv.is_end_stream() {
        return Ok(Incoming { req: Request::from_parts(parts, ClientBody::Empty), back: None, tunnel: None });
    }
    let back = Returned::default();
    let req = Request::from_parts(parts, ClientBody::H2(RecvBody::returning(recv, len, back.clone())));
    Ok(Incoming { req, back: Some(back), tunnel: None })
}

/// A request as `forward` takes it, and what its stream keeps for later.
struct Incoming {
    req: Request<ClientBody>,
    /// Where a body dropped before its end hands the stream back.
    back: Option<Returned>,
    /// An extended CONNECT's stream, which carries the tunnel once the upstream switched.
    tunnel: Option<RecvStream>,
}

/// An extended CONNECT (RFC 8441) for WebSocket as the HTTP/1.1 upgrade request the
/// upstream gets (RFC 6455 §4.1: GET, `Upgrade: websocket`, a fresh `Sec-WebSocket-Key`);
/// other `:protocol`s are refused (the stream reset with REFUSED_STREAM: nothing was done).
fn websocket_request(
    mut parts: http::request::Parts,
    protocol: &h2::ext::Protocol,
    recv: RecvStream,
) -> Result<Incoming, Reason> {
    if !protocol.as_str().eq_ignore_ascii_case("websocket") {
        tracing::debug!(protocol = protocol.as_str(), "extended CONNECT for an unsupported protocol");
        return Err(Reason::REFUSED_STREAM);
    }
    parts.method = Method::GET;
    let value = HeaderValue::from_static("websocket");
    parts.headers.insert(http::header::SEC_WEBSOCKET_KEY, websocket_key(fastrand::u128(..)));
    parts.extensions.insert(upgrade::Requested(value));
    let req = Request::from_parts(parts, ClientBody::Empty);
    Ok(Incoming { req, back: None, tunnel: Some(recv) })
}

/// A `Sec-WebSocket-Key`: 16 bytes, base64 (RFC 6455 §4.1). The HTTP/2 client has none
/// (RFC 8441 §5: it does not check an accept value either).
fn websocket_key(n: u128) -> HeaderValue {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = n.to_be_bytes();
    let mut out = Vec::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((v >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// After a complete response: reads (and drops) what is left of a request body whose
/// reader gave it up, until the client ends it or resets it, for at most [`LINGER`]. The
/// stream stays open meanwhile, so h2 goes on checking the client's frames on it (a
/// second HEADERS, pseudo-headers in trailers, a length that DATA breaks, a window over
/// 2^31−1 get their RST_STREAM or GOAWAY); dropping it early would reset it with
/// NO_ERROR and make h2 ignore them. A body still being read elsewhere needs nothing.
async fn linger(back: &Returned) {
    let Some(mut recv) = back.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    let mut left = LINGER.1;
    let _ = tokio::time::timeout(LINGER.0, async {
        while let Some(Ok(chunk)) = recv.data().await {
            let _ = recv.flow_control().release_capacity(chunk.len());
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                return;
            }
        }
        let _ = recv.trailers().await;
    })
    .await;
}

/// Forwards `req`; `None` if the client reset the stream (or the connection failed) first,
/// which drops the request on its way and so cancels it upstream.
async fn forward_unless_reset(
    req: Request<ClientBody>,
    respond: &mut SendResponse<Bytes>,
    ctx: &ConnCtx,
) -> Option<Response<ProxyBody>> {
    let mut handled = pin!(forward::handle(req, ctx));
    poll_fn(|cx| {
        if let Poll::Ready(resp) = handled.as_mut().poll(cx) {
            return Poll::Ready(Some(resp));
        }
        // Only while the response is not ready, as hyper: registers for RST_STREAM.
        match respond.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => {
                tracing::debug!(?reason, "client reset the stream before the response");
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "stream failed before the response");
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Splits `resp` into the head h2 sends, as hyper's server made it (connection-specific
/// headers dropped, `date` and a known `content-length` added), and its body. HTTP/3
/// forbids the same headers (RFC 9114 §4.2): its server uses this too.
pub(crate) fn response_head(resp: Response<ProxyBody>) -> (Response<()>, ProxyBody) {
    let (parts, body) = resp.into_parts();
    let mut head = Response::from_parts(parts, ());
    let headers = head.headers_mut();
    strip_connection_headers(headers, Kind::Response);
    // `date` is sent as a never-indexed literal. h2's HPACK encoder enters each new value in
    // its table and finds a value by walking every entry of the same name, oldest first:
    // a new date each second filled the table with dates, and every response then
    // compared its date with ~40 others (about 1,700 instructions, 4% of a request).
    headers.entry(DATE).or_insert_with(crate::http::date::value).set_sensitive(true);
    if !body.is_end_stream()
        && let Some(len) = body.size_hint().exact()
    {
        headers.entry(CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(len));
    }
    (head, body)
}

/// Pipes the response body; a failed body resets the stream, and a client reset stops the
/// pipe (dropping the body, which cancels the upstream exchange).
async fn send_body(body: ProxyBody, stream: SendStream<Bytes>) {
    if let Err(e) = Pipe::new(body, stream).await {
        tracing::debug!(error = %e, "downstream response body stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn response(headers: &[(&'static str, &'static str)], body: ProxyBody) -> Response<ProxyBody> {
        let mut resp = Response::new(body);
        for (k, v) in headers {
            resp.headers_mut().append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        resp
    }

    #[test]
    fn websocket_keys_are_16_bytes_in_base64() {
        // RFC 4648 test vector: 16 zero bytes.
        assert_eq!(websocket_key(0).as_bytes(), b"AAAAAAAAAAAAAAAAAAAAAA==");
        let k = websocket_key(u128::MAX);
        assert_eq!(k.as_bytes(), b"/////////////////////w==");
    }

    #[test]
    fn response_head_is_made_as_hyper_made_it() {
        let resp = response(
            &[
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("transfer-encoding", "chunked"),
                ("te", "trailers"),
                ("x-kept", "yes"),
            ],
            ProxyBody::full("abc"),
        );
        let (head, _) = response_head(resp);
        let h = head.headers();
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h.get(CONTENT_LENGTH).map(HeaderValue::as_bytes), Some(&b"3"[..]));
        assert!(h.contains_key(DATE) && h.contains_key("x-kept"));
        assert!(h.get(DATE).is_some_and(HeaderValue::is_sensitive), "a made date is never indexed");
    }

    #[test]
    fn empty_body_gets_no_content_length_and_own_headers_stay() {
        let (head, body) = response_head(response(&[("date", "then")], ProxyBody::Full(None)));
        assert!(body.is_end_stream());
        assert_eq!(head.headers().get(DATE).map(HeaderValue::as_bytes), Some(&b"then"[..]));
        assert!(head.headers().get(DATE).is_some_and(HeaderValue::is_sensitive), "an upstream's date is never indexed");
        assert!(head.headers().get(CONTENT_LENGTH).is_none());
    }

    /// A server built by `server` and a client built by `client`, joined by an in-memory
    /// pipe; the client's connection runs in its own task.
    async fn joined(
        server: &Builder,
        client: &h2::client::Builder,
    ) -> (Connection<tokio::io::DuplexStream, Bytes>, h2::client::SendRequest<Bytes>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (server, client) =
            tokio::join!(server.handshake::<_, Bytes>(server_io), client.handshake::<_, Bytes>(client_io));
        let (server, (send, conn)) = (server.expect("server handshake"), client.expect("client handshake"));
        tokio::spawn(conn);
        (server, send)
    }

    /// The field count and capacity of the header map the fourth request on a connection
    /// arrives in (h2 sizes a map by the field counts of the requests before it), from a
    /// server built by `b`.
    async fn received_capacity(b: &Builder) -> (usize, usize) {
        let (mut server, mut send) = joined(b, &h2::client::Builder::new()).await;
        let mut last = (0, 0);
        for _ in 0..4 {
            let req = http::Request::get("http://x/").header("user-agent", "t").header("accept", "*/*").body(());
            let (_resp, _) = send.send_request(req.expect("request"), true).expect("sent");
            let (req, _respond) = server.accept().await.expect("a stream").expect("a request");
            last = (req.headers().len(), req.headers().capacity());
        }
        last
    }

    #[tokio::test]
    async fn requests_arrive_with_room_for_the_forwarding_headers() {
        let (len, plain) = received_capacity(&Builder::new()).await;
        assert!(plain < len + crate::http::headers::ADDED_TO_REQUESTS, "h2 alone sizes the map to the request");
        let mut b = Builder::new();
        b.header_map_headroom(crate::http::headers::ADDED_TO_REQUESTS);
        let (len, room) = received_capacity(&b).await;
        assert!(room >= len + crate::http::headers::ADDED_TO_REQUESTS, "{room} fields of room for {len}");
    }

    /// The patched HPACK encoder lends each field to its table instead of moving it in
    /// (vendor/README.md): every way a field can go out — a new entry, a full match, a new
    /// value of a known name, a static name, never indexed with and without a static
    /// name, and further values of a name in each case — still decodes to the same fields,
    /// and the patched decoder's memory of names it received as literals gives them back,
    /// with the values it copies from the buffer in place. Also to a server whose table
    /// holds nothing, which gets every field that has no static name as a literal name
    /// with a Huffman-coded value.
    #[tokio::test]
    async fn hpack_encodes_every_kind_of_field_as_before() {
        let mut tableless = Builder::new();
        tableless.header_table_size(0);
        for server in [Builder::new(), tableless] {
            every_kind_of_field_to(&server).await;
        }
    }

    async fn every_kind_of_field_to(server: &Builder) {
        let (mut server, mut send) = joined(server, &h2::client::Builder::new()).await;
        let secret = |v: &str| {
            let mut v = HeaderValue::from_str(v).expect("value");
            v.set_sensitive(true);
            v
        };
        for i in 0..4 {
            let mut req = http::Request::get(format!("http://x/p{i}")).body(()).expect("request");
            let h = req.headers_mut();
            h.append("x-same", HeaderValue::from_static("a"));
            h.append("x-same", HeaderValue::from_static("b"));
            h.append("x-new", HeaderValue::from_str(&format!("v{}", i / 2)).expect("value"));
            h.append("x-new", HeaderValue::from_static("c"));
            h.append("x-secret", secret(&format!("s{i}")));
            h.append("x-secret", secret("t"));
            h.append(http::header::AUTHORIZATION, secret("Bearer x"));
            h.append(http::header::AUTHORIZATION, secret("Bearer y"));
            h.append(http::header::ACCEPT, HeaderValue::from_static("*/*"));
            h.append(http::header::ACCEPT, HeaderValue::from_static("text/plain"));
            // More names sent as literals than the decoder remembers (it parses the ones
            // it has forgotten again), one a prefix of another.
            for k in ["x-l", "x-lit", "x-lit-1", "x-lit-2", "x-lit-3", "x-lit-4"] {
                h.append(http::HeaderName::from_static(k), secret(&format!("{k}-{i}")));
            }
            let sent = req.headers().clone();
            let (_resp, _) = send.send_request(req, true).expect("sent");
            let (got, _respond) = server.accept().await.expect("a stream").expect("a request");
            assert_eq!(got.uri().path(), format!("/p{i}"));
            for name in sent.keys() {
                let a: Vec<_> = sent.get_all(name).iter().collect();
                let b: Vec<_> = got.headers().get_all(name).iter().collect();
                assert_eq!(a, b, "request {i}, {name}");
            }
            assert_eq!(got.headers().len(), sent.len(), "request {i}");
        }
    }

    /// A request whose HEADERS ended its stream comes with an empty body that needs no
    /// more questions to h2; one with data to come keeps its stream.
    #[tokio::test]
    async fn a_request_ended_by_its_headers_has_an_empty_body() {
        let (mut server, mut send) = joined(&Builder::new(), &h2::client::Builder::new()).await;
        let get = http::Request::get("http://x/").body(()).expect("request");
        let _ = send.send_request(get, true).expect("sent");
        let (req, _respond) = server.accept().await.expect("a stream").expect("a request");
        let incoming = into_request(req).map_err(|r| format!("{r:?}")).expect("accepted");
        assert!(matches!(incoming.req.body(), ClientBody::Empty) && incoming.back.is_none());
        let post = http::Request::post("http://x/").body(()).expect("request");
        let (_, mut body) = send.send_request(post, false).expect("sent");
        body.send_data(Bytes::from_static(b"abc"), true).expect("data");
        let (req, _respond) = server.accept().await.expect("a stream").expect("a request");
        let incoming = into_request(req).map_err(|r| format!("{r:?}")).expect("accepted");
        assert!(matches!(incoming.req.body(), ClientBody::H2(_)) && incoming.back.is_some());
    }

    /// The patched h2 reuses the parse of the last `:authority` it saw when the next one is
    /// the same (vendor/README.md): each request still gets its own.
    #[tokio::test]
    async fn each_request_keeps_its_own_authority() {
        let (mut server, mut send) = joined(&Builder::new(), &h2::client::Builder::new()).await;
        for authority in ["a.example", "a.example", "b.example:8080", "a.example", "a.example:80", "[::1]:9"] {
            let req = http::Request::get(format!("http://{authority}/")).body(()).expect("request");
            let _ = send.send_request(req, true).expect("sent");
            let (req, _respond) = server.accept().await.expect("a stream").expect("a request");
            assert_eq!(req.uri().authority().map(http::uri::Authority::as_str), Some(authority));
        }
    }

    /// The patched h2 finds its streams by id with FNV instead of SipHash and looks once at
    /// a stream that is not closed before leaving it be (vendor/README.md): with 50 streams
    /// open at a time, answered in reverse order and some reset, each answer still reaches
    /// the request it belongs to, and each closed stream frees its place for the next ones.
    #[tokio::test]
    async fn many_open_streams_each_get_their_own_answer() {
        const STREAMS: usize = 200;
        const AT_ONCE: usize = 50;
        let mut sb = Builder::new();
        sb.max_concurrent_streams(AT_ONCE as u32);
        let (mut server, mut send) = joined(&sb, &h2::client::Builder::new()).await;
        let answering = tokio::spawn(async move {
            for _ in 0..STREAMS / AT_ONCE {
                let mut open = Vec::new();
                while open.len() < AT_ONCE {
                    let (req, respond) = server.accept().await.expect("a stream").expect("a request");
                    open.push((req.uri().path().to_owned(), respond));
                }
                for (path, mut respond) in open.into_iter().rev() {
                    let i: usize = path.trim_start_matches('/').parse().expect("index");
                    if i % 7 == 3 {
                        respond.send_reset(h2::Reason::CANCEL);
                        continue;
                    }
                    let resp = http::Response::builder().header("x-path", &path).body(()).expect("response");
                    respond.send_response(resp, true).expect("answered");
                }
            }
            // Drives the connection until the client has read every answer.
            while server.accept().await.is_some() {}
        });
        let sending = async {
            let mut waiting = Vec::new();
            for i in 0..STREAMS {
                let req = http::Request::get(format!("http://x/{i}")).body(()).expect("request");
                // Waits for a closed stream's place once 50 are open.
                send = send.clone().ready().await.expect("room for a stream");
                waiting.push(send.send_request(req, true).expect("sent").0);
            }
            waiting
        };
        let waiting = tokio::time::timeout(std::time::Duration::from_secs(10), sending)
            .await
            .expect("each closed stream made room for another");
        for (i, resp) in waiting.into_iter().enumerate() {
            match resp.await {
                Ok(resp) => {
                    assert_ne!(i % 7, 3, "stream {i} was reset");
                    assert_eq!(resp.headers()["x-path"], format!("/{i}").as_str());
                }
                Err(e) => assert_eq!((i % 7, e.reason()), (3, Some(h2::Reason::CANCEL)), "stream {i}"),
            }
        }
        drop(send);
        answering.abort();
    }

    /// The patched HPACK decoder advances over each field it decoded instead of splitting
    /// it off (vendor/README.md): a head larger than a frame, sent as HEADERS and
    /// CONTINUATION frames, still arrives whole, its fields in order, twice on a connection
    /// (the second time from the table the first one filled).
    #[tokio::test]
    async fn a_head_in_continuation_frames_arrives_whole() {
        let (mut server, mut send) = joined(&Builder::new(), &h2::client::Builder::new()).await;
        let big = "v".repeat(40 * 1024);
        for i in 0..2 {
            let mut req = http::Request::get(format!("http://x/c{i}")).body(()).expect("request");
            let h = req.headers_mut();
            h.append("x-before", HeaderValue::from_static("a"));
            h.append("x-big", HeaderValue::from_str(&big).expect("value"));
            h.append(http::header::ACCEPT, HeaderValue::from_static("*/*"));
            for k in 0..50 {
                h.append("x-after", HeaderValue::from_str(&format!("{i}-{k}")).expect("value"));
            }
            let sent = req.headers().clone();
            let (_resp, _) = send.send_request(req, true).expect("sent");
            let (got, _respond) = server.accept().await.expect("a stream").expect("a request");
            assert_eq!(got.uri().path(), format!("/c{i}"));
            assert_eq!(got.headers(), &sent, "request {i}");
        }
    }

    /// The patched h2 client sends fields given beside a request after the request's own
    /// (vendor/README.md; the proxy's forwarding fields to an HTTP/2 upstream): the server
    /// gets them all, a name in both places with both values, the request's first.
    #[tokio::test]
    async fn fields_sent_beside_a_request_arrive_after_its_own() {
        let (mut server, mut send) = joined(&Builder::new(), &h2::client::Builder::new()).await;
        for i in 0..3 {
            let req = http::Request::get("http://x/").header("x-own", "1").header("x-both", "own").body(());
            let extra = vec![
                (HeaderName::from_static("x-forwarded-for"), HeaderValue::from_static("10.0.0.1")),
                (HeaderName::from_static("x-both"), HeaderValue::from_static("extra")),
                (HeaderName::from_static("x-request-id"), HeaderValue::from_str(&format!("id-{i}")).expect("value")),
            ];
            let _ = send.send_request_with_fields(req.expect("request"), extra, true).expect("sent");
            let (got, _respond) = server.accept().await.expect("a stream").expect("a request");
            let h = got.headers();
            assert_eq!((h["x-own"].as_bytes(), h["x-forwarded-for"].as_bytes()), (&b"1"[..], &b"10.0.0.1"[..]));
            assert_eq!(h.get_all("x-both").iter().collect::<Vec<_>>(), ["own", "extra"]);
            assert_eq!(h["x-request-id"], format!("id-{i}").as_str());
            assert_eq!(h.len(), 5, "{h:?}");
        }
    }

    /// A peer whose HPACK table holds nothing (SETTINGS_HEADER_TABLE_SIZE 0) gets an
    /// extended CONNECT's `:protocol`, a pseudo-header field with no static name, as a
    /// literal (the patched encoder keeps no "last name" for it).
    #[tokio::test]
    async fn a_pseudo_field_without_a_table_entry_goes_as_a_literal() {
        let mut sb = Builder::new();
        sb.header_table_size(0).enable_connect_protocol();
        let (mut server, mut send) = joined(&sb, &h2::client::Builder::new()).await;
        let ping = tokio::spawn(async move {
            let (req, _respond) = server.accept().await.expect("a stream").expect("a request");
            req.extensions().get::<h2::ext::Protocol>().map(|p| p.as_str().to_owned())
        });
        for _ in 0..100 {
            if send.is_extended_connect_protocol_enabled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut req = http::Request::connect("http://x/chat").body(()).expect("request");
        req.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
        let _ = send.send_request(req, false).expect("sent");
        assert_eq!(ping.await.expect("server task").as_deref(), Some("websocket"));
    }

    thread_local! {
        static TAKEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        static GIVEN: std::cell::RefCell<Vec<(usize, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// Maps far larger than h2 would make, so a map from here can be told apart.
    const MARKED: usize = 40;
    fn marked_take(_fields: usize) -> http::HeaderMap {
        TAKEN.with(|t| t.set(t.get() + 1));
        http::HeaderMap::with_capacity(MARKED)
    }
    fn recorded_give(map: http::HeaderMap) {
        GIVEN.with(|g| g.borrow_mut().push((map.len(), map.capacity())));
    }

    #[tokio::test]
    async fn header_maps_come_from_the_stock_and_go_back_to_it_emptied() {
        let maps = h2::HeaderMaps::new(marked_take, recorded_give);
        let mut sb = Builder::new();
        sb.header_maps(maps);
        let mut cb = h2::client::Builder::new();
        cb.header_maps(maps);
        let (mut server, mut send) = joined(&sb, &cb).await;
        for i in 0..3 {
            let req = http::Request::get("http://x/").header("x-a", "1").header("x-b", i.to_string()).body(());
            let (resp, _) = send.send_request(req.expect("request"), true).expect("sent");
            let (req, mut respond) = server.accept().await.expect("a stream").expect("a request");
            assert!(req.headers().capacity() >= MARKED, "the request's map came from the stock");
            assert_eq!(req.headers().get("x-b").map(HeaderValue::as_bytes), Some(i.to_string().as_bytes()));
            assert_eq!(req.headers().len(), 2);
            let mut answer = Response::new(());
            answer.headers_mut().insert("x-c", HeaderValue::from_static("3"));
            respond.send_response(answer, true).expect("response sent");
            // The server's connection writes the response while it is driven.
            let resp = tokio::select! {
                r = resp => r.expect("response"),
                _ = std::future::poll_fn(|cx| server.poll_closed(cx)) => panic!("the server's connection ended"),
            };
            assert!(resp.headers().capacity() >= MARKED, "the response's map came from the stock");
            assert_eq!(resp.headers().get("x-c").map(HeaderValue::as_bytes), Some(&b"3"[..]));
        }
        // Three requests and three responses decoded into maps from the stock; the six
        // sent (the first two of each side's fields) came back empty, with their room.
        assert_eq!(TAKEN.with(std::cell::Cell::get), 6);
        let given = GIVEN.with(|g| g.borrow().clone());
        assert_eq!(given.len(), 6, "{given:?}");
        assert!(given.iter().all(|&(len, cap)| len == 0 && cap > 0), "{given:?}");
    }
}

//! One downstream HTTP/1.x connection: read a head (within the listener's
//! `header_timeout`, counted from when the connection starts waiting for it), forward it
//! with its body fed from the connection (`incoming`), write the response, and loop;
//! pipelined heads already read are served in order. While a request is forwarded or its
//! response body waits, the connection reads on for the request body, or else watches for
//! the client leaving (which cancels the request). A head the codec refuses is answered
//! (400, 408, 414, 431, 501) and the connection closes. Draining closes an idle
//! connection at once and marks an in-flight response `connection: close`.
//!
//! Memory: the read buffer and the write buffer come from `io_bufs`' per-thread stock and
//! go back to it while the connection waits between requests or between a streamed
//! response's frames, so an idle keep-alive connection or an open SSE stream holds neither.

use super::encode::{self, Answering};
use super::error::{Error, Kind};
use super::framing::Framing;
use super::head::{self, RequestHead};
use super::incoming::{self, Fed, Feed};
use crate::config::Listener;
use crate::http::body::{ClientBody, ProxyBody};
use crate::http::forward::{self, ConnCtx};
use crate::http::io_bufs;
use crate::http::respond::{ForwardError, error_response};
use crate::http::upgrade;
use crate::listener::Open;
use bytes::{Bytes, BytesMut};
use http::{Method, Response, Version};
use http_body::{Body, Frame};
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Read buffer size to grow by (when less than an eighth of it is free).
const READ_CHUNK: usize = io_bufs::CHUNK;
const READ_ROOM: (usize, usize) = (READ_CHUNK / 8, READ_CHUNK);
/// Data frames up to this size are copied next to the head; larger ones are written from
/// their own buffer (one vectored write either way).
const COPY_MAX: usize = 16 * 1024;
/// After answering a request whose bytes were not all read, the connection reads (and
/// drops) what the client still sends for up to this long and this much before closing,
/// so the close does not reset the connection under the answer (lingering close).
const LINGER: (Duration, usize) = (Duration::from_secs(1), 256 * 1024);

type Polled = Option<Result<Frame<Bytes>, <ProxyBody as Body>::Error>>;

thread_local! {
    /// Field positions while a head is parsed (used only within `head::request`).
    static SCRATCH: std::cell::RefCell<head::Scratch> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Serves `io` until the client leaves, a response closes it, or draining ends it.
/// `open` is held for the life of the connection so a drain waits for it. A connection
/// switched to another protocol (a 101, or a CONNECT's 2xx, already written) is handed
/// back with what its stream needs: the serving state is not kept for the stream's life.
pub async fn serve<S>(
    mut io: S,
    ctx: Arc<ConnCtx>,
    listener: &Listener,
    open: Open,
    stop: &CancellationToken,
) -> Option<upgrade::Switched<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Conn {
        buf: BytesMut::new(),
        out: Vec::new(),
        max_buf: listener.max_header_bytes() * 2,
        header_timeout: listener.header_timeout(),
        timer: None,
        armed: Armed::default(),
        feed: None,
    };
    let mut stopped = pin!(stop.cancelled());
    loop {
        // The head is taken apart outside this future (`Conn::start`): its locals, held
        // here, would take room in every state of the connection's future.
        let (req, asked) = match conn.read_head(&mut io, stop, stopped.as_mut()).await {
            Next::Head(head) => conn.start(head),
            Next::Refuse(e) => {
                tracing::debug!(error = %e, "request head refused");
                conn.refuse(&mut io, &ForwardError::Request(e)).await;
                return None;
            }
            Next::Done => return None,
        };
        // The request's future is pinned here and polled in place (inside `response`'s own
        // future it would be moved into it, whole, on every request), in a block of its
        // own: once it has the response its slot is free, and the response's writing (a
        // stream's, for its whole life) reuses the same bytes of this future.
        let resp = {
            let handled = pin!(forward::handle(req, &ctx));
            conn.response(&mut io, handled).await
        };
        let Ok(resp) = resp else { return None };
        match conn.exchange(&mut io, resp, asked, stop).await {
            After::KeepAlive => {}
            After::Close { unread } => {
                let _ = tokio::time::timeout(conn.header_timeout, io.shutdown()).await;
                if unread {
                    linger(&mut io).await;
                }
                return None;
            }
            After::Switched(tunnel) => {
                let early = std::mem::take(&mut conn.buf);
                return Some(upgrade::Switched { io, early, tunnel, open });
            }
            After::Abort => return None,
        }
    }
}

struct Conn {
    /// Read buffer; none (no capacity) while the connection waits with nothing buffered.
    buf: BytesMut,
    /// Write buffer; none between responses and while a streamed body waits.
    out: Vec<u8>,
    /// A head that does not fit in this many bytes is refused (431).
    max_buf: usize,
    header_timeout: Duration,
    /// The header timeout, armed once and moved forward only when it fires early: most
    /// requests never touch the timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// What already has the task's waker while a head is awaited.
    armed: Armed,
    /// The body of the request being served, while it is read from the connection.
    feed: Option<Feed>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        io_bufs::give_read(std::mem::take(&mut self.buf));
        self.give_out();
    }
}

/// Waits that have registered the connection task's waker, and so wake it by themselves:
/// the header timer (until it fires) and the stop token.
#[derive(Default)]
struct Armed {
    timer: bool,
    stop: bool,
}

// Moved once per request; boxing the head would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(RequestHead<ClientBody>),
    /// A head the codec refuses: answered, then the connection closes.
    Refuse(Error),
    Done,
}

/// What the request's head says about its response.
struct Asked {
    /// The connection closes after this exchange.
    close: bool,
    to: Answering,
    /// A CONNECT: a 2xx answer would start a tunnel, which this server does not carry.
    connect: bool,
    /// The client accepts trailers (`TE: trailers`).
    trailers: bool,
    /// The request asks for an upgrade: a 101 with the upstream's connection splices.
    upgrade: bool,
}

enum After {
    KeepAlive,
    /// The response said so (or the client, or draining): close cleanly; `unread`: bytes
    /// the client sent may be left unread.
    Close {
        unread: bool,
    },
    /// The 101 (or a CONNECT's 2xx) is written: the connection is the upstream's byte
    /// stream from here on.
    Switched(upgrade::Tunnel),
    /// The client left, or the response could not be sent whole.
    Abort,
}

/// The client left (or its connection failed) while a response was awaited or written.
struct ClientGone;

impl Conn {
    async fn read_head<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        stop: &CancellationToken,
        mut stopped: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> Next {
        let deadline = Instant::now() + self.header_timeout;
        loop {
            if !self.buf.is_empty() {
                let parsed = SCRATCH.with_borrow_mut(|scratch| head::request(&mut self.buf, scratch));
                match parsed {
                    Ok(Some(head)) => return Next::Head(head),
                    Ok(None) if self.buf.len() >= self.max_buf => {
                        return Next::Refuse(Error::client(Kind::HeadTooLarge(self.max_buf)));
                    }
                    Ok(None) => {}
                    Err(e) => return Next::Refuse(e),
                }
            }
            let idle = self.buf.is_empty();
            if idle {
                self.give_out();
            }
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            let armed = &mut self.armed;
            let buf = &mut self.buf;
            // The timer and the stop token are polled only until they have the task's waker:
            // after that they wake it themselves, and a look at them costs far less than a
            // poll (this wait comes once per keep-alive request).
            let read = poll_fn(|cx| {
                loop {
                    if let Poll::Ready(r) = io_bufs::poll_read(Pin::new(&mut *io), cx, buf, READ_ROOM, true) {
                        return Poll::Ready(Ok(r));
                    }
                    let fired = if armed.timer { timer.is_elapsed() } else { timer.as_mut().poll(cx).is_ready() };
                    armed.timer = !fired;
                    if fired {
                        if Instant::now() >= deadline {
                            return Poll::Ready(Err(()));
                        }
                        // An earlier request's deadline: move it to this one's, and poll it
                        // again to have the task woken at the new one.
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    if idle {
                        let stopped_now =
                            if armed.stop { stop.is_cancelled() } else { stopped.as_mut().poll(cx).is_ready() };
                        armed.stop = true;
                        if stopped_now {
                            return Poll::Ready(Ok(Ok(0)));
                        }
                    }
                    return Poll::Pending;
                }
            })
            .await;
            let read = match read {
                Ok(r) => r,
                Err(()) => {
                    // A client part-way through a head is told (as HAProxy does); an idle
                    // keep-alive connection is just closed.
                    if self.buf.is_empty() {
                        tracing::debug!("idle connection closed after header_timeout");
                        return Next::Done;
                    }
                    return Next::Refuse(Error::client(Kind::Timeout));
                }
            };
            match read {
                Ok(0) | Err(_) => return Next::Done,
                Ok(_) => {}
            }
        }
    }

    /// Makes a request of `head`: what its response must honour, an upgrade it asks for,
    /// and its body fed from this connection.
    #[inline]
    fn start(&mut self, head: RequestHead<ClientBody>) -> (http::Request<ClientBody>, Asked) {
        let RequestHead { mut req, framing, close, trailers, expect_continue, upgrade: wants_upgrade } = head;
        let mut asked = Asked {
            close,
            to: Answering { version: req.version(), head: req.method() == Method::HEAD },
            connect: req.method() == Method::CONNECT,
            trailers,
            upgrade: false,
        };
        // An upgrade without a body (a body would leave the switch point unclear).
        if wants_upgrade
            && framing == Framing::None
            && req.version() == Version::HTTP_11
            && let Some(up) = upgrade::requested(req.headers())
        {
            req.extensions_mut().insert(up);
            asked.upgrade = true;
        }
        if framing != Framing::None {
            let (body, feed) = incoming::channel(framing, expect_continue);
            *req.body_mut() = ClientBody::H1(body);
            self.feed = Some(feed);
            if expect_continue {
                // Answered here: the upstream gets the body without waiting.
                req.headers_mut().remove(http::header::EXPECT);
            }
        }
        (req, asked)
    }

    /// Answers a request that cannot be served and closes.
    async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut S, err: &ForwardError) {
        let resp = error_response(err);
        let (parts, body) = resp.into_parts();
        self.take_out();
        self.out.clear();
        let mut close = true;
        let to = Answering { version: Version::HTTP_11, head: false };
        encode::response_head(&mut self.out, &parts, Some(body.size_hint().exact()), to, &mut close);
        if let ProxyBody::Full(Some(b)) = body {
            self.out.extend_from_slice(&b);
        }
        let written = tokio::time::timeout(self.header_timeout, self.flush_out(io)).await;
        if matches!(written, Ok(Ok(()))) {
            let _ = tokio::time::timeout(self.header_timeout, io.shutdown()).await;
            linger(io).await;
        }
    }

    /// Gives the (empty) write buffer back to the stock.
    fn give_out(&mut self) {
        if self.out.capacity() > 0 {
            io_bufs::give_write(std::mem::take(&mut self.out));
        }
    }

    /// Takes a write buffer if the connection has none.
    fn take_out(&mut self) {
        if self.out.capacity() == 0 {
            self.out = io_bufs::take_write();
        }
    }

    /// Reads for the request body, or watches for the client leaving (not once a next
    /// request is buffered: as hyper, which stops reading then). `Ready(Ok)` after
    /// progress, `Ready(Err)` when the client has gone, `Pending` when there is nothing
    /// to do until something wakes the task.
    fn poll_client<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<Result<(), ClientGone>> {
        if let Some(feed) = self.feed.as_mut().filter(|f| f.is_open()) {
            return match std::task::ready!(feed.poll(cx, io, &mut self.buf)) {
                Fed::Gone => Poll::Ready(Err(ClientGone)),
                _ => Poll::Ready(Ok(())),
            };
        }
        if !self.buf.is_empty() {
            return Poll::Pending;
        }
        // The wait is usually short: the buffer is kept (`release: false`).
        match std::task::ready!(io_bufs::poll_read(Pin::new(&mut *io), cx, &mut self.buf, READ_ROOM, false)) {
            Ok(0) | Err(_) => Poll::Ready(Err(ClientGone)),
            Ok(_) => Poll::Ready(Ok(())),
        }
    }

    /// Gets the response to one request from `handled` (its forwarding), reading the
    /// request body for it meanwhile or watching for the client leaving.
    async fn response<S, F>(&mut self, io: &mut S, mut handled: Pin<&mut F>) -> Result<Response<ProxyBody>, ClientGone>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: Future<Output = Response<ProxyBody>>,
    {
        poll_fn(|cx| {
            loop {
                if let Poll::Ready(resp) = handled.as_mut().poll(cx) {
                    return Poll::Ready(Ok(resp));
                }
                if std::task::ready!(self.poll_client(cx, io)).is_err() {
                    return Poll::Ready(Err(ClientGone));
                }
            }
        })
        .await
    }

    /// Writes the response to one request.
    async fn exchange<S>(
        &mut self,
        io: &mut S,
        mut resp: Response<ProxyBody>,
        asked: Asked,
        stop: &CancellationToken,
    ) -> After
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let switching = (asked.upgrade && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS)
            || (asked.connect && resp.status().is_success());
        if switching && let Some(tunnel) = resp.extensions_mut().remove::<upgrade::Upgraded>().and_then(|u| u.take()) {
            return self.switch(io, resp, asked.to, tunnel).await;
        }
        let mut close = asked.close || stop.is_cancelled() || !self.body_settled(false);
        if asked.connect && resp.status().is_success() {
            close = true;
        }
        if let Some(feed) = self.feed.as_mut() {
            poll_fn(|cx| feed.poll_response_start(cx, io)).await;
        }
        // The head in a block of its own: borrowed, it would keep a slot in this future
        // across the writes below even once given back.
        let (framing, mut body) = {
            let (parts, body) = resp.into_parts();
            let hint = if body.is_end_stream() { None } else { Some(body.size_hint().exact()) };
            self.take_out();
            self.out.clear();
            let framing = encode::response_head(&mut self.out, &parts, hint, asked.to, &mut close);
            crate::http::header_maps::give(parts.headers);
            (framing, body)
        };
        let sent = match framing {
            Framing::None => {
                drop(body);
                self.flush_out(io).await
            }
            framing => self.send_body(io, &mut body, framing, asked.trailers).await,
        };
        // A body not read to its end leaves the connection's framing unknown.
        let settled = self.body_settled(true);
        self.feed = None;
        match sent {
            Ok(()) if close || !settled => After::Close { unread: !settled || !self.buf.is_empty() },
            Ok(()) => After::KeepAlive,
            Err(e) => {
                tracing::debug!(error = %e, "downstream response not sent whole");
                After::Abort
            }
        }
    }

    /// Writes a 101 (or a CONNECT's 2xx); the caller then carries the connection as a byte
    /// stream to the upstream's (`http::upgrade`).
    async fn switch<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        resp: Response<ProxyBody>,
        to: Answering,
        tunnel: upgrade::Tunnel,
    ) -> After {
        let (parts, _) = resp.into_parts();
        self.take_out();
        self.out.clear();
        if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
            let mut close = false;
            encode::response_head(&mut self.out, &parts, None, to, &mut close);
        } else {
            // A CONNECT's 2xx has no framing fields at all (RFC 9110 §9.3.6).
            self.out.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        }
        crate::http::header_maps::give(parts.headers);
        if let Err(e) = tokio::time::timeout(self.header_timeout, self.flush_out(io))
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
        {
            tracing::debug!(error = %e, "101 not sent");
            return After::Abort;
        }
        self.give_out();
        After::Switched(tunnel)
    }

    /// Whether the request body (if any) is read to its end, so the connection can carry
    /// another request: one abandoned by its holder is if what remains of it is already
    /// buffered; one still being read is, until the response has `ended` (it is fed on
    /// while the response goes out).
    #[inline]
    fn body_settled(&mut self, ended: bool) -> bool {
        let Some(feed) = self.feed.as_mut() else { return true };
        match feed.state() {
            Fed::Ended => true,
            Fed::Open => !ended,
            Fed::Abandoned => feed.drain_buffered(&mut self.buf),
            Fed::Failed | Fed::Gone => false,
        }
    }

    /// Writes the body after the head in `out`: whatever frames are ready go out together,
    /// and the connection is flushed whenever the body makes it wait (so streamed events
    /// reach the client as they come).
    async fn send_body<S>(
        &mut self,
        io: &mut S,
        body: &mut ProxyBody,
        framing: Framing,
        trailers: bool,
    ) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut enc = super::body::Encoder::new(framing, crate::http::fault::Side::Upstream);
        loop {
            // What is ready now. (`if let` rather than `match`: edition 2024 drops the polled
            // value before the `else`, so it is not kept across the awaits there.)
            let now = poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx)));
            let frame = if let Poll::Ready(frame) = now.await {
                frame
            } else {
                self.flush_out(io).await?;
                self.next_frame(io, body).await?
            };
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    // No terminating chunk: the client sees the body cut, as with hyper.
                    let _ = self.flush_out(io).await;
                    return Err(io::Error::other(e));
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    let t = if trailers { frame.trailers_ref() } else { None };
                    if !enc.is_ended() {
                        enc.end(t, &mut self.out).map_err(io::Error::other)?;
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            let tail = match enc.data(data.len(), &mut self.out) {
                Ok(tail) => tail,
                Err(e) => {
                    let _ = self.flush_out(io).await;
                    return Err(io::Error::other(e));
                }
            };
            if data.len() > COPY_MAX {
                write_all_vectored(io, &mut [IoSlice::new(&self.out), IoSlice::new(&data), IoSlice::new(tail)]).await?;
                self.out.clear();
            } else {
                self.out.extend_from_slice(&data);
                self.out.extend_from_slice(tail);
            }
            if body.is_end_stream() {
                break;
            }
        }
        if let Err(e) = enc.end(None, &mut self.out) {
            let _ = self.flush_out(io).await;
            return Err(io::Error::other(e));
        }
        self.flush_out(io).await
    }

    /// Waits for the body's next frame, feeding the request body or watching for the
    /// client leaving meanwhile. The buffers go back to the stock for the wait (`out` was
    /// just flushed).
    async fn next_frame<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        body: &mut ProxyBody,
    ) -> io::Result<Polled> {
        self.give_out();
        let polled = poll_fn(|cx| {
            loop {
                if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
                    return Poll::Ready(Ok(frame));
                }
                // Between frames nothing need be buffered: release the read buffer.
                if self.feed.as_ref().is_none_or(|f| !f.is_open()) && self.buf.is_empty() {
                    return match std::task::ready!(io_bufs::poll_read(
                        Pin::new(&mut *io),
                        cx,
                        &mut self.buf,
                        READ_ROOM,
                        true
                    )) {
                        Ok(0) => Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                        Err(e) => Poll::Ready(Err(e)),
                        Ok(_) => continue,
                    };
                }
                if std::task::ready!(self.poll_client(cx, io)).is_err() {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
            }
        })
        .await;
        self.take_out();
        polled
    }

    /// Writes and flushes `out`.
    async fn flush_out<S: AsyncWrite + Unpin>(&mut self, io: &mut S) -> io::Result<()> {
        if !self.out.is_empty() {
            io.write_all(&self.out).await?;
            self.out.clear();
        }
        io.flush().await
    }
}

async fn write_all_vectored<S: AsyncWrite + Unpin>(io: &mut S, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Reads and drops what the client still sends (bounded by [`LINGER`]) after the answer,
/// so closing with unread bytes does not reset the connection before the client has read
/// the answer.
async fn linger<S: AsyncRead + Unpin>(io: &mut S) {
    // On the heap: on the stack it would be held in every connection's future.
    let mut scratch = vec![0u8; 4096];
    let mut left = LINGER.1;
    let _ = tokio::time::timeout(LINGER.0, async {
        while left > 0 {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

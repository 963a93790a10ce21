//! One downstream HTTP/1.1 connection on the fast path: read a head (within the listener's
//! `header_timeout`, counted from when the connection starts waiting for it, as hyper does),
//! forward it, write the response, and loop; pipelined heads already read are served in
//! order. While a request is forwarded or its body waits, a read watches for the client
//! leaving (which cancels the request, as hyper does). Draining closes an idle connection
//! at once and marks an in-flight response `connection: close`.
//!
//! Memory: the read buffer and the write buffer come from `io_bufs`' per-thread stock and
//! go back to it while the connection waits between requests or between a streamed
//! response's frames, so an idle keep-alive connection or an open SSE stream holds neither
//! (the header-parsing scratch is per thread too).

use super::Prefixed;
use super::parse::{self, Head, Parsed, Scratch};
use super::write::{self, Framing};
use crate::config::Listener;
use crate::http::body::ProxyBody;
use crate::http::forward::{self, ConnCtx};
use crate::http::{io_bufs, wire};
use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body, Frame};
use hyper_util::server::graceful::Watcher;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Read buffer size to grow by (when less than an eighth of it is free).
const READ_CHUNK: usize = io_bufs::CHUNK;
const READ_ROOM: (usize, usize) = (READ_CHUNK / 8, READ_CHUNK);
/// Data frames up to this size are copied next to the head; larger ones are written from
/// their own buffer (one vectored write either way).
const COPY_MAX: usize = 16 * 1024;

type Polled = Option<Result<Frame<Bytes>, <ProxyBody as Body>::Error>>;

thread_local! {
    /// Header positions while a head is parsed (used only within `parse::parse`).
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Vec::new()) };
}

/// Serves `io` until the client leaves, a response closes it, draining ends it, or a
/// request the fast path does not serve hands it to hyper. `watcher` is held for the life of
/// the connection so a graceful shutdown waits for it.
pub async fn serve<S>(mut io: S, ctx: Arc<ConnCtx>, listener: &Listener, watcher: Watcher, stop: &CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Conn {
        buf: BytesMut::new(),
        out: Vec::new(),
        max_buf: listener.max_header_bytes() * 2,
        header_timeout: listener.header_timeout(),
        timer: None,
    };
    let mut stopped = pin!(stop.cancelled());
    loop {
        let head = match conn.read_head(&mut io, stopped.as_mut()).await {
            Next::Head(head) => head,
            Next::Hyper => {
                let prefix = std::mem::take(&mut conn.buf).freeze();
                // Boxed, as it is rare: hyper's connection state would otherwise be part of
                // every connection's task, idle ones included.
                Box::pin(crate::http::server::serve_hyper_h1(Prefixed::new(prefix, io), ctx, listener, watcher)).await;
                return;
            }
            Next::Done => return,
        };
        let Head { req, close, trailers, head: req_head } = head;
        // The request's future is pinned here and `exchange` polls it in place: inside
        // `exchange`'s own future it would be moved into it, whole, on every request.
        let handled = pin!(forward::handle(req, &ctx));
        let asked = Asked { close, trailers, head: req_head };
        match conn.exchange(&mut io, handled, asked, stop).await {
            After::KeepAlive => {}
            After::Close => {
                let _ = tokio::time::timeout(conn.header_timeout, io.shutdown()).await;
                return;
            }
            After::Abort => return,
        }
    }
}

struct Conn {
    /// Read buffer; none (no capacity) while the connection waits with nothing buffered.
    buf: BytesMut,
    /// Write buffer; none between responses and while a streamed body waits.
    out: Vec<u8>,
    /// A head that does not fit in this many bytes goes to hyper (which answers 431).
    max_buf: usize,
    header_timeout: Duration,
    /// The header timeout, armed once and moved forward only when it fires early: most
    /// requests never touch the timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        io_bufs::give_read(std::mem::take(&mut self.buf));
        self.give_out();
    }
}

// Moved once per request; boxing the head would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(Head),
    Hyper,
    Done,
}

/// What the request's head says about its response.
struct Asked {
    /// The client sent `Connection: close`.
    close: bool,
    /// The client accepts trailers (`TE: trailers`).
    trailers: bool,
    /// A HEAD request: the response has no body.
    head: bool,
}

enum After {
    KeepAlive,
    /// The response said so (or the client, or draining): close cleanly.
    Close,
    /// The client left, or the response could not be sent whole.
    Abort,
}

impl Conn {
    async fn read_head<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        mut stopped: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> Next {
        let deadline = Instant::now() + self.header_timeout;
        loop {
            if !self.buf.is_empty() {
                let parsed = SCRATCH.with_borrow_mut(|scratch| parse::parse(&mut self.buf, scratch));
                match parsed {
                    Parsed::Ready(head) => return Next::Head(head),
                    Parsed::Fallback => return Next::Hyper,
                    Parsed::Partial if self.buf.len() >= self.max_buf => return Next::Hyper,
                    Parsed::Partial => {}
                }
            }
            let idle = self.buf.is_empty();
            if idle {
                self.give_out();
            }
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            let read = loop {
                tokio::select! {
                    biased;
                    r = poll_fn(|cx| io_bufs::poll_read(Pin::new(&mut *io), cx, &mut self.buf, READ_ROOM, true)) => break r,
                    () = timer.as_mut() => {
                        if Instant::now() >= deadline {
                            tracing::debug!("client did not send a request head within header_timeout");
                            return Next::Done;
                        }
                        timer.as_mut().reset(deadline);
                    }
                    () = &mut stopped, if idle => return Next::Done,
                }
            };
            match read {
                Ok(0) | Err(_) => return Next::Done,
                Ok(_) => {}
            }
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

    /// Whether a read may watch the socket for the client leaving: not once a next request
    /// is buffered (as hyper, which stops reading then).
    fn may_watch(&self) -> bool {
        self.buf.is_empty()
    }

    /// Gets the response to one request from `handled` (its forwarding) and writes it.
    async fn exchange<S, F>(
        &mut self,
        io: &mut S,
        mut handled: Pin<&mut F>,
        asked: Asked,
        stop: &CancellationToken,
    ) -> After
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: Future<Output = Response<ProxyBody>>,
    {
        let Asked { close, trailers, head: req_head } = asked;
        let resp = loop {
            if !self.may_watch() {
                break handled.as_mut().await;
            }
            // The wait is usually short: the buffer is kept (`release: false`).
            tokio::select! {
                biased;
                resp = handled.as_mut() => break resp,
                r = poll_fn(|cx| io_bufs::poll_read(Pin::new(&mut *io), cx, &mut self.buf, READ_ROOM, false)) => match r {
                    Ok(0) | Err(_) => return After::Abort,
                    Ok(_) => {}
                },
            }
        };
        let mut close = close || stop.is_cancelled();
        // The head in a block of its own: borrowed, it would keep a slot in this future
        // across the writes below even once given back.
        let (framing, mut body) = {
            let (parts, body) = resp.into_parts();
            let hint = if body.is_end_stream() { None } else { Some(body.size_hint().exact()) };
            self.take_out();
            self.out.clear();
            let framing = write::head(&mut self.out, &parts, hint, req_head, &mut close);
            crate::http::header_maps::give(parts.headers);
            (framing, body)
        };
        let sent = match framing {
            Framing::None => {
                drop(body);
                self.flush_out(io).await
            }
            framing => self.send_body(io, &mut body, framing, trailers).await,
        };
        match sent {
            Ok(()) if close => After::Close,
            Ok(()) => After::KeepAlive,
            Err(e) => {
                tracing::debug!(error = %e, "downstream response not sent whole");
                After::Abort
            }
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
        let chunked = framing == Framing::Chunked;
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
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
                    if chunked {
                        let t = if trailers { frame.trailers_ref() } else { None };
                        wire::last_chunk(&mut self.out, t);
                        return self.flush_out(io).await;
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            if !chunked {
                if data.len() as u64 > left {
                    let _ = self.flush_out(io).await;
                    return Err(io::Error::other("response body longer than its content-length"));
                }
                left -= data.len() as u64;
            } else {
                wire::chunk_size_line(&mut self.out, data.len());
            }
            let tail: &[u8] = if chunked { b"\r\n" } else { b"" };
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
        if chunked {
            wire::last_chunk(&mut self.out, None);
        } else if left > 0 {
            let _ = self.flush_out(io).await;
            return Err(io::Error::other("response body shorter than its content-length"));
        }
        self.flush_out(io).await
    }

    /// Waits for the body's next frame, watching for the client leaving meanwhile. The
    /// buffers go back to the stock for the wait (`out` was just flushed).
    async fn next_frame<S: AsyncRead + Unpin>(&mut self, io: &mut S, body: &mut ProxyBody) -> io::Result<Polled> {
        self.give_out();
        let polled = self.wait_frame(io, body).await;
        self.take_out();
        polled
    }

    async fn wait_frame<S: AsyncRead + Unpin>(&mut self, io: &mut S, body: &mut ProxyBody) -> io::Result<Polled> {
        loop {
            if !self.may_watch() {
                return Ok(poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await);
            }
            tokio::select! {
                biased;
                frame = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)) => return Ok(frame),
                r = poll_fn(|cx| io_bufs::poll_read(Pin::new(&mut *io), cx, &mut self.buf, READ_ROOM, true)) => match r {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Err(e) => return Err(e),
                    Ok(_) => {}
                },
            }
        }
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

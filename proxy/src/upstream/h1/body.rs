//! `H1Body`: an upstream HTTP/1.1 response body, read straight from the connection it owns.
//! At a clean end a reusable connection goes back to its endpoint's pool (once); after an
//! error, a read-to-close body or a `connection: close`, the connection is dropped (closed,
//! its `max_connections` unit given back). While the body waits with nothing buffered the
//! connection holds no read buffer (`io_bufs::poll_read` with `release`), so an open SSE
//! stream between events costs no buffer.

use super::Conn;
use crate::http::fault::Side;
use crate::http::h1::Framing;
use crate::http::h1::body::Decoder;
use crate::http::h1::chunked::Decoded;
use crate::http::h1::{Error, Kind};
use crate::http::io_bufs;
use crate::upstream::Endpoint;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// Largest read for a body.
const MAX_READ: usize = 64 * 1024;
/// Smallest room to read a body into: a stock buffer (`io_bufs::CHUNK`).
const MIN_READ: usize = io_bufs::CHUNK;

/// A response body from an HTTP/1.1 upstream.
#[derive(Debug)]
pub struct H1Body {
    /// A body that was whole in the buffer with the head.
    full: Option<Bytes>,
    read: Decoder,
    conn: Option<Conn>,
    /// Where the connection goes at a clean end; `None` if it is not reusable.
    home: Option<Arc<Endpoint>>,
    /// Data was handed out since the last `Pending`.
    gave_data: bool,
    /// An error held back one poll (see `fail`).
    failed: Option<Box<Error>>,
}

impl H1Body {
    /// A body already read (or none).
    pub(super) fn full(b: Option<Bytes>) -> Self {
        Self {
            full: b.filter(|b| !b.is_empty()),
            read: Decoder::new(Framing::None, Side::Upstream),
            conn: None,
            home: None,
            gave_data: false,
            failed: None,
        }
    }

    /// A body still on `conn`.
    pub(super) fn reading(conn: Conn, framing: Framing, home: Option<Arc<Endpoint>>) -> Self {
        let read = Decoder::new(framing, Side::Upstream);
        Self { full: None, read, conn: Some(conn), home, gave_data: false, failed: None }
    }

    fn finish(&mut self, clean: bool) {
        let conn = self.conn.take();
        if let (true, Some(conn), Some(home)) = (clean, conn, self.home.take()) {
            home.pool.put_h1(conn, home.settings.max_idle);
        }
    }

    /// Fails the body. When data went out in this same wake-up, the error waits for the
    /// next poll: the downstream writer flushes what it has on `Pending`, so the client sees
    /// the response head and the bytes that came before the failure (a body error would make
    /// it drop the unflushed head).
    fn fail(&mut self, e: Error, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.finish(false);
        if self.gave_data {
            self.gave_data = false;
            self.failed = Some(Box::new(e));
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(*e)));
        }
        if let Some(b) = this.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        let polled = this.poll_read(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) if f.is_data() => this.gave_data = true,
            Poll::Pending => this.gave_data = false,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && self.failed.is_none() && (self.conn.is_none() || self.read.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.full, self.read.remaining()) {
            (Some(b), _) => SizeHint::with_exact(b.len() as u64),
            (None, _) if self.failed.is_some() => SizeHint::default(),
            (None, _) if self.conn.is_none() => SizeHint::with_exact(0),
            (None, Some(n)) => SizeHint::with_exact(n),
            (None, None) => SizeHint::default(),
        }
    }
}

impl H1Body {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            let buf = &mut conn.buf;
            let decoded = match self.read.decode(buf) {
                Ok(d) => d,
                Err(e) => return self.fail(e, cx),
            };
            match decoded {
                Decoded::Data(b) => {
                    if self.read.is_done() {
                        self.finish(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Decoded::Trailers(t) => {
                    self.finish(true);
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Decoded::End => {
                    self.finish(true);
                    return Poll::Ready(None);
                }
                Decoded::NeedMore => {}
            }
            // (room wanted, room reserved when there is less): a `Content-Length` body's
            // rest, within bounds; else a reused stock buffer is room enough, and a new
            // one is larger.
            let room = match self.read.remaining() {
                Some(left) => {
                    let want = left.clamp(MIN_READ as u64, MAX_READ as u64) as usize;
                    (want, want)
                }
                None => (MIN_READ, MAX_READ / 4),
            };
            match ready!(io_bufs::poll_read(Pin::new(&mut conn.io), cx, buf, room, true)) {
                Ok(0) => {
                    return match self.read.eof() {
                        // Read to the close: the connection ends with the body.
                        Ok(()) => {
                            self.finish(false);
                            Poll::Ready(None)
                        }
                        Err(e) => self.fail(e, cx),
                    };
                }
                Ok(_) => {}
                Err(e) => return self.fail(Error::upstream(Kind::Io(e)), cx),
            }
        }
    }
}

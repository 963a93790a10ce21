//! `H1Body`: an upstream HTTP/1.1 response body, read straight from the connection it owns.
//! At a clean end a reusable connection goes back to its endpoint's pool (once); after an
//! error, a read-to-close body or a `connection: close`, the connection is dropped (closed,
//! its `max_connections` unit given back). While the body waits with nothing buffered the
//! connection holds no read buffer (`io_bufs::poll_read` with `release`), so an open SSE
//! stream between events costs no buffer.

use super::chunked::{Decoded, Decoder};
use super::parse::Framing;
use super::{Conn, Error};
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

#[derive(Debug)]
enum Read {
    Length(u64),
    Chunked(Decoder),
    Close,
    Done,
}

/// A response body from an HTTP/1.1 upstream.
#[derive(Debug)]
pub struct H1Body {
    /// A body that was whole in the buffer with the head.
    full: Option<Bytes>,
    read: Read,
    conn: Option<Conn>,
    /// Where the connection goes at a clean end; `None` if it is not reusable.
    home: Option<Arc<Endpoint>>,
    /// Data was handed out since the last `Pending`.
    gave_data: bool,
    /// An error held back one poll (see `fail`).
    failed: Option<Error>,
}

impl H1Body {
    /// A body already read (or none).
    pub(super) fn full(b: Option<Bytes>) -> Self {
        Self {
            full: b.filter(|b| !b.is_empty()),
            read: Read::Done,
            conn: None,
            home: None,
            gave_data: false,
            failed: None,
        }
    }

    /// A body still on `conn`.
    pub(super) fn reading(conn: Conn, framing: Framing, home: Option<Arc<Endpoint>>) -> Self {
        let read = match framing {
            Framing::Empty => Read::Done,
            Framing::Length(n) => Read::Length(n),
            Framing::Chunked => Read::Chunked(Decoder::default()),
            Framing::Close => Read::Close,
        };
        Self { full: None, read, conn: Some(conn), home, gave_data: false, failed: None }
    }

    fn finish(&mut self, clean: bool) {
        self.read = Read::Done;
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
            self.failed = Some(e);
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
            return Poll::Ready(Some(Err(e)));
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
        self.full.is_none() && self.failed.is_none() && matches!(self.read, Read::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.full, &self.read) {
            (Some(b), _) => SizeHint::with_exact(b.len() as u64),
            (None, Read::Length(n)) => SizeHint::with_exact(*n),
            (None, Read::Done) if self.failed.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl H1Body {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self;
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            let buf = &mut conn.buf;
            // (room wanted, room reserved when there is less)
            let room = match &mut this.read {
                Read::Done => return Poll::Ready(None),
                Read::Length(left) => {
                    if !buf.is_empty() {
                        let n = (*left).min(buf.len() as u64);
                        let data = buf.split_to(n as usize).freeze();
                        *left -= n;
                        if *left == 0 {
                            this.finish(true);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let want = (*left).clamp(MIN_READ as u64, MAX_READ as u64) as usize;
                    (want, want)
                }
                Read::Chunked(dec) => match dec.decode(buf) {
                    Err(e) => return this.fail(e, cx),
                    Ok(Decoded::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    Ok(Decoded::Trailers(t)) => {
                        this.finish(true);
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::End) => {
                        this.finish(true);
                        return Poll::Ready(None);
                    }
                    // A reused stock buffer is room enough; a new one is larger.
                    Ok(Decoded::NeedMore) => (MIN_READ, MAX_READ / 4),
                },
                Read::Close => {
                    if !buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                    }
                    (MIN_READ, MAX_READ / 4)
                }
            };
            match ready!(io_bufs::poll_read(Pin::new(&mut conn.io), cx, buf, room, true)) {
                Ok(0) if matches!(this.read, Read::Close) => {
                    this.finish(false);
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::Truncated, cx),
                Ok(_) => {}
                Err(e) => return this.fail(Error::Io(e), cx),
            }
        }
    }
}

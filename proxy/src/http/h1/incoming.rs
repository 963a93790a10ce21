//! A request body the in-task server reads off its connection: the connection's task
//! decodes it (`Feed`, with the codec's body decoder) into a one-frame slot shared with
//! the body (`Incoming`), which whoever forwards the request takes from (the upstream
//! exchange, in the same task, or an HTTP/2 pipe task of its own). One frame at a time:
//! the connection reads on only when the frame has been taken, so a slow upstream slows
//! the client down rather than filling memory. `100 Continue` goes out when the body is
//! first asked for.
//!
//! Errors are the client's: a malformed or cut body fails the body (the request gets a
//! 400, or nothing if the client has gone) and never counts against the upstream.

use super::body::Decoder;
use super::chunked::Decoded;
use super::error::{Error, Kind};
use super::framing::Framing;
use crate::http::fault::Side;
use crate::http::io_bufs;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use tokio::io::{AsyncRead, AsyncWrite};

/// Room kept free in the read buffer for a body read.
const READ_ROOM: (usize, usize) = (io_bufs::CHUNK / 8, io_bufs::CHUNK);
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The body of a request on the in-task server.
#[derive(Debug)]
pub struct Incoming {
    shared: Arc<Mutex<Slot>>,
}

/// The connection's side of an [`Incoming`].
#[derive(Debug)]
pub struct Feed {
    shared: Arc<Mutex<Slot>>,
    decoder: Decoder,
    /// Bytes of `100 Continue` written; `None` when none is owed.
    continued: Option<usize>,
    state: Fed,
}

/// Where a feed stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fed {
    /// Reading on.
    Open,
    /// The whole body was read.
    Ended,
    /// The body was malformed: the request is answered and the connection closes.
    Failed,
    /// The client closed or the connection failed mid-body.
    Gone,
    /// The body's holder dropped it before its end: the rest is unread.
    Abandoned,
}

#[derive(Debug, Default)]
struct Slot {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    end: End,
    /// Bytes of a `Content-Length` body not yet taken.
    remaining: Option<u64>,
    /// The body has been polled (so `100 Continue` is due).
    wanted: bool,
    dropped: bool,
    body: Option<Waker>,
    conn: Option<Waker>,
}

#[derive(Debug, Default)]
enum End {
    #[default]
    Open,
    Done,
    /// Failed; the error goes to the first poll that sees it.
    Failed(Option<Error>),
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A body framed by `framing` (not `None`) and the connection's feed for it.
pub fn channel(framing: Framing, expect_continue: bool) -> (Incoming, Feed) {
    let remaining = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let shared = Arc::new(Mutex::new(Slot { remaining, ..Slot::default() }));
    let feed = Feed {
        shared: shared.clone(),
        decoder: Decoder::new(framing, Side::Client),
        continued: expect_continue.then_some(0),
        state: Fed::Open,
    };
    (Incoming { shared }, feed)
}

impl Body for Incoming {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let mut s = lock(&self.shared);
        let polled = if let Some(data) = s.data.take() {
            if let Some(n) = s.remaining.as_mut() {
                *n = n.saturating_sub(data.len() as u64);
            }
            Poll::Ready(Some(Ok(Frame::data(data))))
        } else if let Some(t) = s.trailers.take() {
            Poll::Ready(Some(Ok(Frame::trailers(t))))
        } else {
            match &mut s.end {
                End::Done => return Poll::Ready(None),
                End::Failed(e) => {
                    let e = e.take().unwrap_or_else(|| Error::client(Kind::Invalid("request body failed")));
                    return Poll::Ready(Some(Err(e)));
                }
                End::Open => {
                    s.wanted = true;
                    if !s.body.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        s.body = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        };
        // The connection waits on this body (a frame to be taken, or the first ask).
        let conn = s.conn.take();
        drop(s);
        if let Some(w) = conn {
            w.wake();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        s.data.is_none() && s.trailers.is_none() && matches!(s.end, End::Done)
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.shared);
        match s.remaining {
            Some(n) => SizeHint::with_exact(n),
            None if matches!(s.end, End::Done) && s.data.is_none() => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.dropped = true;
        let conn = s.conn.take();
        drop(s);
        if let Some(w) = conn {
            w.wake();
        }
    }
}

impl Feed {
    /// Where the feed stands.
    pub fn state(&self) -> Fed {
        self.state
    }

    /// Still reading the body.
    pub fn is_open(&self) -> bool {
        self.state == Fed::Open
    }

    /// Reads and decodes the body into the slot as its holder takes it: `Ready` once the
    /// feed is no longer open (see [`Fed`]), `Pending` while it waits on the client or on
    /// the holder.
    pub fn poll<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        buf: &mut BytesMut,
    ) -> Poll<Fed> {
        while self.state == Fed::Open {
            {
                let mut s = lock(&self.shared);
                if s.dropped {
                    self.state = Fed::Abandoned;
                    break;
                }
                // A frame not yet taken, or a client that waits for 100 Continue before a
                // body nobody asked for yet: wait for the holder.
                if s.data.is_some() || s.trailers.is_some() || (self.continued == Some(0) && !s.wanted) {
                    if !s.conn.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        s.conn = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
            if let Some(sent) = self.continued.as_mut() {
                match ready!(write_continue(cx, io, sent)) {
                    Ok(()) => self.continued = None,
                    Err(_) => self.finish(Fed::Gone, Some(Kind::Closed)),
                }
                continue;
            }
            match self.decoder.decode(buf) {
                Ok(Decoded::Data(d)) => {
                    // The last bytes of a length-framed body end it at once, so its holder
                    // sees the end with them.
                    let done = self.decoder.is_done();
                    self.deliver(|s| {
                        s.data = Some(d);
                        if done {
                            s.end = End::Done;
                        }
                    });
                    if done {
                        self.state = Fed::Ended;
                    }
                }
                Ok(Decoded::Trailers(t)) => {
                    self.deliver(|s| s.trailers = Some(t));
                    self.finish(Fed::Ended, None);
                }
                Ok(Decoded::End) => self.finish(Fed::Ended, None),
                Ok(Decoded::NeedMore) => {
                    match ready!(io_bufs::poll_read(Pin::new(&mut *io), cx, buf, READ_ROOM, false)) {
                        Ok(0) => self.finish(Fed::Gone, Some(Kind::Truncated)),
                        Ok(_) => {}
                        Err(e) => self.finish(Fed::Gone, Some(Kind::Io(e))),
                    }
                }
                Err(e) => {
                    self.state = Fed::Failed;
                    self.fail(e);
                }
            }
        }
        Poll::Ready(self.state)
    }

    /// The response is about to start: a `100 Continue` not yet begun is not sent any more
    /// (one begun must be finished first: `Pending` until it is).
    pub fn poll_response_start<S: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, io: &mut S) -> Poll<()> {
        match self.continued.as_mut() {
            Some(sent) if *sent > 0 => {
                if ready!(write_continue(cx, io, sent)).is_err() {
                    self.finish(Fed::Gone, Some(Kind::Closed));
                }
                self.continued = None;
            }
            _ => self.continued = None,
        }
        Poll::Ready(())
    }

    /// Decodes and discards what `buf` already holds of a body nobody reads any more;
    /// whether that reached the body's end (then the connection can go on).
    pub fn drain_buffered(&mut self, buf: &mut BytesMut) -> bool {
        loop {
            match self.decoder.decode(buf) {
                Ok(Decoded::Data(_)) => {}
                Ok(Decoded::Trailers(_) | Decoded::End) => {
                    self.state = Fed::Ended;
                    return true;
                }
                Ok(Decoded::NeedMore) | Err(_) => return false,
            }
        }
    }

    fn deliver(&self, put: impl FnOnce(&mut Slot)) {
        let mut s = lock(&self.shared);
        put(&mut s);
        let body = s.body.take();
        drop(s);
        if let Some(w) = body {
            w.wake();
        }
    }

    fn finish(&mut self, state: Fed, error: Option<Kind>) {
        self.state = state;
        match error {
            Some(kind) => self.fail(Error::client(kind)),
            None => self.deliver(|s| s.end = End::Done),
        }
    }

    fn fail(&self, e: Error) {
        self.deliver(|s| s.end = End::Failed(Some(e)));
    }
}

impl Drop for Feed {
    /// A connection that goes away mid-body fails the body, so its holder does not wait
    /// for ever.
    fn drop(&mut self) {
        if self.state == Fed::Open {
            self.fail(Error::client(Kind::Truncated));
        }
    }
}

fn write_continue<S: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    io: &mut S,
    sent: &mut usize,
) -> Poll<std::io::Result<()>> {
    while *sent < CONTINUE.len() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &CONTINUE[*sent..]))?;
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        *sent += n;
    }
    Pin::new(&mut *io).poll_flush(cx)
}

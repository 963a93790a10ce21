//! The in-task HTTP/1.1 upstream client. The request's own task owns the connection while
//! it uses it: it writes the request (head and a buffered body in one write; a streamed
//! body frame by frame, watching for an early answer), reads the response head (interim
//! 1xx skipped), and the response body ([`H1Body`]) reads from the connection and gives it
//! back to the pool at its end. No task, channel or wake-up per connection.
//!
//! `encode`: request head and body framing; `parse`: response head; `chunked`: chunked
//! body decoding; `body`: the response body.
//!
//! Memory: a connection's read buffer comes from `http::io_bufs`' per-thread stock when
//! bytes arrive and goes back to it when the connection is parked in the pool or a
//! streamed body waits with nothing buffered, so idle connections and open SSE streams hold
//! none.

mod body;
mod chunked;
mod encode;
mod parse;

pub use body::H1Body;

use crate::http::io_bufs;
use crate::tls::io::MaybeTls;
use crate::upstream::Endpoint;
use crate::upstream::pool::ConnSlot;
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::Body;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use thiserror::Error;
use tokio::io::{AsyncRead, ReadBuf};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body carried whole in the first write when it is at most this large.
const INLINE_BODY: usize = 16 * 1024;
/// Room for a response head read: a whole stock buffer.
const HEAD_READ: usize = io_bufs::CHUNK;

/// Why an HTTP/1.1 exchange or response body failed.
#[derive(Debug, Error)]
pub enum Error {
    #[error("upstream connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream closed the connection before responding")]
    Closed,
    #[error("upstream closed the connection before the end of the body")]
    Truncated,
    #[error("upstream response head over {} bytes", parse::MAX_HEAD)]
    HeadTooLarge,
    #[error("invalid upstream response head: {0}")]
    Parse(httparse::Error),
    #[error("invalid upstream response: {0}")]
    Invalid(&'static str),
    #[error("invalid chunked upstream body: {0}")]
    Framing(&'static str),
    #[error("request body failed: {0}")]
    RequestBody(BoxError),
    #[error("request body length differs from its content-length")]
    RequestLength,
}

/// An upstream connection: the stream, what was read past the last response, and the
/// `max_connections` unit it holds until dropped.
pub struct Conn {
    io: MaybeTls,
    /// Read buffer; none (no capacity) while the connection is idle.
    buf: BytesMut,
    /// It has carried an exchange before (so the upstream may have closed it while idle).
    reused: bool,
    _slot: ConnSlot,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("reused", &self.reused).field("buffered", &self.buf.len()).finish()
    }
}

impl Conn {
    pub(crate) fn new(io: MaybeTls, slot: ConnSlot) -> Self {
        Self { io, buf: BytesMut::new(), reused: false, _slot: slot }
    }

    /// Marks a connection going idle as having served an exchange, and gives its read
    /// buffer back to the stock (a body read out of it may still be on its way downstream:
    /// the stock only reuses it once that is dropped).
    pub(crate) fn park(&mut self) {
        self.reused = true;
        if self.buf.is_empty() {
            io_bufs::give_read(std::mem::take(&mut self.buf));
        }
    }

    /// Whether an idle connection still looks open: nothing buffered, and a read that does
    /// not wait (no syscall unless the socket is readable) finds neither EOF nor bytes.
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        Pin::new(&mut self.io).poll_read(&mut cx, &mut rb).is_pending()
    }
}

/// A request ready to be written: its head (and body, if it was all there at once) as wire
/// pieces, and the rest of the body if it is streamed.
pub struct Outgoing<B> {
    first: encode::Queue,
    framing: encode::Framing,
    /// The rest of a streamed body; `None` when `first` is the whole request.
    rest: Option<B>,
    /// Whole in memory and safe to send twice (an idempotent method): the upstream may
    /// have processed a request on a connection that then failed without an answer, so
    /// a POST is not resent (as nginx, unlike a blind retry).
    replayable: bool,
    head_request: bool,
}

impl<B> Outgoing<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Encodes `req`, taking the body's first frame if it is ready now.
    ///
    /// Not async: it needs no `.await`, and as an `async fn` its state (the request, then
    /// its parts and the wire pieces) was part of every HTTP/1.1 request's future.
    pub fn new(req: Request<B>) -> Result<Self, Error> {
        let (parts, mut body) = req.into_parts();
        let (mut head, mut framing) = encode::head(&parts, body.is_end_stream(), body.size_hint().exact());
        let head_request = parts.method == Method::HEAD;
        let idempotent = crate::resilience::retry::is_idempotent(&parts.method);
        let mut pieces = encode::Queue::default();
        let mut ended = framing == encode::Framing::None;
        if !ended {
            // Only a look at whether a frame is ready now, so a no-op waker does: if the
            // body is not ready, the exchange polls it again with the task's waker (which
            // replaces this one) once the head is written, before the task waits on it.
            let polled = Pin::new(&mut body).poll_frame(&mut Context::from_waker(Waker::noop()));
            if let Poll::Ready(frame) = polled {
                let whole = body.is_end_stream();
                match frame.transpose().map_err(|e| Error::RequestBody(e.into()))? {
                    Some(f) => match f.into_data() {
                        // A small whole body joins the head: one buffer, one write.
                        Ok(d)
                            if whole
                                && framing == encode::Framing::Length(d.len() as u64)
                                && d.len() <= INLINE_BODY =>
                        {
                            // Exactly: a full vector becomes `Bytes` without a second allocation.
                            head.reserve_exact(d.len());
                            head.extend_from_slice(&d);
                            framing = encode::Framing::Length(0);
                            ended = true;
                        }
                        Ok(d) => {
                            framing.data(&mut pieces, d)?;
                            ended = whole;
                        }
                        Err(f) => {
                            framing.end(&mut pieces, f.trailers_ref())?;
                            ended = true;
                        }
                    },
                    None => ended = true,
                }
            }
        }
        if ended {
            framing.end(&mut pieces, None)?;
        }
        crate::http::header_maps::give(parts.headers);
        let mut first = encode::Queue::default();
        first.push(Bytes::from(head));
        first.append(pieces);
        Ok(Self { first, framing, rest: (!ended).then_some(body), replayable: ended && idempotent, head_request })
    }

    /// The request is whole in memory, idempotent, and can be written again on another
    /// connection.
    pub fn replayable(&self) -> bool {
        self.replayable
    }
}

/// A failed exchange; `retry` when it failed on a reused connection before any response
/// byte, so a fresh connection may be tried with the same request.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    pub retry: bool,
}

/// Sends `out` on `conn` and reads the response head. The body reads on from `conn`; a
/// reusable connection goes back to `home`'s pool at the body's end.
///
/// A plain fn returning an async block, not an `async fn`: an `async fn` keeps its
/// arguments in its state for its whole life and copies them into locals besides, so the
/// connection would be stored twice in every request's future.
pub fn exchange<'a, B>(
    mut conn: Conn,
    out: &'a mut Outgoing<B>,
    home: &'a Arc<Endpoint>,
) -> impl Future<Output = Result<Response<H1Body>, Failure>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let replayable = out.replayable();
    let head_request = out.head_request;
    let mut send = Sending {
        first: &out.first,
        first_sent: Some(0),
        queue: encode::Queue::default(),
        body: out.rest.take(),
        framing: out.framing,
        done: false,
    };
    async move {
        let mut got = false;
        let head = poll_fn(|cx| read_head(cx, &mut conn, &mut send, &mut got, head_request)).await;
        let head = match head {
            Ok(h) => h,
            Err(error) => {
                let retry = conn.reused && !got && replayable && matches!(error, Error::Io(_) | Error::Closed);
                return Err(Failure { error, retry });
            }
        };
        // An early answer leaves the request body half sent: the connection cannot be reused.
        let reusable = head.keep_alive && send.done;
        let body = match parse::take_whole(&mut conn.buf, head.framing) {
            Some(b) => {
                if reusable {
                    home.pool.put_h1(conn, home.settings.max_idle);
                }
                H1Body::full(Some(b))
            }
            None if head.framing == parse::Framing::Empty => {
                if reusable {
                    home.pool.put_h1(conn, home.settings.max_idle);
                }
                H1Body::full(None)
            }
            None => H1Body::reading(conn, head.framing, reusable.then(|| home.clone())),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }
}

/// The request still being written.
struct Sending<'a, B> {
    /// The request's first pieces, kept whole in `Outgoing` for a second try (so not cloned
    /// or consumed here); bytes of them written so far, `None` once all are.
    first: &'a encode::Queue,
    first_sent: Option<usize>,
    /// Pieces of a streamed body.
    queue: encode::Queue,
    body: Option<B>,
    framing: encode::Framing,
    done: bool,
}

impl<B> Sending<'_, B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Writes what is queued and what the body gives until it waits or ends.
    fn poll(&mut self, cx: &mut Context<'_>, io: &mut MaybeTls) -> Poll<Result<(), Error>> {
        if let Some(sent) = self.first_sent.as_mut() {
            std::task::ready!(self.first.poll_write_from(io, cx, sent))?;
            self.first_sent = None;
        }
        loop {
            if !self.queue.is_empty() {
                std::task::ready!(self.queue.poll_write(io, cx))?;
            }
            let Some(body) = self.body.as_mut() else { return Poll::Ready(Ok(())) };
            let frame = std::task::ready!(Pin::new(body).poll_frame(cx));
            match frame.transpose().map_err(|e| Error::RequestBody(e.into()))? {
                Some(f) => match f.into_data() {
                    Ok(d) => self.framing.data(&mut self.queue, d)?,
                    Err(f) => {
                        self.framing.end(&mut self.queue, f.trailers_ref())?;
                        self.body = None;
                    }
                },
                None => {
                    self.framing.end(&mut self.queue, None)?;
                    self.body = None;
                }
            }
        }
    }
}

/// Drives the request out and reads until a final response head has arrived.
fn read_head<B>(
    cx: &mut Context<'_>,
    conn: &mut Conn,
    send: &mut Sending<'_, B>,
    got: &mut bool,
    head_request: bool,
) -> Poll<Result<parse::Head, Error>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        if !send.done {
            match send.poll(cx, &mut conn.io) {
                Poll::Ready(Ok(())) => send.done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if !conn.buf.is_empty()
            && let Some(head) = parse::parse(&mut conn.buf, head_request)?
        {
            if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                return Poll::Ready(Err(Error::Invalid("unexpected 101 Switching Protocols")));
            }
            if head.status.is_informational() {
                // 100 Continue and friends: the real answer follows.
                continue;
            }
            return Poll::Ready(Ok(head));
        }
        // The buffer is kept while the head is awaited (a short wait).
        let read = io_bufs::poll_read(Pin::new(&mut conn.io), cx, &mut conn.buf, (HEAD_READ, HEAD_READ), false);
        match std::task::ready!(read) {
            Ok(0) => return Poll::Ready(Err(Error::Closed)),
            Ok(_) => *got = true,
            Err(e) => return Poll::Ready(Err(Error::Io(e))),
        }
    }
}

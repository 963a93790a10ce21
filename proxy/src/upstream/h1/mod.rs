//! The in-task HTTP/1.1 upstream client. The request's own task owns the connection while
//! it uses it: it writes the request (head and a buffered body in one write; a streamed
//! body frame by frame, watching for an early answer), reads the response head (interim
//! 1xx skipped), and the response body ([`H1Body`]) reads from the connection and gives it
//! back to the pool at its end. No task, channel or wake-up per connection.
//!
//! Framing, heads and errors are the HTTP/1 codec's (`http::h1`), whose errors say whose
//! fault they are: the upstream's for its connection and response, the client's for the
//! request body. `queue`: the wire pieces a request is written from; `body`: the response
//! body.
//!
//! Memory: a connection's read buffer comes from `http::io_bufs`' per-thread stock when
//! bytes arrive and goes back to it when the connection is parked in the pool or a
//! streamed body waits with nothing buffered, so idle connections and open SSE streams hold
//! none.

mod body;
mod queue;

pub use body::H1Body;

use crate::http::body::ClientBodyError;
use crate::http::fault::Side;
use crate::http::h1::{self as codec, Framing, Kind};
use crate::http::io_bufs;
use crate::tls::io::MaybeTls;
use crate::upstream::Endpoint;
use crate::upstream::pool::ConnSlot;
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use thiserror::Error;
use tokio::io::{AsyncRead, ReadBuf};

/// A request body carried whole in the first write when it is at most this large.
const INLINE_BODY: usize = 16 * 1024;
/// Room for a response head read: a whole stock buffer.
const HEAD_READ: usize = io_bufs::CHUNK;

/// Why an HTTP/1.1 exchange or response body failed.
#[derive(Debug, Error)]
pub enum Error {
    /// The wire: the upstream's connection or response (its fault), or a request body that
    /// broke its own length (the client's).
    #[error("{0}")]
    Wire(#[from] codec::Error),
    /// Reading the request body from the client failed: the client's fault. (Boxed: rare,
    /// and the error is part of every exchange's result.)
    #[error("request body failed: {0}")]
    RequestBody(Box<ClientBodyError>),
}

impl Error {
    fn io(e: std::io::Error) -> Self {
        Self::Wire(codec::Error::upstream(Kind::Io(e)))
    }

    /// Who is at fault.
    pub fn side(&self) -> Side {
        match self {
            Self::Wire(e) => e.side(),
            Self::RequestBody(_) => Side::Client,
        }
    }

    /// The upstream's connection failed or closed before any answer (a request written
    /// on a pooled connection may be sent again on a fresh one).
    fn is_connection_lost(&self) -> bool {
        matches!(self, Self::Wire(e) if e.side() == Side::Upstream && matches!(e.kind(), Kind::Io(_) | Kind::Closed))
    }
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

    /// The connection as a byte stream, after a 101 (an upgrade): the stream, the bytes
    /// already read past the response head, and its `max_connections` unit.
    pub(crate) fn into_parts(self) -> (MaybeTls, BytesMut, ConnSlot) {
        (self.io, self.buf, self._slot)
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
    first: queue::Queue,
    encoder: Encoder,
    /// The rest of a streamed body; `None` when `first` is the whole request.
    rest: Option<B>,
    /// Whole in memory and safe to send twice (an idempotent method): the upstream may
    /// have processed a request on a connection that then failed without an answer, so
    /// a POST is not resent (as nginx, unlike a blind retry).
    replayable: bool,
    /// What the response's framing depends on (HEAD, CONNECT).
    requested: codec::head::Requested,
    /// The request asks for an upgrade (`http::upgrade::Requested`, set by the server that
    /// read it): a 101 hands the connection over.
    upgrade: bool,
}

/// A request body's encoder; a body that breaks its own length is the client's fault.
type Encoder = codec::body::Encoder;

impl<B> Outgoing<B>
where
    B: Body<Data = Bytes, Error = ClientBodyError> + Unpin,
{
    /// Encodes `req`, taking the body's first frame if it is ready now.
    ///
    /// Not async: it needs no `.await`, and as an `async fn` its state (the request, then
    /// its parts and the wire pieces) was part of every HTTP/1.1 request's future.
    /// `extra`: field lines written after the request's own (`headers::Forwarding`).
    pub fn new<E: codec::encode::ExtraLines + ?Sized>(req: Request<B>, extra: &E) -> Result<Self, Error> {
        let (parts, mut body) = req.into_parts();
        let (mut head, framing) =
            codec::encode::request_head(&parts, extra, body.is_end_stream(), body.size_hint().exact());
        let mut encoder = Encoder::new(framing, Side::Client);
        let idempotent = crate::resilience::retry::is_idempotent(&parts.method);
        // The head goes in front once a small whole body may have joined it.
        let mut pieces = queue::Queue::with_front_room();
        let mut ended = framing == Framing::None;
        if !ended {
            // Only a look at whether a frame is ready now, so a no-op waker does: if the
            // body is not ready, the exchange polls it again with the task's waker (which
            // replaces this one) once the head is written, before the task waits on it.
            let polled = Pin::new(&mut body).poll_frame(&mut Context::from_waker(Waker::noop()));
            if let Poll::Ready(frame) = polled {
                let whole = body.is_end_stream();
                match frame.transpose().map_err(|e| Error::RequestBody(Box::new(e)))? {
                    Some(f) => match f.into_data() {
                        // A small whole body joins the head: one buffer, one write.
                        Ok(d) if whole && framing == Framing::Length(d.len() as u64) && d.len() <= INLINE_BODY => {
                            // Exactly: a full vector becomes `Bytes` without a second allocation.
                            head.reserve_exact(d.len());
                            head.extend_from_slice(&d);
                            encoder = Encoder::new(Framing::None, Side::Client);
                            ended = true;
                        }
                        Ok(d) => {
                            push_data(&mut encoder, &mut pieces, d)?;
                            ended = whole;
                        }
                        Err(f) => {
                            push_end(&mut encoder, &mut pieces, f.trailers_ref())?;
                            ended = true;
                        }
                    },
                    None => ended = true,
                }
            }
        }
        if ended {
            push_end(&mut encoder, &mut pieces, None)?;
        }
        let upgrade = parts.extensions.get::<crate::http::upgrade::Requested>().is_some();
        crate::http::header_maps::give(parts.headers);
        let mut first = pieces;
        first.put_front(Bytes::from(head));
        let replayable = ended && idempotent;
        let requested = codec::head::Requested::new(&parts.method);
        Ok(Self { first, encoder, rest: (!ended).then_some(body), replayable, requested, upgrade })
    }

    /// The request is whole in memory, idempotent, and can be written again on another
    /// connection.
    pub fn replayable(&self) -> bool {
        self.replayable
    }
}

/// Queues the wire pieces of one data frame.
fn push_data(encoder: &mut Encoder, q: &mut queue::Queue, data: Bytes) -> Result<(), Error> {
    if data.is_empty() {
        return Ok(());
    }
    let mut line = Vec::new();
    let tail = encoder.data(data.len(), &mut line)?;
    if !line.is_empty() {
        q.push(Bytes::from(line));
    }
    q.push(data);
    q.push(Bytes::from_static(tail));
    Ok(())
}

/// Queues the body's end (the last chunk with its trailers, for chunked framing).
fn push_end(encoder: &mut Encoder, q: &mut queue::Queue, trailers: Option<&http::HeaderMap>) -> Result<(), Error> {
    if encoder.is_ended() {
        return Ok(());
    }
    if encoder.framing() == Framing::Chunked && trailers.is_none_or(|t| t.is_empty()) {
        encoder.end(None, &mut Vec::new())?;
        q.push(Bytes::from_static(b"0\r\n\r\n"));
        return Ok(());
    }
    let mut out = Vec::new();
    encoder.end(trailers, &mut out)?;
    q.push(Bytes::from(out));
    Ok(())
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
    B: Body<Data = Bytes, Error = ClientBodyError> + Unpin,
{
    let replayable = out.replayable();
    let requested = out.requested;
    let upgrade = out.upgrade;
    let mut send = Sending {
        first: &out.first,
        first_sent: Some(0),
        queue: queue::Queue::default(),
        body: out.rest.take(),
        encoder: out.encoder,
        done: false,
    };
    async move {
        let mut got = false;
        let head = poll_fn(|cx| read_head(cx, &mut conn, &mut send, &mut got, requested, upgrade)).await;
        let head = match head {
            Ok(h) => h,
            Err(error) => {
                let retry = conn.reused && !got && replayable && error.is_connection_lost();
                return Err(Failure { error, retry });
            }
        };
        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // The connection is the client's byte stream now (`http::upgrade`).
            let mut resp = Response::new(H1Body::full(None));
            *resp.status_mut() = head.status;
            *resp.version_mut() = head.version;
            *resp.headers_mut() = head.headers;
            resp.extensions_mut().insert(crate::http::upgrade::Upgraded::new(conn));
            return Ok(resp);
        }
        // An early answer leaves the request body half sent: the connection cannot be reused.
        let reusable = head.keep_alive && send.done;
        let whole = match head.framing {
            Framing::Length(n) if conn.buf.len() as u64 >= n => Some(conn.buf.split_to(n as usize).freeze()),
            _ => None,
        };
        let body = match whole {
            Some(b) => {
                if reusable {
                    home.pool.put_h1(conn, home.settings.max_idle);
                }
                H1Body::full(Some(b))
            }
            None if head.framing == Framing::None => {
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
    first: &'a queue::Queue,
    first_sent: Option<usize>,
    /// Pieces of a streamed body.
    queue: queue::Queue,
    body: Option<B>,
    encoder: Encoder,
    done: bool,
}

impl<B> Sending<'_, B>
where
    B: Body<Data = Bytes, Error = ClientBodyError> + Unpin,
{
    /// Writes what is queued and what the body gives until it waits or ends.
    fn poll(&mut self, cx: &mut Context<'_>, io: &mut MaybeTls) -> Poll<Result<(), Error>> {
        if let Some(sent) = self.first_sent.as_mut() {
            std::task::ready!(self.first.poll_write_from(io, cx, sent)).map_err(Error::io)?;
            self.first_sent = None;
        }
        loop {
            if !self.queue.is_empty() {
                std::task::ready!(self.queue.poll_write(io, cx)).map_err(Error::io)?;
            }
            let Some(body) = self.body.as_mut() else { return Poll::Ready(Ok(())) };
            let frame = std::task::ready!(Pin::new(body).poll_frame(cx));
            match frame.transpose().map_err(|e| Error::RequestBody(Box::new(e)))? {
                Some(f) => match f.into_data() {
                    Ok(d) => push_data(&mut self.encoder, &mut self.queue, d)?,
                    Err(f) => {
                        push_end(&mut self.encoder, &mut self.queue, f.trailers_ref())?;
                        self.body = None;
                    }
                },
                None => {
                    push_end(&mut self.encoder, &mut self.queue, None)?;
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
    requested: codec::head::Requested,
    upgrade: bool,
) -> Poll<Result<codec::head::ResponseHead, Error>>
where
    B: Body<Data = Bytes, Error = ClientBodyError> + Unpin,
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
            && let Some(head) = codec::head::response(&mut conn.buf, requested)?
        {
            if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                // Only for an upgrade request whose body (if any) has gone out whole.
                if upgrade && send.done {
                    return Poll::Ready(Ok(head));
                }
                return Poll::Ready(Err(
                    codec::Error::upstream(Kind::Invalid("unexpected 101 Switching Protocols")).into()
                ));
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
            Ok(0) => return Poll::Ready(Err(codec::Error::upstream(Kind::Closed).into())),
            Ok(_) => *got = true,
            Err(e) => return Poll::Ready(Err(Error::io(e))),
        }
    }
}

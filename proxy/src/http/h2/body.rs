//! Bodies on h2 streams, for both ends: [`RecvBody`] reads a stream's data (giving its
//! flow-control window back as each chunk is handed on) and trailers; [`Pipe`] copies a
//! body to a stream a chunk at a time as the stream's window allows, as hyper's
//! `PipeToSendStream` did.

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use thiserror::Error;

/// A received HTTP/2 body: data, then trailers.
#[derive(Debug)]
pub struct RecvBody {
    /// `None` only once given back (see [`RecvBody::returning`]).
    recv: Option<RecvStream>,
    data_done: bool,
    /// What `content-length` announced, less what has been read.
    remaining: Option<u64>,
    /// Where the stream goes if the body is dropped before its end.
    back: Option<Returned>,
}

/// A request stream handed back by a body dropped before its end, so the server can read
/// the rest of it (see `server::linger`).
pub type Returned = std::sync::Arc<std::sync::Mutex<Option<RecvStream>>>;

impl RecvBody {
    /// The body of `recv`, whose head announced `content_length`.
    pub fn new(recv: RecvStream, content_length: Option<u64>) -> Self {
        Self { recv: Some(recv), data_done: false, remaining: content_length, back: None }
    }

    /// Like [`RecvBody::new`], but dropped before its end it puts the stream in `back`.
    pub fn returning(recv: RecvStream, content_length: Option<u64>, back: Returned) -> Self {
        Self { recv: Some(recv), data_done: false, remaining: content_length, back: Some(back) }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if let (Some(back), Some(recv)) = (self.back.take(), self.recv.take())
            && !recv.is_end_stream()
        {
            *back.lock().unwrap_or_else(|p| p.into_inner()) = Some(recv);
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        let Some(recv) = this.recv.as_mut() else { return Poll::Ready(None) };
        if !this.data_done {
            match ready!(recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    // The window is ours to manage: without this the sender stalls.
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    if let Some(n) = this.remaining.as_mut() {
                        *n = n.saturating_sub(chunk.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Some(Err(e)) => return Poll::Ready(early_end(e)),
                None => this.data_done = true,
            }
        }
        match ready!(recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) => Poll::Ready(early_end(e)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.as_ref().is_none_or(RecvStream::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// RST_STREAM(NO_ERROR) ends a body early without failing it (RFC 9113 §8.1).
fn early_end(e: h2::Error) -> Option<Result<Frame<Bytes>, h2::Error>> {
    (e.reason() != Some(Reason::NO_ERROR)).then_some(Err(e))
}

/// Why piping a body to a stream stopped.
#[derive(Debug, Error)]
pub enum PipeError {
    #[error("peer reset the stream: {0:?}")]
    Reset(Reason),
    #[error("{0}")]
    H2(#[from] h2::Error),
    #[error("the stream stopped taking data")]
    Closed,
    #[error("body failed: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// Copies a body to its h2 stream, a chunk at a time as the stream's flow-control window
/// allows. A body that fails resets the stream (with the h2 reason behind the failure,
/// else INTERNAL_ERROR); a peer's reset stops the pipe, dropping the body with it.
pub struct Pipe<B> {
    body: B,
    stream: SendStream<Bytes>,
    /// A chunk taken from the body, waiting for send capacity; and whether it is the last.
    pending: Option<(Bytes, bool)>,
}

impl<B> Pipe<B> {
    pub fn new(body: B, stream: SendStream<Bytes>) -> Self {
        Self { body, stream, pending: None }
    }

    /// Resets the stream (the pipe's owner gave up on it).
    pub fn send_reset(&mut self, reason: Reason) {
        self.stream.send_reset(reason);
    }
}

impl<B> Future for Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Output = Result<(), PipeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some((chunk, eos)) = this.pending.take() {
                if this.poll_capacity(cx)?.is_pending() {
                    this.pending = Some((chunk, eos));
                    return this.wait_or_reset(cx);
                }
                this.stream.send_data(chunk, eos)?;
                if eos {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            match this.next_frame(cx)? {
                Poll::Ready(true) => return Poll::Ready(Ok(())),
                Poll::Ready(false) => {}
                Poll::Pending => return this.wait_or_reset(cx),
            }
        }
    }
}

impl<B> Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    /// Pending, registered for the client's RST_STREAM while the pipe waits (on the body or
    /// for capacity). Checked only then: each stream call takes h2's lock, and a body that
    /// is ready is sent (or fails to send on a reset stream) without it.
    fn wait_or_reset(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipeError>> {
        match self.stream.poll_reset(cx) {
            Poll::Ready(reason) => Poll::Ready(Err(PipeError::Reset(reason?))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits until the stream may send at least one byte.
    fn poll_capacity(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipeError>> {
        while self.stream.capacity() == 0 {
            match ready!(self.stream.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                None => return Poll::Ready(Err(PipeError::Closed)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes the body's next frame: a data chunk is parked for capacity, trailers are sent.
    /// Ready(true) once the stream is finished.
    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, PipeError>> {
        let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                self.stream.send_reset(reset_reason(&e));
                return Poll::Ready(Err(PipeError::Body(Box::new(e))));
            }
            // No trailers and no last data frame yet: end with an empty one.
            None => return Poll::Ready(self.stream.send_data(Bytes::new(), true).map(|()| true).map_err(Into::into)),
        };
        let eos = self.body.is_end_stream();
        match frame.into_data() {
            // The last chunk goes without waiting for capacity: h2 buffers it and asks for
            // the window itself, and waiting would hold no less (the chunk is in memory and
            // nothing is read after it). Most responses are one chunk: this saves two
            // stream calls, each one a lock of h2's state.
            Ok(chunk) if eos => Poll::Ready(self.stream.send_data(chunk, true).map(|()| true).map_err(Into::into)),
            // Claim a minimal share of the window, not the chunk's size: h2 raises it as
            // data is buffered, and a whole-chunk claim starves other streams (hyper#4003).
            Ok(chunk) if !chunk.is_empty() => {
                self.stream.reserve_capacity(1);
                self.pending = Some((chunk, eos));
                Poll::Ready(Ok(false))
            }
            Ok(_) => Poll::Ready(Ok(false)),
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    self.stream.reserve_capacity(0);
                    Poll::Ready(self.stream.send_trailers(trailers).map(|()| true).map_err(Into::into))
                }
                // A frame kind we do not know: skip it.
                Err(_) => Poll::Ready(Ok(false)),
            },
        }
    }
}

/// The reset to send for a failed body, as hyper chose it: the h2 reason somewhere in the
/// error's chain (the other side's own reset, passed on), else INTERNAL_ERROR.
pub fn reset_reason(e: &(dyn std::error::Error + 'static)) -> Reason {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(reason) = s.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        source = s.source();
    }
    Reason::INTERNAL_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Error)]
    #[error("wrapped: {0}")]
    struct Wrapped(#[source] h2::Error);

    #[derive(Debug, Error)]
    #[error("plain")]
    struct Plain;

    #[test]
    fn reset_reason_is_found_in_the_chain() {
        assert_eq!(reset_reason(&Wrapped(Reason::CANCEL.into())), Reason::CANCEL);
        assert_eq!(reset_reason(&Plain), Reason::INTERNAL_ERROR);
    }
}

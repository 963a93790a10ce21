//! Bodies on HTTP/3 request streams: [`RecvBody`] reads a stream's DATA frames and
//! trailers (quinn's flow control is given back as the data is read, so a client can have
//! at most a stream window in flight); [`send`] copies a response body to the stream a
//! frame at a time, each write waiting until quinn has taken the previous one.

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use h3::server::RequestStream;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use thiserror::Error;

type RecvHalf = RequestStream<h3_quinn::RecvStream, Bytes>;
type SendHalf = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// Why a request body could not be read.
#[derive(Debug, Error)]
pub enum RecvError {
    #[error("{0}")]
    Stream(#[from] StreamError),
    /// RFC 9114 §4.1.2: a body longer or shorter than its `content-length` is malformed.
    #[error("request body does not match its content-length")]
    Length,
}

/// A received HTTP/3 request body: data, then trailers.
pub struct RecvBody {
    stream: RecvHalf,
    data_done: bool,
    done: bool,
    /// What `content-length` announced, less what has been read.
    remaining: Option<u64>,
    /// What [`RecvBody::ended_with_head`] read, handed out by the next poll.
    peeked: Option<Result<Frame<Bytes>, RecvError>>,
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody").field("done", &self.done).field("remaining", &self.remaining).finish()
    }
}

impl RecvBody {
    /// The body of `stream`, whose head announced `content_length`.
    pub fn new(stream: RecvHalf, content_length: Option<u64>) -> Self {
        Self { stream, data_done: false, done: false, remaining: content_length, peeked: None }
    }

    /// Whether the body is already known to be empty: the stream ended with the head (a GET,
    /// mostly), so the request can go upstream as one without a body. Looks without
    /// waiting (a later poll registers the task's own waker); a frame it finds is kept.
    pub fn ended_with_head(&mut self) -> bool {
        match Pin::new(&mut *self).poll_frame(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(None) => true,
            Poll::Ready(Some(frame)) => {
                self.peeked = Some(frame);
                false
            }
            Poll::Pending => false,
        }
    }

    fn fail(&mut self, e: RecvError) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        self.done = true;
        if matches!(e, RecvError::Length) {
            self.stream.stop_sending(Code::H3_MESSAGE_ERROR);
        }
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = RecvError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.peeked.take() {
            return Poll::Ready(Some(frame));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.stream.poll_recv_data(cx)) {
                Ok(Some(mut buf)) => {
                    // quinn hands out `Bytes`: this takes it without a copy.
                    let chunk = buf.copy_to_bytes(buf.remaining());
                    if let Some(n) = this.remaining.as_mut() {
                        match n.checked_sub(chunk.len() as u64) {
                            Some(left) => *n = left,
                            None => return this.fail(RecvError::Length),
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Ok(None) => this.data_done = true,
                Err(e) => return this.fail(e.into()),
            }
            if this.remaining.is_some_and(|n| n > 0) {
                return this.fail(RecvError::Length);
            }
        }
        let trailers = ready!(this.stream.poll_recv_trailers(cx));
        this.done = true;
        match trailers {
            Ok(t) => Poll::Ready(t.map(|t| Ok(Frame::trailers(t)))),
            Err(e) => this.fail(e.into()),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.peeked.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // `remaining` has already counted a frame `ended_with_head` peeked: without it, a
        // body read whole by the peek would look empty (an HTTP/1.1 upstream got
        // `content-length: 0` and no body).
        let peeked = match &self.peeked {
            Some(Ok(frame)) => frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => 0,
        };
        self.remaining.map_or_else(SizeHint::default, |n| SizeHint::with_exact(n + peeked))
    }
}

/// Why sending a response body stopped.
#[derive(Debug, Error)]
pub enum SendError {
    #[error("{0}")]
    Stream(#[from] StreamError),
    #[error("body failed: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// Sends `body` on `stream` after its head: data frames as they come, then trailers if any,
/// then the end of the stream. A body that fails resets the stream (H3_INTERNAL_ERROR), so
/// the client sees a broken response rather than a short one.
pub async fn send<B>(mut body: B, stream: &mut SendHalf) -> Result<(), SendError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                stream.stop_stream(Code::H3_INTERNAL_ERROR);
                return Err(SendError::Body(Box::new(e)));
            }
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => stream.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.send_trailers(trailers).await?;
                    break;
                }
            }
        }
    }
    stream.finish().await?;
    Ok(())
}

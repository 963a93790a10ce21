//! Response bodies. Upstream bodies are streamed frame by frame (data and trailers) with no
//! buffering; the wrapper adds the idle and whole-exchange timers, cuts streams of a retired
//! route, and on the last frame hands the upstream connection back to its pool.

use crate::http::h2::body::RecvBody;
use crate::http::route::Route;
use crate::upstream::Lease;
use crate::upstream::response::ResponseBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Why a response body stopped early.
#[derive(Debug, Error)]
pub enum BodyError {
    #[error("upstream body failed: {0}")]
    UpstreamH2(#[from] h2::Error),
    #[error("upstream body failed: {0}")]
    UpstreamH1(#[from] crate::http::h1::Error),
    #[error("upstream idle for longer than the route's idle_timeout")]
    IdleTimeout,
    #[error("request exceeded the route's timeout")]
    Deadline,
    #[error("route was removed and its drain time is over")]
    RouteRemoved,
}

/// A request body as the client sent it: read off an HTTP/1 connection by the in-task
/// server, an HTTP/2 stream's, an HTTP/3 stream's, or none.
#[derive(Debug, Default)]
pub enum ClientBody {
    H1(crate::http::h1::Incoming),
    H2(RecvBody),
    /// Boxed: an HTTP/3 stream's state is ~300 bytes, and every request's future holds
    /// a `ClientBody`.
    H3(Box<crate::h3::RecvBody>),
    #[default]
    Empty,
}

/// Why reading a client's request body failed (always the client's fault).
#[derive(Debug, Error)]
pub enum ClientBodyError {
    #[error("{0}")]
    H1(#[from] crate::http::h1::Error),
    #[error("{0}")]
    H2(#[from] h2::Error),
    #[error("{0}")]
    H3(#[from] crate::h3::RecvError),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            Self::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H3(b) => Pin::new(b.as_mut()).poll_frame(cx).map_err(Into::into),
            Self::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::H1(b) => b.is_end_stream(),
            Self::H2(b) => b.is_end_stream(),
            Self::H3(b) => b.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::H1(b) => b.size_hint(),
            Self::H2(b) => b.size_hint(),
            Self::H3(b) => b.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A request body on its way upstream: streamed from the client, or held in memory so a
/// retry or hedge can send it again.
#[derive(Debug)]
pub enum RequestBody {
    /// Streamed; `Progress` (bodies that are not empty) notes when the client last sent data,
    /// so a slow upload does not count as upstream silence.
    Stream(ClientBody, Option<Arc<Progress>>),
    Replay(Option<Bytes>),
}

/// When a streamed request body last moved, as milliseconds since a process-wide epoch,
/// and whether it has ended (then a silence is the upstream's, not the client's).
#[derive(Debug, Default)]
pub struct Progress(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicBool);

impl Progress {
    fn epoch() -> std::time::Instant {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(std::time::Instant::now)
    }

    fn touch(&self) {
        let ms = Self::epoch().elapsed().as_millis() as u64;
        self.0.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn end(&self) {
        self.1.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the client has sent the whole body.
    pub fn ended(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long ago the body last moved.
    pub fn idle_for(&self) -> Duration {
        let now = Self::epoch().elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.0.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

impl RequestBody {
    /// A streamed body; one with data gets a progress tracker. An empty one is a replay of
    /// nothing.
    pub fn stream(body: ClientBody) -> Self {
        if matches!(body, ClientBody::Empty) {
            return Self::Replay(None);
        }
        let progress = (!body.is_end_stream()).then(|| {
            let p = Arc::new(Progress::default());
            p.touch();
            p
        });
        Self::Stream(body, progress)
    }

    /// The progress tracker of a streamed body with data.
    pub fn progress(&self) -> Option<Arc<Progress>> {
        match self {
            Self::Stream(_, p) => p.clone(),
            Self::Replay(_) => None,
        }
    }
}

impl RequestBody {
    /// Reads `body` into memory when its announced length is at most `max` (a body without
    /// one is streamed and cannot be replayed). Errors are the client's.
    pub async fn buffer(body: ClientBody, max: usize) -> Result<Self, ClientBodyError> {
        if body.is_end_stream() {
            return Ok(Self::Replay(None));
        }
        match body.size_hint().exact() {
            Some(n) if n as usize <= max => {
                let bytes = http_body_util::BodyExt::collect(body).await?.to_bytes();
                Ok(Self::Replay(Some(bytes)))
            }
            _ => Ok(Self::stream(body)),
        }
    }

    /// A copy for another try, if this body can be replayed.
    pub fn replay(&self) -> Option<Self> {
        match self {
            Self::Stream(..) => None,
            Self::Replay(b) => Some(Self::Replay(b.clone())),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            Self::Stream(b, progress) => {
                let polled = Pin::new(&mut *b).poll_frame(cx);
                if let (Poll::Ready(r), Some(p)) = (&polled, progress) {
                    match r {
                        Some(Err(_)) => {}
                        Some(Ok(f)) if f.is_data() && !b.is_end_stream() => p.touch(),
                        _ => {
                            p.touch();
                            p.end();
                        }
                    }
                }
                polled
            }
            Self::Replay(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Stream(b, _) => b.is_end_stream(),
            Self::Replay(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Stream(b, _) => b.size_hint(),
            Self::Replay(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Every response the proxy writes downstream.
#[derive(Debug)]
pub enum ProxyBody {
    /// A body we made (errors, admin).
    Full(Option<Bytes>),
    /// An upstream's body, streamed.
    Upstream(Box<UpstreamBody>),
}

impl ProxyBody {
    /// A body of fixed bytes.
    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }
}

/// The bookkeeping of one forwarded exchange, settled when the response ends or is dropped.
#[derive(Debug)]
pub struct Exchange {
    pub route: Arc<Route>,
    pub backend: usize,
    pub lease: Option<Lease>,
    pub started: std::time::Instant,
    /// The whole response was read: the connection may be reused.
    pub clean: bool,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(b) = self.route.backends.get(self.backend) {
            b.metrics.observe(self.started.elapsed());
        }
        if let Some(lease) = self.lease.take()
            && self.clean
        {
            lease.release();
        }
    }
}

/// An upstream response body on its way downstream.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: ResponseBody,
    idle_after: Option<Duration>,
    /// Armed only once the upstream makes us wait, so small responses never touch the timer.
    idle: Option<Pin<Box<Sleep>>>,
    progressed: bool,
    deadline: Option<Pin<Box<Sleep>>>,
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    exchange: Option<Exchange>,
    /// The access log entry, written when this body is dropped (sent or abandoned).
    log: Option<crate::access_log::Pending>,
    /// The request's server span, ended when this body is dropped.
    span: Option<Box<crate::trace::ServerSpan>>,
}

impl UpstreamBody {
    /// Wraps `inner`. `streaming` responses (no length known) also watch for route removal.
    pub fn new(inner: ResponseBody, mut exchange: Exchange, deadline: Option<Instant>, streaming: bool) -> Self {
        let route = exchange.route.clone();
        if inner.is_end_stream() {
            // Nothing to read (204, HEAD, empty): settle now, the connection is free.
            exchange.clean = true;
            drop(exchange);
            return Self {
                inner,
                idle_after: None,
                idle: None,
                progressed: false,
                deadline: None,
                cut: None,
                exchange: None,
                log: None,
                span: None,
            };
        }
        Self {
            inner,
            idle_after: route.idle_timeout,
            idle: None,
            progressed: false,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            cut: streaming.then(|| Box::pin(route.life.cut())),
            exchange: Some(exchange),
            log: None,
            span: None,
        }
    }

    /// Counts the bytes sent into `pending` and writes it when the body is done.
    pub fn log_on_end(&mut self, pending: crate::access_log::Pending) {
        self.log = Some(pending);
    }

    /// Ends the request's server span when the body is done.
    pub fn span_on_end(&mut self, span: Box<crate::trace::ServerSpan>) {
        self.span = Some(span);
    }

    fn settle(&mut self, clean: bool) {
        if let Some(mut ex) = self.exchange.take() {
            ex.clean = clean;
        }
    }

    /// Settles a failed body, noting why in the access log.
    fn fail(&mut self, err: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.settle(false);
        if let Some(p) = self.log.as_mut() {
            p.entry.error = Some(err.to_string());
        }
        if let Some(s) = self.span.as_mut() {
            s.body_failed(&err.to_string());
        }
        Poll::Ready(Some(Err(err)))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(d) = this.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return this.fail(BodyError::Deadline);
        }
        if let Some(c) = this.cut.as_mut()
            && c.as_mut().poll(cx).is_ready()
        {
            return this.fail(BodyError::RouteRemoved);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.progressed = true;
                if let (Some(p), Some(d)) = (this.log.as_mut(), frame.data_ref()) {
                    p.entry.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.settle(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(e),
            Poll::Ready(None) => {
                this.settle(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(after) = this.idle_after else { return Poll::Pending };
                match this.idle.as_mut() {
                    None => this.idle = Some(Box::pin(tokio::time::sleep(after))),
                    Some(t) if this.progressed => t.as_mut().reset(Instant::now() + after),
                    Some(_) => {}
                }
                this.progressed = false;
                if let Some(t) = this.idle.as_mut()
                    && t.as_mut().poll(cx).is_ready()
                {
                    return this.fail(BodyError::IdleTimeout);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream(u) => Pin::new(u.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Upstream(u) => u.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upstream(u) => u.size_hint(),
        }
    }
}

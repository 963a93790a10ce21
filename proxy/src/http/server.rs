//! Serving one downstream HTTP connection: HTTP/1.1 on the in-task server (`h1`), which
//! hands connections it does not serve to hyper's HTTP/1 server (header read timeout, header
//! size limit → 431); h2c and h2 on the in-task HTTP/2 server (`h2`). Each request goes to
//! `forward::handle`.

use crate::config::Listener;
use crate::detect::Protocol;
use crate::http::body::ClientBody;
use crate::http::forward::{self, ConnCtx};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// Serves `stream` (plain TCP or TLS) until the client leaves or a graceful shutdown
/// (`watcher`; `stop` is its start) completes.
pub async fn serve<S>(
    stream: S,
    proto: Protocol,
    ctx: Arc<ConnCtx>,
    listener: &Listener,
    watcher: Watcher,
    stop: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match proto {
        Protocol::Http1 => crate::http::h1::serve(stream, ctx, listener, watcher, stop).await,
        // Boxed (one allocation per connection): a connection's task is allocated at the
        // size of its largest branch for its whole life, and HTTP/2's state is larger than
        // the HTTP/1.1 server's, so every HTTP/1.1 connection paid for it.
        Protocol::Http2 => Box::pin(crate::http::h2::server::serve(stream, ctx, listener, watcher, stop)).await,
    }
}

/// hyper's HTTP/1 server, for the rest of a connection the in-task server handed over.
pub async fn serve_hyper_h1<S>(stream: S, ctx: Arc<ConnCtx>, listener: &Listener, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(listener.header_timeout())
        // Room above the limit so most oversized heads reach `forward`, which answers
        // 431 like every other proxy error; far larger ones get hyper's bare 431.
        .max_buf_size(listener.max_header_bytes() * 2);
    let result = watcher.watch(b.serve_connection(TokioIo::new(stream), service(ctx))).await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream connection ended with an error");
    }
}

fn service(
    ctx: Arc<ConnCtx>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<crate::http::body::ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<crate::http::body::ProxyBody>, Infallible>> + Send,
> + Clone {
    service_fn(move |req: http::Request<Incoming>| {
        let ctx = ctx.clone();
        // Boxed: hyper moves this future several times on the way; a pointer moves
        // cheaper than the whole request path's state (~5 KB).
        async move { Ok::<_, Infallible>(Box::pin(forward::handle(req.map(ClientBody::Hyper), &ctx)).await) }
    })
}

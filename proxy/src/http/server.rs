//! Serving one downstream HTTP connection with hyper: HTTP/1.1 (header read timeout, header
//! size limit → 431) or h2c, each request handed to `forward::handle`.

use crate::config::Listener;
use crate::detect::Protocol;
use crate::http::forward::{self, ConnCtx};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Serves `stream` (plain TCP or TLS) until the client leaves or a graceful shutdown completes.
pub async fn serve<S>(stream: S, proto: Protocol, ctx: Arc<ConnCtx>, listener: &Listener, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(forward::handle(req, &ctx).await) }
    });
    let result = match proto {
        Protocol::Http1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(listener.header_timeout())
                // Room above the limit so most oversized heads reach `forward`, which answers
                // 431 like every other proxy error; far larger ones get hyper's bare 431.
                .max_buf_size(listener.max_header_bytes() * 2);
            watcher.watch(b.serve_connection(io, svc)).await
        }
        Protocol::Http2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_header_list_size(listener.max_header_bytes() as u32 * 2)
                .max_concurrent_streams(1024);
            watcher.watch(b.serve_connection(io, svc)).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream connection ended with an error");
    }
}

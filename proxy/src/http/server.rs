//! Serving one downstream HTTP connection: HTTP/1.x on the in-task server (`h1`), h2c and
//! h2 on the in-task HTTP/2 server (`h2`). Each request goes to `forward::handle`.

use crate::config::Listener;
use crate::detect::Protocol;
use crate::http::forward::ConnCtx;
use crate::http::upgrade::Switched;
use crate::listener::Open;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// Serves `stream` (plain TCP or TLS) until the client leaves or a graceful shutdown
/// (`stop`) completes; `open` counts it for the drain until then. An HTTP/1.1 connection
/// switched to another protocol is returned, for the caller to carry
/// ([`Switched::run`], in a small box of its own: this future's state is freed first).
pub async fn serve<S>(
    stream: S,
    proto: Protocol,
    ctx: Arc<ConnCtx>,
    listener: &Listener,
    open: Open,
    stop: &CancellationToken,
) -> Option<Switched<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match proto {
        Protocol::Http1 => crate::http::h1::serve(stream, ctx, listener, open, stop).await,
        // Boxed (one allocation per connection): a connection's task is allocated at the
        // size of its largest branch for its whole life, and HTTP/2's state is larger than
        // the HTTP/1.1 server's, so every HTTP/1.1 connection paid for it.
        Protocol::Http2 => {
            Box::pin(crate::http::h2::server::serve(stream, ctx, listener, open, stop)).await;
            None
        }
    }
}

/// One stream's exchange on a multiplexed connection (HTTP/2, HTTP/3), boxed: the request
/// path's state is large (~5 KB), and `FuturesUnordered` keeps a stub of its future type per
/// connection, so only a pointer may be inline.
pub(crate) type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Boxes the future `make` returns with its box allocated first, so the future is written
/// into it: `Box::pin(exchange(..))` built the whole future on the stack and copied all of
/// it to the heap, though a future not yet polled holds only its arguments.
#[inline(always)]
pub(crate) fn stream_future<F: Future<Output = ()> + Send + 'static>(make: impl FnOnce() -> F) -> StreamFuture {
    let boxed: Box<F> = Box::write(Box::new_uninit(), make());
    Box::into_pin(boxed)
}

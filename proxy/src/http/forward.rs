//! The request path, top to bottom: find the route, pick a backend and an endpoint, rewrite
//! headers, send upstream under the route's timers, and stream the response back.

use crate::config::Snapshot;
use crate::http::body::{Exchange, ProxyBody, UpstreamBody};
use crate::http::headers::{self, Peer};
use crate::http::respond::{ForwardError, error_response};
use crate::http::router::{self, RequestView};
use crate::upstream::{self, Lease, UpstreamError};
use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// What a downstream connection knows about itself.
#[derive(Debug)]
pub struct ConnCtx {
    pub config: Arc<ArcSwap<Snapshot>>,
    pub listener: Arc<str>,
    pub peer: Peer,
    /// The connection speaks HTTP/2.
    pub h2: bool,
}

/// Forwards one request and returns the response to write (never fails: errors become
/// responses via [`error_response`]).
pub async fn handle(mut req: Request<Incoming>, ctx: &ConnCtx) -> Response<ProxyBody> {
    let started = std::time::Instant::now();
    // One config load per request; the route (and the clusters it holds) is kept alive by
    // this request even if a reload replaces it meanwhile.
    let route = {
        let snap = ctx.config.load();
        let Some(listener) = snap.listener(&ctx.listener) else {
            return error_response(&ForwardError::ListenerGone);
        };
        let view = RequestView {
            method: req.method(),
            host: router::request_host(req.uri(), req.headers()),
            path: req.uri().path(),
            headers: req.headers(),
        };
        match router::select(&listener.routes, &view) {
            Some(r) => r.clone(),
            None => {
                listener.no_route.count(404);
                return error_response(&ForwardError::NoRoute);
            }
        }
    };
    let (index, backend) = route.pick_backend();
    let fail = |err: ForwardError| {
        let resp = error_response(&err);
        backend.metrics.count(resp.status().as_u16());
        backend.metrics.observe(started.elapsed());
        tracing::debug!(route = %route.name, error = %err, "request failed");
        resp
    };
    let cluster = &backend.cluster;
    let key = cluster.hash_key(req.headers(), ctx.peer.ip);
    let Some(endpoint) = cluster.pick(key) else {
        return fail(ForwardError::NoEndpoint(cluster.name.clone()));
    };
    let wire = cluster.wire_for(ctx.h2);
    headers::prepare_request(&mut req, ctx.peer, wire);
    route.request_headers.apply(req.headers_mut());

    let deadline = route.timeout.map(|t| Instant::now() + t);
    let sent = Timed {
        fut: upstream::pool::send(endpoint, wire, req),
        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        idle_after: route.idle_timeout,
        idle: None,
    }
    .await;
    let (resp, lease): (Response<Incoming>, Lease) = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            if matches!(e, UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout(_)) {
                metrics::counter!(crate::telemetry::UPSTREAM_CONNECT_ERRORS_TOTAL, "cluster" => cluster.name.to_string())
                    .increment(1);
            }
            return fail(ForwardError::Upstream(e));
        }
        Err(e) => return fail(e),
    };

    if cluster.tracks_latency() {
        let now = std::time::Instant::now();
        lease.endpoint().load.observe(now - started, now);
    }
    let (mut parts, body) = resp.into_parts();
    // The downstream connection decides its own version; an HTTP/1.0 upstream must not turn
    // the client's keep-alive connection into a 1.0 one.
    parts.version = http::Version::HTTP_11;
    headers::prepare_response(&mut parts.headers);
    route.response_headers.apply(&mut parts.headers);
    backend.metrics.count(parts.status.as_u16());
    let streaming = http_body::Body::size_hint(&body).exact().is_none();
    let exchange = Exchange { route: route.clone(), backend: index, lease: Some(lease), started, clean: false };
    let body = UpstreamBody::new(body, exchange, deadline, streaming);
    Response::from_parts(parts, ProxyBody::Upstream(Box::new(body)))
}

pin_project_lite::pin_project! {
    /// Waits for the upstream's response head under the route's whole deadline and idle
    /// timeout. The idle timer is only armed if the first poll has to wait.
    struct Timed<F> {
        #[pin]
        fut: F,
        deadline: Option<Pin<Box<Sleep>>>,
        idle_after: Option<Duration>,
        #[pin]
        idle: Option<Sleep>,
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = Result<F::Output, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if let Some(d) = this.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(ForwardError::Timeout));
        }
        if let Some(after) = *this.idle_after {
            let mut idle = this.idle;
            if idle.is_none() {
                idle.set(Some(tokio::time::sleep(after)));
            }
            if idle.as_pin_mut().is_some_and(|t| t.poll(cx).is_ready()) {
                return Poll::Ready(Err(ForwardError::IdleTimeout));
            }
        }
        Poll::Pending
    }
}

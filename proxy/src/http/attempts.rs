//! Getting a response head from a cluster: one try, or several under the route's retry
//! policy (a different endpoint when one exists, backoff between tries, the retry budget and
//! the `max_retries` breaker respected) and hedging (a second try after a delay; the first
//! response wins, the others are cancelled by being dropped).

use crate::http::body::RequestBody;
use crate::http::fault::Side;
use crate::http::respond::ForwardError;
use crate::resilience::breaker::Threshold;
use crate::resilience::outlier::Outcome;
use crate::resilience::retry::Retry;
use crate::telemetry;
use crate::trace::{ClientSpan, ServerSpan, TryEnd};
use crate::upstream::response::ResponseBody;
use crate::upstream::{Cluster, Endpoint, Lease, UpstreamError, Wire, pool};
use futures_util::StreamExt;
use futures_util::future::{Either, FutureExt};
use futures_util::stream::FuturesUnordered;
use http::request::Parts;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use trellis_api::HedgeDelay;

/// How to reach a cluster for one request.
pub struct Plan<'a> {
    pub cluster: &'a Cluster,
    /// A transparent connection's original destination: every try goes there.
    pub target: Option<&'a Arc<Endpoint>>,
    pub wire: Wire,
    pub key: Option<u64>,
    /// The route's whole-request deadline.
    pub deadline: Option<Instant>,
    pub idle_timeout: Option<Duration>,
    /// Set only when this request may be retried.
    pub retry: Option<&'a Retry>,
    /// Set only when this request may be hedged: (delay, extra tries).
    pub hedge: Option<(HedgeDelay, u32)>,
    /// When the request became ready to send: the first try's idle timer counts from it
    /// instead of reading the clock again.
    pub since: Instant,
    /// The request's server span, when it is traced: each try gets a client span under it.
    pub trace: Option<&'a ServerSpan>,
    /// A successful answer is counted for outlier detection later, by what its body says
    /// (MCP routes with `errors_are_failures`).
    pub defer_outcome: bool,
    /// The fields added to every try's request (`headers::prepare_request`).
    pub forwarding: crate::http::headers::Forwarding<'a>,
}

impl Plan<'_> {
    /// The endpoint of the next try: the original destination, or the cluster's pick.
    fn pick(&self, avoid: Option<&Arc<Endpoint>>) -> Option<Arc<Endpoint>> {
        match self.target {
            Some(t) => Some(t.clone()),
            None => self.cluster.pick(self.key, avoid).cloned(),
        }
    }
}

/// A response head and what it took.
pub struct Sent {
    pub response: Response<ResponseBody>,
    pub lease: Lease,
    /// Tries made, hedges included.
    pub tries: u32,
}

type TryResult = Result<(Response<ResponseBody>, Lease), ForwardError>;

/// Sends `req` under `plan`. Failures carry the number of tries made.
///
/// Not an `async fn`: on the common path (one try) the returned future is the try itself,
/// with no state of its own around it, so the request's future holds the try's state once.
pub fn send<'a>(
    plan: &'a Plan<'a>,
    req: Request<RequestBody>,
) -> impl Future<Output = Result<Sent, (ForwardError, u32)>> + 'a {
    let replayable = matches!(req.body(), RequestBody::Replay(_));
    if replayable && (plan.retry.is_some() || plan.hedge.is_some()) {
        // Boxed: the retry/hedge machinery stays out of the common path's (moved) future.
        return Either::Right(Box::pin(send_with_policy(plan, req)));
    }
    Either::Left(try_once(plan, req, None, Some(plan.since)).map(|(_, result)| finish(result, 1)))
}

async fn send_with_policy(plan: &Plan<'_>, req: Request<RequestBody>) -> Result<Sent, (ForwardError, u32)> {
    let (parts, body) = req.into_parts();
    if let Some(r) = plan.retry {
        r.budget.deposit();
    }
    let attempts = plan.retry.map_or(1, |r| r.attempts);
    let mut tries = 0;
    let mut last: Option<Arc<Endpoint>> = None;
    for attempt in 1.. {
        let (ep, result, made) = match plan.hedge {
            Some((delay, max)) => hedged(plan, &parts, &body, delay, max, last.as_ref()).await,
            None => {
                let (ep, r) = try_once(plan, rebuild(&parts, &body), last.as_ref(), None).await;
                (ep, r, 1)
            }
        };
        tries += made;
        let Some(retry) = plan.retry else { return finish(result, tries) };
        let outcome = match &result {
            Ok((resp, _)) => outcome_of(resp),
            Err(e) => match error_outcome(e) {
                Some(o) => o,
                None => return finish(result, tries),
            },
        };
        if attempt >= attempts || !retry.retries_on(outcome) {
            return finish(result, tries);
        }
        let Some(wait) = retry.backoff(attempt + 1, result.as_ref().ok().map(|(r, _)| r.headers())) else {
            return finish(result, tries);
        };
        if plan.deadline.is_some_and(|d| Instant::now() + wait >= d) {
            return finish(result, tries);
        }
        // The breaker first: a retry it refuses must not spend the budget.
        let counts = &plan.cluster.counts;
        if counts.acquire(Threshold::MaxRetries, plan.cluster.settings.limits.as_ref(), &plan.cluster.name).is_err() {
            return finish(result, tries);
        }
        if !retry.budget.withdraw() {
            counts.release(Threshold::MaxRetries);
            metrics::counter!(telemetry::RETRY_BUDGET_EXHAUSTED_TOTAL, "cluster" => plan.cluster.name.to_string())
                .increment(1);
            return finish(result, tries);
        }
        // Release the failed try's connection before waiting.
        drop(result);
        metrics::counter!(telemetry::UPSTREAM_RETRIES_TOTAL, "cluster" => plan.cluster.name.to_string()).increment(1);
        tokio::time::sleep(wait).await;
        counts.release(Threshold::MaxRetries);
        last = ep;
    }
    unreachable!("the loop returns")
}

fn finish(result: TryResult, tries: u32) -> Result<Sent, (ForwardError, u32)> {
    result.map(|(response, lease)| Sent { response, lease, tries }).map_err(|e| (e, tries))
}

/// One try on one endpoint (not `avoid` if another is usable), fed to outlier detection
/// and the latency estimates. `since`: see [`try_on`].
fn try_once<'a>(
    plan: &'a Plan<'a>,
    req: Request<RequestBody>,
    avoid: Option<&Arc<Endpoint>>,
    since: Option<Instant>,
) -> Try<'a, impl Future<Output = PoolResult>> {
    let ep = plan.pick(avoid);
    try_on(plan, req, ep, since)
}

/// One try on `ep` (none: no usable endpoint, which fails the try). `since`, when given,
/// is when the try starts, as already read by the caller (the idle timer counts from it;
/// otherwise from when the try first waits).
fn try_on<'a>(
    plan: &'a Plan<'a>,
    mut req: Request<RequestBody>,
    ep: Option<Arc<Endpoint>>,
    since: Option<Instant>,
) -> Try<'a, impl Future<Output = PoolResult>> {
    // The clock is read only for what uses a try's latency: a vDSO call, cheap but not free,
    // and a proxied request read it six times.
    let started = needs_latency(plan).then(std::time::Instant::now);
    let per_try = plan.retry.and_then(|r| r.per_try_timeout).map(|t| Instant::now() + t);
    let deadline = match (plan.deadline, per_try) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let span = plan.trace.map(|s| s.start_try(&mut req));
    let Some(ep) = ep else { return Try { sent: None, plan, ep: None, started, span } };
    let upload = req.body().progress();
    let deadline = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
    // The rest is made before `pool::send`: its (large) future is then moved into place once,
    // where making the timer after it cost a second move.
    Try {
        sent: Some(Timed {
            fut: pool::send(ep.clone(), plan.wire, req, &plan.forwarding),
            deadline,
            idle_after: plan.idle_timeout,
            since,
            idle: None,
            upload,
        }),
        plan,
        ep: Some(ep),
        started,
        span,
    }
}

type PoolResult = Result<(Response<ResponseBody>, Lease), UpstreamError>;

pin_project_lite::pin_project! {
    /// One try ([`try_on`]): the upstream exchange under the try's deadlines, and, when it
    /// ends, what it says about the endpoint recorded. A future of its own rather than an
    /// `async fn`, which would hold the request it was made from (and its own copy of its
    /// arguments) next to the exchange.
    struct Try<'a, F> {
        // `None` when there was no endpoint to try.
        #[pin]
        sent: Option<Timed<F>>,
        plan: &'a Plan<'a>,
        ep: Option<Arc<Endpoint>>,
        // Set only when the try's latency is used (`needs_latency`).
        started: Option<std::time::Instant>,
        // The try's client span, when the request is traced.
        span: Option<ClientSpan>,
    }
    impl<'a, F> PinnedDrop for Try<'a, F> {
        // A try dropped before it ended (a hedge that lost the race, or a request that
        // ended first) still ends its span: the trace shows every try that was made.
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(span) = this.span.take() {
                cancelled_span(this.plan, span, this.ep.as_ref());
            }
        }
    }
}

/// Ends the span of a try dropped before it ended (out of line: only traced tries get here).
#[cold]
fn cancelled_span(plan: &Plan<'_>, span: ClientSpan, ep: Option<&Arc<Endpoint>>) {
    if let Some(trace) = plan.trace {
        trace.end_try(span, ep.map(|e| &**e), &plan.cluster.name, TryEnd::Cancelled);
    }
}

/// Ends a traced try's client span with how the try went.
fn end_span(plan: &Plan<'_>, span: Option<ClientSpan>, ep: Option<&Arc<Endpoint>>, result: Result<u16, &ForwardError>) {
    if let (Some(trace), Some(span)) = (plan.trace, span) {
        let end = match result {
            Ok(code) => TryEnd::Status(code),
            Err(e) => TryEnd::Failed(e.reason(), e),
        };
        trace.end_try(span, ep.map(|e| &**e), &plan.cluster.name, end);
    }
}

/// Whether a try's latency feeds anything: peak-EWMA balancing or automatic hedging.
fn needs_latency(plan: &Plan<'_>) -> bool {
    plan.cluster.tracks_latency() || matches!(plan.hedge, Some((HedgeDelay::Auto, _)))
}

impl<F: Future<Output = PoolResult>> Future for Try<'_, F> {
    type Output = (Option<Arc<Endpoint>>, TryResult);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (Some(sent), Some(ep)) = (this.sent.as_pin_mut(), this.ep.as_ref()) else {
            let err = ForwardError::NoEndpoint(this.plan.cluster.name.clone());
            end_span(this.plan, this.span.take(), None, Err(&err));
            return Poll::Ready((None, Err(err)));
        };
        let sent = std::task::ready!(sent.poll(cx));
        let result = settle(this.plan, ep, *this.started, sent);
        end_span(this.plan, this.span.take(), Some(ep), result.as_ref().map(|(r, _)| r.status().as_u16()));
        Poll::Ready((this.ep.take(), result))
    }
}

/// The result of a try on `ep` that started at `started` (when its latency is used),
/// recorded for outlier detection and the latency estimates.
fn settle(
    plan: &Plan<'_>,
    ep: &Arc<Endpoint>,
    started: Option<std::time::Instant>,
    sent: Result<PoolResult, ForwardError>,
) -> TryResult {
    let cluster = plan.cluster;
    let result = match sent {
        Ok(Ok(r)) => Ok(r),
        // The client's body failed on its way: not the endpoint's doing.
        Ok(Err(UpstreamError::ClientBody(e))) => Err(ForwardError::ClientBody(e)),
        Ok(Err(e)) => {
            if matches!(e, UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout(_)) {
                metrics::counter!(telemetry::UPSTREAM_CONNECT_ERRORS_TOTAL, "cluster" => cluster.name.to_string())
                    .increment(1);
            }
            Err(ForwardError::Upstream(e))
        }
        // The per-try deadline passed but the route's did not: a per-try timeout.
        Err(ForwardError::Timeout) if plan.deadline.is_none_or(|d| Instant::now() < d) => Err(ForwardError::TryTimeout),
        // The route's whole-request timeout is the route's, however the upload went (and
        // counts against no endpoint either way).
        Err(ForwardError::BodyTimeout) if plan.deadline.is_some_and(|d| Instant::now() >= d) => {
            Err(ForwardError::Timeout)
        }
        Err(e) => Err(e),
    };
    match &result {
        Ok((resp, _)) => {
            if let Some(started) = started {
                let now = std::time::Instant::now();
                if cluster.tracks_latency() {
                    ep.load.observe(now - started, now);
                }
                if matches!(plan.hedge, Some((HedgeDelay::Auto, _))) {
                    cluster.latency.record(now - started);
                }
            }
            if cluster.detects_outliers() && !(plan.defer_outcome && resp.status().is_success()) {
                cluster.record(ep, outcome_of(resp));
            }
        }
        Err(e) => {
            if let Some(o) = error_outcome(e) {
                cluster.record(ep, o);
            }
        }
    }
    result
}

/// Runs up to `1 + max` tries, starting another each time `delay` passes without a
/// usable response; returns the first usable one (or the last failure) and the tries made.
async fn hedged(
    plan: &Plan<'_>,
    parts: &Parts,
    body: &RequestBody,
    delay: HedgeDelay,
    max: u32,
    avoid: Option<&Arc<Endpoint>>,
) -> (Option<Arc<Endpoint>>, TryResult, u32) {
    let delay = match delay {
        HedgeDelay::Fixed(d) => Some(d.get()),
        HedgeDelay::Auto => plan.cluster.latency.quantile(0.95),
    };
    // Each try's endpoint is chosen here, so a hedge can avoid the one it hedges.
    let Some(first) = plan.pick(avoid) else {
        return (None, Err(ForwardError::NoEndpoint(plan.cluster.name.clone())), 1);
    };
    let launch = |ep: Arc<Endpoint>| Box::pin(try_on(plan, rebuild(parts, body), Some(ep), None));
    let mut inflight = FuturesUnordered::new();
    inflight.push(launch(first.clone()));
    let mut tries = 1;
    let mut last_ep = Some(first);
    let mut timer = delay.map(|d| Box::pin(tokio::time::sleep(d)));
    loop {
        let hedge_due = async {
            match timer.as_mut() {
                Some(t) if tries <= max => t.as_mut().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((ep, result)) = inflight.next() => {
                let usable = match &result {
                    Ok((resp, _)) => !plan.retry.is_some_and(|r| r.retries_on(outcome_of(resp))),
                    Err(e) => error_outcome(e).is_none(),
                };
                if usable || inflight.is_empty() {
                    return (ep, result, tries);
                }
                last_ep = ep;
            }
            () = hedge_due => {
                tries += 1;
                metrics::counter!(telemetry::UPSTREAM_HEDGES_TOTAL, "cluster" => plan.cluster.name.to_string()).increment(1);
                match plan.pick(last_ep.as_ref()) {
                    Some(ep) => {
                        last_ep = Some(ep.clone());
                        inflight.push(launch(ep));
                    }
                    None => tries -= 1,
                }
                if let (Some(t), Some(d)) = (timer.as_mut(), delay) {
                    t.as_mut().reset(Instant::now() + d);
                }
            }
        }
    }
}

fn rebuild(parts: &Parts, body: &RequestBody) -> Request<RequestBody> {
    let mut r = Request::new(body.replay().unwrap_or(RequestBody::Replay(None)));
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    r
}

/// The outcome of a response head (grpc-status is in the head for trailers-only answers).
fn outcome_of(resp: &Response<ResponseBody>) -> Outcome {
    static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let grpc = resp.headers().get(&GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
    Outcome::Status { code: resp.status().as_u16(), grpc }
}

/// The outcome of a failed try, or `None` when the failure is not the endpoint's doing
/// (and is not retried): anything on the client's side or the proxy's (a bad or slow
/// request body, an open breaker, no endpoint), and the route's own timeout.
fn error_outcome(e: &ForwardError) -> Option<Outcome> {
    if e.side() != Side::Upstream {
        return None;
    }
    match e {
        ForwardError::Upstream(UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout(_)) => {
            Some(Outcome::ConnectFailure)
        }
        ForwardError::Upstream(
            UpstreamError::Reset(_)
            | UpstreamError::Handshake(_)
            | UpstreamError::Tls { .. }
            | UpstreamError::Protocol(_),
        ) => Some(Outcome::Reset),
        ForwardError::TryTimeout | ForwardError::IdleTimeout => Some(Outcome::Timeout),
        _ => None,
    }
}

pin_project_lite::pin_project! {
    /// Waits for the upstream's response head under a deadline and the idle timeout. The
    /// idle timer is only armed if the first poll has to wait.
    struct Timed<F> {
        #[pin]
        fut: F,
        deadline: Option<Pin<Box<Sleep>>>,
        idle_after: Option<Duration>,
        since: Option<Instant>,
        #[pin]
        idle: Option<Sleep>,
        // While the client is still sending the body, the upstream is not idle.
        upload: Option<Arc<crate::http::body::Progress>>,
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = Result<F::Output, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        // A try's timer that runs out while the client is still sending the body is the
        // client's doing: the upstream may well be waiting for the rest of it. (`settle`
        // turns the route's own deadline back into a route timeout.)
        let uploading = this.upload.as_ref().is_some_and(|p| !p.ended());
        if let Some(d) = this.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(if uploading { ForwardError::BodyTimeout } else { ForwardError::Timeout }));
        }
        if let Some(after) = *this.idle_after {
            let mut idle = this.idle;
            if idle.is_none() {
                idle.set(Some(match *this.since {
                    Some(since) => tokio::time::sleep_until(since + after),
                    None => tokio::time::sleep(after),
                }));
            }
            while let Some(mut t) = idle.as_mut().as_pin_mut() {
                if t.as_mut().poll(cx).is_pending() {
                    break;
                }
                // The upstream is idle only from when the client's body last moved (or ended).
                match this.upload.as_ref() {
                    Some(p) if p.idle_for() < after => t.reset(Instant::now() + (after - p.idle_for())),
                    Some(p) if !p.ended() => return Poll::Ready(Err(ForwardError::BodyTimeout)),
                    _ => return Poll::Ready(Err(ForwardError::IdleTimeout)),
                }
            }
        }
        Poll::Pending
    }
}

//! The request path, top to bottom: find the route, apply its rate limit and fault
//! injection, pick a backend, rewrite headers, get a response head from the cluster
//! (`attempts`: tries, retries, hedges), and stream the response back.

use crate::access_log;
use crate::authz;
use crate::config::{Listener, Snapshot};
use crate::http::attempts::{self, Plan};
use crate::http::body::{ClientBody, Exchange, ProxyBody, RequestBody, UpstreamBody};
use crate::http::headers::{self, Peer};
use crate::http::respond::{ForwardError, error_response_for};
use crate::http::route::Route;
use crate::http::router::{self, RequestView};
use crate::http::upgrade;
use crate::http::version::{self, Hint};
use crate::mcp::Parsed;
use crate::resilience::{fault, retry};
use crate::telemetry;
use crate::upstream::Endpoint;
use crate::upstream::{UpstreamError, Wire};
use arc_swap::ArcSwap;
use futures_util::future::{Either, FutureExt};
use http::{HeaderValue, Request, Response};
use std::sync::Arc;
use tokio::time::Instant;

/// Response header with the number of tries a request took (routes with retry or hedge);
/// a `HeaderName` for the reason `respond::ERROR_HEADER` is one.
pub const ATTEMPTS_HEADER: http::HeaderName = http::HeaderName::from_static("x-trellis-attempts");

/// What a downstream connection knows about itself.
#[derive(Debug)]
pub struct ConnCtx {
    pub config: Arc<ArcSwap<Snapshot>>,
    pub listener: Arc<str>,
    pub peer: Peer,
    /// The mesh peer's verified SPIFFE ID.
    pub peer_id: Option<Arc<str>>,
    /// The connection multiplexes requests (HTTP/2, or HTTP/3): no `connection: close`,
    /// and `protocol: auto` clusters speak HTTP/2 upstream.
    pub h2: bool,
    /// A transparent connection's original destination: where requests no listener route
    /// takes go (DESIGN §9).
    pub target: Option<Target>,
    /// What the connection tells about the destination app's HTTP version.
    pub hint: Hint,
}

/// A transparent connection's original destination and the route its requests count on.
#[derive(Debug)]
pub struct Target {
    pub endpoint: Arc<Endpoint>,
    pub route: Arc<Route>,
}

/// The route a request takes, and, for a transparent connection's original destination,
/// the endpoint it goes to.
struct Routed {
    route: Arc<Route>,
    target: Option<Arc<Endpoint>>,
    /// An MCP route's policy when only its rules with `mcp` conditions can allow the
    /// request: they are checked per JSON-RPC message once the body is read.
    mcp_policy: Option<Arc<authz::Policy>>,
    /// Which of the fields the proxy rewrites the request came with.
    seen: headers::Seen,
}

/// Writes the audit line and counts a denial.
pub fn audit_denied(
    listener: &str,
    peer_id: Option<&str>,
    peer: std::net::IpAddr,
    method: Option<&http::Method>,
    path: Option<&str>,
    decision: authz::Decision,
    policy: Option<&authz::Policy>,
) {
    metrics::counter!(telemetry::AUTHZ_DENIED_TOTAL, "listener" => listener.to_owned()).increment(1);
    tracing::warn!(
        target: "trellis::audit",
        listener,
        peer_id = peer_id.unwrap_or("none"),
        peer = %peer,
        method = method.map(http::Method::as_str).unwrap_or("-"),
        path = path.unwrap_or("-"),
        policy = policy.map_or("none", |p| p.name.as_str()),
        rule = ?decision,
        "authorization denied"
    );
}

/// Forwards one request and returns the response to write (never fails: errors become
/// responses via [`error_response_for`]), and writes its access log line when the config has
/// an access log.
///
/// Not an `async fn`: routing needs no await, so it is done here, and the returned future
/// is `forward`'s with no state of its own around it (an `async fn` would hold the request
/// and `forward`'s whole future besides).
pub fn handle(mut req: Request<ClientBody>, ctx: &ConnCtx) -> impl Future<Output = Response<ProxyBody>> {
    // One config load per request; the route (and the clusters it holds) is kept alive by
    // this request even if a reload replaces it meanwhile.
    let (log, entry, route, span) = {
        let snap = ctx.config.load();
        let listener = snap.listener(&ctx.listener);
        if let Some(l) = listener {
            l.requests.count(req.version());
        }
        let log = snap.access_log.clone();
        // The line shows the path as the client sent it.
        let entry =
            log.as_ref().map(|_| access_log::Entry::new(&req, &ctx.listener, ctx.peer.ip, ctx.peer_id.as_ref()));
        // Routing, authorization and the upstream all see one normalized path, so
        // `/api/../admin` cannot pass a `/api/*` rule and reach `/admin`.
        if let Some(normalized) = crate::http::path::normalize(req.uri()) {
            *req.uri_mut() = normalized;
        }
        // The sampling decision: with tracing off, this one branch is all it costs.
        let span = match &snap.tracer {
            Some(t) => t.start(&mut req, &ctx.listener, ctx.peer.ip, ctx.peer_id.as_deref()),
            None => None,
        };
        (log, entry, route_for(&mut req, ctx, listener), span)
    };
    match route {
        Ok(routed) => Either::Left(forward(req, ctx, routed, entry, span).map(|(resp, entry, span)| {
            let mut resp = resp;
            finish_span(span, &mut resp);
            logged(resp, log, entry)
        })),
        Err(err) => {
            let mut resp = error_response_for(&err, ctx.h2 && version::is_grpc(&req));
            // A request refused for its head: the client is not to be trusted with more on
            // this connection.
            if matches!(err, ForwardError::HeadersTooLarge | ForwardError::Host(_)) && !ctx.h2 {
                resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            finish_span(span, &mut resp);
            Either::Right(std::future::ready(logged(resp, log, entry)))
        }
    }
}

/// Notes the response head in a traced request's server span, which ends with the body
/// (an upstream's, when it has been sent or abandoned) or now.
fn finish_span(span: Option<Box<crate::trace::ServerSpan>>, resp: &mut Response<ProxyBody>) {
    if let Some(mut span) = span {
        let error = resp.headers().get(&crate::http::respond::ERROR_HEADER).and_then(|v| v.to_str().ok());
        span.respond(resp.status().as_u16(), error);
        if let ProxyBody::Upstream(body) = resp.body_mut() {
            body.span_on_end(span);
        }
    }
}

/// Completes `entry` from `resp` and hands it to the access log: at the end of an upstream
/// body, or now for a response the proxy made.
fn logged(
    mut resp: Response<ProxyBody>,
    log: Option<Arc<access_log::AccessLog>>,
    entry: Option<Box<access_log::Entry>>,
) -> Response<ProxyBody> {
    if let (Some(log), Some(mut entry)) = (log, entry) {
        entry.status = resp.status().as_u16();
        let header = |name: &http::HeaderName| resp.headers().get(name).and_then(|v| v.to_str().ok());
        entry.error = header(&crate::http::respond::ERROR_HEADER).map(str::to_owned);
        entry.attempts = header(&ATTEMPTS_HEADER).and_then(|v| v.parse().ok());
        let pending = access_log::Pending { entry, log };
        if let Some(up) = resp.extensions().get::<upgrade::Upgraded>() {
            // Written when the stream ends.
            up.with(|t| t.log = Some(pending));
            return resp;
        }
        match resp.body_mut() {
            // Written when the body has been sent (or abandoned), with its final size.
            ProxyBody::Upstream(body) => body.log_on_end(pending),
            // A body the proxy made: written now, as `pending` drops.
            ProxyBody::Full(b) => {
                let mut pending = pending;
                pending.entry.bytes = b.as_ref().map_or(0, |b| b.len() as u64);
            }
        }
    }
    resp
}

/// The route for `req` on this connection's listener, after the 0-RTT check, the
/// header-size limit and authorization: the first listener route that matches, else (a
/// transparent connection) the original destination; or why there is none.
fn route_for(
    req: &mut Request<ClientBody>,
    ctx: &ConnCtx,
    listener: Option<&Arc<Listener>>,
) -> Result<Routed, ForwardError> {
    let Some(listener) = listener else {
        return Err(ForwardError::ListenerGone);
    };
    // Early data may be a replay (RFC 8470): only a safe method may act on it.
    if !req.method().is_safe() && req.extensions().get::<crate::h3::EarlyData>().is_some() {
        return Err(ForwardError::TooEarly);
    }
    // The field count is capped for HTTP/2 and HTTP/3 as the HTTP/1.1 codec caps it: their
    // decoders take up to a header map's limit (24,576 fields, within a large
    // `max_header_bytes`), and a full map cannot take the fields added below.
    //
    // Then room, at once, for every header added on the way (the hop count below, the
    // forwarding headers later). A map from the h2 or h3 decoder is sized for what the client
    // sent, so adding them one by one grew and rehashed it twice per request (one grow saved:
    // 630 of an h2c request's 38,000 instructions); the HTTP/1.1 codec's maps have the room.
    if header_block_size(req) > listener.max_header_bytes()
        || req.headers().len() > crate::http::h1::MAX_HEADERS
        || req.headers_mut().try_reserve(headers::ADDED_TO_REQUESTS).is_err()
    {
        return Err(ForwardError::HeadersTooLarge);
    }
    let seen = headers::Seen::of(req.headers());
    if seen.host {
        check_host(req).map_err(ForwardError::Host)?;
    }
    // Read and counted up in one lookup of the field when it is there (a request without
    // it goes out with `x-trellis-hops: 1`, `headers::Forwarding`); a request refused from
    // here on is not sent anywhere, so the new count is harmless.
    if seen.hops
        && let http::header::Entry::Occupied(mut o) = req.headers_mut().entry(headers::HOPS_HEADER)
    {
        let max_hops = listener.spec.max_hops.unwrap_or(trellis_api::DEFAULT_MAX_HOPS);
        let hops = std::str::from_utf8(o.get().as_bytes())
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or(ForwardError::BadHops)?;
        if hops >= max_hops {
            return Err(ForwardError::LoopDetected(max_hops));
        }
        o.insert(count_value(hops + 1));
    }
    if req.method() == http::Method::CONNECT {
        check_connect(req, listener)?;
    }
    // Denied unless rules with MCP conditions allow each call of the body (mcp routes).
    let mut deferred = None;
    if listener.mesh || listener.policy.is_some() {
        let peer_id = ctx.peer_id.as_deref();
        let d = authz::decide(
            listener.policy.as_deref(),
            listener.mesh,
            peer_id,
            Some(req.method()),
            Some(req.uri().path()),
        );
        if crate::mcp::defers(listener.policy.as_ref(), d) {
            deferred = Some(d);
        } else if !d.allowed() {
            audit_denied(
                &ctx.listener,
                peer_id,
                ctx.peer.ip,
                Some(req.method()),
                Some(req.uri().path()),
                d,
                listener.policy.as_deref(),
            );
            return Err(ForwardError::Forbidden);
        }
    }
    let view = RequestView::new(req.method(), req.uri(), req.headers());
    let (route, target) = match (router::select(&listener.routes, &view), &ctx.target) {
        (Some(r), _) => (r.clone(), None),
        (None, Some(t)) => (t.route.clone(), Some(t.endpoint.clone())),
        (None, None) => {
            listener.no_route.count(404);
            return Err(ForwardError::NoRoute);
        }
    };
    let mcp_policy = match deferred {
        None => None,
        Some(_) if route.mcp.is_some() => listener.policy.clone(),
        Some(d) => {
            audit_denied(
                &ctx.listener,
                ctx.peer_id.as_deref(),
                ctx.peer.ip,
                Some(req.method()),
                Some(req.uri().path()),
                d,
                listener.policy.as_deref(),
            );
            return Err(ForwardError::Forbidden);
        }
    };
    Ok(Routed { route, target, mcp_policy, seen })
}

/// The request path proper on its route; `log` (set when the access log is on) learns the
/// route, the cluster, the request ID and the endpoint as they are decided, and is handed
/// back with the response.
///
/// A plain fn returning an async block, not an `async fn`: an `async fn` keeps its
/// arguments in its state for its whole life and copies them into locals besides, so the
/// request would be stored twice.
#[expect(clippy::manual_async_fn, reason = "an async fn would store its arguments twice")]
fn forward(
    mut req: Request<ClientBody>,
    ctx: &ConnCtx,
    routed: Routed,
    mut log: Option<Box<access_log::Entry>>,
    mut span: Option<Box<crate::trace::ServerSpan>>,
) -> impl Future<Output = (Response<ProxyBody>, Option<Box<access_log::Entry>>, Option<Box<crate::trace::ServerSpan>>)>
{
    async move {
        let Routed { route, target, mcp_policy, seen } = routed;
        let started = std::time::Instant::now();
        // gRPC runs over HTTP/2 and HTTP/3 only: HTTP/1.1 requests skip the lookup.
        let grpc = ctx.h2 && version::is_grpc(&req);
        let (mut index, mut backend) = route.pick_backend();
        if let Some(s) = span.as_deref_mut() {
            s.routed(&route.name, &backend.cluster.name);
        }
        if let Some(e) = log.as_deref_mut() {
            e.route = Some(route.name.clone());
            e.cluster = Some(backend.cluster.name.clone());
        }
        // MCP routes read and check the body first (boxed, and kept boxed: other routes'
        // futures stay as small as they were).
        let mut mcp = None;
        if route.mcp.is_some() {
            match Box::pin(crate::mcp::admit(
                &mut req,
                &route,
                route.idle_timeout,
                mcp_policy.as_ref(),
                mcp_caller(ctx, &route),
            ))
            .await
            {
                Ok(a) => {
                    if let (Some(e), Some(c)) = (log.as_deref_mut(), a.first()) {
                        e.mcp = Some(crate::mcp::log_fields(c));
                    }
                    if let (Some(s), Some(c)) = (span.as_deref_mut(), a.first()) {
                        s.mcp(c.method.as_deref(), c.name.as_deref());
                    }
                    // Session affinity: the backend whose cluster holds the session.
                    if let Some(p) = &a.pinned {
                        (index, backend) = (p.backend, &route.backends[p.backend]);
                        if let Some(e) = log.as_deref_mut() {
                            e.cluster = Some(backend.cluster.name.clone());
                        }
                    }
                    mcp = Some(Box::new(a));
                }
                Err(r) => {
                    if let (Some(e), Some(c)) = (log.as_deref_mut(), &r.first) {
                        e.mcp = Some(crate::mcp::log_fields(c));
                    }
                    if let (Some(s), Some(c)) = (span.as_deref_mut(), &r.first) {
                        s.mcp(c.method.as_deref(), c.name.as_deref());
                    }
                    backend.metrics.count(r.response.status().as_u16());
                    backend.metrics.observe(started.elapsed());
                    return (r.response, log, span);
                }
            }
        }
        let fail = |err: ForwardError, tries: Option<u32>| {
            let mut resp = error_response_for(&err, grpc);
            if let Some(n) = tries {
                resp.headers_mut().insert(ATTEMPTS_HEADER, count_value(n));
            }
            // The error's status, also for a gRPC error sent as a 200.
            backend.metrics.count(err.status().as_u16());
            backend.metrics.observe(started.elapsed());
            tracing::debug!(route = %route.name, error = %err, "request failed");
            resp
        };
        if let Some(limiter) = &route.rate_limit {
            let checked = match &mcp {
                Some(m) => limiter.check_tools(req.headers(), ctx.peer.ip, &m.tools()),
                None => limiter.check(req.headers(), ctx.peer.ip),
            };
            if let Err(wait) = checked {
                metrics::counter!(telemetry::RATE_LIMITED_TOTAL, "route" => route.name.to_string()).increment(1);
                if let Some(m) = &mcp {
                    let resp = crate::mcp::rate_limited(m, wait);
                    backend.metrics.count(429);
                    return (resp, log, span);
                }
                return (fail(ForwardError::RateLimited(wait), None), log, span);
            }
        }
        // When the request is ready to go upstream (the first try's idle timer counts from it).
        let mut since = Instant::from_std(started);
        if let Some(f) = &route.fault {
            if let Some(d) = fault::delay(f) {
                tokio::time::sleep(d).await;
                since = Instant::now();
            }
            if let Some(status) = fault::abort(f) {
                return (fail(ForwardError::FaultAbort(status), None), log, span);
            }
        }

        let cluster = &backend.cluster;
        if req.method() == http::Method::CONNECT {
            // Boxed: a tunnel's connect state is large and CONNECT rare; inline, every request's
            // future would be sized (and moved) for it.
            return match Box::pin(tunnel(&req, ctx, &route, cluster, log.as_deref_mut())).await {
                Ok(resp) => {
                    backend.metrics.count(200);
                    (resp, log, span)
                }
                Err(e) => (fail(e, None), log, span),
            };
        }
        let mesh = target.as_ref().map_or(cluster.mesh, |t| t.identity.is_some());
        let down = version::Downstream { h2: ctx.h2, hint: ctx.hint };
        let (wire, told) = version::choose(&mut req, down, cluster.protocol, mesh);
        // An upgrade goes to HTTP/1.1, the version that has `Upgrade` (RFC 9110 §7.8).
        // Left in the extensions too: the HTTP/1 client hands the connection over on a 101
        // only for a request that carries it.
        let upgrade = req.extensions().get::<upgrade::Requested>().cloned();
        let wire = if upgrade.is_some() { Wire::Http1 } else { wire };
        let key = cluster.hash_key(req.headers(), ctx.peer.ip);
        let mut forwarding = headers::prepare_request(&mut req, &ctx.peer, wire, seen);
        // A traced request's tries each carry their own span as the parent (`start_try`).
        if span.is_some() {
            forwarding.traceparent = None;
        }
        // Rules that name a forwarding field see it in the map, as they would any other.
        if route.request_headers.names_forwarding() {
            forwarding.enter(req.headers_mut());
            forwarding = headers::Forwarding::default();
        }
        if let Some(up) = &upgrade {
            upgrade::restore(req.headers_mut(), up);
        }
        if let Some(v) = told {
            req.headers_mut().insert(version::ORIG_PROTO.clone(), v);
        }
        route.request_headers.apply(req.headers_mut());
        if let Some(e) = log.as_deref_mut() {
            e.request_id = req.headers().get(&headers::X_REQUEST_ID).cloned().or_else(|| forwarding.request_id());
        }
        let deadline = route.timeout.map(|t| Instant::from_std(started) + t);
        // On an MCP route a POST's messages decide whether it may be sent twice (a tool
        // may act: send mail, pay), whatever its HTTP method says.
        let replayable = match (&route.mcp, mcp.as_ref().and_then(|m| m.parsed.as_ref())) {
            (Some(m), Some(p)) => Some(m.replayable(p)),
            _ => None,
        };
        let retry = route.retry.as_ref().filter(|r| replayable.unwrap_or_else(|| r.allows_method(req.method())));
        let hedge = route
            .hedge
            .as_ref()
            .filter(|_| replayable.unwrap_or_else(|| retry::is_idempotent(req.method())) && upgrade.is_none())
            .map(|h| (h.delay, h.max));
        // From here on `plan` holds these (the future keeps one copy across its awaits).
        let pinned = mcp.as_mut().and_then(|m| m.pinned.take());
        let target = target.as_ref().or(pinned.as_ref().map(|p| &p.endpoint));
        let defer_outcome = mcp.as_ref().is_some_and(|m| m.watch);
        let trace = span.as_deref();
        let plan = Plan {
            cluster,
            target,
            wire,
            key,
            deadline,
            idle_timeout: route.idle_timeout,
            retry,
            hedge,
            since,
            trace,
            defer_outcome,
            forwarding,
        };
        let counted = route.retry.is_some() || route.hedge.is_some();

        // Retries and hedges need the body again: keep it in memory when it is small enough.
        let (parts, body) = req.into_parts();
        let read = mcp.as_mut().and_then(|m| m.body.take());
        let body = if let Some(b) = read {
            RequestBody::Replay(Some(b))
        } else if plan.retry.is_some() || plan.hedge.is_some() {
            let max = plan.retry.map_or(64 * 1024, |r| r.max_body);
            match Box::pin(RequestBody::buffer(body, max)).await {
                Ok(b) => b,
                Err(e) => return (fail(ForwardError::ClientBody(e), None), log, span),
            }
        } else {
            RequestBody::stream(body)
        };
        let sent = match attempts::send(&plan, Request::from_parts(parts, body)).await {
            Ok(s) => s,
            Err((e, tries)) => return (fail(e, counted.then_some(tries)), log, span),
        };
        let sent = match (&mcp, &route.mcp) {
            (Some(a), Some(m)) => crate::mcp::answered(a, m, cluster, sent),
            _ => sent,
        };
        if let Some(s) = span.as_deref_mut() {
            s.served_by(sent.lease.endpoint());
        }

        if let Some(e) = log.as_deref_mut() {
            e.upstream = Some(sent.lease.endpoint().addr);
        }
        let (mut parts, body) = sent.response.into_parts();
        // The downstream connection decides its own version; an HTTP/1.0 upstream must not
        // turn the client's keep-alive connection into a 1.0 one.
        parts.version = http::Version::HTTP_11;
        let switched = switched(&mut parts, upgrade.as_ref(), route.tunnel_idle_timeout);
        headers::prepare_response(&mut parts.headers);
        if let Some(protocol) = switched {
            upgrade::restore(&mut parts.headers, &protocol);
            upgrade::count(&ctx.listener, upgrade::protocol_label(&protocol.0));
        }
        route.response_headers.apply(&mut parts.headers);
        if counted {
            parts.headers.insert(ATTEMPTS_HEADER, count_value(sent.tries));
        }
        backend.metrics.count(parts.status.as_u16());
        let streaming = http_body::Body::size_hint(&body).exact().is_none();
        let exchange =
            Exchange { route: route.clone(), backend: index, lease: Some(sent.lease), started, clean: false };
        let body = UpstreamBody::new(body, exchange, deadline, streaming);
        let resp = Response::from_parts(parts, ProxyBody::Upstream(Box::new(body)));
        let Some(m) = mcp else { return (resp, log, span) };
        if let Some(c) = m.parsed.as_ref().and_then(Parsed::single).and_then(|c| c.method.as_deref()) {
            metrics::histogram!(telemetry::MCP_REQUEST_DURATION, "route" => route.name.to_string(), "method" => crate::mcp::method_label(c))
                .record(started.elapsed().as_secs_f64());
        }
        match &m.filter {
            Some((policy, path)) if m.filters_answer() && resp.status().is_success() => {
                (Box::pin(crate::mcp::filter_answer(resp, (policy, path), mcp_caller(ctx, &route))).await, log, span)
            }
            _ => (resp, log, span),
        }
    }
}

/// Who calls, for MCP policy and audit lines.
fn mcp_caller<'a>(ctx: &'a ConnCtx, route: &'a Route) -> crate::mcp::Caller<'a> {
    crate::mcp::Caller { listener: &ctx.listener, route: &route.name, peer_id: ctx.peer_id.as_deref(), ip: ctx.peer.ip }
}

/// Whether this listener carries `req`, a CONNECT: `connect: true`, over HTTP/1.1 or
/// HTTP/2 (whose servers carry tunnels; HTTP/3's does not), to a port in `connect_ports`.
fn check_connect(req: &Request<ClientBody>, listener: &Listener) -> Result<(), ForwardError> {
    if !listener.spec.connect {
        return Err(ForwardError::ConnectRefused("CONNECT is not enabled on this listener (connect: true)"));
    }
    if !matches!(req.version(), http::Version::HTTP_11 | http::Version::HTTP_2) {
        return Err(ForwardError::ConnectRefused("CONNECT tunnels are carried over HTTP/1.1 and HTTP/2 only"));
    }
    let port = req.uri().port_u16().unwrap_or(0);
    let allowed = listener.spec.connect_ports.as_deref().unwrap_or(&trellis_api::DEFAULT_CONNECT_PORTS);
    if !allowed.contains(&port) {
        return Err(ForwardError::ConnectPort(port));
    }
    Ok(())
}

/// A CONNECT's tunnel: a connection to an endpoint of the route's cluster (TCP, or TLS
/// per the cluster, through its breakers), answered 200 with the connection attached for
/// the HTTP/1 server to splice (`http::upgrade`).
async fn tunnel(
    req: &Request<ClientBody>,
    ctx: &ConnCtx,
    route: &Route,
    cluster: &crate::upstream::Cluster,
    log: Option<&mut access_log::Entry>,
) -> Result<Response<ProxyBody>, ForwardError> {
    let key = cluster.hash_key(req.headers(), ctx.peer.ip);
    let Some(ep) = cluster.pick(key, None).cloned() else {
        return Err(ForwardError::NoEndpoint(cluster.name.clone()));
    };
    if let Some(e) = log {
        e.upstream = Some(ep.addr);
    }
    let conn = match crate::upstream::pool::connect_l4(&ep).await {
        Ok(c) => c,
        Err(err) => {
            if matches!(err, UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout(_)) {
                cluster.record(&ep, crate::resilience::outlier::Outcome::ConnectFailure);
            }
            return Err(ForwardError::Upstream(err));
        }
    };
    let tunnel = upgrade::Upgraded::new(conn.into_h1());
    tunnel.with(|t| t.idle = route.tunnel_idle_timeout);
    upgrade::count(&ctx.listener, "connect");
    let mut resp = Response::new(ProxyBody::Full(None));
    resp.extensions_mut().insert(tunnel);
    Ok(resp)
}

/// For an upstream's 101 to an upgrade request: the protocol it switched to, and the
/// tunnel told the route's idle timeout for streams. A 101 that is not one (no upgraded
/// connection came with it: the upstream client refuses those) is left alone.
fn switched(
    parts: &mut http::response::Parts,
    asked: Option<&upgrade::Requested>,
    idle: Option<std::time::Duration>,
) -> Option<upgrade::Requested> {
    if parts.status != http::StatusCode::SWITCHING_PROTOCOLS {
        return None;
    }
    let asked = asked?;
    let tunnel = parts.extensions.get::<upgrade::Upgraded>()?;
    tunnel.with(|t| t.idle = idle);
    let protocol = parts.headers.get(http::header::UPGRADE).cloned().unwrap_or_else(|| asked.0.clone());
    Some(upgrade::Requested(protocol))
}

/// Whether the request says unambiguously which host it is for (RFC 9112 §3.2, RFC 9113
/// §8.3.1): one `Host` at most, one in an HTTP/1.1 request unless the target is in
/// absolute form (whose authority then wins), a valid one, and on HTTP/2 one that names
/// what `:authority` names. Routing and the upstream must not see different hosts. (The
/// HTTP/1 codec has checked its requests as it read them: only HTTP/2's are looked at.)
fn check_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    if req.version() != http::Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let Some(host) = hosts.next() else { return Ok(()) };
    if hosts.next().is_some() {
        return Err("more than one Host field");
    }
    // An empty Host is what a client sends for a target with no authority.
    if host.is_empty() {
        return Ok(());
    }
    let Some((name, port)) = crate::http::h1::framing::host(host.as_bytes()) else { return Err("invalid Host") };
    if let Some(authority) = req.uri().authority()
        && (!authority.host().as_bytes().eq_ignore_ascii_case(name)
            || authority.port_u16().zip(port).is_some_and(|(a, b)| a != b))
    {
        return Err(":authority and Host differ");
    }
    Ok(())
}

/// The size of a request's head as HTTP/1.1 would carry it: request line and header lines.
fn header_block_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    line + req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>()
}

/// A count as a header value (`x-trellis-attempts`, `x-trellis-hops`): a static one for
/// the usual counts (formatting a number into a header value allocates, on every request).
fn count_value(n: u32) -> HeaderValue {
    const SMALL: [&str; 17] =
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];
    match SMALL.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Version};

    #[test]
    fn one_host_per_http2_request() {
        let h2 = |hosts: &[&str]| {
            let mut b = Request::get("http://a.test:8443/").version(Version::HTTP_2);
            for h in hosts {
                b = b.header("host", *h);
            }
            super::check_host(&b.body(()).unwrap_or_default())
        };
        assert_eq!(h2(&[]), Ok(()));
        assert_eq!(h2(&[""]), Ok(()));
        assert_eq!(h2(&["A.test:8443"]), Ok(()));
        assert_eq!(h2(&["a.test"]), Ok(()));
        assert!(h2(&["b.test"]).is_err());
        assert!(h2(&["a.test:9000"]).is_err());
        assert!(h2(&["a.test", "a.test"]).is_err());
        assert!(h2(&["u@a.test"]).is_err());
    }

    #[test]
    fn count_values_read_as_their_number() {
        for n in [0, 2, 9, 10, 12_345] {
            assert_eq!(super::count_value(n).to_str().ok(), Some(n.to_string().as_str()));
        }
    }
}

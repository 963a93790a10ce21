//! The admin HTTP server (DESIGN §2, §7): `/live`, `/ready`, `/metrics`, `/config_dump`,
//! `/clusters`. Runs on the main thread's runtime, apart from the workers.

use crate::config::Snapshot;
use crate::http::body::ProxyBody;
use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What the admin endpoints read.
pub struct State {
    pub config: Arc<ArcSwap<Snapshot>>,
    pub metrics: PrometheusHandle,
    /// Listeners bound; false again while draining.
    pub ready: AtomicBool,
    /// Set when the proxy takes config from a control plane: ready only once applied.
    pub discovery: Option<Arc<crate::discovery::Status>>,
}

/// Serves the admin API on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&req, &state)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn handle<B>(req: &Request<B>, state: &State) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            let applied = state.discovery.as_ref().is_none_or(|d| d.applied.load(Ordering::Acquire));
            if state.ready.load(Ordering::Acquire) && applied {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" => {
            let mut r = text(StatusCode::OK, state.metrics.render());
            r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        "/config_dump" => {
            let snap = state.config.load();
            let cp = state.discovery.as_ref().map(|d| {
                serde_json::json!({
                    "connected": d.connected.load(Ordering::Acquire),
                    "system_version": &*d.system_version.lock().unwrap_or_else(|p| p.into_inner()),
                    "last_error": &*d.last_error.lock().unwrap_or_else(|p| p.into_inner()),
                })
            });
            json(&serde_json::json!({
                "version": snap.version,
                "control_plane": cp,
                "config": &*snap.source,
            }))
        }
        "/clusters" => json(&clusters(&state.config.load())),
        _ => text(StatusCode::NOT_FOUND, "unknown admin path; try /ready /live /metrics /config_dump /clusters\n"),
    }
}

fn clusters(snap: &Snapshot) -> serde_json::Value {
    let mut names: Vec<_> = snap.clusters.keys().collect();
    names.sort();
    let list: Vec<_> = names
        .into_iter()
        .filter_map(|n| snap.clusters.get(n))
        .map(|c| {
            let eps: Vec<_> = c
                .endpoints
                .iter()
                .map(|e| {
                    let (idle, h2) = e.pool.sizes();
                    let health = if !e.health.is_healthy() {
                        "unhealthy"
                    } else if e.outlier.is_ejected() {
                        "ejected"
                    } else {
                        "healthy"
                    };
                    serde_json::json!({
                        "address": e.addr.to_string(),
                        "weight": e.weight,
                        "zone": e.zone,
                        "health": health,
                        "times_ejected": e.outlier.times_ejected(),
                        "ewma_ms": e.load.estimate_ns() / 1e6,
                        "active_requests": e.in_flight(),
                        "total_requests": e.total.load(Ordering::Relaxed),
                        "idle_http1_connections": idle,
                        "http2_connections": h2,
                        "alpn": e.alpn.label(),
                    })
                })
                .collect();
            let counts = &c.counts;
            serde_json::json!({
                "name": &*c.name,
                "protocol": c.protocol,
                "lb": c.spec.lb,
                "circuit_breaker": {
                    "limits": c.settings.limits,
                    "connections": counts.connections.load(Ordering::Relaxed),
                    "pending": counts.pending.load(Ordering::Relaxed),
                    "requests": counts.requests.load(Ordering::Relaxed),
                    "retries": counts.retries.load(Ordering::Relaxed),
                },
                "endpoints": eps,
            })
        })
        .collect();
    serde_json::json!({ "clusters": list })
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json(v: &serde_json::Value) -> Response<ProxyBody> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut r = Response::new(ProxyBody::full(body));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

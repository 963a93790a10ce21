//! The REST API (DESIGN §6), axum: resources CRUD with ETags, proxy status, CSR signing,
//! the OpenAPI document and a health check. Every route but `/healthz` needs the bearer
//! token when one is configured. Errors are JSON, made in [`error`].

mod certificates;
mod error;
mod openapi;
mod resources;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use trellis_certs::Ca;

use crate::auth::Token;
use crate::discovery::Registry;
use crate::store::Store;

pub use error::ApiError;

/// Largest request body accepted; larger gets 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What every handler can reach.
pub struct Shared {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub ca: Ca,
    pub token: Option<Arc<Token>>,
    /// Set: certificates are signed only for the workload a service-account JWT names.
    pub workload: Option<Arc<crate::workload::WorkloadAuth>>,
    /// What proxies reported about their traffic (`/v1/mesh`, `/ui`).
    pub stats: Arc<crate::stats::Stats>,
}

/// The REST router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/proxies", get(proxies))
        .route("/v1/mesh", get(mesh))
        .route("/ui", get(crate::ui::page))
        .route("/ui/ui.js", get(crate::ui::script))
        .route("/ui/ui.css", get(crate::ui::style))
        .route("/metrics", get(metrics))
        .route("/v1/certificates", post(certificates::sign))
        .route("/v1/{kind}", get(resources::list))
        .route("/v1/{kind}/{name}", get(resources::get).put(resources::put).delete(resources::delete))
        .fallback(|| async { ApiError::not_found("no such path (see /openapi.json)") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this path (see /openapi.json)")
        })
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .with_state(shared)
}

/// Lets a request through when no token is configured, for `/healthz` and the `/ui` page's
/// static files (they hold no data: the page asks for the token and fetches `/v1/mesh` with
/// it), or when it carries `Authorization: Bearer <token>`. With workload identity on, `/v1/certificates` is
/// authorized by the workload's own token instead (see `certificates`).
async fn authorize(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let own_auth =
        path == "/healthz" || crate::ui::is_static(path) || (shared.workload.is_some() && path == "/v1/certificates");
    if let Some(token) = &shared.token
        && !own_auth
    {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !token.accepts(given) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
        }
    }
    next.run(req).await
}

/// Alive (200) while the process serves, with the store's state: an etcd store that is
/// unreachable shows `connected: false` (the replica still serves its last view).
async fn healthz(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "store": shared.store.status() }))
}

async fn proxies(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "proxies": shared.registry.proxies() }))
}

/// The mesh as `/ui` shows it: proxies, services, edges with rates, certificates.
async fn mesh(State(shared): State<Arc<Shared>>) -> Json<crate::stats::MeshView> {
    let revision = shared.store.snapshot().revision();
    Json(shared.stats.view(shared.registry.proxies(), shared.ca.not_after(), revision))
}

/// The control plane's metrics, Prometheus text (token-protected like the rest).
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let m = shared.registry.metrics();
    m.revision.set(shared.store.snapshot().revision() as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render()).into_response()
}

/// A body over [`MAX_BODY_BYTES`] is still read, and dropped, up to this size before the
/// 413 is sent: answering before the client has sent its body and then closing resets the
/// connection under it, and a reset can discard the answer before the client reads it (a
/// client then sees "connection reset" instead of the 413). Beyond this, the 413 goes at once.
const DRAIN_MAX_BYTES: usize = 16 << 20;

/// Reads a whole request body of at most [`MAX_BODY_BYTES`] (413 beyond).
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {MAX_BODY_BYTES} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_MAX_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(body, DRAIN_MAX_BYTES).collect().await {
        Ok(collected) => Some(collected.to_bytes()).filter(|b| b.len() <= MAX_BODY_BYTES).ok_or_else(too_large),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("cannot read the request body: {e}"), None)),
    }
}

//! `GET /v1/{kind}`, `GET/PUT/DELETE /v1/{kind}/{name}`: resources as JSON, each answer
//! with `ETag: "<version>"`; writes honour `If-Match`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::Value;
use trellis_api::ParseError;

use super::{ApiError, Shared, read_body};
use crate::metrics::StoreOp;
use crate::store::{IfMatch, Outcome, WriteError};
use crate::stored::{Kind, Resource};

/// Longest resource name accepted.
const MAX_NAME: usize = 253;

pub async fn list(State(shared): State<Arc<Shared>>, path: Result<Path<String>, PathRejection>) -> Response {
    let kind = match path.map_err(bad_path).and_then(|Path(k)| kind(&k)) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let snap = shared.store.snapshot();
    let mut items = Vec::new();
    let mut versions = serde_json::Map::new();
    for item in snap.list(kind) {
        items.push(item.resource.to_value());
        versions.insert(item.resource.name().to_string(), item.version.into());
    }
    let body =
        serde_json::json!({ "kind": kind.plural(), "revision": snap.revision(), "items": items, "versions": versions });
    json_response(StatusCode::OK, Some(snap.revision()), body.to_string())
}

pub async fn get(State(shared): State<Arc<Shared>>, path: Result<Path<(String, String)>, PathRejection>) -> Response {
    let (kind, name) = match target(path) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match shared.store.snapshot().get(kind, &name) {
        Some(item) => json_response(StatusCode::OK, Some(item.version), item.json.to_string()),
        None => missing(kind, &name).into_response(),
    }
}

pub async fn put(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match put_inner(&shared, path, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn put_inner(
    shared: &Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (kind, name) = target(path)?;
    let if_match = if_match(headers)?;
    let bytes = read_body(headers, body).await?;
    let resource = parse_body(kind, &name, &bytes)?;
    let started = std::time::Instant::now();
    let written = shared.store.put(resource, if_match).await;
    record_write(shared, StoreOp::Put, started, &written);
    let written = written?;
    let status = if written.outcome == Outcome::Created { StatusCode::CREATED } else { StatusCode::OK };
    let json = written.item.map_or_else(String::new, |i| i.json.to_string());
    Ok(json_response(status, Some(written.version), json))
}

pub async fn delete(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let (kind, name) = target(path)?;
        let if_match = if_match(&headers)?;
        let started = std::time::Instant::now();
        let written = shared.store.delete(kind, &name, if_match).await;
        record_write(&shared, StoreOp::Delete, started, &written);
        let written = written
            .map_err(ApiError::from)
            .map_err(|e| if matches!(e.status, StatusCode::NOT_FOUND) { missing(kind, &name) } else { e })?;
        let body = serde_json::json!({ "deleted": format!("{}/{name}", kind.plural()), "revision": written.version });
        Ok::<_, ApiError>(json_response(StatusCode::OK, None, body.to_string()))
    };
    match result.await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// Store latency and failures (the store's own, not a refused or conditional write).
fn record_write<T>(shared: &Shared, op: StoreOp, started: std::time::Instant, written: &Result<T, WriteError>) {
    let failed = matches!(written, Err(WriteError::Storage(_) | WriteError::Unavailable(_)));
    shared.registry.metrics().store_write(op, started.elapsed(), failed);
}

/// The resource in a PUT body: a JSON object whose `name`, if given, is the path's.
fn parse_body(kind: Kind, name: &str, bytes: &[u8]) -> Result<Resource, ApiError> {
    let mut value: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}"), None))?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::bad_request("the body must be a JSON object (the resource)", None));
    };
    match object.get("name") {
        None => {
            object.insert("name".into(), Value::String(name.to_string()));
        }
        Some(Value::String(given)) if given == name => {}
        Some(given) => {
            return Err(ApiError::bad_request(
                format!("name: {given} does not match the name in the path (\"{name}\")"),
                Some("name"),
            ));
        }
    }
    Resource::from_value(kind, &value).map_err(|e| match e {
        ParseError::Field { path, reason } => {
            let field = if path == "(top level)" {
                format!("{}[{name}]", kind.plural())
            } else {
                format!("{}[{name}].{path}", kind.plural())
            };
            ApiError::bad_request(format!("{field}: {reason}"), Some(&field))
        }
        ParseError::Syntax(reason) => ApiError::bad_request(reason, None),
    })
}

/// Parses `If-Match`: `*` or a list of `"<version>"` tags (anything else never matches).
fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let mut values = headers.get_all(header::IF_MATCH).iter().peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let mut versions = Vec::new();
    for value in values {
        let text = value.to_str().map_err(|_| ApiError::bad_request("If-Match is not ASCII", None))?;
        for tag in text.split(',').map(str::trim) {
            if tag == "*" {
                return Ok(Some(IfMatch::Any));
            }
            if let Some(v) = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).and_then(|t| t.parse().ok()) {
                versions.push(v);
            }
        }
    }
    Ok(Some(IfMatch::Versions(versions)))
}

fn target(path: Result<Path<(String, String)>, PathRejection>) -> Result<(Kind, String), ApiError> {
    let Path((kind_text, name)) = path.map_err(bad_path)?;
    let kind = kind(&kind_text)?;
    if name.len() > MAX_NAME || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::bad_request(
            format!("name: must be at most {MAX_NAME} bytes without spaces or control characters"),
            Some("name"),
        ));
    }
    Ok((kind, name))
}

fn kind(text: &str) -> Result<Kind, ApiError> {
    match text.parse::<Kind>() {
        Ok(k) if text == k.plural() => Ok(k),
        _ => Err(ApiError {
            field: Some("kind".into()),
            ..ApiError::not_found(format!(
                "unknown kind \"{text}\" (use clusters, routes, listeners, policies or telemetry)"
            ))
        }),
    }
}

fn bad_path(e: PathRejection) -> ApiError {
    ApiError::bad_request(e.body_text(), None)
}

fn missing(kind: Kind, name: &str) -> ApiError {
    ApiError::not_found(format!("no {} named \"{name}\"", kind.singular()))
}

fn json_response(status: StatusCode, etag: Option<u64>, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(v) = etag
        && let Ok(value) = HeaderValue::from_str(&format!("\"{v}\""))
    {
        h.insert(header::ETAG, value);
    }
    resp
}

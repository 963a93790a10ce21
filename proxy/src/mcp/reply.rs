//! Answers the proxy makes itself on MCP routes: JSON-RPC 2.0 error objects (with the
//! request's `id`) in an `application/json` body, with the HTTP status DESIGN §13 gives
//! and `x-trellis-error`, so MCP clients show the error and HTTP tooling sees the status.

use crate::http::body::ProxyBody;
use crate::http::respond::ERROR_HEADER;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

/// Code of a call refused by policy (a server-defined JSON-RPC error).
pub const DENIED: i64 = -32001;
/// Code of a call over the route's rate limit.
pub const RATE_LIMITED: i64 = -32002;

/// One JSON-RPC error object.
pub fn error_object(id: Option<&Value>, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": { "code": code, "message": message } })
}

/// A response carrying `body` (an error object, or an array of them for a batch).
pub fn json_error(status: StatusCode, reason: &'static str, body: &Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

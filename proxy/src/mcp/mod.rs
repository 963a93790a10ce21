//! MCP-aware routes (DESIGN §13): a route with `mcp` reads each POST's JSON-RPC body
//! (bounded), checks it and the `Mcp-Method`/`Mcp-Name` headers, applies policy rules'
//! MCP conditions per message, filters `tools/list` answers to the caller's tools, and
//! counts calls per method and tool. Routes without `mcp` never come here.

pub mod filter;
pub mod message;
pub mod reply;
pub mod session;
pub mod watch;

use crate::authz::{Decision, Mcp, Pattern, Policy};
use crate::http::body::{ClientBody, ProxyBody};
use crate::telemetry;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
pub use message::{Call, Invalid, Parsed};
use serde_json::Value;
use std::sync::Arc;
use trellis_api as api;

/// A route's compiled `mcp` settings.
#[derive(Debug)]
pub struct McpRoute {
    pub max_body: usize,
    pub max_batch: usize,
    idempotent_tools: Vec<Pattern>,
    /// Where sessions live (`session_affinity`, on by default).
    pub sessions: Option<Arc<session::Sessions>>,
    /// JSON-RPC errors count against the endpoint for outlier detection.
    pub errors_are_failures: bool,
    /// Tool names used as metric labels so far (clients choose them: bounded).
    labelled: std::sync::Mutex<std::collections::HashSet<Box<str>>>,
}

/// Distinct `tool` label values per route; later names count as `other`.
pub const MAX_TOOL_LABELS: usize = 100;

impl McpRoute {
    /// The settings of `route` on `listener` (its session table is found again across
    /// reloads by these names).
    pub fn new(spec: &api::McpRoute, listener: &str, route: &str) -> Self {
        let sessions = spec.session_affinity.unwrap_or(true).then(|| {
            session::table(
                listener,
                route,
                spec.max_sessions.unwrap_or(api::DEFAULT_MCP_MAX_SESSIONS) as usize,
                spec.session_idle_timeout.unwrap_or(api::DEFAULT_MCP_SESSION_IDLE).get(),
            )
        });
        Self {
            sessions,
            errors_are_failures: spec.errors_are_failures,
            max_body: spec.max_body_bytes.unwrap_or(api::DEFAULT_MCP_MAX_BODY_BYTES) as usize,
            max_batch: spec.max_batch.unwrap_or(api::DEFAULT_MCP_MAX_BATCH) as usize,
            idempotent_tools: spec.idempotent_tools.iter().map(|t| Pattern::new(t)).collect(),
            labelled: std::sync::Mutex::default(),
        }
    }

    /// The `tool` label for `tool`: its first 64 bytes, or `other` once the route has
    /// labelled [`MAX_TOOL_LABELS`] different names.
    pub fn tool_label(&self, tool: &str) -> String {
        let mut end = tool.len().min(64);
        while !tool.is_char_boundary(end) {
            end -= 1;
        }
        let cut = &tool[..end];
        if cut.is_empty() {
            return String::new();
        }
        let mut seen = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(cut) || seen.len() < MAX_TOOL_LABELS {
            seen.insert(cut.into());
            cut.to_owned()
        } else {
            "other".to_owned()
        }
    }

    /// Whether a body's messages may be sent again (retry, hedge): every one a request,
    /// and a `tools/call` only of an idempotent tool.
    pub fn replayable(&self, parsed: &Parsed) -> bool {
        parsed.calls.iter().all(|c| match (c.method.as_deref(), &c.id) {
            (Some("tools/call"), Some(_)) => {
                c.name.as_deref().is_some_and(|t| self.idempotent_tools.iter().any(|p| p.matches(t)))
            }
            (Some(_), Some(_)) => true,
            _ => false,
        })
    }
}

/// Who is calling, for policy and the audit line.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub listener: &'a str,
    pub route: &'a str,
    pub peer_id: Option<&'a str>,
    pub ip: std::net::IpAddr,
}

/// What the request path keeps of an MCP request once it has been let through.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The body read off the client (a POST's), to send upstream as is.
    pub body: Option<Bytes>,
    /// Its messages.
    pub parsed: Option<Parsed>,
    /// The caller may not call every tool: `tools/list` answers are to be filtered by
    /// this policy (with the request's path, which rules may name).
    pub filter: Option<(Arc<Policy>, Box<str>)>,
    /// The request's `Mcp-Session-Id` (routes with session affinity).
    pub session: Option<HeaderValue>,
    /// A DELETE: the end of its session.
    pub delete: bool,
    /// The endpoint of the request's session, when it is known and available.
    pub pinned: Option<session::Pinned>,
    /// The answer's JSON-RPC messages decide how the try counts for outlier detection
    /// (`errors_are_failures`, a POST with requests).
    pub watch: bool,
}

impl Admitted {
    /// The first message's method and tool and the id, for the access log.
    pub fn first(&self) -> Option<&Call> {
        self.parsed.as_ref().and_then(|p| p.calls.first())
    }

    /// The tools the body calls.
    pub fn tools(&self) -> Vec<&str> {
        self.parsed.as_ref().map_or_else(Vec::new, |p| p.calls.iter().filter_map(Call::tool).collect())
    }

    /// Whether the answer holds a `tools/list` result that must be filtered.
    pub fn filters_answer(&self) -> bool {
        self.filter.is_some()
            && self.parsed.as_ref().is_some_and(|p| p.calls.iter().any(|c| c.method.as_deref() == Some("tools/list")))
    }
}

/// An MCP request refused here: the answer, and its first message when it was read.
#[derive(Debug)]
pub struct Rejected {
    pub response: Response<ProxyBody>,
    pub first: Option<Call>,
}

impl From<Response<ProxyBody>> for Rejected {
    fn from(response: Response<ProxyBody>) -> Self {
        Rejected { response, first: None }
    }
}

/// The 429 of an MCP request over the route's rate limit: a JSON-RPC error (with the id
/// of a single message) and `Retry-After`.
pub fn rate_limited(admitted: &Admitted, wait: std::time::Duration) -> Response<ProxyBody> {
    let id = admitted.parsed.as_ref().and_then(Parsed::single).and_then(|c| c.id.as_ref());
    let mut resp = reply::json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate limited",
        &reply::error_object(id, reply::RATE_LIMITED, "over the route's rate limit; retry later"),
    );
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// The access-log fields of a message.
pub fn log_fields(c: &Call) -> Box<crate::access_log::McpFields> {
    Box::new(crate::access_log::McpFields {
        method: c.method.clone(),
        tool: c.tool().map(Into::into),
        id: c.id.clone(),
    })
}

/// Reads and checks an MCP request. `policy` is set when the listener's policy allowed the
/// request only on condition of its MCP calls (the rules with `mcp` decide, per message).
/// Err: the answer to send instead (nothing goes upstream).
/// `idle` (the route's `idle_timeout`) bounds each wait for a piece of the body.
pub async fn admit(
    req: &mut Request<ClientBody>,
    whole: &crate::http::route::Route,
    idle: Option<std::time::Duration>,
    policy: Option<&Arc<Policy>>,
    caller: Caller<'_>,
) -> Result<Admitted, Rejected> {
    let Some(route) = whole.mcp.as_ref() else { return Ok(Admitted::default()) };
    let mut admitted = checked(req, route, idle, policy, caller).await?;
    if let Some(sessions) = &route.sessions
        && let Some(id) = req.headers().get(&session::SESSION_HEADER)
    {
        admitted.pinned = session::lookup(sessions, whole, id.as_bytes());
        admitted.session = Some(id.clone());
        admitted.delete = req.method() == Method::DELETE;
    }
    admitted.watch = route.errors_are_failures
        && admitted.parsed.as_ref().is_some_and(|p| p.calls.iter().any(|c| c.method.is_some() && c.id.is_some()));
    Ok(admitted)
}

/// [`admit`]'s checks: the body read and parsed, headers and policy.
async fn checked(
    req: &mut Request<ClientBody>,
    route: &McpRoute,
    idle: Option<std::time::Duration>,
    policy: Option<&Arc<Policy>>,
    caller: Caller<'_>,
) -> Result<Admitted, Rejected> {
    if req.method() != Method::POST {
        // The GET stream and the DELETE of a session call nothing.
        if let Some(p) = policy {
            let d = p.check_mcp(caller.peer_id, Some(req.method()), Some(req.uri().path()), Mcp::Session);
            if !d.allowed() {
                audit(caller, p, d, req.method().as_str(), None, None);
                return Err(reply::json_error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    &reply::error_object(None, reply::DENIED, &format!("denied by policy \"{}\"", p.name)),
                )
                .into());
            }
        }
        return Ok(Admitted::default());
    }
    let body = read_body(std::mem::take(req.body_mut()), route.max_body, idle).await?;
    let invalid = |e: Invalid, id: Option<&Value>| {
        count(caller.route, "", String::new(), "invalid");
        reply::json_error(
            StatusCode::BAD_REQUEST,
            "bad mcp request",
            &reply::error_object(id, e.code(), &e.to_string()),
        )
    };
    let parsed = message::parse(&body, route.max_batch).map_err(|e| Rejected::from(invalid(e, None)))?;
    let first = || parsed.calls.first().cloned();
    if let Err(e) = message::check_headers(req.headers(), &parsed) {
        let response = invalid(e, parsed.single().and_then(|c| c.id.as_ref()));
        return Err(Rejected { response, first: first() });
    }
    if let Some(p) = policy
        && let Err(response) = authorize(p, req, &parsed, route, caller)
    {
        return Err(Rejected { response, first: first() });
    }
    for c in &parsed.calls {
        let tool = route.tool_label(c.tool().unwrap_or(""));
        count(caller.route, c.method.as_deref().unwrap_or("response"), tool, "allowed");
    }
    let filter = policy.map(|p| (p.clone(), req.uri().path().into()));
    if filter.is_some() && parsed.calls.iter().any(|c| c.method.as_deref() == Some("tools/list")) {
        // The answer is rewritten: it must come as text.
        req.headers_mut().remove(header::ACCEPT_ENCODING);
    }
    Ok(Admitted { body: Some(body), parsed: Some(parsed), filter, ..Admitted::default() })
}

/// What an answer from `cluster` tells about the request's session (see
/// [`session::learn`]), and, with `errors_are_failures`, its body watched for JSON-RPC
/// errors (the try was not yet counted for outlier detection when it succeeded).
pub fn answered(
    admitted: &Admitted,
    route: &McpRoute,
    cluster: &Arc<crate::upstream::Cluster>,
    mut sent: crate::http::attempts::Sent,
) -> crate::http::attempts::Sent {
    let served = sent.lease.endpoint().clone();
    if let Some(sessions) = &route.sessions {
        session::learn(
            sessions,
            admitted.session.as_ref().map(HeaderValue::as_bytes),
            admitted.delete,
            sent.response.status(),
            sent.response.headers(),
            &cluster.name,
            &served,
        );
    }
    if admitted.watch && cluster.detects_outliers() && sent.response.status().is_success() {
        let sse = sent
            .response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let status = sent.response.status().as_u16();
        let cluster = cluster.clone();
        sent.response = sent.response.map(|body| {
            crate::upstream::response::ResponseBody::Mcp(Box::new(watch::Watched::new(
                body, sse, status, cluster, served,
            )))
        });
    }
    sent
}

/// The body, whole, when it is at most `max` bytes; else 413 (read no further).
async fn read_body(
    mut body: ClientBody,
    max: usize,
    idle: Option<std::time::Duration>,
) -> Result<Bytes, Response<ProxyBody>> {
    let too_large = || {
        reply::json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "mcp body too large",
            &reply::error_object(None, -32600, &format!("request body over the route's mcp.max_body_bytes ({max})")),
        )
    };
    if http_body::Body::size_hint(&body).lower() > max as u64 {
        return Err(too_large());
    }
    let mut buf = BytesMut::new();
    loop {
        let next = match idle {
            Some(idle) => tokio::time::timeout(idle, body.frame())
                .await
                .map_err(|_| crate::http::respond::error_response(&crate::http::respond::ForwardError::BodyTimeout))?,
            None => body.frame().await,
        };
        let Some(frame) = next else { break };
        let frame = frame
            .map_err(|e| crate::http::respond::error_response(&crate::http::respond::ForwardError::ClientBody(e)))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Every message must be allowed; else the whole request is refused with one JSON-RPC
/// error per request message (403), each with its id.
#[expect(clippy::result_large_err, reason = "the error is the response, made once, on a denial")]
fn authorize(
    policy: &Arc<Policy>,
    req: &Request<ClientBody>,
    parsed: &Parsed,
    route: &McpRoute,
    caller: Caller<'_>,
) -> Result<(), Response<ProxyBody>> {
    let mut denied = Vec::new();
    for c in &parsed.calls {
        let view = match c.method.as_deref() {
            Some(method) => Mcp::Call { method, tool: c.tool() },
            None => Mcp::Session,
        };
        let d = policy.check_mcp(caller.peer_id, Some(req.method()), Some(req.uri().path()), view);
        if !d.allowed() {
            denied.push((c, d));
        }
    }
    if denied.is_empty() {
        return Ok(());
    }
    let mut errors = Vec::new();
    for (c, d) in &denied {
        let method = c.method.as_deref().unwrap_or("response");
        audit(caller, policy, *d, method, c.tool(), c.id.as_ref());
        count(caller.route, method, route.tool_label(c.tool().unwrap_or("")), "denied");
        let what = match c.tool() {
            Some(t) => format!("tools/call of \"{}\"", t.escape_debug()),
            None => method.to_owned(),
        };
        let message = format!(
            "{what} denied by policy \"{}\" for {}",
            policy.name,
            caller.peer_id.unwrap_or("an unauthenticated peer")
        );
        if c.id.is_some() {
            errors.push(reply::error_object(c.id.as_ref(), reply::DENIED, &message));
        }
    }
    let body = match (parsed.batch, errors.len()) {
        (true, _) => Value::Array(errors),
        (false, 1) => errors.pop().unwrap_or_default(),
        // A denied notification: there is no id to answer with.
        _ => reply::error_object(None, reply::DENIED, &format!("denied by policy \"{}\"", policy.name)),
    };
    Err(reply::json_error(StatusCode::FORBIDDEN, "forbidden", &body))
}

fn audit(caller: Caller<'_>, policy: &Policy, d: Decision, method: &str, tool: Option<&str>, id: Option<&Value>) {
    metrics::counter!(telemetry::AUTHZ_DENIED_TOTAL, "listener" => caller.listener.to_owned()).increment(1);
    let id = id.map_or_else(|| "-".to_owned(), |v| v.to_string());
    tracing::warn!(
        target: "trellis::audit",
        listener = caller.listener,
        route = caller.route,
        peer_id = caller.peer_id.unwrap_or("none"),
        peer = %caller.ip,
        mcp_method = method,
        mcp_tool = tool.unwrap_or("-"),
        jsonrpc_id = id.as_str(),
        policy = policy.name.as_str(),
        rule = ?d,
        "mcp call denied"
    );
}

/// `trellis_mcp_requests_total`. The tool label is cut to 64 bytes.
fn count(route: &str, method: &str, tool: String, outcome: &'static str) {
    metrics::counter!(
        telemetry::MCP_REQUESTS_TOTAL,
        "route" => route.to_owned(),
        "method" => method_label(method),
        "tool" => tool,
        "outcome" => outcome
    )
    .increment(1);
}

/// The MCP methods (2025-06-18 and 2026-07-28 revisions) are labels as they are; any
/// other name a client sends is `other`, so clients cannot grow the metric without bound.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 24] = [
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "server/discover",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
        "tasks/get",
        "tasks/list",
        "tasks/result",
        "tasks/cancel",
        "response",
        "",
    ];
    KNOWN.iter().find(|k| **k == method).copied().unwrap_or("other")
}

/// Cut on MCP answers held in memory to be filtered; a larger one is refused (failing
/// open would show the caller tools it may not call).
pub const MAX_FILTERED_BYTES: usize = 8 << 20;

/// Rewrites a `tools/list` answer to the tools the caller may call.
pub async fn filter_answer(
    resp: Response<ProxyBody>,
    (policy, path): (&Policy, &str),
    caller: Caller<'_>,
) -> Response<ProxyBody> {
    let (mut parts, mut body) = resp.into_parts();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let sse = content_type.starts_with("text/event-stream");
    if !(sse || content_type.starts_with("application/json")) {
        return Response::from_parts(parts, body);
    }
    let fail = |why: &str| {
        reply::json_error(
            StatusCode::BAD_GATEWAY,
            "mcp answer not filterable",
            &reply::error_object(None, -32603, &format!("the tools/list answer could not be filtered: {why}")),
        )
    };
    if parts.headers.get(header::CONTENT_ENCODING).is_some_and(|v| v != "identity") {
        return fail("it is content-encoded");
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    if buf.len() + d.len() > MAX_FILTERED_BYTES {
                        return fail("it is over 8 MiB");
                    }
                    buf.extend_from_slice(&d);
                }
            }
            Err(e) => return fail(&e.to_string()),
        }
    }
    let keep = |tool: &str| {
        policy
            .check_mcp(
                caller.peer_id,
                Some(&Method::POST),
                Some(path),
                Mcp::Call { method: "tools/call", tool: Some(tool) },
            )
            .allowed()
    };
    let out = if sse { filter::sse(&buf, &keep) } else { filter::json(&buf, &keep) };
    let body = out.map_or_else(|| buf.freeze(), Bytes::from);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, ProxyBody::full(body))
}

/// Whether `policy` lets this request through only on MCP conditions.
pub fn defers(policy: Option<&Arc<Policy>>, d: Decision) -> bool {
    !d.allowed() && policy.is_some_and(|p| p.has_mcp_rules())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_tools_and_other_requests_are_replayable() {
        let route = McpRoute::new(
            &api::McpRoute { idempotent_tools: vec!["search".into(), "read_*".into()], ..Default::default() },
            "l",
            "r",
        );
        let ok = |body: &str| route.replayable(&message::parse(body.as_bytes(), 8).unwrap_or_else(|e| panic!("{e}")));
        let call =
            |tool: &str| format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}"}}}}"#);
        assert!(ok(&call("search")) && ok(&call("read_file")));
        assert!(!ok(&call("send_mail")) && !ok(&call("searches")));
        assert!(ok(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#));
        assert!(!ok(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#));
        assert!(!ok(&format!("[{},{}]", call("search"), call("send_mail"))));
    }

    #[test]
    fn tool_labels_are_bounded() {
        let route = McpRoute::new(&api::McpRoute::default(), "l", "r");
        assert_eq!(route.tool_label(""), "");
        assert_eq!(route.tool_label(&"é".repeat(40)), "é".repeat(32));
        for i in 1..MAX_TOOL_LABELS {
            assert_eq!(route.tool_label(&format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(route.tool_label("one-too-many"), "other");
        assert_eq!(route.tool_label("t1"), "t1");
    }
}

//! Request tracing (DESIGN §14): a server span per downstream request and a client span per
//! upstream try, in the W3C trace of the request's `traceparent`, exported with OTLP.
//!
//! The sampling decision is made once, when the request is routed ([`Tracer::start`]): an
//! unsampled request carries no span and costs one branch per step. A sampled one carries
//! a [`ServerSpan`]; each try made under it gets its own span id, sent upstream as the
//! `traceparent`'s parent, so the upstream's spans hang under the try that reached it.
//! Finished spans are encoded on the worker (sampled requests only) and handed to the
//! exporter thread through a bounded queue ([`export`]): a full queue drops the span and
//! counts it, and never makes a request wait. `collector` holds the TLS to `https://`
//! collectors. The tracing in effect is the control plane's `Telemetry` one when the proxy
//! holds one (`discovery::Dynamic::merge_into`), else the bootstrap's.

mod collector;
pub mod context;
mod export;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Request};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span, status};

use crate::http::headers::TRACEPARENT;
use crate::upstream::Endpoint;

pub use export::{spans_dropped, spans_exported};

/// Default bound of the export queue, in spans.
pub const DEFAULT_MAX_QUEUE: u32 = 4096;

/// One config's tracing: its sampling ratio and the (shared, long-lived) exporter.
#[derive(Debug)]
pub struct Tracer {
    /// Sample a new trace when a random u64 is below this (ratio 1.0: always).
    threshold: u64,
    always: bool,
    queue: Arc<export::Queue>,
}

impl Tracer {
    /// The tracer of `config` (from `at`: `tracing`, or `telemetry[NAME].tracing` from the
    /// control plane, for errors); the exporter is shared by every config with the same
    /// collector, so a reload neither loses queued spans nor opens a second connection.
    /// Errors: an `https://` collector's roots cannot be read.
    pub fn new(config: &trellis_api::Tracing, service: &str, at: &str) -> Result<Tracer, String> {
        let tls = collector::client_config(&config.otlp, at)?;
        let roots = match (&tls, &config.otlp.ca_file) {
            (Some(_), Some(file)) => std::fs::read(file).map(|pem| roots_digest(file, &pem)).unwrap_or_default(),
            _ => 0,
        };
        let ratio = config.sample_ratio.unwrap_or(1.0).clamp(0.0, 1.0);
        let max_queue = config.max_queue.unwrap_or(DEFAULT_MAX_QUEUE);
        Ok(Tracer {
            threshold: (ratio * u64::MAX as f64) as u64,
            always: ratio >= 1.0,
            queue: export::Queue::shared(&config.otlp, max_queue, service, tls, roots),
        })
    }

    /// Checks what [`Tracer::new`] would refuse, without starting an exporter.
    pub fn check(config: &trellis_api::Tracing, at: &str) -> Result<(), String> {
        collector::client_config(&config.otlp, at).map(drop)
    }

    /// Decides whether `req` is traced: a `traceparent` decides for itself; otherwise the
    /// sampling ratio. An untraced request without one gets an unsampled `traceparent` (so
    /// the services behind do not trace it either).
    pub fn start<B>(
        &self,
        req: &mut Request<B>,
        listener: &str,
        peer: IpAddr,
        peer_id: Option<&str>,
    ) -> Option<Box<ServerSpan>> {
        let parent = req.headers().get(&TRACEPARENT).and_then(context::parse);
        let sampled = match parent {
            Some(p) => p.sampled,
            None => self.always || fastrand::u64(..) < self.threshold,
        };
        if !sampled {
            if parent.is_none() {
                let v = context::format(fastrand::u128(1..), fastrand::u64(1..), false);
                req.headers_mut().insert(TRACEPARENT.clone(), v);
            }
            return None;
        }
        let mut attrs = Vec::with_capacity(16);
        attrs.push(kv("http.request.method", req.method().as_str()));
        attrs.push(kv("url.path", req.uri().path()));
        if let Some(q) = req.uri().query() {
            attrs.push(kv("url.query", q));
        }
        attrs.push(kv("url.scheme", req.uri().scheme_str().unwrap_or("http")));
        attrs.push(kv("network.protocol.version", protocol_version(req.version())));
        let host = req.uri().host().or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()));
        if let Some(h) = host {
            attrs.push(kv("server.address", h.rsplit_once(':').map_or(h, |(h, _)| h)));
        }
        attrs.push(kv("client.address", &peer.to_string()));
        if let Some(ua) = header(req.headers(), http::header::USER_AGENT.as_str()) {
            attrs.push(kv("user_agent.original", ua));
        }
        attrs.push(kv("trellis.listener", listener));
        if let Some(id) = peer_id {
            attrs.push(kv("trellis.peer.spiffe_id", id));
        }
        Some(Box::new(ServerSpan {
            trace_id: parent.map_or_else(|| fastrand::u128(1..), |p| p.trace_id),
            parent_id: parent.map_or(0, |p| p.span_id),
            span_id: fastrand::u64(1..),
            start: now_ns(),
            method: req.method().clone(),
            attrs,
            tries: AtomicU32::new(0),
            status: None,
            queue: self.queue.clone(),
        }))
    }
}

/// A traced request's server span. It ends when it is dropped: with the response body
/// (sent or abandoned), or with a response that has none; [`ServerSpan::respond`] notes the
/// response head.
#[derive(Debug)]
pub struct ServerSpan {
    trace_id: u128,
    /// The caller's span (0: this request started the trace).
    parent_id: u64,
    span_id: u64,
    start: u64,
    method: http::Method,
    attrs: Vec<KeyValue>,
    /// Tries started so far (retries and hedges included).
    tries: AtomicU32,
    /// Set for an error (5xx, or a body cut after its head).
    status: Option<Status>,
    queue: Arc<export::Queue>,
}

/// One upstream try's span, begun by [`ServerSpan::start_try`].
#[derive(Debug)]
pub struct ClientSpan {
    span_id: u64,
    start: u64,
    /// 0 for the first try, 1 for the next (retry or hedge), …
    resend: u32,
}

/// How a try ended, for its span.
pub enum TryEnd<'a> {
    Status(u16),
    Failed(&'static str, &'a dyn std::fmt::Display),
    /// Dropped before its response head: a hedge that lost the race, or a request that
    /// ended first. `error.type` `cancelled`, status unset: the proxy gave the try up itself,
    /// and whatever failed (if anything) is on the server span.
    Cancelled,
}

impl ServerSpan {
    /// Notes the route and cluster the request took.
    pub fn routed(&mut self, route: &str, cluster: &str) {
        self.attrs.push(kv("trellis.route", route));
        self.attrs.push(kv("trellis.cluster", cluster));
    }

    /// Notes an MCP request's JSON-RPC method and its target (`params.name` of tools/call and
    /// prompts/get, `params.uri` of resources/*), after the OpenTelemetry MCP conventions:
    /// `mcp.method.name`, `gen_ai.tool.name`, `gen_ai.prompt.name`, `mcp.resource.uri`.
    pub fn mcp(&mut self, method: Option<&str>, name: Option<&str>) {
        let Some(method) = method else { return };
        self.attrs.push(kv("mcp.method.name", method));
        let key = match method {
            "tools/call" => "gen_ai.tool.name",
            "prompts/get" => "gen_ai.prompt.name",
            m if m.starts_with("resources/") => "mcp.resource.uri",
            _ => return,
        };
        if let Some(name) = name {
            self.attrs.push(kv(key, name));
        }
    }

    /// Notes the endpoint whose response the client gets.
    pub fn served_by(&mut self, ep: &Endpoint) {
        self.attrs.push(kv("trellis.endpoint", &ep.addr.to_string()));
    }

    /// Starts a try's span and makes `req` carry it as the upstream's parent.
    pub fn start_try<B>(&self, req: &mut Request<B>) -> ClientSpan {
        let span_id = fastrand::u64(1..);
        req.headers_mut().insert(TRACEPARENT.clone(), context::format(self.trace_id, span_id, true));
        ClientSpan { span_id, start: now_ns(), resend: self.tries.fetch_add(1, Ordering::Relaxed) }
    }

    /// Ends a try's span (on `ep`, when there was one).
    pub fn end_try(&self, c: ClientSpan, ep: Option<&Endpoint>, cluster: &str, end: TryEnd<'_>) {
        let mut attrs = Vec::with_capacity(10);
        attrs.push(kv("http.request.method", self.method.as_str()));
        if let Some(ep) = ep {
            attrs.push(kv("server.address", &ep.addr.ip().to_string()));
            attrs.push(kv_int("server.port", i64::from(ep.addr.port())));
            attrs.push(kv("trellis.endpoint", &ep.addr.to_string()));
            if let Some(id) = &ep.identity {
                attrs.push(kv("trellis.peer.spiffe_id", id));
            }
        }
        attrs.push(kv("trellis.cluster", cluster));
        if c.resend > 0 {
            attrs.push(kv_int("http.request.resend_count", i64::from(c.resend)));
        }
        let status = match end {
            TryEnd::Status(code) => {
                attrs.push(kv_int("http.response.status_code", i64::from(code)));
                // A client span's 4xx is an error too (semconv); its 5xx certainly.
                (code >= 400).then(|| {
                    attrs.push(kv("error.type", &code.to_string()));
                    String::new()
                })
            }
            TryEnd::Failed(kind, message) => {
                attrs.push(kv("error.type", kind));
                Some(message.to_string())
            }
            TryEnd::Cancelled => {
                attrs.push(kv("error.type", "cancelled"));
                None
            }
        };
        self.queue.push(Span {
            trace_id: self.trace_id.to_be_bytes().to_vec(),
            span_id: c.span_id.to_be_bytes().to_vec(),
            parent_span_id: self.span_id.to_be_bytes().to_vec(),
            name: self.method.as_str().to_owned(),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: c.start,
            end_time_unix_nano: now_ns(),
            attributes: attrs,
            status: status.map(error_status),
            ..Default::default()
        });
    }

    /// Notes the response head: its status (and the proxy's error reason, when the proxy
    /// made the response).
    pub fn respond(&mut self, code: u16, error: Option<&str>) {
        self.attrs.push(kv_int("http.response.status_code", i64::from(code)));
        // A server span's 4xx is the client's business, not an error (semconv).
        if code >= 500 {
            self.attrs.push(kv("error.type", error.unwrap_or(&code.to_string())));
            self.status = Some(error_status(error.unwrap_or_default().to_owned()));
        }
    }

    /// The response body failed after its head went out (upstream reset, deadline…).
    pub fn body_failed(&mut self, reason: &str) {
        if self.status.is_none() {
            self.attrs.push(kv("error.type", reason));
            self.status = Some(error_status(reason.to_owned()));
        }
    }
}

impl Drop for ServerSpan {
    fn drop(&mut self) {
        let span = Span {
            trace_id: self.trace_id.to_be_bytes().to_vec(),
            span_id: self.span_id.to_be_bytes().to_vec(),
            parent_span_id: if self.parent_id == 0 { Vec::new() } else { self.parent_id.to_be_bytes().to_vec() },
            name: self.method.as_str().to_owned(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: self.start,
            end_time_unix_nano: now_ns(),
            attributes: std::mem::take(&mut self.attrs),
            status: self.status.take(),
            ..Default::default()
        };
        self.queue.push(span);
    }
}

fn error_status(message: String) -> Status {
    Status { message, code: status::StatusCode::Error as i32 }
}

/// Tells one CA file's contents from another's (exporters are keyed by it).
fn roots_digest(file: &str, pem: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (file, pem).hash(&mut h);
    h.finish()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

pub(crate) fn kv(key: &str, value: &str) -> KeyValue {
    let value = Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) });
    KeyValue { key: key.to_owned(), value, ..Default::default() }
}

fn kv_int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(v)) }),
        ..Default::default()
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

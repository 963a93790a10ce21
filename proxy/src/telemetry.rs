//! Metric names (DESIGN §7) and the per-route handles the hot path records into. Handles
//! are registered when a config is built, so a request records with an atomic add, not a
//! registry lookup.

use metrics::{Counter, Histogram, Label};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const REQUESTS_TOTAL: &str = "trellis_requests_total";
pub const REQUEST_DURATION: &str = "trellis_request_duration_seconds";
pub const TCP_CONNECTIONS: &str = "trellis_tcp_connections";
pub const DOWNSTREAM_CONNECTIONS_TOTAL: &str = "trellis_downstream_connections_total";
pub const CONFIG_VERSION: &str = "trellis_config_version";
pub const CONFIG_RELOADS_TOTAL: &str = "trellis_config_reloads_total";
pub const UPSTREAM_CONNECT_ERRORS_TOTAL: &str = "trellis_upstream_connect_errors_total";
pub const UPSTREAM_RETRIES_TOTAL: &str = "trellis_upstream_retries_total";
pub const UPSTREAM_HEDGES_TOTAL: &str = "trellis_upstream_hedges_total";
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "trellis_retry_budget_exhausted_total";
pub const CIRCUIT_BREAKER_REJECTIONS_TOTAL: &str = "trellis_circuit_breaker_rejections_total";
pub const OUTLIER_EJECTIONS_TOTAL: &str = "trellis_outlier_ejections_total";
pub const RATE_LIMITED_TOTAL: &str = "trellis_rate_limited_total";
pub const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "trellis_tls_handshake_errors_total";
pub const TLS_CERT_EXPIRY: &str = "trellis_tls_cert_expiry_timestamp_seconds";
pub const AUTHZ_DENIED_TOTAL: &str = "trellis_authz_denied_total";
pub const IDENTITY_RENEWALS_TOTAL: &str = "trellis_identity_renewals_total";
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "trellis_access_log_dropped_total";
pub const DOWNSTREAM_REQUESTS_TOTAL: &str = "trellis_downstream_requests_total";
pub const HTTP3_CONNECTIONS: &str = "trellis_http3_connections";
pub const HTTP3_CONNECTIONS_TOTAL: &str = "trellis_http3_connections_total";
pub const INBOUND_PLAINTEXT_TOTAL: &str = "trellis_inbound_plaintext_total";
pub const TRANSPARENT_CONNECTIONS_TOTAL: &str = "trellis_transparent_connections_total";
pub const TRANSPARENT_REFUSED_TOTAL: &str = "trellis_transparent_refused_total";
pub const MCP_REQUESTS_TOTAL: &str = "trellis_mcp_requests_total";
pub const MCP_REQUEST_DURATION: &str = "trellis_mcp_request_duration_seconds";
pub const UPGRADES_TOTAL: &str = "trellis_upgrades_total";
pub const TRACE_SPANS_EXPORTED_TOTAL: &str = "trellis_trace_spans_exported_total";
pub const TRACE_SPANS_DROPPED_TOTAL: &str = "trellis_trace_spans_dropped_total";

/// Every metric name above (dashboards and tests check their queries against it).
pub const ALL: &[&str] = &[
    REQUESTS_TOTAL,
    REQUEST_DURATION,
    TCP_CONNECTIONS,
    DOWNSTREAM_CONNECTIONS_TOTAL,
    CONFIG_VERSION,
    CONFIG_RELOADS_TOTAL,
    UPSTREAM_CONNECT_ERRORS_TOTAL,
    UPSTREAM_RETRIES_TOTAL,
    UPSTREAM_HEDGES_TOTAL,
    RETRY_BUDGET_EXHAUSTED_TOTAL,
    CIRCUIT_BREAKER_REJECTIONS_TOTAL,
    OUTLIER_EJECTIONS_TOTAL,
    RATE_LIMITED_TOTAL,
    TLS_HANDSHAKE_ERRORS_TOTAL,
    TLS_CERT_EXPIRY,
    AUTHZ_DENIED_TOTAL,
    IDENTITY_RENEWALS_TOTAL,
    ACCESS_LOG_DROPPED_TOTAL,
    DOWNSTREAM_REQUESTS_TOTAL,
    HTTP3_CONNECTIONS,
    HTTP3_CONNECTIONS_TOTAL,
    INBOUND_PLAINTEXT_TOTAL,
    TRANSPARENT_CONNECTIONS_TOTAL,
    TRANSPARENT_REFUSED_TOTAL,
    MCP_REQUESTS_TOTAL,
    MCP_REQUEST_DURATION,
    UPGRADES_TOTAL,
    TRACE_SPANS_EXPORTED_TOTAL,
    TRACE_SPANS_DROPPED_TOTAL,
];

/// Histogram buckets for request durations, in seconds (0.5 ms … 60 s).
const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Installs the process-wide Prometheus recorder; the handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, String> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), DURATION_BUCKETS)
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(Matcher::Full(MCP_REQUEST_DURATION.into()), DURATION_BUCKETS)
        .map_err(|e| e.to_string())?;
    let handle = builder.install_recorder().map_err(|e| e.to_string())?;
    metrics::describe_counter!(REQUESTS_TOTAL, "Requests answered, by listener, route, cluster and status code");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from request head to the end of the response"
    );
    metrics::describe_gauge!(TCP_CONNECTIONS, "Open downstream connections, by listener");
    metrics::describe_gauge!(CONFIG_VERSION, "Version of the applied config, by type");
    metrics::describe_counter!(
        IDENTITY_RENEWALS_TOTAL,
        "Identity certificate renewals from the control plane's CA, by result (ok, error)"
    );
    metrics::describe_counter!(ACCESS_LOG_DROPPED_TOTAL, "Access log lines dropped because the writer fell behind");
    metrics::describe_counter!(
        DOWNSTREAM_REQUESTS_TOTAL,
        "Requests received, by listener and protocol (http/1.1, h2, h3: the ALPN ids)"
    );
    metrics::describe_gauge!(HTTP3_CONNECTIONS, "Open HTTP/3 (QUIC) connections, by listener");
    metrics::describe_counter!(
        HTTP3_CONNECTIONS_TOTAL,
        "HTTP/3 connection attempts, by listener and result (accepted, refused: over the limit, retry: sent a Retry)"
    );
    metrics::describe_counter!(
        INBOUND_PLAINTEXT_TOTAL,
        "Plaintext connections accepted by a permissive listener (no mTLS), by listener"
    );
    metrics::describe_counter!(
        TRANSPARENT_CONNECTIONS_TOTAL,
        "Connections of transparent listeners, by listener, protocol (http, opaque) and mesh (peer or destination is a mesh proxy)"
    );
    metrics::describe_counter!(
        TRANSPARENT_REFUSED_TOTAL,
        "Connections a transparent listener closed at once, by listener and reason (loop, registry_only)"
    );
    metrics::describe_counter!(
        MCP_REQUESTS_TOTAL,
        "MCP (JSON-RPC) messages on routes with mcp, by route, method, tool (tools/call; first 64 bytes; other after 100 names) and outcome (allowed, denied, invalid)"
    );
    metrics::describe_histogram!(
        MCP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from an MCP request's head to its response head, by route and method (single messages)"
    );
    metrics::describe_counter!(
        UPGRADES_TOTAL,
        "Requests switched to a byte stream (upstream 101 or tunnel established), by listener and protocol (websocket, connect, other)"
    );
    metrics::describe_counter!(DOWNSTREAM_CONNECTIONS_TOTAL, "Downstream connections accepted, by listener");
    metrics::describe_counter!(CONFIG_RELOADS_TOTAL, "Static config reloads, by result (ok, error)");
    metrics::describe_counter!(
        UPSTREAM_CONNECT_ERRORS_TOTAL,
        "Upstream connection attempts that failed (refused, timeout, TLS), by cluster"
    );
    metrics::describe_counter!(UPSTREAM_RETRIES_TOTAL, "Upstream retries made, by cluster");
    metrics::describe_counter!(UPSTREAM_HEDGES_TOTAL, "Hedged upstream requests sent, by cluster");
    metrics::describe_counter!(
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        "Retries not made because the cluster's retry budget was spent, by cluster"
    );
    metrics::describe_counter!(
        CIRCUIT_BREAKER_REJECTIONS_TOTAL,
        "Requests refused by a cluster's circuit breaker (limit reached), by cluster and threshold"
    );
    metrics::describe_counter!(OUTLIER_EJECTIONS_TOTAL, "Endpoints ejected by outlier detection, by cluster");
    metrics::describe_counter!(RATE_LIMITED_TOTAL, "Requests refused by a route's rate limit (429), by route");
    metrics::describe_counter!(
        TLS_HANDSHAKE_ERRORS_TOTAL,
        "Downstream TLS handshakes that failed, by listener and reason"
    );
    metrics::describe_gauge!(
        TLS_CERT_EXPIRY,
        metrics::Unit::Seconds,
        "Unix time at which a loaded certificate expires, by cert"
    );
    metrics::describe_counter!(AUTHZ_DENIED_TOTAL, "Requests denied by authorization policy (403), by listener");
    metrics::describe_counter!(TRACE_SPANS_EXPORTED_TOTAL, "Spans the OTLP collector accepted");
    metrics::describe_counter!(
        TRACE_SPANS_DROPPED_TOTAL,
        "Spans dropped, by reason (queue_full: the export queue was full; export_failed: the collector did not take them)"
    );
    Ok(handle)
}

/// Status codes whose counters are cached; others are looked up per request.
const COMMON_CODES: [u16; 20] =
    [200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404, 408, 413, 429, 431, 500, 502, 503, 504];

/// Metric handles for one (listener, route, cluster).
#[derive(Debug)]
pub struct RouteMetrics {
    labels: [Label; 3],
    duration: Histogram,
    codes: [OnceLock<Counter>; COMMON_CODES.len()],
}

impl RouteMetrics {
    pub fn new(listener: &str, route: &str, cluster: &str) -> Self {
        let labels = [
            Label::new("listener", listener.to_owned()),
            Label::new("route", route.to_owned()),
            Label::new("cluster", cluster.to_owned()),
        ];
        let duration = metrics::histogram!(REQUEST_DURATION, labels.to_vec());
        Self { labels, duration, codes: Default::default() }
    }

    /// Counts one answered request.
    pub fn count(&self, code: u16) {
        match COMMON_CODES.iter().position(|&c| c == code) {
            Some(i) => self.codes[i].get_or_init(|| self.counter(code)).increment(1),
            None => self.counter(code).increment(1),
        }
    }

    fn counter(&self, code: u16) -> Counter {
        let mut labels = self.labels.to_vec();
        labels.push(Label::new("code", code.to_string()));
        metrics::counter!(REQUESTS_TOTAL, labels)
    }

    /// Records how long a finished request took.
    pub fn observe(&self, took: Duration) {
        self.duration.record(took.as_secs_f64());
    }
}

/// A listener's request counters by protocol, registered once per config.
#[derive(Debug)]
pub struct ProtocolRequests {
    http1: Counter,
    h2: Counter,
    h3: Counter,
}

impl ProtocolRequests {
    pub fn new(listener: &str) -> Self {
        let counter = |p: &'static str| metrics::counter!(DOWNSTREAM_REQUESTS_TOTAL, "listener" => listener.to_owned(), "protocol" => p);
        Self { http1: counter("http/1.1"), h2: counter("h2"), h3: counter("h3") }
    }

    /// Counts one request received over `version` (HTTP/1.0 counts as http/1.1).
    pub fn count(&self, version: http::Version) {
        match version {
            http::Version::HTTP_2 => &self.h2,
            http::Version::HTTP_3 => &self.h3,
            _ => &self.http1,
        }
        .increment(1);
    }
}

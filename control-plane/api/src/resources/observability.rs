//! What proxies record and export about traffic: the access log, span export with OTLP
//! (DESIGN §14), and the control plane's `Telemetry` resource that sets span export for a
//! set of proxies.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the JSON access log goes: `stdout` or a file path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, or a file path (appended to; a rotated file is followed).
    pub path: String,
}

/// Span export (DESIGN §14).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The OTLP collector spans are sent to.
    pub otlp: Otlp,
    /// Share of new traces sampled, 0.0 to 1.0. Default 1.0. A request whose `traceparent`
    /// is sampled is always traced, one whose `traceparent` is not sampled never is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
    /// Finished spans waiting for export at most; more are dropped (and counted in
    /// `trellis_trace_spans_dropped_total`). Default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
}

/// An OTLP collector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// `http://HOST:PORT` or `https://HOST:PORT` (TLS) of the collector (4317 for gRPC,
    /// 4318 for HTTP by convention). HTTP export posts to `/v1/traces` under it.
    pub endpoint: String,
    /// `grpc` (default) or `http` (protobuf over HTTP).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// `https://` only: the roots (PEM) that the collector's certificate must chain to.
    /// Absent: the system's roots. The certificate must name the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// How spans are sent to the collector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`TraceService/Export`).
    #[default]
    Grpc,
    /// OTLP/HTTP with a protobuf body, `POST /v1/traces`.
    Http,
}

/// A control plane's telemetry settings for a set of proxies (DESIGN §14), like Istio's
/// `Telemetry`: the one selecting a proxy's `node.service` wins over the one without
/// `service` (mesh-wide); its `tracing` replaces the bootstrap's `tracing` while it applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// Unique among telemetry resources.
    pub name: String,
    /// Only proxies whose `node.service` is this. Absent: every proxy (mesh-wide); at most
    /// one telemetry resource per service and one mesh-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Span export for the selected proxies, in place of their bootstrap's `tracing`.
    /// Absent: the selected proxies export no spans (`traceparent` is still propagated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

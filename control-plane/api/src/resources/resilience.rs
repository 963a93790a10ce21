//! Resilience settings of clusters and routes: circuit breakers, outlier detection, health
//! checks, retries and their budget, hedging, rate limits and fault injection.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Envoy-style thresholds per cluster; over one, a request gets 503 at once. Without a
/// `circuit_breaker` block there are no limits; in one, an omitted field defaults to 1024
/// (`max_retries`: 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Open upstream connections across the cluster.
    #[serde(default = "d1024")]
    pub max_connections: u32,
    /// Requests waiting for a new upstream connection to be established.
    #[serde(default = "d1024")]
    pub max_pending: u32,
    /// Requests in flight to the cluster.
    #[serde(default = "d1024")]
    pub max_requests: u32,
    /// Retries in flight to the cluster.
    #[serde(default = "d3")]
    pub max_retries: u32,
}

fn d1024() -> u32 {
    1024
}
fn d3() -> u32 {
    3
}

/// Passive health: endpoints that keep failing are ejected for a while.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses that eject an endpoint. Default 5; 0 = off.
    #[serde(default = "d5")]
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (502/503/504, connect failure, reset). Default 5; 0 = off.
    #[serde(default = "d5")]
    pub consecutive_gateway_errors: u32,
    /// How long an ejected endpoint stays out of service before it decays one step. Default 10s.
    #[serde(default = "d10s")]
    pub interval: crate::Duration,
    /// Ejection time; the n-th ejection in a row lasts n × this. Default 30s.
    #[serde(default = "d30s")]
    pub base_ejection: crate::Duration,
    /// At most this share of a cluster's endpoints is ejected at once. Default 50.
    #[serde(default = "d50")]
    pub max_ejection_percent: u32,
}

fn d5() -> u32 {
    5
}
fn d50() -> u32 {
    50
}
fn d10s() -> crate::Duration {
    crate::Duration::from_secs(10)
}
fn d30s() -> crate::Duration {
    crate::Duration::from_secs(30)
}

/// Active health checking of every endpoint of a cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP GET this path (2xx = healthy). Absent: a TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between checks.
    #[serde(default = "d5s")]
    pub interval: crate::Duration,
    /// Longest wait for one check.
    #[serde(default = "d1s")]
    pub timeout: crate::Duration,
    /// Failed checks in a row that mark an endpoint unhealthy. Default 3.
    #[serde(default = "d3")]
    pub unhealthy: u32,
    /// Passed checks in a row that mark it healthy again. Default 2.
    #[serde(default = "d2")]
    pub healthy: u32,
}

fn d2() -> u32 {
    2
}
fn d5s() -> crate::Duration {
    crate::Duration::from_secs(5)
}
fn d1s() -> crate::Duration {
    crate::Duration::from_secs(1)
}

/// When and how a route retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Tries in total, the first included. Default 2.
    #[serde(default = "d2")]
    pub attempts: u32,
    /// Conditions: `connect_failure`, `reset`, `gateway_error` (502/503/504), `5xx`,
    /// `retriable_grpc` (cancelled, deadline-exceeded, resource-exhausted, unavailable), or a
    /// status code. Default: connect_failure, reset, gateway_error.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Deadline of one try. Default: none (the route's timeouts still apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<crate::Duration>,
    /// Wait between tries.
    #[serde(default)]
    pub backoff: Backoff,
    /// Cap on retries as a share of requests.
    #[serde(default)]
    pub budget: RetryBudget,
    /// Retry non-idempotent methods (POST, PATCH) too. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
    /// Largest request body kept for replay; larger or unsized bodies are not retried. Default 64 KiB.
    #[serde(default = "d64k")]
    pub max_body_bytes: u32,
}

fn d64k() -> u32 {
    64 * 1024
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::GatewayError]
}

/// One retry condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    GatewayError,
    ServerError,
    RetriableGrpc,
    Status(u16),
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::ConnectFailure => s.serialize_str("connect_failure"),
            Self::Reset => s.serialize_str("reset"),
            Self::GatewayError => s.serialize_str("gateway_error"),
            Self::ServerError => s.serialize_str("5xx"),
            Self::RetriableGrpc => s.serialize_str("retriable_grpc"),
            Self::Status(c) => s.serialize_u16(*c),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Code(u64),
            Name(String),
        }
        let unknown = |v: &str| {
            serde::de::Error::custom(format!(
                "unknown retry condition \"{v}\" (use connect_failure, reset, gateway_error, 5xx, retriable_grpc or a status code)"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Code(c) if (100..600).contains(&c) => Ok(Self::Status(c as u16)),
            Raw::Code(c) => Err(unknown(&c.to_string())),
            Raw::Name(n) => match n.as_str() {
                "connect_failure" => Ok(Self::ConnectFailure),
                "reset" => Ok(Self::Reset),
                "gateway_error" => Ok(Self::GatewayError),
                "5xx" => Ok(Self::ServerError),
                "retriable_grpc" => Ok(Self::RetriableGrpc),
                other => other
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..600).contains(c))
                    .map(Self::Status)
                    .ok_or_else(|| unknown(other)),
            },
        }
    }
}

impl JsonSchema for RetryOn {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RetryOn".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`connect_failure`, `reset`, `gateway_error` (502/503/504), `5xx`, `retriable_grpc`, or a status code (100–599).",
            "anyOf": [
                { "type": "string", "enum": ["connect_failure", "reset", "gateway_error", "5xx", "retriable_grpc"] },
                { "type": "integer", "minimum": 100, "maximum": 599 }
            ]
        })
    }
}

/// Exponential backoff with full jitter between tries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// First wait (doubling per try, full jitter). Default 25ms.
    #[serde(default = "d25ms")]
    pub base: crate::Duration,
    /// Longest wait. Default 1s.
    #[serde(default = "d1s")]
    pub max: crate::Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: d25ms(), max: d1s() }
    }
}

fn d25ms() -> crate::Duration {
    crate::Duration::from_millis(25)
}

/// Caps retries to a share of requests, so a failing upstream does not get a retry storm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed per request, over a 10 s window. Default 0.2.
    #[serde(default = "d02")]
    pub ratio: f64,
    /// Retries always allowed per second. Default 10.
    #[serde(default = "d10")]
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self { ratio: d02(), min_per_second: d10() }
    }
}

fn d02() -> f64 {
    0.2
}
fn d10() -> u32 {
    10
}

/// A second try for slow idempotent requests; the first response wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HedgePolicy {
    /// Wait this long (or `auto`: the cluster's recent p95 latency) before hedging.
    pub delay: HedgeDelay,
    /// Extra tries at most. Default 1.
    #[serde(default = "d1")]
    pub max: u32,
}

fn d1() -> u32 {
    1
}

/// A fixed hedge delay or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeDelay {
    Fixed(crate::Duration),
    Auto,
}

impl Serialize for HedgeDelay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(d) => d.serialize(s),
            Self::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for HedgeDelay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "auto" { Ok(Self::Auto) } else { s.parse().map(Self::Fixed).map_err(serde::de::Error::custom) }
    }
}

impl JsonSchema for HedgeDelay {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HedgeDelay".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration, or `auto` (the cluster's recent p95 latency).",
            "anyOf": [ g.subschema_for::<crate::Duration>(), { "const": "auto" } ]
        })
    }
}

/// A local token bucket per route (optionally one per key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Refill rate of the bucket.
    pub requests_per_second: f64,
    /// Bucket size. Default: one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per value of this header (absent header: shared bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_header: Option<String>,
    /// One bucket per client IP address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_source_ip: bool,
    /// Routes with `mcp`: one bucket per tool a `tools/call` names (within the header's or
    /// IP's bucket when `per_header`/`per_source_ip` is set too); requests calling no tool
    /// share the other bucket. Over it: 429 with a JSON-RPC error. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_mcp_tool: bool,
}

/// Chaos: delay or abort a share of requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests at once with a status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// 0–100.
    pub percent: f64,
    /// How long.
    pub duration: crate::Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// 0–100.
    pub percent: f64,
    /// Status of the answer.
    pub status: u16,
}

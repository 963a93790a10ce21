//! The resource types (DESIGN §3). Every struct refuses unknown fields so a typo is an error
//! naming the field, never a silently ignored setting.

use crate::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What `trellis proxy --config FILE` reads: who this proxy is plus its static resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    #[serde(default)]
    pub node: Node,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    /// How long in-flight requests may take to finish on shutdown, and how long a stream on a
    /// route removed by a reload may keep running. Default 15s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<Cluster>,
}

/// Default for [`Bootstrap::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// This proxy's identity in the mesh.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// The admin HTTP server (/ready, /live, /metrics, /config_dump).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: String,
}

/// Default admin address (DESIGN §2).
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// Where the JSON access log goes: `stdout` or a file path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    pub path: String,
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// Sniff each connection: HTTP/2 preface → h2, otherwise HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 and h2c, like `auto`.
    Http,
    /// Plain TCP forwarding to `cluster`.
    Tcp,
}

/// A bound address and what to do with its connections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// HTTP: route names, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// TCP: the cluster every connection goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Time a client has to send a whole request header block. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<Duration>,
    /// Largest request header block accepted; larger gets 431. Default 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<u32>,
}

/// Default for [`Listener::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Listener::max_header_bytes`].
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;

/// Which requests a route takes and where it sends them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    pub backends: Vec<Backend>,
    /// Deadline for the whole exchange, response body included; `0` or absent = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Longest wait for the response head or between two body chunks. Default 60s; `0` = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub headers: HeaderRules,
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub response_headers: HeaderRules,
}

/// Default for [`Route::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Request predicates; all given ones must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// `example.com` (exact), `*.example.com` (any subdomain), or `*` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Exact path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix, on segment or character boundary as written (`/api` matches `/api/x` and `/apix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Header name → exact value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// One weighted destination of a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub cluster: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Headers to add (overwriting) and remove.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderRules {
    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// The HTTP version spoken to a cluster's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterProtocol {
    Http1,
    Http2,
    /// The downstream request's own version (h2 in → h2 out, HTTP/1.x in → HTTP/1.1 out).
    #[default]
    Auto,
}

/// How a cluster picks an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Power of two choices on peak-EWMA latency × (in-flight + 1) ÷ weight (Linkerd's default).
    #[default]
    PeakEwma,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of two choices on in-flight requests ÷ weight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring (Ketama) keyed by `hash_on`.
    RingHash,
    /// Maglev consistent hashing keyed by `hash_on`.
    Maglev,
}

/// What a consistent-hash balancer hashes. Requests without the key are spread at random.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    /// Hash this request header (e.g. an agent session id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Hash the client's IP address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_ip: bool,
}

/// A set of endpoints serving one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(default)]
    pub protocol: ClusterProtocol,
    #[serde(default)]
    pub lb: LbPolicy,
    /// For `ring_hash` and `maglev`: the request key. Default: the client's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// HTTP/2: streams one connection may carry before another is opened. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streams_per_connection: Option<u32>,
    /// Idle pooled connections kept per endpoint and worker. Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_endpoint: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

/// Default for [`Cluster::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default for [`Cluster::max_streams_per_connection`].
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// Default for [`Cluster::max_idle_per_endpoint`].
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: u32 = 64;

/// One upstream address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `IP:PORT` or `HOST:PORT` (resolved when the config is applied).
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

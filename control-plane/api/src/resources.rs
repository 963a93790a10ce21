//! The resource types (DESIGN §3). Every struct refuses unknown fields so a typo is an error
//! naming the field, never a silently ignored setting.

use crate::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod observability;
mod resilience;
pub use observability::*;
pub use resilience::*;

/// What `trellis proxy --config FILE` reads: who this proxy is plus its static resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// Who this proxy is: `id`, `service` (for discovery and sidecar registration) and `zone`.
    #[serde(default)]
    pub node: Node,
    /// The admin server. Default address 127.0.0.1:9901.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    /// How long in-flight requests may take to finish on shutdown, and how long a stream on a
    /// route removed by a reload may keep running. Default 15s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,
    /// One JSON line per request (and per TCP connection). Absent: no access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    /// Span export with OTLP: a server span per request, a client span per upstream try.
    /// Absent: no spans are made (`traceparent` is still propagated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Where to get dynamic resources from (discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlane>,
    /// This proxy's mTLS identity (files watched and hot-reloaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Static listeners (kept alongside the control plane's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    /// Static routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Static clusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<Cluster>,
    /// Static authorization policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
    /// Telemetry resources: a control-plane kind only (never read from a file: `telemetry`
    /// in a bootstrap is an unknown field). Here so that the control plane validates its
    /// whole resource set as one config, like the other kinds.
    #[serde(skip)]
    #[schemars(skip)]
    pub telemetry: Vec<Telemetry>,
}

/// The control plane a proxy takes resources from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    /// `http://HOST:PORT` of the discovery server, or `https://HOST:PORT` for mTLS with the
    /// bootstrap's `identity` (the control plane runs with `--xds-tls`). Several (a list):
    /// replicas sharing one etcd; the proxy starts at a random one and fails over to the
    /// next when its stream fails.
    pub address: Addresses,
    /// The SPIFFE ID an `https://` control plane must present; default
    /// `spiffe://<this proxy's trust domain>/ns/trellis-system/sa/control-plane`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// File holding the bearer token, if the control plane requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Registered as this proxy's endpoint of `node.service` (sidecars: the inbound address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_address: Option<String>,
}

/// One address or several: `address: http://a:7071` or `address: [http://a:7071, http://b:7071]`.
/// Written back the way it was read (one address as a string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses(Vec<String>);

impl Addresses {
    /// One address.
    pub fn one(address: impl Into<String>) -> Addresses {
        Addresses(vec![address.into()])
    }

    /// Every address, in order.
    pub fn all(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Display for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl Serialize for Addresses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            all => all.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Addresses;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address (http://HOST:PORT) or a list of them")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Addresses, E> {
                Ok(Addresses::one(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Addresses, A::Error> {
                let mut all = Vec::new();
                while let Some(a) = seq.next_element::<String>()? {
                    all.push(a);
                }
                if all.is_empty() {
                    return Err(serde::de::Error::invalid_length(0, &"at least one address"));
                }
                Ok(Addresses(all))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for Addresses {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Addresses".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "One address, or a non-empty list of them.",
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" }, "minItems": 1 }
            ]
        })
    }
}

/// Certificate, key and trust bundle files of a proxy's mesh identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Leaf then chain (PEM); the SPIFFE ID is the leaf's URI SAN.
    pub cert: String,
    /// Private key (PEM) of the leaf; mode 0600 is advised.
    pub key: String,
    /// Trusted roots (PEM; several allowed, for root rotation).
    pub trust_bundle: String,
    /// Get `cert` from the control plane's CA and renew it before it expires. The proxy
    /// makes its key itself and writes both files (the key mode 0600); only a CSR leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Issuer>,
}

/// Where a proxy gets its identity certificate: the control plane's `POST /v1/certificates`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// The control plane's REST API, `http://HOST:PORT` (its default address is
    /// 127.0.0.1:7070), or `https://HOST:PORT` for one started with `--api-tls`: it must
    /// then present the control plane's SPIFFE ID under `trust_bundle`.
    pub server: String,
    /// The SPIFFE ID asked for.
    pub id: String,
    /// File holding the control plane's bearer token, if it requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Validity asked for (default 24h); the certificate is renewed once less than a
    /// third of it is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// TLS on a listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Which TLS.
    pub mode: ListenerTlsMode,
    /// `terminate`: server certificates, chosen by SNI (exact, then wildcard); the first is
    /// the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertPair>,
    /// `terminate`: oldest TLS version accepted, "1.2" (default) or "1.3". Mesh is 1.3 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    /// `terminate`: also serve HTTP/3 (QUIC) on the same port over UDP, with the same
    /// certificates, routes and policy; responses over TCP then carry
    /// `alt-svc: h3=":PORT"; ma=86400`. QUIC is TLS 1.3 only, whatever `min_version` says.
    /// Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http3: bool,
    /// HTTP/3: accept 0-RTT (TLS early data) from resuming clients. Early requests can be
    /// replayed by an attacker, so only safe methods (GET, HEAD, OPTIONS, TRACE) are
    /// forwarded early (with `early-data: 1`); others get 425 Too Early and the client
    /// retries once the handshake is done. Default false: no 0-RTT.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub early_data: bool,
    /// HTTP/3: connections this listener serves at once, per proxy (handshakes in progress
    /// included). Further attempts are refused (QUIC CONNECTION_REFUSED) and counted in
    /// `trellis_http3_connections_total{result="refused"}`. Default 10000, 1–1000000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http3_max_connections: Option<u32>,
}

/// Default for [`ListenerTls::http3_max_connections`].
pub const DEFAULT_HTTP3_MAX_CONNECTIONS: u32 = 10_000;

/// What TLS a listener speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListenerTlsMode {
    /// Plaintext.
    #[default]
    None,
    /// mTLS between proxies: client certificate required, SPIFFE ID authorized by `policy`.
    Mesh,
    /// Like `mesh`, and plaintext clients too (migration; counted in
    /// `trellis_inbound_plaintext_total`); they have no identity for `policy`.
    Permissive,
    /// Public TLS at the edge with server certificates by SNI.
    Terminate,
}

/// A certificate chain and its key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    /// Leaf then chain (PEM).
    pub cert: String,
    /// Private key (PEM).
    pub key: String,
}

/// TLS to a cluster's endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// Which TLS.
    pub mode: ClusterTlsMode,
    /// `mesh`: the SPIFFE ID the endpoints must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// `tls`: the server name to send and verify. Default: the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// `tls`: roots to trust (PEM). Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<String>,
}

/// What TLS a cluster speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterTlsMode {
    /// mTLS with this proxy's identity; the server's SPIFFE ID is verified, not a DNS name.
    Mesh,
    /// Ordinary TLS: server name verified against `trust_bundle`.
    Tls,
}

/// An authorization policy for a listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Referenced by a listener's `policy`.
    pub name: String,
    /// What happens when no rule matches. Default deny.
    #[serde(default)]
    pub default: PolicyDefault,
    /// A request is allowed when any rule allows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
}

/// A policy's fallback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyDefault {
    /// Deny requests no rule allows.
    #[default]
    Deny,
    /// Allow requests no rule matches.
    Allow,
}

/// Allows a request when every given condition holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Peer SPIFFE IDs: exact, or ending in `*` (prefix). Empty: any peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// Paths: exact, or ending in `/*` (that prefix). Empty: any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// MCP conditions (DESIGN §13), checked on routes with `mcp`: the rule then allows only
    /// the JSON-RPC methods and tools named here. Absent: any MCP call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<PolicyMcp>,
}

/// The MCP calls a policy rule allows. Both lists: exact, or ending in `*` (prefix).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyMcp {
    /// JSON-RPC methods (`initialize`, `tools/list`, `tools/call`, `notifications/*`…).
    /// Empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Tool names a `tools/call` may name; also what `tools/list` answers keep. Other
    /// methods are not restricted by this list. Empty: any tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
}

/// Default for [`Bootstrap::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// This proxy's identity in the mesh.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// This proxy's name, unique in the mesh (shown by `trellis ctl proxies`).
    #[serde(default)]
    pub id: String,
    /// The service this proxy fronts: selects `service` listeners from the control plane and names the cluster a sidecar registers in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Locality; balancers prefer endpoints of the same zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// The admin HTTP server (/ready, /live, /metrics, /config_dump).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `IP:PORT` to serve /live, /ready, /metrics, /config_dump and /clusters on.
    pub address: String,
}

/// Default admin address (DESIGN §2).
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// What a listener speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique among listeners.
    pub name: String,
    /// `IP:PORT` to bind.
    pub address: String,
    /// Discovery: only proxies whose `node.service` is this get the listener. Absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What the listener speaks.
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
    /// TLS on accepted connections (mesh mTLS or edge termination). Absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Authorization policy name. A mesh listener without one denies everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Transparent interception (DESIGN §9): read each connection's original destination
    /// (SO_ORIGINAL_DST, after `trellis proxy-init`'s redirect). Without `tls` it is the
    /// pod's outbound side (mesh destinations get mTLS); with `tls: mesh | permissive` its
    /// inbound side (forwards to 127.0.0.1:<original port>).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transparent: bool,
    /// Transparent outbound listeners: what happens to a destination outside the mesh
    /// (neither a mesh endpoint nor an endpoint of a cluster). Default `allow_any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_policy: Option<OutboundPolicy>,
    /// Transparent listeners: how long to wait for a client's first bytes before carrying
    /// the connection as opaque TCP (server-first protocols send nothing). Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_timeout: Option<Duration>,
    /// Transparent listeners: destination ports carried as opaque TCP at once, without
    /// protocol detection. Default 25, 587, 3306, 4444, 5432, 6379, 9300, 11211
    /// (server-first protocols: SMTP, MySQL, PostgreSQL, Redis…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque_ports: Option<Vec<u16>>,
    /// Agent-chain loop guard (DESIGN §13): a request whose `x-trellis-hops` (incremented
    /// by every proxy it passes) is already this many gets 508 Loop Detected. Default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hops: Option<u32>,
    /// HTTP listeners: accept `CONNECT host:port` tunnels over HTTP/1.1 (DESIGN §11). A
    /// CONNECT is routed like any request (its target's host is the request's host) and
    /// its bytes go to an endpoint of the route's cluster, under the route's
    /// `idle_timeout`. Default false: a CONNECT gets 405.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub connect: bool,
    /// With `connect: true`: the ports a CONNECT target may name; others get 403. Default
    /// [443].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ports: Option<Vec<u16>>,
}

/// Default for [`Listener::max_hops`].
pub const DEFAULT_MAX_HOPS: u32 = 16;

/// Default for [`Listener::connect_ports`].
pub const DEFAULT_CONNECT_PORTS: [u16; 1] = [443];

/// What a transparent outbound listener does with destinations outside the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutboundPolicy {
    /// Pass them through unchanged (plaintext, as the app sent it).
    #[default]
    AllowAny,
    /// Refuse them: the connection is closed and counted.
    RegistryOnly,
}

/// Default for [`Listener::detect_timeout`].
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Listener::opaque_ports`]: SMTP, SMTP submission, MySQL, Galera, PostgreSQL,
/// Redis, Elasticsearch transport, memcached — protocols where the server speaks first, so
/// detection would only wait (Linkerd's list).
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// Default for [`Listener::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Listener::max_header_bytes`].
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;

/// Which requests a route takes and where it sends them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Referenced by listeners' `routes`.
    pub name: String,
    /// Which requests the route takes; all given predicates must hold. Absent: every request.
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Weighted clusters; each request goes to one, picked by weight.
    pub backends: Vec<Backend>,
    /// Deadline for the whole exchange, response body included; `0` or absent = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Longest wait for the response head or between two body chunks, and the longest an
    /// upgraded stream (WebSocket) or CONNECT tunnel stays open with no byte moving. Default
    /// 60s (a stream or tunnel: 300s); `0` = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Request headers to add or remove before forwarding.
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub headers: HeaderRules,
    /// Response headers to add or remove before answering.
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub response_headers: HeaderRules,
    /// Retry failed tries. Absent: no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Send a second try when the first is slow. Absent: no hedging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgePolicy>,
    /// Local token bucket; over it: 429 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Fault injection for testing resilience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// The route carries MCP (JSON-RPC 2.0 over Streamable HTTP, DESIGN §13): POST bodies
    /// are read (bounded) and checked, policy rules' `mcp` conditions apply, and `tools/list`
    /// answers are filtered to the caller's tools. Absent: bodies are streamed untouched.
    // Boxed: most routes have none, and `Route` is the largest resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<Box<McpRoute>>,
}

/// MCP settings of a route (`mcp: {}` takes the defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpRoute {
    /// Largest JSON-RPC request body read; larger gets 413. Default 1 MiB (1048576).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u32>,
    /// Most messages in one JSON-RPC batch; more gets 400 with a JSON-RPC error. Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u32>,
    /// Tools whose `tools/call` may be tried again by the route's `retry` and `hedge`
    /// (exact, or ending in `*`): they must be safe to run twice. Other tool calls are never
    /// retried or hedged; other requests (`initialize`, `tools/list`, `resources/read`…) are
    /// retried like idempotent requests. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idempotent_tools: Vec<String>,
    /// Send every request of an MCP session (`Mcp-Session-Id`) to the endpoint that answered
    /// its `initialize`. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<bool>,
    /// Most sessions remembered for affinity; past it the least recently used is
    /// forgotten. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// A session unused this long is forgotten (its next request is balanced anew).
    /// Default 30m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_idle_timeout: Option<Duration>,
    /// A response whose JSON-RPC message is an error, or a tool result with `isError`,
    /// counts as a failure of the endpoint for the cluster's outlier detection (like a
    /// 5xx). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub errors_are_failures: bool,
}

/// Default for [`McpRoute::max_body_bytes`].
pub const DEFAULT_MCP_MAX_BODY_BYTES: u32 = 1024 * 1024;
/// Default for [`McpRoute::max_batch`].
pub const DEFAULT_MCP_MAX_BATCH: u32 = 64;
/// Default for [`McpRoute::max_sessions`].
pub const DEFAULT_MCP_MAX_SESSIONS: u32 = 10_000;
/// Default for [`McpRoute::session_idle_timeout`].
pub const DEFAULT_MCP_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);

/// Default for [`Route::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for [`Route::idle_timeout`] on an upgraded stream (WebSocket) or a CONNECT
/// tunnel: Envoy's `stream_idle_timeout` default, which covers upgraded streams. A quiet
/// WebSocket is ordinary (a chat nobody types in, a feed between events), and many clients
/// ping only every few minutes or not at all; 60 s would cut them.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Request predicates; all given ones must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// HTTP methods; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// One weighted destination of a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Cluster name.
    pub cluster: String,
    /// Relative share of the route's requests.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Headers to add (overwriting) and remove.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    /// Header name → value, set (replacing any value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Header names to remove.
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterProtocol {
    /// HTTP/1.1, pooled connections.
    Http1,
    /// HTTP/2 (h2c, or h2 over TLS), multiplexed.
    Http2,
    /// HTTP/1.1 unless the app is known to speak h2 (a mesh peer said so, a transparent
    /// client chose h2 for it, the request is gRPC, or over `tls: { mode: tls }` the
    /// endpoint selected h2 by ALPN); h2 between sidecars (DESIGN §9, §11).
    #[default]
    Auto,
}

/// How a cluster picks an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Referenced by routes' backends and TCP listeners.
    pub name: String,
    /// HTTP version spoken to the endpoints.
    #[serde(default)]
    pub protocol: ClusterProtocol,
    /// How an endpoint is picked.
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
    /// Limits per cluster. Absent: no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Passive ejection of failing endpoints. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Active health checks. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// TLS to the endpoints (mesh mTLS or ordinary TLS). Absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// Upstream addresses (with a control plane, more arrive by discovery).
    pub endpoints: Vec<Endpoint>,
}

/// Default for [`Cluster::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default for [`Cluster::max_streams_per_connection`].
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// Default for [`Cluster::max_idle_per_endpoint`].
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: u32 = 64;

/// One upstream address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `IP:PORT` or `HOST:PORT` (resolved when the config is applied).
    pub address: String,
    /// Relative share of traffic, honoured by every balancer.
    #[serde(default = "one")]
    pub weight: u32,
    /// Locality, compared with `node.zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The SPIFFE ID this endpoint's proxy presents: the endpoint is then reached over mesh
    /// mTLS checking it (auto-mTLS), and every port of its IP is a mesh destination for
    /// transparent listeners (DESIGN §9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

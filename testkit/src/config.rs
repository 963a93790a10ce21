//! Typed configs: tests build the real `trellis-api` resources (so a misspelt field fails to
//! compile, not at run time) and [`Yaml::yaml`] serializes them for a `Proxy`. The text is
//! JSON, which is YAML; the admin address is the `{admin}` placeholder `Proxy` fills in.
//!
//! ```ignore
//! let mut b = config::bootstrap();
//! b.listeners.push(config::listener("in", listen, &["all"]));
//! b.routes.push(config::route("all", "/", "origin"));
//! b.clusters.push(config::cluster("origin", ClusterProtocol::Http1, &[origin.addr]));
//! let proxy = Proxy::start(&b.yaml());
//! ```

use super::*;
pub use trellis_api::{
    AccessLog, Admin, Backend, Bootstrap, CertPair, Cluster, ClusterProtocol, ClusterTls, ClusterTlsMode,
    ControlPlane as ControlPlaneConfig, Endpoint, Identity, Issuer, LbPolicy, Listener, ListenerProtocol, ListenerTls,
    ListenerTlsMode, McpRoute, Node, OutboundPolicy, Policy, PolicyDefault, PolicyMcp, PolicyRule, RateLimit,
    RetryPolicy, Route, RouteMatch, Tracing,
};

/// The admin address placeholder [`Proxy`] replaces with a free port.
pub const ADMIN: &str = "{admin}";

/// A config value of `Duration` (what the resources hold).
pub fn ms(n: u64) -> trellis_api::Duration {
    trellis_api::Duration::from_millis(n)
}

/// Serialization of a typed config for a config file.
pub trait Yaml {
    fn yaml(&self) -> String;
}

impl Yaml for Bootstrap {
    fn yaml(&self) -> String {
        serde_json::to_string_pretty(self).expect("a Bootstrap serializes")
    }
}

/// An empty bootstrap with the `{admin}` admin address.
pub fn bootstrap() -> Bootstrap {
    Bootstrap { admin: Some(Admin { address: ADMIN.into() }), ..Default::default() }
}

/// A bootstrap taking everything from the discovery server at `xds` as node `id` of `service`.
pub fn discovery_bootstrap(xds: SocketAddr, id: &str, service: &str) -> Bootstrap {
    Bootstrap {
        node: Node { id: id.into(), service: Some(service.into()), zone: None },
        control_plane: Some(ControlPlaneConfig {
            address: trellis_api::Addresses::one(format!("http://{xds}")),
            identity: None,
            token_file: None,
            inbound_address: None,
        }),
        ..bootstrap()
    }
}

/// An HTTP listener on `address` serving `routes`.
pub fn listener(name: &str, address: SocketAddr, routes: &[&str]) -> Listener {
    Listener {
        name: name.into(),
        address: address.to_string(),
        service: None,
        protocol: ListenerProtocol::default(),
        routes: routes.iter().map(|r| r.to_string()).collect(),
        cluster: None,
        header_timeout: None,
        max_header_bytes: None,
        tls: None,
        policy: None,
        transparent: false,
        outbound_policy: None,
        detect_timeout: None,
        opaque_ports: None,
        max_hops: None,
        connect: false,
        connect_ports: None,
    }
}

/// A route sending requests under `path_prefix` to `cluster`.
pub fn route(name: &str, path_prefix: &str, cluster: &str) -> Route {
    Route {
        name: name.into(),
        matches: RouteMatch { path_prefix: Some(path_prefix.into()), ..Default::default() },
        backends: vec![Backend { cluster: cluster.into(), weight: 1 }],
        timeout: None,
        idle_timeout: None,
        headers: Default::default(),
        response_headers: Default::default(),
        retry: None,
        hedge: None,
        rate_limit: None,
        fault: None,
        mcp: None,
    }
}

/// A TCP listener on `address` forwarding every connection to `cluster`.
pub fn tcp_listener(name: &str, address: SocketAddr, cluster: &str) -> Listener {
    Listener { protocol: ListenerProtocol::Tcp, cluster: Some(cluster.into()), ..listener(name, address, &[]) }
}

/// A policy `name` letting in only the peers `from` (default deny).
pub fn allow_from(name: &str, from: &[&str]) -> Policy {
    let rule = PolicyRule { from: from.iter().map(|f| f.to_string()).collect(), ..Default::default() };
    Policy { name: name.into(), default: PolicyDefault::Deny, rules: vec![rule] }
}

/// A route sending requests for `host` (any path) to `cluster`.
pub fn host_route(name: &str, host: &str, cluster: &str) -> Route {
    Route { matches: RouteMatch { host: Some(host.into()), ..Default::default() }, ..route(name, "/", cluster) }
}

/// A cluster of `endpoints` (weight 1 each) spoken to over `protocol`.
pub fn cluster(name: &str, protocol: ClusterProtocol, endpoints: &[SocketAddr]) -> Cluster {
    Cluster {
        name: name.into(),
        protocol,
        lb: Default::default(),
        hash_on: None,
        connect_timeout: None,
        max_streams_per_connection: None,
        max_idle_per_endpoint: None,
        circuit_breaker: None,
        outlier_detection: None,
        health_check: None,
        tls: None,
        endpoints: endpoints.iter().map(|a| endpoint(*a)).collect(),
    }
}

/// A bootstrap with listener `in` on `listen` taking `routes` (in their order) to
/// `clusters`, drain timeout 1 s.
pub fn serving(listen: SocketAddr, routes: Vec<Route>, clusters: Vec<Cluster>) -> Bootstrap {
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    Bootstrap {
        drain_timeout: Some(ms(1000)),
        listeners: vec![listener("in", listen, &names)],
        routes,
        clusters,
        ..bootstrap()
    }
}

/// Endpoints `(address, weight)`.
pub fn weighted(endpoints: &[(SocketAddr, u32)]) -> Vec<Endpoint> {
    endpoints.iter().map(|(a, weight)| Endpoint { weight: *weight, ..endpoint(*a) }).collect()
}

/// An endpoint at `address`, weight 1.
pub fn endpoint(address: SocketAddr) -> Endpoint {
    Endpoint { address: address.to_string(), weight: 1, zone: None, identity: None }
}

/// `protocol` as config spells it (`http1`, `http2`, `auto`).
pub fn protocol(name: &str) -> ClusterProtocol {
    serde_json::from_value(name.into()).unwrap_or_else(|e| panic!("cluster protocol {name:?}: {e}"))
}

/// A bootstrap with one HTTP listener on `listen`, one catch-all route `all` to cluster
/// `origin` at `origin` (protocol `proto`: http1 | http2 | auto), drain timeout 5 s.
pub fn simple(listen: SocketAddr, origin: SocketAddr, proto: ClusterProtocol) -> Bootstrap {
    Bootstrap {
        drain_timeout: Some(trellis_api::Duration::from_secs(5)),
        listeners: vec![listener("in", listen, &["all"])],
        routes: vec![route("all", "/", "origin")],
        clusters: vec![cluster("origin", proto, &[origin])],
        ..bootstrap()
    }
}

/// Edge TLS (`mode: terminate`) with the certificate and key files `certs` (the first is the
/// default; the others are chosen by SNI).
pub fn terminate(certs: &[(PathBuf, PathBuf)]) -> ListenerTls {
    ListenerTls {
        mode: ListenerTlsMode::Terminate,
        certificates: certs
            .iter()
            .map(|(cert, key)| CertPair { cert: cert.display().to_string(), key: key.display().to_string() })
            .collect(),
        ..Default::default()
    }
}

/// A mesh identity of these files (certificate, key, trust bundle), no issuer.
pub fn identity(cert: &Path, key: &Path, trust_bundle: &Path) -> Identity {
    Identity {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        trust_bundle: trust_bundle.display().to_string(),
        issuer: None,
    }
}

/// Every trace sampled and exported with OTLP/HTTP to the collector at `collector`.
pub fn otlp_http_tracing(collector: SocketAddr) -> Tracing {
    // Through serde rather than a struct literal: fields the collector settings gain with a
    // default need no change here.
    serde_json::from_value(serde_json::json!({
        "otlp": { "endpoint": format!("http://{collector}"), "protocol": "http" },
        "sample_ratio": 1.0,
    }))
    .expect("a tracing config")
}

/// Mesh mTLS on a listener (`tls: { mode: mesh }`).
pub fn mesh_tls() -> ListenerTls {
    ListenerTls { mode: ListenerTlsMode::Mesh, ..Default::default() }
}

/// Mesh mTLS to a cluster whose endpoints must present the SPIFFE ID `identity`.
pub fn mesh_cluster_tls(identity: &str) -> ClusterTls {
    ClusterTls { mode: ClusterTlsMode::Mesh, identity: Some(identity.into()), sni: None, trust_bundle: None }
}

/// Discovery from `addresses` (one, or a fail-over list), nothing else set.
pub fn control_plane(addresses: &[String]) -> ControlPlaneConfig {
    ControlPlaneConfig {
        address: serde_json::from_value(serde_json::json!(addresses)).expect("at least one address"),
        identity: None,
        token_file: None,
        inbound_address: None,
    }
}

/// The control plane's CA at `server` (its REST API) issuing `id` for `ttl` (`"1h"`), asked
/// with the token in `token_file`.
pub fn issuer(server: &str, id: &str, token_file: &Path, ttl: &str) -> Issuer {
    Issuer {
        server: server.into(),
        id: id.into(),
        token_file: Some(token_file.display().to_string()),
        ttl: Some(ttl.parse().unwrap_or_else(|e| panic!("ttl {ttl:?}: {e:?}"))),
    }
}

/// A part of a config of which a test gives only some fields, the others taking their
/// defaults as when read from a file (`RetryPolicy`, `OutlierDetection`, … have no
/// `Default`): `config::part::<RetryPolicy>(json!({ "attempts": 2 }))`. Checked against
/// the real type here, so a misspelt field fails in the test, not in the proxy.
pub fn part<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> T {
    serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{json} as {}: {e}", std::any::type_name::<T>()))
}

/// Ordinary TLS to a cluster's endpoints: `sni` sent and verified (default: the endpoint's
/// host) against the roots in `trust_bundle`.
pub fn origin_tls(sni: Option<&str>, trust_bundle: &Path) -> ClusterTls {
    ClusterTls {
        mode: ClusterTlsMode::Tls,
        identity: None,
        sni: sni.map(str::to_owned),
        trust_bundle: Some(trust_bundle.display().to_string()),
    }
}

/// `base` with `fields` (a JSON object of its fields, e.g. `{ "retry": { "attempts": 3 } }`)
/// set on it, checked against its type: for the settings that have no builder.
pub fn with<T: serde::Serialize + serde::de::DeserializeOwned>(base: T, fields: serde_json::Value) -> T {
    let mut value = serde_json::to_value(&base).expect("a config serializes");
    let serde_json::Value::Object(fields) = fields else { panic!("fields are a JSON object: {fields}") };
    for (name, field) in fields {
        value[name] = field;
    }
    part(value)
}

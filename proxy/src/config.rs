//! The runtime config: an immutable [`Snapshot`] compiled from validated `trellis-api`
//! resources. Requests read it through one `ArcSwap` load; a reload builds a new one off the
//! hot path (reusing endpoint pools and route lifetimes that carry over) and swaps it in.

use crate::authz;
use crate::http::route::{Life, Route};
use crate::telemetry::RouteMetrics;
use crate::tls::{self, TlsError};
use crate::upstream::{Cluster, MeshClients};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use trellis_api::{self as api, Bootstrap, ListenerProtocol};

/// Why a config could not be loaded or applied.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Parse(#[from] api::ParseError),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<api::ValidationError>),
    #[error("{0}")]
    Build(String),
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// Reads, parses and validates a bootstrap file.
pub fn load(path: &Path) -> Result<Bootstrap, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let b = api::parse_bootstrap(&text)?;
    api::validate(&b).map_err(ConfigError::Invalid)?;
    Ok(b)
}

/// Everything a request or connection needs, as of one config version.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub source: Arc<Bootstrap>,
    pub listeners: Vec<Arc<Listener>>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub drain_timeout: Duration,
    /// This proxy's mesh identity, when the bootstrap has one.
    pub mesh: Option<Arc<tls::mesh::Mesh>>,
    /// Leaf expiries (unix seconds) by certificate label, published once this snapshot serves.
    pub cert_expiry: Vec<(String, i64)>,
    /// Where each request's JSON line goes, when the bootstrap asks for an access log.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// Span export: the control plane's telemetry `tracing` when one applies, else the
    /// bootstrap's.
    pub tracer: Option<Arc<crate::trace::Tracer>>,
    /// Mesh and registry membership of original destinations (transparent listeners).
    pub destinations: crate::intercept::Destinations,
    /// Mesh client TLS by expected identity (endpoints with an `identity`).
    pub mesh_clients: Arc<MeshClients>,
}

/// A listener's runtime view.
#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub spec: api::Listener,
    /// HTTP listeners: routes in match order.
    pub routes: Vec<Arc<Route>>,
    /// TCP listeners: where connections go.
    pub tcp_cluster: Option<Arc<Cluster>>,
    /// Counts requests no route matched.
    pub no_route: RouteMetrics,
    /// TLS to accept with (mesh or terminate).
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// HTTP/3 on the same port over UDP (`tls.http3`).
    pub h3: Option<crate::h3::ListenerH3>,
    /// Requests by protocol (`trellis_downstream_requests_total`).
    pub requests: crate::telemetry::ProtocolRequests,
    /// A mesh listener: peers are authenticated, and authorized by `policy` (none = deny).
    pub mesh: bool,
    /// `tls: permissive`: plaintext clients are taken too (they have no identity).
    pub permissive: bool,
    pub policy: Option<Arc<authz::Policy>>,
    /// `transparent: true` (DESIGN §9): original destinations and protocol detection.
    pub transparent: Option<Box<crate::intercept::Transparent>>,
}

impl Listener {
    pub fn header_timeout(&self) -> Duration {
        self.spec.header_timeout.unwrap_or(api::DEFAULT_HEADER_TIMEOUT).get()
    }
    pub fn max_header_bytes(&self) -> usize {
        self.spec.max_header_bytes.unwrap_or(api::DEFAULT_MAX_HEADER_BYTES) as usize
    }
    /// Whether connections go through `intercept` (transparent or permissive) rather
    /// than the plain HTTP or TLS path.
    pub fn intercepts(&self) -> bool {
        self.transparent.is_some() || self.permissive
    }
}

impl Snapshot {
    /// Publishes the gauges that describe this snapshot; call once it is the one serving.
    pub fn publish(&self) {
        for (cert, t) in &self.cert_expiry {
            metrics::gauge!(crate::telemetry::TLS_CERT_EXPIRY, "cert" => cert.clone()).set(*t as f64);
        }
    }

    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }

    /// Route lifetimes present here but not in `next`: the routes a reload removes.
    pub fn removed_routes(&self, next: &Snapshot) -> Vec<Arc<Life>> {
        self.listeners
            .iter()
            .flat_map(|l| l.routes.iter().map(move |r| (l, r)))
            .filter(|(l, r)| next.route_life(&l.name, &r.name).is_none())
            .map(|(_, r)| r.life.clone())
            .collect()
    }

    fn route_life(&self, listener: &str, route: &str) -> Option<&Arc<Life>> {
        self.listener(listener)?.routes.iter().find(|r| &*r.name == route).map(|r| &r.life)
    }
}

/// Compiles a validated bootstrap. `prev` lends the endpoint pools and route lifetimes that
/// carry over; `workers` sizes the per-worker pools.
pub fn build(b: Bootstrap, prev: Option<&Snapshot>, workers: usize, version: u64) -> Result<Snapshot, ConfigError> {
    let mesh = b.identity.as_ref().map(tls::mesh::load).transpose()?.map(Arc::new);
    let mut cert_expiry = Vec::new();
    if let Some(t) = mesh.as_ref().and_then(|m| m.not_after) {
        cert_expiry.push(("identity".to_owned(), t));
    }
    let policies: HashMap<&str, Arc<authz::Policy>> =
        b.policies.iter().map(|p| (p.name.as_str(), Arc::new(authz::Policy::new(p)))).collect();
    let mesh_clients = Arc::new(MeshClients::new(mesh.clone()));
    let mut clusters = HashMap::with_capacity(b.clusters.len());
    for c in &b.clusters {
        let mut addrs = Vec::with_capacity(c.endpoints.len());
        for (i, e) in c.endpoints.iter().enumerate() {
            let addr = resolve(&e.address).ok_or_else(|| {
                ConfigError::Build(format!(
                    "clusters[{}].endpoints[{i}].address: cannot resolve \"{}\"",
                    c.name, e.address
                ))
            })?;
            let own_tls = match &e.identity {
                Some(id) => mesh_clients.get(&Arc::from(id.as_str()))?,
                None => None,
            };
            addrs.push((addr, e, own_tls));
        }
        let old = prev.and_then(|p| p.clusters.get(&c.name)).map(|c| &**c);
        let upstream_tls = crate::upstream::tls_for(c, mesh.as_deref())?;
        clusters.insert(
            c.name.clone(),
            Arc::new(Cluster::build(c, addrs, old, workers, b.node.zone.as_deref(), upstream_tls)),
        );
    }
    let routes_by_name: HashMap<&str, &api::Route> = b.routes.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut listeners = Vec::with_capacity(b.listeners.len());
    for l in &b.listeners {
        let addr: SocketAddr =
            l.address.parse().map_err(|_| ConfigError::Build(format!("listeners[{}].address: not IP:PORT", l.name)))?;
        let tcp_cluster = match (l.protocol, &l.cluster) {
            (ListenerProtocol::Tcp, Some(c)) => Some(clusters.get(c).cloned().ok_or_else(|| {
                ConfigError::Build(format!("listeners[{}].cluster: no cluster named \"{c}\"", l.name))
            })?),
            _ => None,
        };
        let tls_mode = l.tls.as_ref().map_or(api::ListenerTlsMode::None, |t| t.mode);
        let mut h3 = None;
        let meshed = matches!(tls_mode, api::ListenerTlsMode::Mesh | api::ListenerTlsMode::Permissive);
        let server_tls = match (tls_mode, &l.tls) {
            (api::ListenerTlsMode::Mesh | api::ListenerTlsMode::Permissive, _) => Some(
                mesh.as_ref()
                    .ok_or_else(|| {
                        ConfigError::Build(format!("listeners[{}].tls.mode: mesh needs an identity", l.name))
                    })?
                    .server
                    .clone(),
            ),
            (api::ListenerTlsMode::Terminate, Some(t)) => {
                let edge = tls::edge::server_config(t)?;
                if let Some(first) = edge.expiries.iter().min() {
                    cert_expiry.push((format!("listener:{}", l.name), *first));
                }
                if let Some(quic) = edge.quic {
                    let max = t.http3_max_connections.unwrap_or(api::DEFAULT_HTTP3_MAX_CONNECTIONS);
                    h3 = Some(crate::h3::ListenerH3::new(quic, addr.port(), t.early_data, max as usize)?);
                }
                Some(edge.tcp)
            }
            _ => None,
        };
        let mut routes = Vec::with_capacity(l.routes.len());
        for name in &l.routes {
            let spec = routes_by_name.get(name.as_str()).ok_or_else(|| {
                ConfigError::Build(format!("listeners[{}].routes: no route named \"{name}\"", l.name))
            })?;
            let life = prev.and_then(|p| p.route_life(&l.name, name)).cloned().unwrap_or_default();
            let mut route = Route::build(&l.name, spec, &clusters, life).map_err(ConfigError::Build)?;
            // A listener that also serves HTTP/3 says so on its responses, as a response
            // header of each of its routes: no work per request for the others. (The h3
            // server drops it again: over HTTP/3 it would only name the connection in use.)
            if let Some(h3) = &h3 {
                route.response_headers.set(http::header::ALT_SVC, h3.alt_svc.clone());
            }
            routes.push(Arc::new(route));
        }
        listeners.push(Arc::new(Listener {
            name: l.name.as_str().into(),
            addr,
            spec: l.clone(),
            routes,
            tcp_cluster,
            no_route: RouteMetrics::new(&l.name, "", ""),
            server_tls,
            h3,
            requests: crate::telemetry::ProtocolRequests::new(&l.name),
            mesh: meshed,
            permissive: tls_mode == api::ListenerTlsMode::Permissive,
            policy: l.policy.as_deref().and_then(|p| policies.get(p).cloned()),
            transparent: l
                .transparent
                .then(|| {
                    let prev = prev.and_then(|p| p.listener(&l.name)).and_then(|o| o.transparent.as_deref());
                    crate::intercept::Transparent::build(l, meshed, prev, workers)
                })
                .transpose()?
                .map(Box::new),
        }));
    }
    let access_log = match &b.access_log {
        Some(a) => Some(
            crate::access_log::AccessLog::open(&a.path)
                .map_err(|e| ConfigError::Build(format!("access_log.path: cannot open {:?}: {e}", a.path)))?,
        ),
        None => None,
    };
    let destinations = crate::intercept::Destinations::new(clusters.values());
    let service = b.node.service.as_deref().filter(|s| !s.is_empty()).unwrap_or("trellis");
    let tracer = match &b.tracing {
        Some(t) => Some(Arc::new(crate::trace::Tracer::new(t, service, "tracing").map_err(ConfigError::Build)?)),
        None => None,
    };
    Ok(Snapshot {
        version,
        access_log,
        tracer,
        destinations,
        mesh_clients,
        drain_timeout: b.drain_timeout.unwrap_or(api::DEFAULT_DRAIN_TIMEOUT).get(),
        source: Arc::new(b),
        listeners,
        clusters,
        mesh,
        cert_expiry,
    })
}

/// Files whose change triggers a reload: the config and every certificate, key and bundle
/// it names.
pub fn watched_files(config: &Path, b: &Bootstrap) -> Vec<PathBuf> {
    let mut files = vec![config.to_owned()];
    if let Some(i) = &b.identity {
        files.extend([&i.cert, &i.key, &i.trust_bundle].map(PathBuf::from));
    }
    for l in &b.listeners {
        for pair in l.tls.iter().flat_map(|t| &t.certificates) {
            files.extend([&pair.cert, &pair.key].map(PathBuf::from));
        }
    }
    for c in &b.clusters {
        files.extend(c.tls.iter().filter_map(|t| t.trust_bundle.as_ref()).map(PathBuf::from));
    }
    files.extend(b.tracing.iter().filter_map(|t| t.otlp.ca_file.as_ref()).map(PathBuf::from));
    files
}

fn resolve(addr: &str) -> Option<SocketAddr> {
    addr.parse().ok().or_else(|| addr.to_socket_addrs().ok()?.next())
}

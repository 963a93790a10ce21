//! The Trellis control plane (DESIGN §5, §6, §12): a durable resource store, the REST API
//! that edits it, the discovery server that streams each proxy its part of it, and the CA
//! that signs proxies' CSRs.
//!
//! ```text
//! REST (axum, api)  ──put/delete──▶  store (redb, or etcd) ──watch(revision)──┐
//!                                                                              ▼
//! proxies ◀──deltas── discovery (tonic) ◀── view(snapshot, endpoints, node.service) ◀─┘
//!                         │ sidecar registrations, ACK/NACK
//!                         └──▶ registry ──watch(endpoints)──▶ every stream
//! ```
//!
//! With etcd ([`store::etcd`]) several replicas share the store: each follows etcd's watch,
//! so a write through any of them reaches every replica's proxies; sidecar registrations
//! and the CA live in etcd too.
//!
//! [`start`] binds both servers and returns a [`Running`] handle; [`serve`] runs until a
//! shutdown future completes. [`client`] and [`manifest`] are what `trellis ctl` uses.

pub mod api;
mod auth;
mod ca;
pub mod client;
pub mod discovery;
mod error;
pub mod etcd;
pub mod manifest;
pub mod metrics;
pub mod server_tls;
pub mod stats;
pub mod store;
pub mod stored;
pub mod ui;
pub mod workload;
mod write_validation;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use trellis_api::discovery::discovery_server::DiscoveryServer;
use trellis_api::discovery::stats_server::StatsServer;
use trellis_certs::Ca;

pub use error::Error;
pub use stored::{Kind, Resource};

/// Default REST API address (DESIGN §2).
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7070";
/// Default discovery address (DESIGN §2).
pub const DEFAULT_XDS_ADDR: &str = "127.0.0.1:7071";
/// Default time a sidecar's endpoint outlives its stream.
pub const DEFAULT_ENDPOINT_GRACE: Duration = Duration::from_secs(10);
/// Default TTL of a replica's lease on its sidecar registrations (etcd store).
pub const DEFAULT_REGISTRATION_TTL: Duration = Duration::from_secs(10);
/// Largest discovery request accepted: a reconnecting proxy's first request lists every
/// resource it holds (`initial_versions`), ~50 bytes each.
const MAX_DISCOVERY_REQUEST: usize = 64 << 20;
/// How long stopping may wait for open requests and streams before cutting them.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the resources are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreOptions {
    /// `DATA_DIR/trellis.redb`: one control plane.
    #[default]
    Embedded,
    /// etcd, shared by several control-plane replicas.
    Etcd {
        /// `HOST:PORT` of each etcd member.
        members: Vec<String>,
        /// Key prefix, `/trellis` by default.
        prefix: String,
        /// TLS to etcd.
        tls: Option<etcd::Tls>,
    },
}

/// How to run the control plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// Holds `trellis.redb` (embedded store) and the CA (`ca/ca.pem`, `ca/ca.key`, made on
    /// first start; with etcd, a copy of the CA the replicas share).
    pub data_dir: PathBuf,
    /// The embedded store (default) or etcd.
    pub store: StoreOptions,
    /// etcd: how long a dead replica's sidecar registrations outlive it (its lease's TTL).
    pub registration_ttl: Duration,
    pub api_addr: SocketAddr,
    pub xds_addr: SocketAddr,
    /// When set, every request (but `/healthz`) needs `Authorization: Bearer <token>`.
    pub token_file: Option<PathBuf>,
    /// How long a sidecar's endpoint stays after its discovery stream ends.
    pub endpoint_grace: Duration,
    /// Serve discovery over mTLS only ([`server_tls`]): proxies present identities from this
    /// control plane's CA and may only register as the service their identity names.
    pub xds_tls: bool,
    /// Serve the REST API over TLS ([`server_tls::api_server_config`]), presenting the
    /// control plane's SPIFFE ID from its CA.
    pub api_tls: bool,
    /// Sign certificates only for the workload a service-account JWT names, checked
    /// against these keys ([`workload`]); discovery over mTLS then needs no bearer token.
    pub workload_jwks: Option<workload::JwksSource>,
    /// How often proxies report their traffic counters for `/ui` ([`stats`]).
    pub report_interval: Duration,
}

impl Options {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Options {
        Options {
            data_dir: data_dir.into(),
            store: StoreOptions::Embedded,
            registration_ttl: DEFAULT_REGISTRATION_TTL,
            api_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            xds_addr: SocketAddr::from(([127, 0, 0, 1], 7071)),
            token_file: None,
            endpoint_grace: DEFAULT_ENDPOINT_GRACE,
            xds_tls: false,
            api_tls: false,
            workload_jwks: None,
            report_interval: stats::DEFAULT_INTERVAL,
        }
    }
}

/// A started control plane.
pub struct Running {
    api_addr: SocketAddr,
    xds_addr: SocketAddr,
    stop: watch::Sender<bool>,
    api: JoinHandle<Result<(), Error>>,
    xds: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Where the REST API listens (the bound port when 0 was asked for).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Where the discovery server listens.
    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    /// Stops accepting, ends discovery streams, lets open requests finish (up to 5 s).
    pub async fn stop(self) -> Result<(), Error> {
        self.stop.send_replace(true);
        let (api, xds) = (self.api, self.xds);
        let api_abort = api.abort_handle();
        let xds_abort = xds.abort_handle();
        match tokio::time::timeout(STOP_TIMEOUT, async { (join(api, "REST").await, join(xds, "discovery").await) })
            .await
        {
            Ok((a, x)) => a.and(x),
            Err(_) => {
                tracing::warn!("connections still open after {STOP_TIMEOUT:?}; closing them");
                api_abort.abort();
                xds_abort.abort();
                Ok(())
            }
        }
    }

    /// Waits until `shutdown` completes (then stops) or a server fails.
    pub async fn until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        tokio::select! {
            () = shutdown => self.stop().await,
            r = &mut self.api => { self.stop.send_replace(true); flatten(r, "REST") }
            r = &mut self.xds => { self.stop.send_replace(true); flatten(r, "discovery") }
        }
    }
}

async fn join(task: JoinHandle<Result<(), Error>>, what: &'static str) -> Result<(), Error> {
    flatten(task.await, what)
}

fn flatten(r: Result<Result<(), Error>, tokio::task::JoinError>, what: &'static str) -> Result<(), Error> {
    r.map_err(|e| Error::Serve { what, reason: e.to_string() })?
}

/// Opens the store and CA, binds both servers and starts serving.
pub async fn start(opts: Options) -> Result<Running, Error> {
    let token = opts.token_file.as_deref().map(auth::Token::load).transpose()?.map(Arc::new);
    let (store, registry, ca) = open_store(&opts).await?;
    let store = Arc::new(store);
    let serving = match opts.xds_tls || opts.api_tls {
        true => Some(server_tls::serving(Ca::from_pem(ca.cert_pem(), &ca.key_pem())?)?),
        false => None,
    };
    let tls_for = |on: bool, config: fn(&Arc<server_tls::SelfIssued>) -> Result<_, Error>| match &serving {
        Some(s) if on => config(s).map(Some),
        _ => Ok(None),
    };
    let xds_tls = tls_for(opts.xds_tls, server_tls::server_config)?;
    let api_tls = tls_for(opts.api_tls, server_tls::api_server_config)?;
    let workload = match opts.workload_jwks.clone() {
        Some(source) => Some(Arc::new(workload::WorkloadAuth::new(source).await.map_err(Error::Workload)?)),
        None => None,
    };

    let bind =
        |what, addr| async move { TcpListener::bind(addr).await.map_err(|source| Error::Bind { what, addr, source }) };
    let api_listener = bind("REST API", opts.api_addr).await?;
    let xds_listener = bind("discovery", opts.xds_addr).await?;
    let local = |l: &TcpListener, what, addr| l.local_addr().map_err(|source| Error::Bind { what, addr, source });
    let api_addr = local(&api_listener, "REST API", opts.api_addr)?;
    let xds_addr = local(&xds_listener, "discovery", opts.xds_addr)?;

    let (stop, stopped) = watch::channel(false);
    let certificate_auth = workload.is_some();
    let stats = Arc::new(stats::Stats::new(opts.report_interval));
    let shared = Arc::new(api::Shared {
        store: store.clone(),
        registry: registry.clone(),
        ca,
        token: token.clone(),
        workload,
        stats: stats.clone(),
    });
    let router = api::router(shared);
    let api = tokio::spawn({
        let mut stopped = stopped.clone();
        async move {
            let until = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let served = match api_tls {
                Some(config) => {
                    let listener = server_tls::ApiListener::new(api_listener, config)
                        .map_err(|e| Error::Serve { what: "REST", reason: e.to_string() })?;
                    axum::serve(listener, router).with_graceful_shutdown(until).await
                }
                None => axum::serve(api_listener, router).with_graceful_shutdown(until).await,
            };
            served.map_err(|e| Error::Serve { what: "REST", reason: e.to_string() })
        }
    });
    let stats_service = StatsServer::new(stats::Service {
        stats,
        registry: registry.clone(),
        token: token.clone(),
        certificate_suffices: certificate_auth,
    });
    let xds_service = DiscoveryServer::new(
        discovery::Server::new(store.clone(), registry, token, stopped.clone()).certificate_suffices(certificate_auth),
    )
    .max_decoding_message_size(MAX_DISCOVERY_REQUEST);
    let tls_on = xds_tls.is_some();
    let xds = tokio::spawn({
        let mut stopped = stopped;
        async move {
            let until = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let mut server =
                tonic::transport::Server::builder().http2_keepalive_interval(Some(Duration::from_secs(30)));
            let router = server.add_service(xds_service).add_service(stats_service);
            let served = match xds_tls {
                Some(config) => {
                    router.serve_with_incoming_shutdown(server_tls::incoming(xds_listener, config), until).await
                }
                None => {
                    let incoming = tonic::transport::server::TcpIncoming::from(xds_listener);
                    router.serve_with_incoming_shutdown(incoming, until).await
                }
            };
            served.map_err(|e| Error::Serve { what: "discovery", reason: e.to_string() })
        }
    });
    tracing::info!(
        api = %api_addr,
        xds = %xds_addr,
        data_dir = %opts.data_dir.display(),
        store = %store.status().at,
        revision = store.snapshot().revision(),
        auth = token_state(opts.token_file.is_some()),
        discovery_tls = if tls_on { "mTLS" } else { "plaintext" },
        api_tls = opts.api_tls,
        "control plane listening"
    );
    Ok(Running { api_addr, xds_addr, stop, api, xds })
}

fn token_state(on: bool) -> &'static str {
    if on { "bearer token" } else { "none" }
}

/// Runs the control plane until `shutdown` completes, then stops gracefully.
pub async fn serve(opts: Options, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    start(opts).await?.until(shutdown).await
}

/// The store, the registry that goes with it, and the CA.
async fn open_store(opts: &Options) -> Result<(store::Store, Arc<discovery::Registry>, Ca), Error> {
    let ca_dir = opts.data_dir.join("ca");
    match &opts.store {
        StoreOptions::Embedded => {
            let store = store::Store::open(&opts.data_dir)?;
            let registry = Arc::new(discovery::Registry::new(opts.endpoint_grace));
            Ok((store, registry, ca::from_dir(&ca_dir)?))
        }
        StoreOptions::Etcd { members, prefix, tls } => {
            std::fs::create_dir_all(&opts.data_dir)
                .map_err(|source| Error::Io { path: opts.data_dir.clone(), source })?;
            let (registry, registrations) = discovery::Registry::shared(opts.endpoint_grace);
            let registry = Arc::new(registry);
            let config = store::etcd::Config {
                members: members.clone(),
                prefix: prefix.clone(),
                tls: tls.clone(),
                registration_ttl: opts.registration_ttl,
            };
            let store = store::Store::open_etcd(config, registry.clone(), registrations).await?;
            let Some(etcd) = store.etcd() else {
                return Err(Error::Config("the etcd store did not open as etcd".into()));
            };
            let ca = ca::from_etcd(etcd, &ca_dir).await?;
            Ok((store, registry, ca))
        }
    }
}

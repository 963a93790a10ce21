//! Clusters and their endpoints: which endpoint a request goes to (`balancer`), and the
//! pooled connections it is sent on (`pool`). Endpoint objects (with their pools and load
//! counters) outlive config reloads while the endpoint stays in its cluster.

pub mod balancer;
pub mod load;
pub mod pool;

pub use pool::{Lease, UpstreamError};

use crate::upstream::balancer::Balancer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use trellis_api as api;

/// The HTTP version spoken to an endpoint for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
}

/// A cluster as the data plane uses it.
#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub protocol: api::ClusterProtocol,
    pub settings: Settings,
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
    /// The resource it was built from, to decide reuse on reload.
    pub spec: api::Cluster,
}

/// Connection settings shared by a cluster's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub max_streams: u32,
    pub max_idle: usize,
}

/// One upstream address, its pools and its load.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub zone: Option<String>,
    pub settings: Settings,
    /// Requests in flight (response not finished).
    pub active: AtomicU64,
    /// Requests sent in total.
    pub total: AtomicU64,
    /// Latency estimate for peak-EWMA balancing.
    pub load: load::PeakEwma,
    pub pool: pool::Pool,
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr, weight: u32, zone: Option<String>, settings: Settings, workers: usize) -> Self {
        Self {
            addr,
            weight,
            zone,
            settings,
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            load: load::PeakEwma::default(),
            pool: pool::Pool::new(workers),
        }
    }
}

impl Cluster {
    /// Builds a cluster, keeping endpoint objects of `prev` (same cluster name) whose address
    /// and connection settings did not change, so their pools and counters survive.
    pub fn build(
        spec: &api::Cluster,
        addrs: Vec<(SocketAddr, &api::Endpoint)>,
        prev: Option<&Cluster>,
        workers: usize,
    ) -> Self {
        let settings = Settings {
            connect_timeout: spec.connect_timeout.unwrap_or(api::DEFAULT_CONNECT_TIMEOUT).get(),
            max_streams: spec.max_streams_per_connection.unwrap_or(api::DEFAULT_MAX_STREAMS_PER_CONNECTION),
            max_idle: spec.max_idle_per_endpoint.unwrap_or(api::DEFAULT_MAX_IDLE_PER_ENDPOINT) as usize,
        };
        let endpoints: Vec<Arc<Endpoint>> = addrs
            .into_iter()
            .map(|(addr, e)| {
                let kept = prev.and_then(|p| {
                    p.endpoints.iter().find(|old| {
                        old.addr == addr && old.settings == settings && old.weight == e.weight && old.zone == e.zone
                    })
                });
                match kept {
                    Some(old) => old.clone(),
                    None => Arc::new(Endpoint::new(addr, e.weight, e.zone.clone(), settings, workers)),
                }
            })
            .collect();
        let balancer = Balancer::new(spec.lb, &endpoints);
        Self {
            name: spec.name.as_str().into(),
            protocol: spec.protocol,
            settings,
            endpoints,
            balancer,
            spec: spec.clone(),
        }
    }

    /// Picks the endpoint for the next request, or `None` when the cluster has none.
    /// `key` is the request's hash key (see [`Cluster::hash_key`]).
    pub fn pick(&self, key: Option<u64>) -> Option<&Arc<Endpoint>> {
        self.balancer.pick(&self.endpoints, key)
    }

    /// The consistent-hash key of a request, for `ring_hash`/`maglev` clusters only.
    pub fn hash_key(&self, headers: &http::HeaderMap, client: std::net::IpAddr) -> Option<u64> {
        if !matches!(self.spec.lb, api::LbPolicy::RingHash | api::LbPolicy::Maglev) {
            return None;
        }
        match self.spec.hash_on.as_ref().and_then(|h| h.header.as_deref()) {
            Some(name) => headers.get(name).map(|v| balancer::hash64(v.as_bytes())),
            None => Some(match client {
                std::net::IpAddr::V4(ip) => balancer::hash64(&ip.octets()),
                std::net::IpAddr::V6(ip) => balancer::hash64(&ip.octets()),
            }),
        }
    }

    /// Whether responses should feed the endpoints' latency estimate.
    pub fn tracks_latency(&self) -> bool {
        self.spec.lb == api::LbPolicy::PeakEwma
    }

    /// The wire protocol for a request that arrived as `downstream`.
    pub fn wire_for(&self, downstream_h2: bool) -> Wire {
        match self.protocol {
            api::ClusterProtocol::Http1 => Wire::Http1,
            api::ClusterProtocol::Http2 => Wire::Http2,
            api::ClusterProtocol::Auto if downstream_h2 => Wire::Http2,
            api::ClusterProtocol::Auto => Wire::Http1,
        }
    }
}

impl Endpoint {
    /// Load as seen by least-request balancing.
    pub fn in_flight(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

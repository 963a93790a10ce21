//! Clusters and their endpoints: which endpoint a request goes to (`balancer`, `load`), and
//! the pooled connections it is sent on (`pool`; HTTP/1.1 exchanges by `h1`, HTTP/2 by `h2`, response
//! bodies of either version as `response::ResponseBody`). Endpoint objects (with their pools, load,
//! outlier and health state) outlive config reloads while the endpoint stays in its cluster.

pub mod alpn;
pub mod balancer;
pub mod h1;
pub mod h2;
pub mod load;
pub mod pool;
pub mod response;
pub mod tls;

pub use pool::{Lease, UpstreamError};
pub use tls::{MeshClients, UpstreamTls, tls_for};

use crate::resilience::breaker::Counts;
use crate::resilience::health::Health;
use crate::resilience::outlier::{Outcome, Outlier, Verdict};
use crate::telemetry;
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
    /// Its endpoints are sidecars reached over mesh mTLS (`tls: mesh`, or every endpoint
    /// has an `identity`): HTTP goes between the proxies as h2 (DESIGN §9).
    pub mesh: bool,
    pub settings: Settings,
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
    /// Endpoints in this proxy's zone (when it has one and some endpoints share it).
    local: Option<Zoned>,
    /// Circuit-breaker counts, shared by the endpoints and kept across reloads.
    pub counts: Arc<Counts>,
    /// Recent time-to-first-byte, for `hedge: { delay: auto }`.
    pub latency: Arc<LatencyHistogram>,
    /// The resource it was built from.
    pub spec: api::Cluster,
}

/// A cluster's endpoints split by the proxy's zone.
#[derive(Debug)]
struct Zoned {
    local: Vec<Arc<Endpoint>>,
    balancer: Balancer,
    remote: Vec<Arc<Endpoint>>,
}

/// Connection settings shared by a cluster's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub max_streams: u32,
    pub max_idle: usize,
    pub limits: Option<api::CircuitBreaker>,
}

/// One upstream address, its pools, its load and its health.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub zone: Option<String>,
    pub cluster: Arc<str>,
    pub settings: Settings,
    /// Requests in flight (response not finished).
    pub active: AtomicU64,
    /// Requests sent in total.
    pub total: AtomicU64,
    /// Latency estimate for peak-EWMA balancing.
    pub load: load::PeakEwma,
    pub outlier: Outlier,
    pub health: Health,
    health_check: Option<api::HealthCheck>,
    pub counts: Arc<Counts>,
    /// TLS for new connections (swapped on reload, e.g. after a certificate rotation).
    pub tls: arc_swap::ArcSwapOption<UpstreamTls>,
    tls_spec: Option<api::ClusterTls>,
    /// The host part of the configured address, for SNI.
    pub host: String,
    /// The SPIFFE ID the endpoint's proxy presents (an endpoint's `identity`, a registered
    /// sidecar's, or a transparent destination's).
    pub identity: Option<Arc<str>>,
    /// The HTTP version its TLS handshake selected, for `auto` clusters over `tls`.
    pub alpn: alpn::Alpn,
    pub pool: pool::Pool,
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr, weight: u32, zone: Option<String>, settings: Settings, workers: usize) -> Self {
        Self {
            addr,
            weight,
            zone,
            cluster: "".into(),
            settings,
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            load: load::PeakEwma::default(),
            outlier: Outlier::default(),
            health: Health::default(),
            health_check: None,
            counts: Arc::default(),
            tls: arc_swap::ArcSwapOption::empty(),
            tls_spec: None,
            host: addr.ip().to_string(),
            identity: None,
            alpn: alpn::Alpn::new(false),
            pool: pool::Pool::new(workers),
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// May take traffic: healthy by active checks and not ejected by outlier detection.
    pub fn available(&self) -> bool {
        self.health.is_healthy() && !self.outlier.is_ejected()
    }
}

impl Cluster {
    /// Builds a cluster, keeping endpoint objects of `prev` (same cluster name) whose address
    /// and connection settings did not change, so their pools and state survive. Each
    /// address comes with its endpoint and, when the endpoint has an `identity`, its own
    /// mesh TLS; the others take the cluster's `tls`.
    pub fn build(
        spec: &api::Cluster,
        addrs: Vec<(SocketAddr, &api::Endpoint, Option<Arc<UpstreamTls>>)>,
        prev: Option<&Cluster>,
        workers: usize,
        zone: Option<&str>,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Self {
        let settings = Settings {
            connect_timeout: spec.connect_timeout.unwrap_or(api::DEFAULT_CONNECT_TIMEOUT).get(),
            max_streams: spec.max_streams_per_connection.unwrap_or(api::DEFAULT_MAX_STREAMS_PER_CONNECTION),
            max_idle: spec.max_idle_per_endpoint.unwrap_or(api::DEFAULT_MAX_IDLE_PER_ENDPOINT) as usize,
            limits: spec.circuit_breaker,
        };
        let counts = prev.map(|p| p.counts.clone()).unwrap_or_default();
        let name: Arc<str> = spec.name.as_str().into();
        // By address, so a cluster of thousands of endpoints is rebuilt in linear time.
        let previous: std::collections::HashMap<SocketAddr, &Arc<Endpoint>> =
            prev.map(|p| p.endpoints.iter().map(|e| (e.addr, e)).collect()).unwrap_or_default();
        let tls_cluster = spec.protocol == api::ClusterProtocol::Auto
            && spec.tls.as_ref().is_some_and(|t| t.mode == api::ClusterTlsMode::Tls);
        let endpoints: Vec<Arc<Endpoint>> = addrs
            .into_iter()
            .map(|(addr, e, own_tls)| {
                // Endpoints with an identity are sidecars over mesh mTLS: known to speak h2.
                let learns = tls_cluster && e.identity.is_none();
                let kept = previous.get(&addr).filter(|old| {
                    old.settings == settings
                        && old.weight == e.weight
                        && old.zone == e.zone
                        && old.health_check == spec.health_check
                        && old.tls_spec == spec.tls
                        && old.identity.as_deref() == e.identity.as_deref()
                        && old.alpn.learns() == learns
                });
                let ep = match kept {
                    Some(old) => (*old).clone(),
                    None => {
                        let mut ep = Endpoint::new(addr, e.weight, e.zone.clone(), settings, workers);
                        ep.cluster = name.clone();
                        ep.counts = counts.clone();
                        ep.health_check = spec.health_check.clone();
                        ep.tls_spec = spec.tls.clone();
                        ep.identity = e.identity.as_deref().map(Arc::from);
                        ep.alpn = alpn::Alpn::new(learns);
                        ep.host = e
                            .address
                            .rsplit_once(':')
                            .map_or(e.address.as_str(), |(h, _)| h)
                            .trim_matches(['[', ']'])
                            .to_owned();
                        Arc::new(ep)
                    }
                };
                ep.tls.store(own_tls.or_else(|| tls.clone()));
                ep
            })
            .collect();
        let mesh = spec.tls.as_ref().is_some_and(|t| t.mode == api::ClusterTlsMode::Mesh)
            || (!endpoints.is_empty() && endpoints.iter().all(|e| e.identity.is_some()));
        let balancer = Balancer::new(spec.lb, &endpoints);
        let (local, remote): (Vec<Arc<Endpoint>>, Vec<Arc<Endpoint>>) =
            endpoints.iter().cloned().partition(|e| zone.is_some() && e.zone.as_deref() == zone);
        let local = (!local.is_empty() && !remote.is_empty()).then(|| Zoned {
            balancer: Balancer::new(spec.lb, &local),
            local,
            remote,
        });
        Self {
            name,
            protocol: spec.protocol,
            mesh,
            settings,
            endpoints,
            balancer,
            local,
            counts,
            latency: prev.map(|p| p.latency.clone()).unwrap_or_default(),
            spec: spec.clone(),
        }
    }

    /// Picks the endpoint for the next try, or `None` when no endpoint may take traffic.
    /// `key` is the request's hash key (see [`Cluster::hash_key`]); `avoid` is the endpoint
    /// of the previous try, used again only when it is the one left.
    pub fn pick(&self, key: Option<u64>, avoid: Option<&Arc<Endpoint>>) -> Option<&Arc<Endpoint>> {
        let ok = |e: &Arc<Endpoint>| e.available() && !avoid.is_some_and(|a| Arc::ptr_eq(a, e));
        // Zone-aware: stay in the local zone while its pick is usable and not much busier
        // than a random endpoint elsewhere; spill over (to the others) otherwise.
        let mut busy_local = None;
        if let Some(z) = &self.local
            && let Some(l) = z.balancer.pick(&z.local, key)
            && ok(l)
        {
            let other = &z.remote[fastrand::usize(..z.remote.len())];
            if !other.available() || l.in_flight() <= 2 * other.in_flight() + 4 {
                return Some(l);
            }
            busy_local = Some(l);
        }
        let ok = |e: &Arc<Endpoint>| ok(e) && !busy_local.is_some_and(|b| Arc::ptr_eq(b, e));
        // The balancer's choice, a few times (random policies draw anew each time)…
        for _ in 0..3 {
            match self.balancer.pick(&self.endpoints, key) {
                Some(e) if ok(e) => return Some(e),
                Some(_) if key.is_some() => break,
                Some(_) => {}
                None => return None,
            }
        }
        // …then the next usable endpoint after a key-derived or random start.
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = key.map_or_else(|| fastrand::usize(..n), |k| (k % n as u64) as usize);
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| ok(e))
            .or(busy_local)
            .or_else(|| avoid.filter(|a| a.available()).and_then(|a| self.endpoints.iter().find(|e| Arc::ptr_eq(a, e))))
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

    /// Whether this cluster runs outlier detection (whether [`Cluster::record`] uses what it
    /// is given: working out a response's outcome costs a header lookup).
    pub fn detects_outliers(&self) -> bool {
        self.spec.outlier_detection.is_some()
    }

    /// Feeds one try's outcome to outlier detection; ejects the endpoint when its
    /// thresholds are crossed and the cluster's ejection cap allows.
    pub fn record(&self, ep: &Endpoint, outcome: Outcome) {
        let Some(cfg) = &self.spec.outlier_detection else { return };
        if ep.outlier.record(outcome, cfg) != Verdict::Eject {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.outlier.is_ejected()).count();
        let cap = self.endpoints.len() * cfg.max_ejection_percent as usize / 100;
        if ejected + 1 > cap {
            tracing::debug!(cluster = %self.name, endpoint = %ep.addr, "outlier: over max_ejection_percent, not ejected");
            return;
        }
        let d = ep.outlier.eject(cfg.base_ejection.get());
        metrics::counter!(telemetry::OUTLIER_EJECTIONS_TOTAL, "cluster" => self.name.to_string()).increment(1);
        tracing::warn!(cluster = %self.name, endpoint = %ep.addr, ejected_for = ?d, "outlier: endpoint ejected");
    }
}

/// Time-to-first-byte histogram (log-spaced buckets, lock-free) of recent requests: every
/// `DECAY_EVERY` samples all counts are halved, so old traffic fades out.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; 64],
    samples: AtomicU64,
}

const DECAY_EVERY: u64 = 4096;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { buckets: std::array::from_fn(|_| AtomicU64::new(0)), samples: AtomicU64::new(0) }
    }
}

impl LatencyHistogram {
    /// Bucket i holds samples up to 16 µs × 2^((i+1)/2).
    fn bucket(d: Duration) -> usize {
        let x = (d.as_micros() as f64 / 16.0).max(1.0);
        ((x.log2() * 2.0) as usize).min(63)
    }

    fn upper(i: usize) -> Duration {
        Duration::from_micros((16.0 * 2f64.powf((i + 1) as f64 / 2.0)) as u64)
    }

    pub fn record(&self, d: Duration) {
        self.buckets[Self::bucket(d)].fetch_add(1, Ordering::Relaxed);
        if self.samples.fetch_add(1, Ordering::Relaxed) % DECAY_EVERY == DECAY_EVERY - 1 {
            for b in &self.buckets {
                let v = b.load(Ordering::Relaxed);
                b.store(v / 2, Ordering::Relaxed);
            }
        }
    }

    /// The q-quantile (0..1) of recent samples (an upper bound), or `None` with too few.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total < 20 {
            return None;
        }
        let target = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(Self::upper(i));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.95), None);
        for _ in 0..95 {
            h.record(Duration::from_millis(1));
        }
        for _ in 0..5 {
            h.record(Duration::from_millis(100));
        }
        let p95 = h.quantile(0.95).unwrap();
        assert!(p95 >= Duration::from_millis(1) && p95 < Duration::from_millis(2), "{p95:?}");
        let p99 = h.quantile(0.99).unwrap();
        assert!(p99 >= Duration::from_millis(100) && p99 < Duration::from_millis(150), "{p99:?}");
    }
}

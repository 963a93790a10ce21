//! What proxies report about their traffic (`trellis.discovery.v1.Stats/Report`, DESIGN §14)
//! and the mesh view built from it and the registry for the `/ui` page (`GET /v1/mesh`).
//!
//! A report holds a proxy's cumulative request and 5xx counters per upstream cluster and the
//! expiry of its certificates. Rates are the difference between a proxy's last two reports
//! over the time between them; an edge is (the proxy's service, the cluster), summed over
//! the service's proxies. Memory is bounded: one entry per connected proxy (entries of
//! proxies the registry no longer lists are dropped), at most [`MAX_CLUSTERS`] clusters and
//! [`MAX_CERTIFICATES`] certificates each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tonic::{Request, Response, Status};
use trellis_api::discovery::stats_server;
use trellis_api::discovery::{ReportReply, StatsReport};

use crate::auth::Token;
use crate::discovery::{ProxyStatus, Registry};

/// Most clusters one report may hold.
pub const MAX_CLUSTERS: usize = 1024;
/// Most certificates one report may hold.
pub const MAX_CERTIFICATES: usize = 64;
/// Longest cluster or certificate name.
pub const MAX_NAME: usize = 256;
/// Default time between a proxy's reports.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// A certificate with less than this left is flagged: a third of the default 24 h identity
/// lifetime, when a proxy's renewal should already have replaced it.
pub const NEAR_EXPIRY: Duration = Duration::from_secs(8 * 3600);

/// One cluster as a proxy last reported it.
#[derive(Clone, Debug)]
struct ClusterSample {
    requests: u64,
    errors: u64,
    mtls: bool,
    /// Requests and 5xx between the previous report and this one, and the seconds between
    /// them; none on a proxy's first report (or after its counters restarted).
    window: Option<(u64, u64, f64)>,
}

#[derive(Clone, Debug)]
struct NodeStats {
    at: Instant,
    clusters: BTreeMap<String, ClusterSample>,
    certificates: Vec<(String, i64)>,
}

/// Why a report is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("node_id is empty")]
    NoNode,
    #[error("{0} clusters; at most {MAX_CLUSTERS}")]
    TooManyClusters(usize),
    #[error("{0} certificates; at most {MAX_CERTIFICATES}")]
    TooManyCertificates(usize),
    #[error("a name is longer than {MAX_NAME} bytes")]
    NameTooLong,
}

/// The reports of every connected proxy. Share it in an `Arc`.
pub struct Stats {
    nodes: Mutex<HashMap<String, NodeStats>>,
    interval: Duration,
}

impl Stats {
    /// Stats asking proxies to report every `interval`.
    pub fn new(interval: Duration) -> Stats {
        Stats { nodes: Mutex::default(), interval }
    }

    /// Keeps `report`, received now.
    pub fn record(&self, report: StatsReport) -> Result<(), Refused> {
        self.record_at(report, Instant::now())
    }

    fn record_at(&self, report: StatsReport, now: Instant) -> Result<(), Refused> {
        if report.node_id.is_empty() {
            return Err(Refused::NoNode);
        }
        if report.clusters.len() > MAX_CLUSTERS {
            return Err(Refused::TooManyClusters(report.clusters.len()));
        }
        if report.certificates.len() > MAX_CERTIFICATES {
            return Err(Refused::TooManyCertificates(report.certificates.len()));
        }
        let long = report.node_id.len() > MAX_NAME
            || report.clusters.iter().any(|c| c.cluster.len() > MAX_NAME)
            || report.certificates.iter().any(|c| c.name.len() > MAX_NAME);
        if long {
            return Err(Refused::NameTooLong);
        }
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let before = nodes.get(&report.node_id);
        let secs = before.map(|b| now.saturating_duration_since(b.at).as_secs_f64());
        let clusters = report
            .clusters
            .into_iter()
            .map(|c| {
                let prev = before.and_then(|b| b.clusters.get(&c.cluster));
                let window = match (prev, secs) {
                    // Counters only grow; smaller ones mean the proxy restarted.
                    (Some(p), Some(s)) if s > 0.0 && c.requests >= p.requests && c.errors >= p.errors => {
                        Some((c.requests - p.requests, c.errors - p.errors, s))
                    }
                    // New since the last report: all of it happened in the window.
                    (None, Some(s)) if s > 0.0 => Some((c.requests, c.errors, s)),
                    _ => None,
                };
                (c.cluster, ClusterSample { requests: c.requests, errors: c.errors, mtls: c.mtls, window })
            })
            .collect();
        let certificates = report.certificates.into_iter().map(|c| (c.name, c.not_after)).collect();
        nodes.insert(report.node_id, NodeStats { at: now, clusters, certificates });
        Ok(())
    }

    /// What the mesh page shows: `proxies` (the registry's), the edges between services
    /// from the reports, and certificates by expiry (`ca_not_after`: the CA's own).
    pub fn view(&self, proxies: Vec<ProxyStatus>, ca_not_after: SystemTime, revision: u64) -> MeshView {
        let now = Instant::now();
        let wall = unix(SystemTime::now());
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let listed: BTreeSet<&str> = proxies.iter().map(|p| p.id.as_str()).collect();
        nodes.retain(|id, _| listed.contains(id.as_str()));
        // A report older than this no longer stands for the proxy's current rate.
        let stale = self.interval * 3;

        let mut edges: BTreeMap<(String, String), EdgeSum> = BTreeMap::new();
        let mut certificates = vec![Certificate::new("control plane", None, "ca", unix(ca_not_after), wall)];
        let mut out = Vec::with_capacity(proxies.len());
        for p in proxies {
            let stats = nodes.get(&p.id);
            let age = stats.map(|s| now.saturating_duration_since(s.at));
            let from = p.service.clone().unwrap_or_else(|| p.id.clone());
            if let Some(s) = stats {
                let current = p.connected && age.is_some_and(|a| a <= stale);
                for (cluster, c) in &s.clusters {
                    let e = edges.entry((from.clone(), cluster.clone())).or_default();
                    e.requests += c.requests;
                    e.errors += c.errors;
                    e.mtls |= c.mtls;
                    e.proxies += 1;
                    if let Some((r, err, secs)) = c.window.filter(|_| current) {
                        e.rate += r as f64 / secs;
                        e.window_requests += r;
                        e.window_errors += err;
                        e.measured = true;
                    }
                }
                for (name, t) in &s.certificates {
                    certificates.push(Certificate::new(&p.id, p.service.as_deref(), name, *t, wall));
                }
            }
            out.push(ProxyView { status: p, reported_seconds_ago: age.map(|a| a.as_secs_f64()) });
        }
        certificates.sort_by_key(|c| c.not_after);

        let mut services: BTreeMap<String, ServiceView> = BTreeMap::new();
        for p in &out {
            if let Some(s) = &p.status.service {
                let v = services.entry(s.clone()).or_insert_with(|| ServiceView::new(s));
                v.proxies += 1;
                v.connected += usize::from(p.status.connected);
            }
        }
        let edges = edges
            .into_iter()
            .map(|((from, to), e)| Edge {
                known_service: services.contains_key(&to),
                from,
                to,
                mtls: e.mtls,
                proxies: e.proxies,
                requests_total: e.requests,
                errors_total: e.errors,
                requests_per_second: e.measured.then_some(e.rate),
                error_ratio: (e.window_requests > 0).then(|| e.window_errors as f64 / e.window_requests as f64),
            })
            .collect();
        MeshView {
            revision,
            report_interval_seconds: self.interval.as_secs_f64(),
            near_expiry_seconds: NEAR_EXPIRY.as_secs(),
            proxies: out,
            services: services.into_values().collect(),
            edges,
            certificates,
        }
    }

    /// How often proxies are asked to report.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

#[derive(Default)]
struct EdgeSum {
    requests: u64,
    errors: u64,
    mtls: bool,
    proxies: usize,
    rate: f64,
    window_requests: u64,
    window_errors: u64,
    measured: bool,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `GET /v1/mesh`.
#[derive(Debug, Serialize)]
pub struct MeshView {
    /// The store's revision now.
    pub revision: u64,
    pub report_interval_seconds: f64,
    /// Certificates with less than this left are `near_expiry`.
    pub near_expiry_seconds: u64,
    pub proxies: Vec<ProxyView>,
    pub services: Vec<ServiceView>,
    pub edges: Vec<Edge>,
    /// Soonest expiry first.
    pub certificates: Vec<Certificate>,
}

/// A proxy as `GET /v1/proxies` shows it, and how long ago it last reported.
#[derive(Debug, Serialize)]
pub struct ProxyView {
    #[serde(flatten)]
    pub status: ProxyStatus,
    pub reported_seconds_ago: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub name: String,
    /// Proxies of this service the control plane knows (connected or recently gone).
    pub proxies: usize,
    pub connected: usize,
}

impl ServiceView {
    fn new(name: &str) -> ServiceView {
        ServiceView { name: name.to_owned(), proxies: 0, connected: 0 }
    }
}

/// Traffic from the proxies of a service (or a proxy without one: its id) to a cluster.
#[derive(Debug, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// `to` is the service of some proxy (a mesh service), not only a cluster name.
    pub known_service: bool,
    pub mtls: bool,
    /// Proxies reporting this edge.
    pub proxies: usize,
    /// Since each proxy started.
    pub requests_total: u64,
    pub errors_total: u64,
    /// Over the proxies' last report interval; none until two reports came.
    pub requests_per_second: Option<f64>,
    /// 5xx / requests over the last report interval; none without requests in it.
    pub error_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Certificate {
    /// The proxy's node id, or `control plane`.
    pub holder: String,
    pub service: Option<String>,
    /// `identity`, `listener:NAME`, or `ca`.
    pub name: String,
    /// Unix seconds.
    pub not_after: i64,
    pub expires_in_seconds: i64,
    pub near_expiry: bool,
}

impl Certificate {
    fn new(holder: &str, service: Option<&str>, name: &str, not_after: i64, now: i64) -> Certificate {
        let left = not_after - now;
        Certificate {
            holder: holder.to_owned(),
            service: service.map(str::to_owned),
            name: name.to_owned(),
            not_after,
            expires_in_seconds: left,
            near_expiry: left < NEAR_EXPIRY.as_secs() as i64,
        }
    }
}

/// The `Stats` gRPC service, beside discovery on its port.
pub struct Service {
    pub stats: Arc<Stats>,
    pub registry: Arc<Registry>,
    pub token: Option<Arc<Token>>,
    /// As for discovery: a verified client certificate stands in for the token.
    pub certificate_suffices: bool,
}

#[tonic::async_trait]
impl stats_server::Stats for Service {
    async fn report(&self, request: Request<StatsReport>) -> Result<Response<ReportReply>, Status> {
        crate::discovery::authenticate(self.token.as_deref(), self.certificate_suffices, &request)?;
        let peer = request.extensions().get::<crate::server_tls::Peer>().cloned();
        let report = request.into_inner();
        // Only a proxy with a stream here reports, and over mTLS only as itself.
        let Some(stream_identity) = self.registry.connected_identity(&report.node_id) else {
            return Err(Status::failed_precondition(format!(
                "node \"{}\" has no discovery stream on this control plane",
                report.node_id
            )));
        };
        if let Some(peer) = peer {
            let id = peer.spiffe_id.map(|i| i.into_string());
            if id != stream_identity {
                return Err(Status::permission_denied("the report's identity is not its stream's"));
            }
        }
        self.stats.record(report).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let interval_ms = u32::try_from(self.stats.interval.as_millis()).unwrap_or(u32::MAX);
        Ok(Response::new(ReportReply { interval_ms }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::discovery::{CertificateExpiry, ClusterCounters};

    fn report(node: &str, requests: u64, errors: u64) -> StatsReport {
        StatsReport {
            node_id: node.into(),
            clusters: vec![ClusterCounters { cluster: "b".into(), requests, errors, mtls: true }],
            certificates: vec![CertificateExpiry { name: "identity".into(), not_after: 0 }],
        }
    }

    fn proxy(id: &str, service: &str) -> ProxyStatus {
        let registry = Registry::new(Duration::from_secs(1));
        let node = crate::discovery::NodeInfo { id: id.into(), service: Some(service.into()), ..Default::default() };
        registry.connect(node);
        registry.proxies().remove(0)
    }

    #[test]
    fn rates_and_error_ratios_come_from_the_last_two_reports() {
        let stats = Stats::new(Duration::from_secs(10));
        let t0 = Instant::now();
        stats.record_at(report("a1", 100, 0), t0).unwrap();
        stats.record_at(report("a1", 120, 5), t0 + Duration::from_secs(2)).unwrap();
        stats.record_at(report("a2", 10, 0), t0).unwrap();
        stats.record_at(report("a2", 20, 0), t0 + Duration::from_secs(1)).unwrap();
        let view = stats.view(vec![proxy("a1", "a"), proxy("a2", "a"), proxy("b1", "b")], UNIX_EPOCH, 3);
        assert_eq!(view.edges.len(), 1, "{view:?}");
        let e = &view.edges[0];
        assert_eq!((e.from.as_str(), e.to.as_str(), e.mtls, e.known_service), ("a", "b", true, true));
        assert_eq!((e.requests_total, e.errors_total, e.proxies), (140, 5, 2));
        assert_eq!(e.requests_per_second, Some(20.0)); // 10/s + 10/s
        assert_eq!(e.error_ratio, Some(5.0 / 30.0));
        assert_eq!(
            view.services.iter().map(|s| (s.name.as_str(), s.proxies)).collect::<Vec<_>>(),
            [("a", 2), ("b", 1)]
        );
        // The CA (at the epoch) and each proxy's identity, all expired.
        assert_eq!(view.certificates.len(), 3);
        assert!(view.certificates.iter().all(|c| c.near_expiry && c.expires_in_seconds < 0));
    }

    #[test]
    fn a_restarted_proxy_starts_a_new_baseline_and_unlisted_proxies_are_forgotten() {
        let stats = Stats::new(Duration::from_secs(10));
        let t0 = Instant::now();
        stats.record_at(report("a1", 100, 0), t0).unwrap();
        stats.record_at(report("a1", 3, 0), t0 + Duration::from_secs(1)).unwrap();
        let view = stats.view(vec![proxy("a1", "a")], UNIX_EPOCH, 1);
        assert_eq!(view.edges[0].requests_per_second, None);
        let view = stats.view(vec![], UNIX_EPOCH, 1);
        assert!(view.edges.is_empty());
        assert!(stats.nodes.lock().unwrap().is_empty());
    }

    #[test]
    fn oversized_reports_are_refused() {
        let stats = Stats::new(DEFAULT_INTERVAL);
        let mut r = report("a1", 1, 0);
        r.clusters =
            (0..=MAX_CLUSTERS).map(|i| ClusterCounters { cluster: i.to_string(), ..Default::default() }).collect();
        assert_eq!(stats.record(r), Err(Refused::TooManyClusters(MAX_CLUSTERS + 1)));
        let mut r = report("a1", 1, 0);
        r.clusters[0].cluster = "x".repeat(MAX_NAME + 1);
        assert_eq!(stats.record(r), Err(Refused::NameTooLong));
        assert_eq!(stats.record(report("", 1, 0)), Err(Refused::NoNode));
        let mut r = report("a1", 1, 0);
        r.certificates = vec![CertificateExpiry::default(); MAX_CERTIFICATES + 1];
        assert_eq!(stats.record(r), Err(Refused::TooManyCertificates(MAX_CERTIFICATES + 1)));
    }
}

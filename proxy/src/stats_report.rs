//! Reports this proxy's traffic counters to the control plane for its mesh page (`/ui`,
//! DESIGN §14): `trellis.discovery.v1.Stats/Report` on the discovery channel, when the stream
//! opens and then as often as the control plane asks.
//!
//! Nothing here runs per request: a report reads the counters the proxy already keeps
//! (`trellis_requests_total`, through the Prometheus recorder's render, the same as an
//! admin `/metrics` scrape) and the serving snapshot's certificate expiries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use trellis_api::discovery::stats_client::StatsClient;
use trellis_api::discovery::{CertificateExpiry, ClusterCounters, StatsReport};
use trellis_api::{self as api, Bootstrap};

use crate::config::Snapshot;
use crate::reload::Reloader;
use crate::telemetry;

/// Most clusters in one report (the control plane refuses more).
pub const MAX_CLUSTERS: usize = 1024;
/// Most certificates in one report.
pub const MAX_CERTIFICATES: usize = 64;
/// Longest cluster or certificate name reported; longer ones are left out.
pub const MAX_NAME: usize = 256;
/// Interval used until the control plane says otherwise, and bounds on what it may say.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const MIN_INTERVAL: Duration = Duration::from_millis(200);
const MAX_INTERVAL: Duration = Duration::from_secs(300);

/// The interval the control plane asked for, kept within bounds (0: the default).
pub fn interval(ms: u32) -> Duration {
    match ms {
        0 => DEFAULT_INTERVAL,
        n => Duration::from_millis(u64::from(n)).clamp(MIN_INTERVAL, MAX_INTERVAL),
    }
}

/// Reports until the task is aborted (its discovery stream ended) or the control plane
/// answers that it takes no reports (an older one: UNIMPLEMENTED).
pub async fn report_forever<F>(
    mut client: StatsClient<InterceptedService<Channel, F>>,
    node_id: String,
    metrics: PrometheusHandle,
    reloader: Arc<Reloader>,
) where
    F: tonic::service::Interceptor,
{
    loop {
        let report = build(&node_id, &metrics, &reloader.snapshot());
        let wait = match client.report(report).await {
            Ok(reply) => interval(reply.into_inner().interval_ms),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!("the control plane takes no stats reports; not reporting");
                return;
            }
            Err(status) => {
                tracing::debug!(error = %status, "stats report refused");
                DEFAULT_INTERVAL
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One report: requests and 5xx answers per cluster, from the rendered metrics, and the
/// certificates the serving snapshot holds.
pub fn build(node_id: &str, metrics: &PrometheusHandle, snapshot: &Snapshot) -> StatsReport {
    let counts = request_counts(&metrics.render());
    let clusters = counts
        .into_iter()
        .filter(|(name, _)| name.len() <= MAX_NAME)
        .take(MAX_CLUSTERS)
        .map(|(cluster, (requests, errors))| ClusterCounters {
            mtls: is_mtls(&snapshot.source, &cluster),
            cluster,
            requests,
            errors,
        })
        .collect();
    let certificates = snapshot
        .cert_expiry
        .iter()
        .filter(|(name, _)| name.len() <= MAX_NAME)
        .take(MAX_CERTIFICATES)
        .map(|(name, t)| CertificateExpiry { name: name.clone(), not_after: *t })
        .collect();
    StatsReport { node_id: node_id.to_owned(), clusters, certificates }
}

/// Whether traffic to `cluster` is mesh mTLS.
fn is_mtls(config: &Bootstrap, cluster: &str) -> bool {
    config.clusters.iter().find(|c| c.name == cluster).is_some_and(|c| {
        c.tls.as_ref().is_some_and(|t| t.mode == api::ClusterTlsMode::Mesh)
            || c.endpoints.iter().any(|e| e.identity.is_some())
    })
}

/// `trellis_requests_total` summed per cluster: (requests, of which 5xx).
fn request_counts(text: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(telemetry::REQUESTS_TOTAL).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let (mut cluster, mut code) = (None, None);
        for (k, v) in labels_of(labels) {
            match k {
                "cluster" => cluster = Some(v),
                "code" => code = Some(v),
                _ => {}
            }
        }
        let Some(cluster) = cluster.filter(|c| !c.is_empty()) else { continue };
        let n = value.max(0.0) as u64;
        let entry = out.entry(cluster).or_default();
        entry.0 += n;
        if code.is_some_and(|c| c.starts_with('5')) {
            entry.1 += n;
        }
    }
    out
}

/// `a="x",b="y"` of the exposition format → pairs, with `\\`, `\"` and `\n` unescaped.
fn labels_of(s: &str) -> Vec<(&str, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut end = after.len();
        let mut chars = after.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, e)) => value.push(e),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').trim(), value));
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_5xx_are_summed_per_cluster() {
        let text = "# TYPE trellis_requests_total counter\n\
            trellis_requests_total{listener=\"out\",route=\"r\",cluster=\"b\",code=\"200\"} 7\n\
            trellis_requests_total{listener=\"out\",route=\"r2\",cluster=\"b\",code=\"503\"} 2\n\
            trellis_requests_total{listener=\"in\",route=\"x\",cluster=\"we\\\"ird\",code=\"502\"} 1\n\
            trellis_requests_total{listener=\"in\",route=\"x\",cluster=\"\",code=\"404\"} 4\n\
            trellis_requests_total_other{cluster=\"b\",code=\"200\"} 9\n\
            trellis_request_duration_seconds_count{cluster=\"b\"} 9\n";
        let got = request_counts(text);
        assert_eq!(got.get("b"), Some(&(9, 2)));
        assert_eq!(got.get("we\"ird"), Some(&(1, 1)));
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn the_interval_asked_for_is_bounded() {
        assert_eq!(interval(0), DEFAULT_INTERVAL);
        assert_eq!(interval(1), MIN_INTERVAL);
        assert_eq!(interval(1000), Duration::from_secs(1));
        assert_eq!(interval(u32::MAX), MAX_INTERVAL);
    }
}

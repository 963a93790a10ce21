//! Active health checks: one task per checked endpoint, on the main runtime, that stops by
//! itself once the endpoint leaves the config. HTTP checks GET `path` on a fresh connection
//! (2xx passes); TCP checks only connect. Thresholds of consecutive results flip the
//! endpoint's `healthy` flag, which balancing respects.

use crate::config::Snapshot;
use crate::upstream::Endpoint;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use trellis_api::HealthCheck;

/// An endpoint's active-health state.
#[derive(Debug)]
pub struct Health {
    healthy: AtomicBool,
    checking: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        // New endpoints take traffic until checks say otherwise, so a reload never blackholes.
        Self { healthy: AtomicBool::new(true), checking: AtomicBool::new(false) }
    }
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Starts checkers for every endpoint of `snap` that has a health check and no checker yet.
pub fn start(snap: &Snapshot) {
    for cluster in snap.clusters.values() {
        let Some(hc) = &cluster.spec.health_check else { continue };
        for ep in &cluster.endpoints {
            if !ep.health.checking.swap(true, Ordering::AcqRel) {
                tokio::spawn(check_loop(Arc::downgrade(ep), hc.clone(), cluster.name.to_string()));
            }
        }
    }
}

async fn check_loop(ep: Weak<Endpoint>, hc: HealthCheck, cluster: String) {
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        // Spread checks of many endpoints over the interval.
        let jitter = hc.interval.get().mul_f64(fastrand::f64() * 0.1);
        tokio::time::sleep(hc.interval.get() + jitter).await;
        let Some(ep) = ep.upgrade() else { return };
        let ok = tokio::time::timeout(hc.timeout.get(), probe(&ep, hc.path.as_deref())).await.unwrap_or(false);
        if ok {
            passes += 1;
            fails = 0;
        } else {
            fails += 1;
            passes = 0;
        }
        let healthy = ep.health.is_healthy();
        if healthy && fails >= hc.unhealthy {
            ep.health.healthy.store(false, Ordering::Relaxed);
            tracing::warn!(%cluster, endpoint = %ep.addr, "health check: endpoint unhealthy");
        } else if !healthy && passes >= hc.healthy {
            ep.health.healthy.store(true, Ordering::Relaxed);
            tracing::info!(%cluster, endpoint = %ep.addr, "health check: endpoint healthy again");
        }
    }
}

async fn probe(ep: &Endpoint, path: Option<&str>) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(ep.addr).await else { return false };
    let Some(path) = path else { return true };
    let Ok((mut tx, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return false;
    };
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, ep.addr.to_string())
        .header(http::header::USER_AGENT, "trellis-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<bytes::Bytes>::new());
    let Ok(req) = req else { return false };
    matches!(tx.send_request(req).await, Ok(r) if r.status().is_success())
}

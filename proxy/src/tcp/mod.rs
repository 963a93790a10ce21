//! L4 forwarding for `protocol: tcp` listeners and opaque transparent connections: one
//! upstream connection per client connection (TCP, or TLS per the cluster, through the same
//! breakers as HTTP), bytes copied both ways (`duplex`) until both sides have closed, then
//! one access log line when the bootstrap has one.

pub mod duplex;

use crate::access_log::{AccessLog, L4Entry};
use crate::resilience::outlier::Outcome;
use crate::upstream::{Cluster, Endpoint, pool};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncWrite};

/// Who is connecting, for routing and the access log.
pub struct Client<'a> {
    pub listener: &'a Arc<str>,
    pub ip: IpAddr,
    pub peer_id: Option<&'a Arc<str>>,
}

/// Forwards `stream` to an endpoint of `cluster`; closes it if none can be reached.
pub async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    client: Client<'_>,
    cluster: Arc<Cluster>,
    log: Option<Arc<AccessLog>>,
) {
    let key = cluster.hash_key(&http::HeaderMap::new(), client.ip);
    match cluster.pick(key, None) {
        None => {
            tracing::debug!(cluster = %cluster.name, "tcp: no endpoint");
            if let Some(log) = log {
                let mut e = L4Entry::new(client.listener, client.ip, client.peer_id, &cluster.name);
                e.error = Some(format!("no healthy endpoint in cluster {}", cluster.name));
                log.write_l4(&e);
            }
        }
        Some(ep) => {
            let ep = ep.clone();
            forward_to(stream, client, &cluster, ep, log).await;
        }
    }
}

/// Forwards `stream` to `ep` (of `cluster`) and copies both ways until either side closes.
pub async fn forward_to<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    client: Client<'_>,
    cluster: &Cluster,
    ep: Arc<Endpoint>,
    log: Option<Arc<AccessLog>>,
) {
    let mut entry = log.as_ref().map(|_| L4Entry::new(client.listener, client.ip, client.peer_id, &cluster.name));
    if let Some(e) = entry.as_mut() {
        e.upstream = Some(ep.addr);
    }
    match pool::connect_l4(&ep).await {
        Err(err) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.addr, error = %err, "tcp: connect failed");
            if matches!(err, pool::UpstreamError::Connect { .. } | pool::UpstreamError::ConnectTimeout(_)) {
                cluster.record(&ep, Outcome::ConnectFailure);
            }
            if let Some(e) = entry.as_mut() {
                e.error = Some(err.to_string());
            }
        }
        Ok(mut upstream) => {
            ep.active.fetch_add(1, Ordering::Relaxed);
            ep.total.fetch_add(1, Ordering::Relaxed);
            let copied = duplex::copy(&mut stream, &mut upstream.io).await;
            ep.active.fetch_sub(1, Ordering::Relaxed);
            if let Some(e) = entry.as_mut() {
                match copied {
                    Ok((up, down)) => (e.bytes_received, e.bytes_sent) = (up, down),
                    Err(err) => e.error = Some(err.to_string()),
                }
            }
        }
    }
    if let (Some(log), Some(e)) = (log, entry) {
        log.write_l4(&e);
    }
}

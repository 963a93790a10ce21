//! L4 forwarding for `protocol: tcp` listeners: one upstream connection per client
//! connection, bytes copied both ways until either side closes.

use crate::upstream::Cluster;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Forwards `client` to an endpoint of `cluster`; closes it if none can be reached.
pub async fn forward<S: AsyncRead + AsyncWrite + Unpin>(mut client: S, client_ip: IpAddr, cluster: Arc<Cluster>) {
    let key = cluster.hash_key(&http::HeaderMap::new(), client_ip);
    let Some(ep) = cluster.pick(key, None) else {
        tracing::debug!(cluster = %cluster.name, "tcp: no endpoint");
        return;
    };
    let connect = tokio::time::timeout(ep.settings.connect_timeout, TcpStream::connect(ep.addr)).await;
    let mut upstream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(cluster = %cluster.name, error = %e, "tcp: connect failed");
            return;
        }
        Err(_) => {
            tracing::debug!(cluster = %cluster.name, "tcp: connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    ep.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    ep.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

//! Upstream connections. HTTP/1.1: a LIFO stack of idle connections per endpoint and per
//! worker, taken for one exchange and given back when the response body has ended.
//! HTTP/2: multiplexed connections shared by all workers, a new one opened only when every
//! open one carries `max_streams` requests.

use crate::http::body::RequestBody;
use crate::resilience::breaker::Threshold;
use crate::tls::io::MaybeTls;
use crate::upstream::{Endpoint, Wire};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpStream;

/// Why an upstream exchange failed before a response head arrived.
#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("connect to {0} timed out")]
    ConnectTimeout(std::net::SocketAddr),
    #[error("upstream handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error("upstream connection reset: {0}")]
    Reset(hyper::Error),
    #[error("cluster over its {} circuit-breaker threshold", .0.as_str())]
    Overloaded(Threshold),
    #[error("{0}")]
    Identity(String),
    #[error("upstream TLS handshake with {addr} failed: {source}")]
    Tls { addr: std::net::SocketAddr, source: std::io::Error },
}

type H1 = http1::SendRequest<RequestBody>;

#[derive(Debug)]
struct H2Conn {
    sender: http2::SendRequest<RequestBody>,
    streams: Arc<AtomicU32>,
}

/// One endpoint's connections.
#[derive(Debug)]
pub struct Pool {
    h1_idle: Box<[Mutex<Vec<H1>>]>,
    h2: Mutex<Vec<H2Conn>>,
    /// Serializes opening h2 connections so a burst opens one, not one per request.
    h2_connecting: tokio::sync::Mutex<()>,
}

impl Pool {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            h1_idle: (0..workers.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            h2: Mutex::new(Vec::new()),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn idle_slot(&self) -> &Mutex<Vec<H1>> {
        let i = crate::worker::current() % self.h1_idle.len();
        &self.h1_idle[i]
    }

    fn take_h1(&self) -> Option<H1> {
        let mut idle = self.idle_slot().lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_h1(&self, s: H1, max_idle: usize) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle_slot().lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < max_idle {
            idle.push(s);
        }
    }

    fn checkout_h2(&self, max_streams: u32) -> Option<(http2::SendRequest<RequestBody>, Arc<AtomicU32>)> {
        let mut conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| !c.sender.is_closed());
        conns.iter().find_map(|c| {
            c.streams
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max_streams).then_some(n + 1))
                .ok()
                .map(|_| (c.sender.clone(), c.streams.clone()))
        })
    }

    /// Idle HTTP/1.1 connections and open HTTP/2 connections, for the admin view.
    pub fn sizes(&self) -> (usize, usize) {
        let idle = self.h1_idle.iter().map(|m| m.lock().map(|v| v.len()).unwrap_or(0)).sum();
        let h2 = self.h2.lock().map(|v| v.len()).unwrap_or(0);
        (idle, h2)
    }
}

/// A connection (or h2 stream slot) held for one exchange; returned to the pool by
/// [`Lease::release`] once the response has been read to its end, dropped otherwise.
#[derive(Debug)]
pub struct Lease {
    endpoint: Arc<Endpoint>,
    conn: Option<Held>,
}

#[derive(Debug)]
enum Held {
    H1(H1),
    H2(Arc<AtomicU32>),
}

impl Lease {
    /// The exchange ended cleanly: an HTTP/1.1 connection may carry the next request.
    pub fn release(mut self) {
        match self.conn.take() {
            Some(Held::H1(s)) => self.endpoint.pool.put_h1(s, self.endpoint.settings.max_idle),
            Some(Held::H2(streams)) => {
                streams.fetch_sub(1, Ordering::AcqRel);
            }
            None => {}
        }
    }

    /// The endpoint this exchange went to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(Held::H2(streams)) = self.conn.take() {
            streams.fetch_sub(1, Ordering::AcqRel);
        }
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
        self.endpoint.counts.release(Threshold::MaxRequests);
    }
}

/// Sends `req` to `ep` over `wire`, on a pooled connection when one is free.
pub async fn send(
    ep: &Arc<Endpoint>,
    wire: Wire,
    req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Lease), UpstreamError> {
    ep.counts
        .acquire(Threshold::MaxRequests, ep.settings.limits.as_ref(), &ep.cluster)
        .map_err(UpstreamError::Overloaded)?;
    ep.active.fetch_add(1, Ordering::Relaxed);
    ep.total.fetch_add(1, Ordering::Relaxed);
    // From here on the lease owns the `active` count, whatever happens.
    let mut lease = Lease { endpoint: ep.clone(), conn: None };
    match wire {
        Wire::Http1 => {
            let (resp, sender) = send_h1(ep, req).await?;
            lease.conn = Some(Held::H1(sender));
            Ok((resp, lease))
        }
        Wire::Http2 => {
            let (mut sender, streams) = checkout_or_connect_h2(ep).await?;
            lease.conn = Some(Held::H2(streams));
            sender.ready().await.map_err(UpstreamError::Reset)?;
            let resp = sender.send_request(req).await.map_err(UpstreamError::Reset)?;
            Ok((resp, lease))
        }
    }
}

async fn send_h1(ep: &Endpoint, mut req: Request<RequestBody>) -> Result<(Response<Incoming>, H1), UpstreamError> {
    // A pooled connection may have been closed by the upstream while idle; when hyper hands
    // the request back unsent we try the next one, and finally a fresh connection.
    while let Some(mut sender) = ep.pool.take_h1() {
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, sender)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(UpstreamError::Reset(e.into_error())),
            },
        }
    }
    let mut sender = connect_h1(ep).await?;
    let resp = sender.send_request(req).await.map_err(UpstreamError::Reset)?;
    Ok((resp, sender))
}

/// A connection for L4 (`protocol: tcp`) forwarding: TCP, or TLS per the cluster's `tls`,
/// holding one `max_connections` unit until dropped.
pub struct L4Conn {
    pub io: MaybeTls,
    _slot: ConnSlot,
}

/// Connects to `ep` for L4 forwarding, with the same breakers, timeouts and TLS (mesh
/// identity check included) as HTTP connections to the cluster.
pub async fn connect_l4(ep: &Endpoint) -> Result<L4Conn, UpstreamError> {
    let io = connect_tcp(ep, Wire::Http1).await?;
    Ok(L4Conn { io: io.into_inner(), _slot: ConnSlot(ep.counts.clone()) })
}

/// One `max_connections` unit, given back when dropped (also if the connection's task is
/// cancelled with its runtime).
struct ConnSlot(Arc<crate::resilience::breaker::Counts>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.release(Threshold::MaxConnections);
    }
}

/// Opens a TCP connection under the cluster's `max_connections` and `max_pending`
/// thresholds. On success the caller owns one `max_connections` unit, to be released by
/// [`spawn_conn`] (or [`L4Conn`]) when the connection ends, or at once if a handshake fails.
async fn connect_tcp(ep: &Endpoint, wire: Wire) -> Result<TokioIo<MaybeTls>, UpstreamError> {
    let addr = ep.addr;
    let limits = ep.settings.limits.as_ref();
    ep.counts.acquire(Threshold::MaxConnections, limits, &ep.cluster).map_err(UpstreamError::Overloaded)?;
    if let Err(t) = ep.counts.acquire(Threshold::MaxPending, limits, &ep.cluster) {
        ep.counts.release(Threshold::MaxConnections);
        return Err(UpstreamError::Overloaded(t));
    }
    let connected = tokio::time::timeout(ep.settings.connect_timeout, TcpStream::connect(addr)).await;
    ep.counts.release(Threshold::MaxPending);
    let stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            ep.counts.release(Threshold::MaxConnections);
            return Err(UpstreamError::Connect { addr, source });
        }
        Err(_) => {
            ep.counts.release(Threshold::MaxConnections);
            return Err(UpstreamError::ConnectTimeout(addr));
        }
    };
    // Latency matters more than packet count for request/response traffic.
    let _ = stream.set_nodelay(true);
    let Some(tls) = ep.tls.load_full() else {
        return Ok(TokioIo::new(MaybeTls::Plain(stream)));
    };
    let config = match wire {
        Wire::Http1 => tls.h1.clone(),
        Wire::Http2 => tls.h2.clone(),
    };
    let name = tls.sni.as_deref().unwrap_or(&ep.host);
    let server_name = ServerName::try_from(name.to_owned()).unwrap_or_else(|_| ServerName::from(addr.ip()));
    let handshake = tokio::time::timeout(
        ep.settings.connect_timeout,
        tokio_rustls::TlsConnector::from(config).connect(server_name, stream),
    )
    .await;
    match handshake {
        Ok(Ok(s)) => Ok(TokioIo::new(MaybeTls::Tls(Box::new(s)))),
        Ok(Err(e)) => {
            ep.counts.release(Threshold::MaxConnections);
            if let Some(m) = crate::tls::mesh::identity_mismatch(&e) {
                return Err(UpstreamError::Identity(m.to_string()));
            }
            Err(UpstreamError::Tls { addr, source: e })
        }
        Err(_) => {
            ep.counts.release(Threshold::MaxConnections);
            Err(UpstreamError::ConnectTimeout(addr))
        }
    }
}

async fn connect_h1(ep: &Endpoint) -> Result<H1, UpstreamError> {
    let io = connect_tcp(ep, Wire::Http1).await?;
    let (sender, conn) = match http1::Builder::new().handshake(io).await {
        Ok(x) => x,
        Err(e) => {
            ep.counts.release(Threshold::MaxConnections);
            return Err(UpstreamError::Handshake(e));
        }
    };
    spawn_conn(ep, conn);
    Ok(sender)
}

async fn checkout_or_connect_h2(
    ep: &Endpoint,
) -> Result<(http2::SendRequest<RequestBody>, Arc<AtomicU32>), UpstreamError> {
    let max = ep.settings.max_streams;
    if let Some(c) = ep.pool.checkout_h2(max) {
        return Ok(c);
    }
    let _opening = ep.pool.h2_connecting.lock().await;
    // Someone else may have opened one while we waited.
    if let Some(c) = ep.pool.checkout_h2(max) {
        return Ok(c);
    }
    let io = connect_tcp(ep, Wire::Http2).await?;
    let handshake = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(io)
        .await;
    let (sender, conn) = match handshake {
        Ok(x) => x,
        Err(e) => {
            ep.counts.release(Threshold::MaxConnections);
            return Err(UpstreamError::Handshake(e));
        }
    };
    spawn_conn(ep, conn);
    let streams = Arc::new(AtomicU32::new(1));
    ep.pool
        .h2
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(H2Conn { sender: sender.clone(), streams: streams.clone() });
    Ok((sender, streams))
}

/// Drives an upstream connection to its end, then gives back its `max_connections` unit.
fn spawn_conn<C, E>(ep: &Endpoint, conn: C)
where
    C: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let slot = ConnSlot(ep.counts.clone());
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
}

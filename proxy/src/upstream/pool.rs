//! Upstream connections. HTTP/1.1: a LIFO stack of idle connections per endpoint and per
//! worker, taken for one exchange by the request's task (`h1`) and given back by the
//! response body at its end.
//! HTTP/2: multiplexed connections shared by all workers, a new one opened only when every
//! open one carries `max_streams` requests (the protocol itself is `h2`'s).

use crate::http::body::{ClientBodyError, RequestBody};
use crate::http::fault::Side;
use crate::http::headers::Forwarding;
use crate::resilience::breaker::Threshold;
use crate::tls::io::MaybeTls;
use crate::upstream::alpn::Learned;
use crate::upstream::h1;
use crate::upstream::h2::{self, ConnState};
use crate::upstream::response::ResponseBody;
use crate::upstream::{Endpoint, Wire};
use futures_util::future::Either;
use http::{Request, Response};
use rustls_pki_types::ServerName;
use std::future::{Future, ready};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
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
    Handshake(::h2::Error),
    #[error("upstream connection reset: {0}")]
    Reset(Box<dyn std::error::Error + Send + Sync>),
    /// The request cannot be sent over HTTP/2 as it is (h2 refused it before the wire).
    #[error("request cannot be sent over HTTP/2: {0}")]
    Unsendable(::h2::Error),
    #[error("cluster over its {} circuit-breaker threshold", .0.as_str())]
    Overloaded(Threshold),
    #[error("{0}")]
    Identity(String),
    #[error("upstream TLS handshake with {addr} failed: {source}")]
    Tls { addr: std::net::SocketAddr, source: std::io::Error },
    /// The upstream's response could not be read as HTTP/1 (malformed or ambiguous head,
    /// broken framing).
    #[error("invalid upstream response: {0}")]
    Protocol(h1::Error),
    /// Reading the request body from the client failed while it was being sent: the
    /// client's fault, not the upstream's.
    #[error("{0}")]
    ClientBody(ClientBodyError),
}

impl UpstreamError {
    /// Whose fault this is: the client's for its own body, the proxy's for its breakers
    /// and for a request it cannot put into HTTP/2, else the upstream's.
    pub fn side(&self) -> Side {
        match self {
            Self::ClientBody(_) => Side::Client,
            Self::Overloaded(_) | Self::Unsendable(_) => Side::Proxy,
            _ => Side::Upstream,
        }
    }
}

impl From<h1::Error> for UpstreamError {
    fn from(e: h1::Error) -> Self {
        match e {
            h1::Error::RequestBody(b) => Self::ClientBody(*b),
            h1::Error::Wire(w) if w.side() == Side::Client => Self::ClientBody(ClientBodyError::H1(w)),
            h1::Error::Wire(w) => match w.kind() {
                crate::http::h1::Kind::Io(_) | crate::http::h1::Kind::Closed | crate::http::h1::Kind::Truncated => {
                    Self::Reset(w.into())
                }
                _ => Self::Protocol(h1::Error::Wire(w)),
            },
        }
    }
}

#[derive(Debug)]
struct H2Conn {
    sender: h2::Sender,
    state: Arc<ConnState>,
}

/// One endpoint's connections.
#[derive(Debug)]
pub struct Pool {
    h1_idle: Box<[Mutex<Vec<h1::Conn>>]>,
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

    fn idle_slot(&self) -> &Mutex<Vec<h1::Conn>> {
        let i = crate::worker_id::current() % self.h1_idle.len();
        &self.h1_idle[i]
    }

    /// The most recently used idle connection that still looks open (others are closed).
    fn take_h1(&self) -> Option<h1::Conn> {
        let mut idle = self.idle_slot().lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut c) = idle.pop() {
            if c.is_usable() {
                return Some(c);
            }
        }
        None
    }

    /// Drops idle connections the upstream has closed, in every worker's stack, so they
    /// give back their `max_connections` units before a new connection is counted.
    fn sweep_h1(&self) {
        for stack in &self.h1_idle {
            stack.lock().unwrap_or_else(|p| p.into_inner()).retain_mut(|c| c.is_usable());
        }
    }

    /// Keeps a connection whose exchange ended cleanly for the next request.
    pub(crate) fn put_h1(&self, mut c: h1::Conn, max_idle: usize) {
        c.park();
        let mut idle = self.idle_slot().lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < max_idle {
            idle.push(c);
        }
    }

    fn checkout_h2(&self, max_streams: u32) -> Option<(h2::Sender, Arc<ConnState>)> {
        let mut conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        // Closed or GOAWAY'd connections leave the pool; their streams in flight finish.
        conns.retain_mut(|c| h2::takes_streams(&mut c.sender, &c.state));
        conns.iter().find_map(|c| {
            c.state
                .streams
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max_streams).then_some(n + 1))
                .ok()
                .map(|_| (c.sender.clone(), c.state.clone()))
        })
    }

    /// Idle HTTP/1.1 connections and open HTTP/2 connections, for the admin view.
    pub fn sizes(&self) -> (usize, usize) {
        let idle = self.h1_idle.iter().map(|m| m.lock().map(|v| v.len()).unwrap_or(0)).sum();
        let h2 = self.h2.lock().map(|v| v.len()).unwrap_or(0);
        (idle, h2)
    }
}

/// One exchange's hold on its endpoint (the `active` count, a `max_requests` unit, and for
/// h2 a stream slot returned by [`Lease::release`] once the response has been read to its
/// end). An HTTP/1.1 connection is not in the lease: the response body owns it.
#[derive(Debug)]
pub struct Lease {
    endpoint: Arc<Endpoint>,
    /// The h2 connection whose count of streams in use this exchange adds to. (An HTTP/1.1
    /// connection is owned by the response body, which gives it back to the pool itself.)
    h2_streams: Option<Arc<ConnState>>,
}

impl Lease {
    /// The exchange ended cleanly.
    pub fn release(mut self) {
        if let Some(conn) = self.h2_streams.take() {
            conn.streams.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The endpoint this exchange went to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.h2_streams.take() {
            conn.streams.fetch_sub(1, Ordering::AcqRel);
        }
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
        self.endpoint.counts.release(Threshold::MaxRequests);
    }
}

/// Sends `req` to `ep` over `wire`, on a pooled connection when one is free.
///
/// Admission (the `max_requests` breaker, the endpoint's counts) and, for HTTP/1.1,
/// encoding the request need no await: they are done here, before the returned future
/// starts, so that future holds what they made (a lease, the encoded request) and not the
/// request as well. It is part of every request's future, and is moved with it. (One future
/// type for three cases: HTTP/1.1, HTTP/2, or refused before anything was sent.)
pub fn send(
    ep: Arc<Endpoint>,
    wire: Wire,
    req: Request<RequestBody>,
    forwarding: &Forwarding<'_>,
) -> impl Future<Output = Result<(Response<ResponseBody>, Lease), UpstreamError>> {
    if let Err(t) = ep.counts.acquire(Threshold::MaxRequests, ep.settings.limits.as_ref(), &ep.cluster) {
        return Either::Right(ready(Err(UpstreamError::Overloaded(t))));
    }
    ep.active.fetch_add(1, Ordering::Relaxed);
    ep.total.fetch_add(1, Ordering::Relaxed);
    let mut req = req;
    // An endpoint that learns its version by ALPN (`tls` clusters under `auto`) decides it
    // here; an upgrade stays HTTP/1.1, the version that has `Upgrade`. Others: one load.
    let wire = match ep.alpn.get() {
        Learned::Off => wire,
        _ if req.headers().contains_key(http::header::UPGRADE) => wire,
        Learned::Known(learned) => {
            if learned != wire {
                crate::http::headers::set_form(&mut req, learned);
            }
            learned
        }
        Learned::Unknown => {
            forwarding.enter(req.headers_mut());
            let lease = Lease { endpoint: ep, h2_streams: None };
            return Either::Left(Either::Left(Either::Right(Box::pin(send_learning(lease, req)))));
        }
    };
    // From here on the lease owns the `active` count, whatever happens.
    let lease = Lease { endpoint: ep, h2_streams: None };
    match wire {
        Wire::Http1 => match h1::Outgoing::new(req, forwarding) {
            Ok(out) => Either::Left(Either::Left(Either::Left(send_h1(lease, out)))),
            Err(e) => Either::Right(ready(Err(e.into()))),
        },
        Wire::Http2 => Either::Left(Either::Right(send_h2(lease, req, forwarding.fields()))),
    }
}

/// The first exchange with an endpoint whose version is not known yet: a connection that
/// offers `h2` and `http/1.1`, and the request sent in the version the upstream selected
/// (which the endpoint remembers). One such connection at a time per endpoint: requests
/// that waited go the learned way.
async fn send_learning(
    mut lease: Lease,
    mut req: Request<RequestBody>,
) -> Result<(Response<ResponseBody>, Lease), UpstreamError> {
    let ep = lease.endpoint.clone();
    let opening = ep.pool.h2_connecting.lock().await;
    let wire = match ep.alpn.get() {
        Learned::Known(w) => Some(w),
        Learned::Off => Some(Wire::Http1),
        Learned::Unknown => None,
    };
    let (wire, io) = match wire {
        Some(w) => (w, None),
        None => {
            let io = connect_tcp(&ep, Use::Learn).await?;
            let selected = match &io {
                MaybeTls::Tls(t) => t.get_ref().1.alpn_protocol(),
                MaybeTls::Plain(_) => None,
            };
            (ep.alpn.learn(selected), Some(io))
        }
    };
    crate::http::headers::set_form(&mut req, wire);
    match (wire, io) {
        (Wire::Http2, io) => {
            let (sender, conn) = match io {
                Some(io) => {
                    let registered = register_h2(&ep, io).await;
                    // In the pool now: the requests that waited share it.
                    drop(opening);
                    registered?
                }
                None => {
                    drop(opening);
                    checkout_or_connect_h2(&ep).await?
                }
            };
            let conn = lease.h2_streams.insert(conn);
            // The forwarding fields were entered in the map before the version was known.
            let resp = h2::send(sender, conn, req, Vec::new()).await?;
            Ok((resp.map(ResponseBody::H2), lease))
        }
        (Wire::Http1, io) => {
            drop(opening);
            let mut out = h1::Outgoing::new(req, &())?;
            let conn = match io {
                Some(io) => h1::Conn::new(io, ConnSlot(ep.counts.clone())),
                None => match ep.pool.take_h1() {
                    Some(c) => c,
                    None => connect_h1(&ep).await?,
                },
            };
            match h1::exchange(conn, &mut out, &ep).await {
                Ok(resp) => Ok((resp.map(ResponseBody::H1), lease)),
                Err(f) => Err(f.error.into()),
            }
        }
    }
}

// `send_h2` and `send_h1` return async blocks rather than being `async fn`s: an `async fn`
// keeps its arguments in its state for its whole life and copies them into locals besides,
// so the request (or the encoded one) would be stored twice.

#[expect(clippy::manual_async_fn, reason = "an async fn would store its arguments twice")]
fn send_h2(
    mut lease: Lease,
    req: Request<RequestBody>,
    forwarding: Vec<(http::HeaderName, http::HeaderValue)>,
) -> impl Future<Output = Result<(Response<ResponseBody>, Lease), UpstreamError>> {
    async move {
        let (sender, conn) = checkout_or_connect_h2(&lease.endpoint).await?;
        // The lease owns the stream slot from here on, even if this future is dropped.
        let conn = lease.h2_streams.insert(conn);
        let resp = h2::send(sender, conn, req, forwarding).await?;
        Ok((resp.map(ResponseBody::H2), lease))
    }
}

#[expect(clippy::manual_async_fn, reason = "an async fn would store its arguments twice")]
fn send_h1(
    lease: Lease,
    mut out: h1::Outgoing<RequestBody>,
) -> impl Future<Output = Result<(Response<ResponseBody>, Lease), UpstreamError>> {
    async move {
        let ep = &lease.endpoint;
        // Boxed: connecting (TCP, maybe TLS) is rare next to pooled exchanges and its state is
        // large; every request's future would carry (and move) it otherwise.
        let connect = || Box::pin(connect_h1(ep));
        // A pooled connection the upstream closed while idle is caught by `take_h1`; one that
        // fails before any response byte (closed meanwhile) is retried once on a fresh
        // connection when the request is whole in memory. (`conn` is moved into each
        // exchange whole, so the future keeps no slot for it beside the exchange's own.)
        let (mut conn, mut pooled) = match ep.pool.take_h1() {
            Some(c) => (c, true),
            None => (connect().await?, false),
        };
        loop {
            match h1::exchange(conn, &mut out, ep).await {
                Ok(resp) => return Ok((resp.map(ResponseBody::H1), lease)),
                Err(f) if pooled && f.retry => {
                    tracing::debug!(error = %f.error, "pooled upstream connection failed; retrying");
                }
                Err(f) => return Err(f.error.into()),
            }
            // Not inside the match: its scrutinee (the exchange's result) would be kept
            // across this await.
            conn = connect().await?;
            pooled = false;
        }
    }
}

/// A connection for L4 (`protocol: tcp`) forwarding: TCP, or TLS per the cluster's `tls`,
/// holding one `max_connections` unit until dropped.
pub struct L4Conn {
    pub io: MaybeTls,
    _slot: ConnSlot,
}

impl L4Conn {
    /// The connection as an HTTP/1 connection object (nothing read yet), which carries an
    /// upgraded stream (`http::upgrade`): a CONNECT tunnel.
    pub(crate) fn into_h1(self) -> h1::Conn {
        h1::Conn::new(self.io, self._slot)
    }
}

/// Connects to `ep` for L4 forwarding, with the same breakers, timeouts and TLS (mesh
/// identity check included) as HTTP connections to the cluster.
pub async fn connect_l4(ep: &Endpoint) -> Result<L4Conn, UpstreamError> {
    let io = connect_tcp(ep, Use::L4).await?;
    Ok(L4Conn { io, _slot: ConnSlot(ep.counts.clone()) })
}

/// One `max_connections` unit, given back when dropped (also if the connection's task is
/// cancelled with its runtime).
pub(crate) struct ConnSlot(Arc<crate::resilience::breaker::Counts>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.release(Threshold::MaxConnections);
    }
}

/// What a new connection is for: it picks the TLS config (ALPN).
#[derive(Clone, Copy)]
enum Use {
    Http1,
    Http2,
    L4,
    /// An endpoint learning its version: both offered (`upstream::alpn`).
    Learn,
}

/// Opens a TCP connection under the cluster's `max_connections` and `max_pending`
/// thresholds. On success the caller owns one `max_connections` unit, to be released by
/// the connection's [`ConnSlot`] (in [`L4Conn`], [`h1::Conn`], or the h2 connection's task)
/// when the connection ends, or at once if a handshake fails.
async fn connect_tcp(ep: &Endpoint, what: Use) -> Result<MaybeTls, UpstreamError> {
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
        return Ok(MaybeTls::Plain(stream));
    };
    let config = match what {
        Use::Http1 => tls.h1.clone(),
        Use::Http2 => tls.h2.clone(),
        Use::L4 => tls.l4.clone(),
        Use::Learn => tls.learn.clone().unwrap_or_else(|| tls.h1.clone()),
    };
    let name = tls.sni.as_deref().unwrap_or(&ep.host);
    let server_name = ServerName::try_from(name.to_owned()).unwrap_or_else(|_| ServerName::from(addr.ip()));
    let handshake = tokio::time::timeout(
        ep.settings.connect_timeout,
        tokio_rustls::TlsConnector::from(config).connect(server_name, stream),
    )
    .await;
    match handshake {
        Ok(Ok(s)) => Ok(MaybeTls::Tls(Box::new(s))),
        Ok(Err(e)) => {
            ep.counts.release(Threshold::MaxConnections);
            // The upstream may have changed protocols (a learned one offered alone failed).
            ep.alpn.forget();
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

async fn connect_h1(ep: &Endpoint) -> Result<h1::Conn, UpstreamError> {
    // Idle connections are not watched by a task; closed ones are noticed here at the latest.
    ep.pool.sweep_h1();
    let io = connect_tcp(ep, Use::Http1).await?;
    Ok(h1::Conn::new(io, ConnSlot(ep.counts.clone())))
}

async fn checkout_or_connect_h2(ep: &Endpoint) -> Result<(h2::Sender, Arc<ConnState>), UpstreamError> {
    match ep.pool.checkout_h2(ep.settings.max_streams) {
        Some(c) => Ok(c),
        // Boxed for the same reason as `connect_h1`.
        None => Box::pin(open_h2(ep)).await,
    }
}

/// Opens another HTTP/2 connection to `ep`, unless a concurrent caller just did.
async fn open_h2(ep: &Endpoint) -> Result<(h2::Sender, Arc<ConnState>), UpstreamError> {
    let max = ep.settings.max_streams;
    let _opening = ep.pool.h2_connecting.lock().await;
    // Someone else may have opened one while we waited.
    if let Some(c) = ep.pool.checkout_h2(max) {
        return Ok(c);
    }
    let io = connect_tcp(ep, Use::Http2).await?;
    register_h2(ep, io).await
}

/// Runs the HTTP/2 handshake on a new connection to `ep` (holding a `max_connections`
/// unit), starts its driver and adds it to the pool, with one stream counted for the caller.
async fn register_h2(ep: &Endpoint, io: MaybeTls) -> Result<(h2::Sender, Arc<ConnState>), UpstreamError> {
    let (sender, conn) = match h2::handshake(io).await {
        Ok(x) => x,
        Err(e) => {
            ep.counts.release(Threshold::MaxConnections);
            ep.alpn.forget();
            return Err(UpstreamError::Handshake(e));
        }
    };
    let state = Arc::new(ConnState::opened());
    h2::spawn_driver(conn, state.clone(), ConnSlot(ep.counts.clone()));
    ep.pool.h2.lock().unwrap_or_else(|p| p.into_inner()).push(H2Conn { sender: sender.clone(), state: state.clone() });
    Ok((sender, state))
}

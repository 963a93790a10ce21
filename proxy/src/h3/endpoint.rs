//! A listener's QUIC endpoint: one UDP socket on the listener's address, driven by one
//! worker, whose connections are served round-robin on every worker.
//!
//! Why one socket per listener and not one per worker (as TCP has): QUIC routes packets by
//! connection ID, not by address. With SO_REUSEPORT the kernel spreads datagrams by their
//! 4-tuple, so a client whose address changes (NAT rebinding, migration) would land on a
//! worker whose endpoint does not know its connection and answers with a stateless reset,
//! killing it; and adding or removing a socket reshuffles every flow. Steering by
//! connection ID needs an eBPF program. Instead quinn's own split is used: the endpoint's
//! driver (on one worker) only reads datagrams and routes each to its connection by ID,
//! while each connection's driver (decryption, loss recovery, sending) and its HTTP/3
//! task run on the worker that accepted it. quinn spawns a connection's driver where
//! `Incoming::accept` is called, so the accept loop calls it from a task it spawns on the
//! chosen worker.
//!
//! [`Endpoints`] is the main thread's registry: a reload binds the sockets it needs before
//! the new config is swapped in (a busy port refuses the reload), then stops the endpoints
//! of removed listeners, hands kept ones their new TLS config (certificates, 0-RTT), and
//! starts the new ones.

use super::RETRY_ABOVE;
use super::conn::{self, Settings};
use crate::config::Snapshot;
use crate::listener::Workers;
use crate::telemetry;
use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a stopped endpoint waits for its connections' CONNECTION_CLOSE to go out.
const CLOSE_LINGER: Duration = Duration::from_millis(200);

/// Why a listener's UDP port could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listeners[{name}].tls.http3: cannot bind UDP {addr}: {source}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// A UDP socket bound for a listener's HTTP/3 side, not serving yet.
#[derive(Debug)]
pub struct Bound {
    name: Arc<str>,
    addr: SocketAddr,
    socket: std::net::UdpSocket,
}

/// Binds `addr` over UDP. SO_REUSEPORT as on the TCP side, so a listener that moves to
/// another name at the same address can bind before the old one has drained.
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// An endpoint serving, as the registry knows it.
#[derive(Debug)]
struct Running {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
}

/// The HTTP/3 endpoints serving, by listener name.
#[derive(Debug, Default)]
pub struct Endpoints {
    running: Mutex<HashMap<Arc<str>, Running>>,
    /// The worker that drives the next new endpoint.
    next_worker: AtomicUsize,
}

impl Endpoints {
    /// Binds the UDP sockets `next` needs that are not serving already: listeners new to
    /// HTTP/3 or at a new address, and those whose TCP side restarts (`restarts`: a stop
    /// of the listener stops both sides). Nothing serves until [`Endpoints::apply`].
    pub fn bind(&self, next: &Snapshot, restarts: impl Fn(&str) -> bool) -> Result<Vec<Bound>, BindError> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut bound = Vec::new();
        for l in next.listeners.iter().filter(|l| l.h3.is_some()) {
            let kept = running.get(&l.name).is_some_and(|r| r.addr == l.addr) && !restarts(&l.name);
            if kept {
                continue;
            }
            let socket =
                bind_udp(l.addr).map_err(|source| BindError { name: l.name.to_string(), addr: l.addr, source })?;
            bound.push(Bound { name: l.name.clone(), addr: l.addr, socket });
        }
        Ok(bound)
    }

    /// Once `next` serves: stops the endpoints it no longer has (their connections get
    /// GOAWAY and `drain` to finish), gives kept ones its TLS config, starts `bound`.
    pub fn apply(&self, next: &Snapshot, bound: Vec<Bound>, workers: &Workers, drain: Duration) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|name, r| {
            let replaced = bound.iter().any(|b| &b.name == name);
            match next.listener(name).and_then(|l| l.h3.as_ref()) {
                Some(h3) if !replaced => {
                    // New handshakes use it; open connections keep theirs.
                    r.endpoint.set_server_config(Some(h3.server.clone()));
                    true
                }
                _ => {
                    workers.stop_h3(name, drain);
                    false
                }
            }
        });
        let handles = workers.handles();
        for b in bound {
            let Some(h3) = next.listener(&b.name).and_then(|l| l.h3.as_ref()) else { continue };
            let worker = self.next_worker.fetch_add(1, Ordering::Relaxed) % handles.len();
            // Created inside the worker's runtime: the socket registers with its reactor
            // and quinn spawns the endpoint's driver there.
            let endpoint = {
                let _entered = handles[worker].enter();
                quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    Some(h3.server.clone()),
                    b.socket,
                    Arc::new(quinn::TokioRuntime),
                )
            };
            let endpoint = match endpoint {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(listener = %b.name, addr = %b.addr, error = %e, "cannot start the HTTP/3 endpoint");
                    continue;
                }
            };
            running.insert(b.name.clone(), Running { addr: b.addr, endpoint: endpoint.clone() });
            workers.start_h3(worker, &b.name, Serve { endpoint, handles: handles.clone() });
        }
    }
}

/// What the worker that drives a listener's endpoint needs to serve it.
#[derive(Debug)]
pub struct Serve {
    endpoint: quinn::Endpoint,
    /// Every worker's runtime, to hand connections to.
    handles: Arc<[Handle]>,
}

/// The accept loop of listener `name`'s endpoint: until `stop`, each connection attempt is
/// refused (connection limit, listener gone), sent a Retry (many handshakes in progress,
/// address not validated), or served on the next worker. Then draining: attempts are
/// refused while the open connections finish (they saw `stop` too: GOAWAY), until `kill`.
pub async fn serve(
    name: Arc<str>,
    serve: Serve,
    config: Arc<ArcSwap<Snapshot>>,
    stop: CancellationToken,
    kill: CancellationToken,
) {
    let Serve { endpoint, handles } = serve;
    let handshaking = Arc::new(AtomicUsize::new(0));
    // Connection tasks on every worker; the set lets a drain wait for them and a kill abort
    // them.
    let mut conns = JoinSet::new();
    let mut turn = 0usize;
    let counted = |result: &'static str| {
        metrics::counter!(telemetry::HTTP3_CONNECTIONS_TOTAL, "listener" => name.to_string(), "result" => result)
            .increment(1);
    };
    loop {
        let incoming = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        // The listener's settings now: a reload's new limit applies to the next attempt.
        let settings = {
            let snap = config.load();
            snap.listener(&name).and_then(|l| {
                let h3 = l.h3.as_ref()?;
                let settings = Settings {
                    name: name.clone(),
                    config: config.clone(),
                    early_data: h3.early_data,
                    header_timeout: l.header_timeout(),
                    max_header_bytes: l.max_header_bytes(),
                    handshaking: handshaking.clone(),
                };
                Some((settings, h3.max_connections))
            })
        };
        let Some((settings, max_connections)) = settings else {
            incoming.refuse();
            continue;
        };
        if conns.len() >= max_connections {
            counted("refused");
            incoming.refuse();
            continue;
        }
        let incoming = if handshaking.load(Ordering::Relaxed) >= RETRY_ABOVE
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            match incoming.retry() {
                Ok(()) => {
                    counted("retry");
                    continue;
                }
                Err(e) => e.into_incoming(),
            }
        } else {
            incoming
        };
        counted("accepted");
        let handle = &handles[turn % handles.len()];
        turn = turn.wrapping_add(1);
        conns.spawn_on(conn::serve(incoming, settings, stop.clone()), handle);
    }

    let drained = async { while conns.join_next().await.is_some() {} };
    let refuse_new = async {
        while let Some(i) = endpoint.accept().await {
            i.refuse();
        }
    };
    tokio::select! {
        () = drained => {}
        () = refuse_new => {}
        () = kill.cancelled() => conns.abort_all(),
    }
    endpoint.close(0u32.into(), b"");
    let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
}

//! Listening sockets and the worker threads that accept on them. Each worker runs a
//! current-thread runtime with its own SO_REUSEPORT socket per listener, so the kernel
//! spreads connections and a connection never changes thread. The main thread sends
//! workers commands: start a listener, stop one (its connections drain), or drain all.

use crate::config::{Listener, Snapshot};
use crate::detect;
use crate::http::forward::ConnCtx;
use crate::http::headers::Peer;
use crate::telemetry;
use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use trellis_api::ListenerProtocol;

/// Pending connections the kernel queues per socket before `accept` (it caps this at
/// `net.core.somaxconn`): a burst of thousands of connects must not overflow the queue
/// (dropped SYNs are retried only after a second).
const LISTEN_BACKLOG: i32 = 65_535;

/// Binds one socket per worker on `addr`, all in one SO_REUSEPORT group.
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    (0..workers.max(1))
        .map(|_| {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            s.listen(LISTEN_BACKLOG)?;
            Ok(s.into())
        })
        .collect()
}

enum Command {
    Start { name: Arc<str>, socket: std::net::TcpListener },
    Stop { name: Arc<str>, drain: Duration },
    DrainAll { drain: Duration, all_done: Arc<tokio::sync::Barrier> },
}

/// The worker threads.
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Command>>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts `n` worker threads reading config from `config`.
    pub fn start(n: usize, config: Arc<ArcSwap<Snapshot>>) -> std::io::Result<Self> {
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for id in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let config = config.clone();
            let t = std::thread::Builder::new().name(format!("trellis-worker-{id}")).spawn(move || {
                crate::worker::set_current(id);
                rt.block_on(worker_main(rx, config));
            })?;
            senders.push(tx);
            threads.push(t);
        }
        Ok(Self { senders, threads: std::sync::Mutex::new(threads) })
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether there are no workers.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Hands each worker its socket of listener `name` (from [`bind`]).
    pub fn start_listener(&self, name: &Arc<str>, sockets: Vec<std::net::TcpListener>) {
        for (tx, socket) in self.senders.iter().zip(sockets) {
            let _ = tx.send(Command::Start { name: name.clone(), socket });
        }
    }

    /// Stops accepting on `name`; its connections get `drain` to finish.
    pub fn stop_listener(&self, name: &Arc<str>, drain: Duration) {
        for tx in &self.senders {
            let _ = tx.send(Command::Stop { name: name.clone(), drain });
        }
    }

    /// Stops accepting everywhere, waits up to `drain` for connections to finish, and joins
    /// the threads.
    pub fn drain_and_join(&self, drain: Duration) {
        // Workers wait for each other before their runtimes stop: an HTTP/2 upstream
        // connection driven by one worker may carry requests of the others.
        let all_done = Arc::new(tokio::sync::Barrier::new(self.senders.len()));
        for tx in &self.senders {
            let _ = tx.send(Command::DrainAll { drain, all_done: all_done.clone() });
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

struct Running {
    /// Stop accepting and start draining.
    stop: CancellationToken,
    /// Close whatever connections are still open.
    kill: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn worker_main(mut rx: mpsc::UnboundedReceiver<Command>, config: Arc<ArcSwap<Snapshot>>) {
    let mut running: HashMap<Arc<str>, Running> = HashMap::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Start { name, socket } => {
                let socket = match tokio::net::TcpListener::from_std(socket) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(listener = %name, error = %e, "cannot register listener socket");
                        continue;
                    }
                };
                let stop = CancellationToken::new();
                let kill = CancellationToken::new();
                let task = tokio::spawn(accept_loop(name.clone(), socket, config.clone(), stop.clone(), kill.clone()));
                if let Some(old) = running.insert(name, Running { stop, kill, task }) {
                    old.stop.cancel();
                }
            }
            Command::Stop { name, drain } => {
                if let Some(r) = running.remove(&name) {
                    // The listener drains in the background; this worker keeps serving others.
                    r.stop.cancel();
                    tokio::spawn(async move {
                        if tokio::time::timeout(drain, r.task).await.is_err() {
                            r.kill.cancel();
                        }
                    });
                }
            }
            Command::DrainAll { drain, all_done } => {
                let deadline = tokio::time::Instant::now() + drain;
                for r in running.values() {
                    r.stop.cancel();
                }
                for (_, r) in running.drain() {
                    let _ = tokio::time::timeout_at(deadline, r.task).await;
                }
                let _ = tokio::time::timeout_at(deadline, all_done.wait()).await;
                return;
            }
        }
    }
}

/// Counts a listener's open TCP (L4) connections so a drain can wait for them.
#[derive(Default)]
struct L4Tracker {
    open: AtomicUsize,
    idle: Notify,
}

async fn accept_loop(
    name: Arc<str>,
    socket: tokio::net::TcpListener,
    config: Arc<ArcSwap<Snapshot>>,
    stop: CancellationToken,
    kill: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let l4 = Arc::new(L4Tracker::default());
    // Connection tasks live in a set so a removed listener's leftovers can be aborted
    // without every connection polling a kill signal on each wake-up.
    let mut conns = tokio::task::JoinSet::new();
    let gauge = metrics::gauge!(telemetry::TCP_CONNECTIONS, "listener" => name.to_string());
    let accepted = metrics::counter!(telemetry::DOWNSTREAM_CONNECTIONS_TOTAL, "listener" => name.to_string());
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = socket.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        accepted.increment(1);
        // Reap finished connection tasks so the set only holds live ones.
        while conns.try_join_next().is_some() {}
        let snap = config.load();
        let Some(listener) = snap.listener(&name).cloned() else { continue };
        let access_log = snap.access_log.clone();
        drop(snap);
        let _ = stream.set_nodelay(true);
        let gauge = gauge.clone();
        gauge.increment(1.0);
        match listener.spec.protocol {
            ListenerProtocol::Tcp => {
                let Some(cluster) = listener.tcp_cluster.clone() else { continue };
                let l4 = l4.clone();
                l4.open.fetch_add(1, Ordering::AcqRel);
                let name = name.clone();
                conns.spawn(async move {
                    serve_tcp(stream, peer, &name, &listener, cluster, access_log).await;
                    gauge.decrement(1.0);
                    if l4.open.fetch_sub(1, Ordering::AcqRel) == 1 {
                        l4.idle.notify_waiters();
                    }
                });
            }
            ListenerProtocol::Auto | ListenerProtocol::Http => {
                let tls = listener.server_tls.clone();
                let conn = HttpConn {
                    peer,
                    name: name.clone(),
                    listener,
                    config: config.clone(),
                    watcher: graceful.watcher(),
                };
                let stop = stop.clone();
                // Plain and TLS connections are separate task types: a task is allocated
                // at the size of its future for the connection's whole life, and the TLS
                // one is ~9 KB larger (one future for both made every plain connection,
                // idle ones included, pay for it).
                match tls {
                    None => conns.spawn(async move {
                        serve_plain(stream, conn, &stop).await;
                        gauge.decrement(1.0);
                    }),
                    Some(tls) => conns.spawn(async move {
                        serve_tls(stream, tls, conn, &stop).await;
                        gauge.decrement(1.0);
                    }),
                };
            }
        }
    }
    // Stop accepting at once (the socket closes here), then let connections finish. TCP
    // connections have no graceful signal: they end when either side closes, or are killed.
    drop(socket);
    let finished = async {
        graceful.shutdown().await;
        while l4.open.load(Ordering::Acquire) > 0 {
            let idle = l4.idle.notified();
            if l4.open.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
    };
    tokio::select! {
        () = finished => {}
        () = kill.cancelled() => conns.abort_all(),
    }
}

// A connection that has not finished its preface or handshake when draining starts has no
// request in flight: it is dropped, not waited for.

/// What an accepted HTTP connection's task needs besides its stream.
struct HttpConn {
    peer: SocketAddr,
    name: Arc<str>,
    listener: Arc<Listener>,
    config: Arc<ArcSwap<Snapshot>>,
    watcher: hyper_util::server::graceful::Watcher,
}

impl HttpConn {
    /// Serves `stream`, which speaks `proto`, from here on.
    async fn serve<S>(
        self,
        stream: S,
        proto: detect::Protocol,
        tls: bool,
        peer_id: Option<Arc<str>>,
        stop: &CancellationToken,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let ctx = Arc::new(ConnCtx {
            config: self.config,
            listener: self.name,
            peer: Peer::new(self.peer.ip(), tls),
            peer_id,
            h2: proto == detect::Protocol::Http2,
        });
        crate::http::server::serve(stream, proto, ctx, &self.listener, self.watcher, stop).await;
    }
}

/// A plain-TCP HTTP connection: sniff HTTP/1.1 or h2c, then serve it. The serving state is
/// boxed and made only once the client has sent something: a task is allocated at its
/// future's largest size for its whole life, so a connection that sends nothing costs
/// only this sniffing state.
async fn serve_plain(stream: tokio::net::TcpStream, conn: HttpConn, stop: &CancellationToken) {
    let sniffed = tokio::select! {
        r = detect::sniff(&stream, conn.listener.header_timeout()) => r,
        _ = stop.cancelled() => return,
    };
    let proto = match sniffed {
        Ok(Some(p)) => p,
        Ok(None) | Err(_) => return,
    };
    Box::pin(conn.serve(stream, proto, false, None, stop)).await;
}

/// A TLS HTTP connection: handshake (ALPN picks h2 or HTTP/1.1), then serve it. As for
/// plain connections, the TLS and serving state is boxed and made only once the client
/// has sent something.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    tls: Arc<rustls::ServerConfig>,
    conn: HttpConn,
    stop: &CancellationToken,
) {
    let first = tokio::select! {
        r = tokio::time::timeout(conn.listener.header_timeout(), stream.readable()) => r,
        _ = stop.cancelled() => return,
    };
    if !matches!(first, Ok(Ok(()))) {
        return;
    }
    Box::pin(serve_tls_handshake(stream, tls, conn, stop)).await;
}

async fn serve_tls_handshake(
    stream: tokio::net::TcpStream,
    tls: Arc<rustls::ServerConfig>,
    conn: HttpConn,
    stop: &CancellationToken,
) {
    let accepted = tokio::select! {
        s = crate::tls::accept(stream, tls, conn.listener.header_timeout(), &conn.name) => s,
        _ = stop.cancelled() => return,
    };
    let Some(stream) = accepted else { return };
    let (_, session) = stream.get_ref();
    let proto = if session.alpn_protocol() == Some(crate::tls::ALPN_H2) {
        detect::Protocol::Http2
    } else {
        detect::Protocol::Http1
    };
    let peer_id = if conn.listener.mesh { crate::tls::mesh::peer_id(session.peer_certificates()) } else { None };
    conn.serve(stream, proto, true, peer_id, stop).await;
}

async fn serve_tcp(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    name: &Arc<str>,
    listener: &Listener,
    cluster: Arc<crate::upstream::Cluster>,
    log: Option<Arc<crate::access_log::AccessLog>>,
) {
    let Some(tls) = listener.server_tls.clone() else {
        if authorized_l4(listener, name, None, peer) {
            let client = crate::tcp::Client { listener: name, ip: peer.ip(), peer_id: None };
            crate::tcp::forward(stream, client, cluster, log).await;
        }
        return;
    };
    let Some(stream) = crate::tls::accept(stream, tls, listener.header_timeout(), name).await else { return };
    let peer_id = if listener.mesh { crate::tls::mesh::peer_id(stream.get_ref().1.peer_certificates()) } else { None };
    if authorized_l4(listener, name, peer_id.as_deref(), peer) {
        let client = crate::tcp::Client { listener: name, ip: peer.ip(), peer_id: peer_id.as_ref() };
        crate::tcp::forward(stream, client, cluster, log).await;
    }
}

/// L4 authorization: a denied connection is closed (and audited).
fn authorized_l4(listener: &Listener, name: &str, peer_id: Option<&str>, peer: SocketAddr) -> bool {
    let d = crate::authz::decide(listener.policy.as_deref(), listener.mesh, peer_id, None, None);
    if !d.allowed() {
        crate::http::forward::audit_denied(name, peer_id, peer.ip(), None, None, d, listener.policy.as_deref());
    }
    d.allowed()
}

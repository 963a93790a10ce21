//! Listening sockets and the worker threads that accept on them. Each worker runs a
//! current-thread runtime with its own SO_REUSEPORT socket per listener, so the kernel
//! spreads connections and a connection never changes thread. The main thread sends
//! workers commands: start a listener, stop one (its connections drain), or drain all.
//! A listener's HTTP/3 side is one more task on one worker (`h3::endpoint::serve`),
//! stopped and drained with the listener.

use crate::config::{Listener, Snapshot};
use crate::detect;
use crate::http::forward::ConnCtx;
use crate::http::headers::Peer;
use crate::http::upgrade::Switched;
use crate::http::version::Hint;
use crate::telemetry;
use arc_swap::ArcSwap;
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
    Start {
        name: Arc<str>,
        socket: std::net::TcpListener,
    },
    /// Stops both sides of the listener.
    Stop {
        name: Arc<str>,
        drain: Duration,
    },
    DrainAll {
        drain: Duration,
        all_done: Arc<tokio::sync::Barrier>,
    },
    /// Serves the listener's HTTP/3 endpoint from this worker.
    StartH3 {
        name: Arc<str>,
        serve: crate::h3::endpoint::Serve,
    },
    /// Stops the listener's HTTP/3 side only.
    StopH3 {
        name: Arc<str>,
        drain: Duration,
    },
}

/// The worker threads.
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Command>>,
    /// Each worker's runtime, for work placed on a given worker (HTTP/3 connections).
    handles: Arc<[tokio::runtime::Handle]>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts `n` worker threads reading config from `config`.
    pub fn start(n: usize, config: Arc<ArcSwap<Snapshot>>) -> std::io::Result<Self> {
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for id in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let config = config.clone();
            let t = std::thread::Builder::new().name(format!("trellis-worker-{id}")).spawn(move || {
                crate::worker_id::set_current(id);
                rt.block_on(worker_main(rx, config));
            })?;
            senders.push(tx);
            threads.push(t);
        }
        Ok(Self { senders, handles: handles.into(), threads: std::sync::Mutex::new(threads) })
    }

    /// Each worker's runtime, by worker id.
    pub fn handles(&self) -> Arc<[tokio::runtime::Handle]> {
        self.handles.clone()
    }

    /// Has `worker` serve listener `name`'s HTTP/3 endpoint.
    pub fn start_h3(&self, worker: usize, name: &Arc<str>, serve: crate::h3::endpoint::Serve) {
        if let Some(tx) = self.senders.get(worker) {
            let _ = tx.send(Command::StartH3 { name: name.clone(), serve });
        }
    }

    /// Stops listener `name`'s HTTP/3 side; its connections get `drain` to finish.
    pub fn stop_h3(&self, name: &Arc<str>, drain: Duration) {
        for tx in &self.senders {
            let _ = tx.send(Command::StopH3 { name: name.clone(), drain });
        }
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

impl Running {
    /// Stops accepting now; what is open gets `drain` to finish, then is killed.
    fn stop(self, drain: Duration) {
        self.stop.cancel();
        tokio::spawn(async move {
            if tokio::time::timeout(drain, self.task).await.is_err() {
                self.kill.cancel();
            }
        });
    }
}

/// How far ahead the worker's timer wheel always has a deadline (see [`anchor_timers`]).
const TIMER_ANCHOR: Duration = Duration::from_secs(1);

/// Keeps a deadline at most [`TIMER_ANCHOR`] ahead in this worker's timer wheel, for ever.
///
/// Tokio wakes its own event loop (an eventfd write, then an extra `epoll_wait` round)
/// whenever a timer is armed earlier than the wheel's next deadline, which with an empty
/// wheel is every timer. Each proxied request arms one (the try's idle timeout), so a worker
/// with no other timer set, such as an inbound sidecar serving its peer's HTTP/2
/// connection, made two more system calls per request than it needed (8 instead of 6,
/// `benches/README.md`). With a deadline never more than a second away, the timeouts of a
/// request (seconds to minutes) are later and are armed without a wake-up; the cost is one
/// wake-up a second.
async fn anchor_timers() {
    let mut tick = tokio::time::interval(TIMER_ANCHOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

async fn worker_main(mut rx: mpsc::UnboundedReceiver<Command>, config: Arc<ArcSwap<Snapshot>>) {
    tokio::spawn(anchor_timers());
    let mut running: HashMap<Arc<str>, Running> = HashMap::new();
    let mut h3: HashMap<Arc<str>, Running> = HashMap::new();
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
                // The listener drains in the background; this worker keeps serving others.
                for r in [running.remove(&name), h3.remove(&name)].into_iter().flatten() {
                    r.stop(drain);
                }
            }
            Command::StartH3 { name, serve } => {
                let stop = CancellationToken::new();
                let kill = CancellationToken::new();
                let task = tokio::spawn(crate::h3::endpoint::serve(
                    name.clone(),
                    serve,
                    config.clone(),
                    stop.clone(),
                    kill.clone(),
                ));
                if let Some(old) = h3.insert(name, Running { stop, kill, task }) {
                    old.stop.cancel();
                }
            }
            Command::StopH3 { name, drain } => {
                if let Some(r) = h3.remove(&name) {
                    r.stop(drain);
                }
            }
            Command::DrainAll { drain, all_done } => {
                let deadline = tokio::time::Instant::now() + drain;
                for r in running.values().chain(h3.values()) {
                    r.stop.cancel();
                }
                // HTTP/3 connections live on every worker: the barrier below keeps this
                // runtime serving them while the worker driving their endpoint waits.
                for (_, r) in running.drain().chain(h3.drain()) {
                    let _ = tokio::time::timeout_at(deadline, r.task).await;
                }
                let _ = tokio::time::timeout_at(deadline, all_done.wait()).await;
                return;
            }
        }
    }
}

/// What the connections of one accept loop share: the listener's name, the config, its
/// stop token and connection gauge, and the count of open connections a drain waits for
/// (HTTP ones once they have sent something, TCP ones from their accept). Shared rather
/// than copied into each connection's task, whose size every idle connection pays.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) config: Arc<ArcSwap<Snapshot>>,
    pub(crate) stop: CancellationToken,
    gauge: metrics::Gauge,
    open: AtomicUsize,
    idle: Notify,
}

/// One open connection of a listener, counted until dropped: a drain waits for them all.
/// A connection that has sent nothing is not counted (draining drops it).
pub struct Open(Arc<Shared>);

impl Open {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        shared.open.fetch_add(1, Ordering::AcqRel);
        Self(shared.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

async fn accept_loop(
    name: Arc<str>,
    socket: tokio::net::TcpListener,
    config: Arc<ArcSwap<Snapshot>>,
    stop: CancellationToken,
    kill: CancellationToken,
) {
    let gauge = metrics::gauge!(telemetry::TCP_CONNECTIONS, "listener" => name.to_string());
    let shared = Arc::new(Shared {
        name: name.clone(),
        config: config.clone(),
        stop: stop.clone(),
        gauge,
        open: AtomicUsize::new(0),
        idle: Notify::new(),
    });
    // Connection tasks live in a set so a removed listener's leftovers can be aborted
    // without every connection polling a kill signal on each wake-up (and so those that
    // have sent nothing are dropped when the loop ends).
    let mut conns = tokio::task::JoinSet::new();
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
        shared.gauge.increment(1.0);
        if listener.intercepts() {
            let conn = crate::intercept::Conn { peer, listener, shared: shared.clone(), log: access_log };
            conns.spawn(async move {
                let shared = conn.shared.clone();
                crate::intercept::serve(stream, conn).await;
                shared.gauge.decrement(1.0);
            });
            continue;
        }
        match listener.spec.protocol {
            ListenerProtocol::Tcp => {
                let Some(cluster) = listener.tcp_cluster.clone() else { continue };
                let open = Open::new(&shared);
                conns.spawn(async move {
                    serve_tcp(stream, peer, &open.0.name, &listener, cluster, access_log).await;
                    open.0.gauge.decrement(1.0);
                });
            }
            ListenerProtocol::Auto | ListenerProtocol::Http => {
                let conn = HttpConn { peer, listener, shared: shared.clone() };
                // Plain and TLS connections are separate task types: a task is allocated
                // at the size of its future for the connection's whole life, and the TLS
                // one is ~9 KB larger (one future for both made every plain connection,
                // idle ones included, pay for it).
                match conn.listener.server_tls.clone() {
                    None => conns.spawn(serve_plain(stream, conn)),
                    Some(tls) => conns.spawn(serve_tls(stream, tls, conn)),
                };
            }
        }
    }
    // Stop accepting at once (the socket closes here), then let open connections finish:
    // HTTP ones are told by `stop` (h2: GOAWAY; HTTP/1.1: idle ones close); TCP ones have no
    // graceful signal and end when either side closes, or are killed.
    drop(socket);
    let finished = async {
        while shared.open.load(Ordering::Acquire) > 0 {
            let idle = shared.idle.notified();
            if shared.open.load(Ordering::Acquire) == 0 {
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

// A connection that has not sent anything (not finished its preface or handshake) when
// draining starts has no request in flight: it is not counted, and is dropped with the
// accept loop's task set rather than waited for.

/// What an accepted HTTP connection's task needs besides its stream.
struct HttpConn {
    peer: SocketAddr,
    listener: Arc<Listener>,
    shared: Arc<Shared>,
}

impl HttpConn {
    /// Serves `stream`, which speaks `proto`, from here on, counted as open; a connection
    /// switched to another protocol is returned to be carried (`http::server::serve`).
    async fn serve<S>(
        &self,
        stream: S,
        proto: detect::Protocol,
        tls: bool,
        peer_id: Option<Arc<str>>,
    ) -> Option<Switched<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let open = Open::new(&self.shared);
        let ctx = Arc::new(ConnCtx {
            config: self.shared.config.clone(),
            listener: self.shared.name.clone(),
            peer: Peer::new(self.peer.ip(), tls),
            hint: if peer_id.is_some() { Hint::MeshHeader } else { Hint::None },
            peer_id,
            h2: proto == detect::Protocol::Http2,
            target: None,
        });
        crate::http::server::serve(stream, proto, ctx, &self.listener, open, &self.shared.stop).await
    }
}

/// A plain-TCP HTTP connection's task: sniff HTTP/1.1 or h2c, then serve it. Until the
/// client has sent something the task holds only the stream, the `HttpConn` and the
/// sniffing state (a task is allocated at its future's largest size for its whole life,
/// and thousands of idle connections pay it): the serving state is boxed, made once
/// there are bytes. (A plain fn returning the task's future: an `async fn` called from
/// the task's own block would store the stream and the connection twice.)
#[expect(clippy::manual_async_fn, reason = "an async fn would store its arguments twice")]
fn serve_plain(stream: tokio::net::TcpStream, conn: HttpConn) -> impl Future<Output = ()> + Send + 'static {
    async move {
        if let Ok(Some(proto)) = detect::sniff(&stream, conn.listener.header_timeout()).await {
            let switched = Box::pin(conn.serve(stream, proto, false, None)).await;
            if let Some(s) = switched {
                Box::pin(s.run()).await;
            }
        }
        conn.shared.gauge.decrement(1.0);
    }
}

/// A TLS HTTP connection's task: handshake (ALPN picks h2 or HTTP/1.1), then serve it. As
/// for plain connections, the TLS and serving state is boxed and made only once the
/// client has sent something.
#[expect(clippy::manual_async_fn, reason = "an async fn would store its arguments twice")]
fn serve_tls(
    stream: tokio::net::TcpStream,
    tls: Arc<rustls::ServerConfig>,
    conn: HttpConn,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let first = tokio::time::timeout(conn.listener.header_timeout(), stream.readable()).await;
        if matches!(first, Ok(Ok(()))) {
            let switched = Box::pin(serve_tls_handshake(stream, tls, &conn)).await;
            if let Some(s) = switched {
                Box::pin(s.run()).await;
            }
        }
        conn.shared.gauge.decrement(1.0);
    }
}

async fn serve_tls_handshake(
    stream: tokio::net::TcpStream,
    tls: Arc<rustls::ServerConfig>,
    conn: &HttpConn,
) -> Option<Switched<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let accepted = tokio::select! {
        s = crate::tls::accept(stream, tls, conn.listener.header_timeout(), &conn.shared.name) => s,
        _ = conn.shared.stop.cancelled() => return None,
    };
    let stream = accepted?;
    let (_, session) = stream.get_ref();
    let proto = if session.alpn_protocol() == Some(crate::tls::ALPN_H2) {
        detect::Protocol::Http2
    } else {
        detect::Protocol::Http1
    };
    let peer_id = if conn.listener.mesh { crate::tls::mesh::peer_id(session.peer_certificates()) } else { None };
    conn.serve(stream, proto, true, peer_id).await
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
pub(crate) fn authorized_l4(listener: &Listener, name: &str, peer_id: Option<&str>, peer: SocketAddr) -> bool {
    let d = crate::authz::decide(listener.policy.as_deref(), listener.mesh, peer_id, None, None);
    if !d.allowed() {
        crate::http::forward::audit_denied(name, peer_id, peer.ip(), None, None, d, listener.policy.as_deref());
    }
    d.allowed()
}

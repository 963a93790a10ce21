//! `trellis-load`: the Trellis HTTP load driver (HTTP/1.1 and h2c prior knowledge).
//!
//! Built on `hyper::client::conn::{http1, http2}` directly: one task per connection (or
//! per stream slot on h2), no pool, no client middleware, so the driver itself costs as
//! little as possible. `--threads N` runs N OS threads, each with its own current-thread
//! runtime and a share of the connections (like wrk); their histograms are merged.
//!
//! Modes (each stops by itself: nothing runs past warm-up + duration + a short grace):
//! - closed loop (default): `-c` connections issue requests back to back; with `--h2`,
//!   `-m` concurrent streams per connection.
//! - open loop: `--rate R` requests/s in total, spread evenly over every connection (h1)
//!   or stream slot (h2). Latency is measured from each request's *intended* send time,
//!   so a stalled server is charged for the requests it delayed (no coordinated
//!   omission). Pacing uses one timerfd per slot (nanosecond resolution) rather than
//!   tokio's millisecond timer wheel, which would bunch requests into 1 ms bursts.
//! - hold: `--hold N` opens N connections, sends one keep-alive GET on each and keeps
//!   them idle; with `--sse`, N concurrent event streams (GET the URL, count events as
//!   they arrive; with `--h2`, `-m` streams share a connection). Held for `-d` after
//!   all are established; used to measure a proxy's memory per connection/stream.
//!
//! Output: one human-readable line on stdout, and with `--json` one more line holding
//! a single JSON object (fields `mode`, `proto`, `connections`, `rps`, `errors`,
//! `p50_us`, `p90_us`, `p99_us`, `p999_us`, `max_us`, and more) for scripts.
//! Latencies go into an HdrHistogram with microsecond resolution (3 significant digits).
//!
//! ```text
//! trellis-load --url http://127.0.0.1:18080/ -c 64 -d 8s --warmup 2s --json
//! trellis-load --url http://127.0.0.1:18080/ -c 8 --h2 -m 8 -d 8s
//! trellis-load --url http://127.0.0.1:18080/ -c 64 --rate 20000 -d 8s
//! trellis-load --url 'http://127.0.0.1:18080/sse?interval_ms=1000' --hold 10000 --sse -d 20s
//! ```

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::header::{HOST, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::LocalSet;
use tokio::time::{Instant, sleep, timeout_at};
use trellis_bench::parse_duration;

/// Highest latency the histogram tracks exactly (100 s); larger values saturate.
const HIST_MAX_US: u64 = 100_000_000;
/// Requests still in flight this long after the end are abandoned and counted as timeouts.
const GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed connect, so a dead target does not turn into a busy loop.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Parser, Debug, Clone)]
#[command(name = "trellis-load", about = "HTTP/1.1 + h2c load driver for Trellis benchmarks")]
struct Args {
    /// Target URL (http:// only; h2 is h2c with prior knowledge).
    #[arg(long, default_value = "http://127.0.0.1:4140/")]
    url: String,
    /// Connections.
    #[arg(short = 'c', long = "connections", default_value_t = 64)]
    connections: usize,
    /// Measured duration (e.g. 8s, 500ms); in hold mode, how long to hold once established.
    #[arg(short = 'd', long, default_value = "8s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before measuring: requests are sent but not recorded.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Use HTTP/2 over cleartext with prior knowledge (h2c).
    #[arg(long)]
    h2: bool,
    /// Concurrent streams per connection (h2 only).
    #[arg(short = 'm', long = "streams", default_value_t = 1)]
    streams: usize,
    /// Open loop: total requests per second, paced from intended send times.
    #[arg(long)]
    rate: Option<f64>,
    /// OS threads, each with its own current-thread runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also print the result as one JSON object line.
    #[arg(long)]
    json: bool,
    /// Open loop: pace with tokio's 1 ms timer wheel instead of a timerfd per slot
    /// (cheaper, but requests leave in 1 ms bursts and latency includes up to 1 ms of
    /// timer lateness).
    #[arg(long)]
    coarse_timer: bool,
    /// Open loop: shortest interval between two timer wake-ups of a thread.
    #[arg(long, default_value = "200us", value_parser = parse_duration)]
    pace_granularity: Duration,
    /// Hold mode: open N idle keep-alive connections (or N SSE streams with --sse).
    #[arg(long, value_name = "N")]
    hold: Option<usize>,
    /// Hold mode: N concurrent server-sent-event streams instead of idle connections.
    #[arg(long, requires = "hold")]
    sse: bool,
    /// Hold mode: connections being established at once.
    #[arg(long, default_value_t = 256)]
    ramp_concurrency: usize,
    /// Hold mode: give up establishing after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    ramp_timeout: Duration,
}

/// Where and what to request, resolved once.
struct Target {
    addr: SocketAddr,
    h2: bool,
    /// Origin-form (`/path?q`) for HTTP/1.1, absolute form for h2 (`:scheme`/`:authority`).
    uri: Uri,
    host: HeaderValue,
}

impl Target {
    fn parse(url: &str, h2: bool) -> anyhow::Result<Self> {
        let parsed: Uri = url.parse().with_context(|| format!("invalid URL {url:?}"))?;
        if parsed.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported (h2 means h2c prior knowledge): {url}");
        }
        let authority = parsed.authority().with_context(|| format!("URL has no host: {url}"))?.clone();
        let port = authority.port_u16().unwrap_or(80);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(authority.host(), port))
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to no address"))?;
        let path = parsed.path_and_query().map(|p| p.as_str()).filter(|p| !p.is_empty()).unwrap_or("/");
        let uri: Uri = if h2 { format!("http://{authority}{path}").parse()? } else { path.parse()? };
        Ok(Self { addr, h2, uri, host: HeaderValue::from_str(authority.as_str())? })
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self.uri.clone();
        if !self.h2 {
            req.headers_mut().insert(HOST, self.host.clone());
        }
        req
    }

    fn proto(&self) -> &'static str {
        if self.h2 { "h2c" } else { "h1" }
    }
}

/// A client connection handle of either protocol.
enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn send(&mut self, req: Request<Empty<Bytes>>) -> hyper::Result<Response<Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Another handle on the same connection (h2 only: HTTP/1.1 has one request at a time).
    fn try_clone(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
        }
    }
}

/// Opens one TCP connection and runs the HTTP handshake; the connection task is spawned
/// and, when it ends, decrements `open` if given.
async fn connect(target: &Target, open: Option<Arc<AtomicU64>>) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let io = TokioIo::new(stream);
    if target.h2 {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new()).handshake(io).await?;
        spawn_conn(conn, open);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await?;
        spawn_conn(conn, open);
        Ok(Sender::H1(sender))
    }
}

fn spawn_conn<F, E>(conn: F, open: Option<Arc<AtomicU64>>)
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
{
    if let Some(open) = &open {
        open.fetch_add(1, Ordering::Relaxed);
    }
    tokio::spawn(async move {
        let _ = conn.await;
        if let Some(open) = open {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    });
}

/// Reads a response body to its end, returning the bytes seen (or the transport error).
async fn drain(body: Incoming) -> hyper::Result<u64> {
    let mut body = body;
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let nofile = trellis_bench::raise_nofile_limit();
    if args.threads == 0 || args.connections == 0 || args.streams == 0 {
        bail!("--threads, -c and -m must be at least 1");
    }
    if args.streams > 1 && !args.h2 {
        bail!("-m (streams per connection) needs --h2");
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number");
        }
        if args.hold.is_some() {
            bail!("--rate and --hold are exclusive");
        }
    }
    let target = Arc::new(Target::parse(&args.url, args.h2)?);
    match args.hold {
        Some(n) => {
            if let Some(limit) = nofile
                && (n as u64) + 64 > limit
            {
                eprintln!(
                    "warning: RLIMIT_NOFILE is {limit}, below the {n} sockets asked for; \
                     raise the hard limit (ulimit -Hn) first"
                );
            }
            run_hold(&args, target, n)
        }
        None => run_load(&args, target),
    }
}

// ---------------------------------------------------------------------------------------
// Closed and open loop
// ---------------------------------------------------------------------------------------

/// Counters of one thread (merged at the end).
struct Stats {
    hist: Histogram<u64>,
    /// Responses to requests sent (or intended) inside the measured window.
    responses: u64,
    status_errors: u64,
    transport_errors: u64,
    timeouts: u64,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: Histogram::new_with_bounds(1, HIST_MAX_US, 3)?,
            responses: 0,
            status_errors: 0,
            transport_errors: 0,
            timeouts: 0,
        })
    }

    fn merge(&mut self, other: &Stats) -> anyhow::Result<()> {
        self.hist.add(&other.hist)?;
        self.responses += other.responses;
        self.status_errors += other.status_errors;
        self.transport_errors += other.transport_errors;
        self.timeouts += other.timeouts;
        Ok(())
    }
}

/// Everything a lane needs, shared by the tasks of one thread.
struct Ctx {
    target: Arc<Target>,
    /// Start of the schedule (warm-up begins here).
    t0: Instant,
    measure_start: Instant,
    measure_end: Instant,
    hard_deadline: Instant,
    /// Open loop: interval between two requests of one lane, and the lane count.
    pacing: Option<(Duration, u64)>,
    streams: usize,
    /// Open loop: the thread's clock.
    pacer: Option<Pacer>,
    stats: RefCell<Stats>,
}

impl Ctx {
    fn intended(&self, lane: u64, k: u64) -> Option<Instant> {
        let (period, lanes) = self.pacing?;
        // Lanes are phase-shifted so that their requests interleave evenly.
        let offset = period.mul_f64(lane as f64 / lanes as f64);
        let at = period.checked_mul(u32::try_from(k).ok()?)?;
        Some(self.t0 + offset + at)
    }
}

fn run_load(args: &Args, target: Arc<Target>) -> anyhow::Result<()> {
    let lanes_total = (args.connections * args.streams) as u64;
    let pacing = args.rate.map(|rate| (Duration::from_secs_f64(lanes_total as f64 / rate), lanes_total));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (start_tx, start_rx) = watch::channel::<Option<std::time::Instant>>(None);

    let threads = args.threads.min(args.connections);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let conn_ids: Vec<usize> = (t..args.connections).step_by(threads).collect();
        let target = target.clone();
        let ready_tx = ready_tx.clone();
        let mut start_rx = start_rx.clone();
        let (warmup, duration, streams) = (args.warmup, args.duration, args.streams);
        let (coarse_timer, granularity) = (args.coarse_timer, args.pace_granularity);
        let handle =
            std::thread::Builder::new().name(format!("load-{t}")).spawn(move || -> anyhow::Result<Stats> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let local = LocalSet::new();
                local.block_on(&rt, async move {
                    // Connect first, so that connection setup is not part of the run.
                    let mut initial = Vec::with_capacity(conn_ids.len());
                    for _ in &conn_ids {
                        let target = target.clone();
                        initial.push(tokio::task::spawn_local(async move { connect(&target, None).await.ok() }));
                    }
                    let mut conns = Vec::with_capacity(initial.len());
                    for h in initial {
                        conns.push(h.await.ok().flatten());
                    }
                    let _ = ready_tx.send(());
                    let t0 = match start_rx.wait_for(Option::is_some).await {
                        Ok(t0) => (*t0).context("start signal")?,
                        Err(_) => bail!("start signal lost"),
                    };
                    let t0 = Instant::from_std(t0);
                    let measure_start = t0 + warmup;
                    let measure_end = measure_start + duration;
                    let ctx = Rc::new(Ctx {
                        target,
                        t0,
                        measure_start,
                        measure_end,
                        hard_deadline: measure_end + GRACE,
                        pacing,
                        streams,
                        pacer: pacing.map(|_| Pacer::new(coarse_timer, granularity)),
                        stats: RefCell::new(Stats::new()?),
                    });
                    if ctx.pacer.is_some() {
                        let ctx = ctx.clone();
                        tokio::task::spawn_local(async move {
                            if let Some(pacer) = &ctx.pacer {
                                pacer.run().await;
                            }
                        });
                    }
                    let mut sups = Vec::with_capacity(conns.len());
                    for (conn_id, conn) in conn_ids.iter().zip(conns) {
                        sups.push(tokio::task::spawn_local(supervise(ctx.clone(), *conn_id, conn)));
                    }
                    for s in sups {
                        let _ = s.await;
                    }
                    let stats = std::mem::replace(&mut *ctx.stats.borrow_mut(), Stats::new()?);
                    Ok(stats)
                })
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    // Wait for every thread's initial connects (bounded: connect() has the OS timeout,
    // and an unreachable target fails fast on loopback).
    for _ in 0..threads {
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            bail!("connection setup did not finish within 30 s");
        }
    }
    let start = std::time::Instant::now();
    let _ = start_tx.send(Some(start));

    let mut total = Stats::new()?;
    for h in handles {
        match h.join() {
            Ok(stats) => total.merge(&stats?)?,
            Err(_) => bail!("load thread panicked"),
        }
    }
    report_load(args, &target, &total);
    if total.responses == 0 {
        bail!("no response was received");
    }
    Ok(())
}

/// Runs the lanes of one connection, reconnecting when the connection dies, until every
/// lane has reached the end of the run.
async fn supervise(ctx: Rc<Ctx>, conn_id: usize, mut conn: Option<Sender>) {
    let m = ctx.streams;
    let lane_base = (conn_id * m) as u64;
    let mut lanes: Vec<LaneState> =
        (0..m).map(|i| LaneState { id: lane_base + i as u64, k: 0, in_flight: false, done: false }).collect();
    loop {
        if lanes.iter().all(|l| l.done) || Instant::now() >= ctx.hard_deadline {
            return;
        }
        let sender = match conn.take() {
            Some(s) => s,
            None => {
                if Instant::now() >= ctx.measure_end {
                    return;
                }
                match timeout_at(ctx.hard_deadline, connect(&ctx.target, None)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(_)) => {
                        if Instant::now() >= ctx.measure_start {
                            ctx.stats.borrow_mut().transport_errors += 1;
                        }
                        sleep(RECONNECT_BACKOFF).await;
                        continue;
                    }
                    Err(_) => return,
                }
            }
        };
        if m == 1 {
            run_lane(&ctx, sender, &mut lanes[0]).await;
            continue;
        }
        // h2: one task per stream slot, sharing the connection.
        let mut tasks = Vec::with_capacity(m);
        for mut state in std::mem::take(&mut lanes) {
            let clone = if state.done { None } else { sender.try_clone() };
            match clone {
                Some(s) => {
                    let ctx = ctx.clone();
                    tasks.push(tokio::task::spawn_local(async move {
                        run_lane(&ctx, s, &mut state).await;
                        state
                    }));
                }
                None => lanes.push(state),
            }
        }
        drop(sender);
        for task in tasks {
            // A lane task cannot panic short of a bug; if it did, its lane is lost.
            if let Ok(state) = task.await {
                lanes.push(state);
            }
        }
    }
}

/// Where a lane (a connection on HTTP/1.1, a stream slot on h2) stands.
struct LaneState {
    /// Global lane number (sets its phase in the open-loop schedule).
    id: u64,
    /// Index of its next request in the open-loop schedule.
    k: u64,
    /// A measured request is outstanding.
    in_flight: bool,
    /// Reached the end of the run.
    done: bool,
}

/// Runs a lane on a connection until the run ends or the connection closes. The whole
/// lane, not each request, is bounded by the hard deadline (one timer, not one per
/// request): a measured request still in flight then counts as a timeout.
async fn run_lane(ctx: &Ctx, sender: Sender, state: &mut LaneState) {
    let result = timeout_at(ctx.hard_deadline, lane(ctx, sender, state)).await;
    if result.is_err() {
        if state.in_flight {
            ctx.stats.borrow_mut().timeouts += 1;
        }
        state.done = true;
    }
}

/// Issues requests on one connection (h1) or stream slot (h2) until the run ends
/// (`state.done`) or the connection closes.
async fn lane(ctx: &Ctx, mut sender: Sender, state: &mut LaneState) {
    let wake = Rc::new(Notify::new());
    loop {
        let intended = match (&ctx.pacer, ctx.intended(state.id, state.k)) {
            (Some(pacer), Some(at)) => {
                if at >= ctx.measure_end {
                    state.done = true;
                    return;
                }
                pacer.sleep_until(at, &wake).await;
                at
            }
            _ => {
                let now = Instant::now();
                if now >= ctx.measure_end {
                    state.done = true;
                    return;
                }
                now
            }
        };
        // A failed `ready` means the connection closed between requests (e.g. the
        // server's keep-alive limit): nothing was sent, so it is not an error; the
        // request is sent on the next connection, still charged from `intended`.
        if sender.ready().await.is_err() {
            return;
        }
        let measured = intended >= ctx.measure_start;
        // Sent early (within the pacing slack): count from the actual send.
        let start = intended.min(Instant::now());
        state.in_flight = measured;
        let result = async {
            let res = sender.send(ctx.target.request()).await?;
            let status = res.status();
            drain(res.into_body()).await?;
            Ok::<StatusCode, hyper::Error>(status)
        }
        .await;
        state.in_flight = false;
        let finished = Instant::now();
        state.k += 1;
        if !measured {
            if result.is_err() && sender.is_closed() {
                return;
            }
            continue;
        }
        let mut stats = ctx.stats.borrow_mut();
        match result {
            Ok(status) => {
                let us = finished.saturating_duration_since(start).as_micros();
                stats.hist.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                stats.responses += 1;
                if !status.is_success() {
                    stats.status_errors += 1;
                }
            }
            Err(_) => {
                stats.transport_errors += 1;
                if sender.is_closed() {
                    return;
                }
            }
        }
    }
}

/// The open-loop clock of one thread: lanes wait here for their intended send times.
///
/// One timerfd per thread (nanosecond resolution, unlike tokio's 1 ms timer wheel),
/// armed for the earliest pending send time but never sooner than `granularity` after
/// its previous expiry. This bounds the thread's timer wake-ups to 1/granularity per
/// second whatever the rate: a wake-up of an idle thread costs tens of microseconds of
/// CPU, and the driver shares its core with the origin. A request can so leave up to
/// about `granularity` late, which is charged to its latency like any other lateness.
/// Without a timerfd (or with `--coarse-timer`) tokio's timer is used instead.
struct Pacer {
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    granularity: Duration,
    queue: RefCell<BinaryHeap<Reverse<Due>>>,
    /// When the timer will next fire, if armed.
    armed: Cell<Option<Instant>>,
    last_wake: Cell<Instant>,
    seq: Cell<u64>,
    /// Tells the tokio-timer fallback that `armed` moved earlier.
    kick: Notify,
}

/// A lane waiting for its send time.
struct Due {
    at: Instant,
    seq: u64,
    wake: Rc<Notify>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Send times this close are treated as due now (a timer cannot do better).
const PACE_SLACK: Duration = Duration::from_micros(20);

impl Pacer {
    fn new(coarse: bool, granularity: Duration) -> Self {
        use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
        let fd = if coarse {
            None
        } else {
            timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC).ok().and_then(
                |fd| {
                    // `AsyncFd::new` is deprecated in favour of the `unsafe` `register`, whose
                    // contract is that the raw fd stays open and unchanged while registered.
                    // An `OwnedFd` moved into the `AsyncFd` guarantees exactly that, and the
                    // workspace forbids `unsafe`, so the safe (deprecated) entry point is used.
                    #[allow(deprecated)]
                    let registered = tokio::io::unix::AsyncFd::new(fd);
                    registered.ok()
                },
            )
        };
        Self {
            fd,
            granularity,
            queue: RefCell::new(BinaryHeap::new()),
            armed: Cell::new(None),
            last_wake: Cell::new(Instant::now()),
            seq: Cell::new(0),
            kick: Notify::new(),
        }
    }

    /// Waits until `at` (give each lane its own `wake`).
    async fn sleep_until(&self, at: Instant, wake: &Rc<Notify>) {
        if at <= Instant::now() + PACE_SLACK {
            return;
        }
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        self.queue.borrow_mut().push(Reverse(Due { at, seq, wake: wake.clone() }));
        self.arm_for(at, true);
        wake.notified().await;
    }

    /// Makes sure the timer fires by `at` (or by the granularity floor after it).
    /// `from_lane`: called by a lane, so the clock task may have to be told.
    fn arm_for(&self, at: Instant, from_lane: bool) {
        let at = at.max(self.last_wake.get() + self.granularity);
        if self.armed.get().is_some_and(|armed| armed <= at) {
            return;
        }
        self.armed.set(Some(at));
        let Some(fd) = &self.fd else {
            if from_lane {
                self.kick.notify_one();
            }
            return;
        };
        use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec, timerfd_settime};
        // Zero would disarm the timer: one nanosecond means "now".
        let wait = at.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: Timespec {
                tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: wait.subsec_nanos().into(),
            },
        };
        if timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec).is_err() {
            // Cannot happen with a valid timerfd; the fallback below keeps lanes moving.
            self.kick.notify_one();
        }
    }

    /// The clock task of a thread: wakes lanes whose time has come. Never returns (it
    /// is dropped with its thread's task set).
    async fn run(&self) {
        loop {
            self.wait_expiry().await;
            let now = Instant::now();
            self.last_wake.set(now);
            self.armed.set(None);
            let next = {
                let mut queue = self.queue.borrow_mut();
                while let Some(Reverse(due)) = queue.peek() {
                    if due.at > now + PACE_SLACK {
                        break;
                    }
                    due.wake.notify_one();
                    queue.pop();
                }
                queue.peek().map(|Reverse(due)| due.at)
            };
            if let Some(at) = next {
                self.arm_for(at, false);
            }
        }
    }

    async fn wait_expiry(&self) {
        if let Some(fd) = &self.fd {
            loop {
                let Ok(mut guard) = fd.readable().await else {
                    // Cannot register interest: degrade to a 1 ms poll.
                    sleep(Duration::from_millis(1)).await;
                    return;
                };
                let mut buf = [0u8; 8];
                match guard.try_io(|inner| rustix::io::read(inner.get_ref(), &mut buf).map_err(std::io::Error::from)) {
                    Ok(_) => return,
                    // Stale readiness, or re-armed before we read: wait again.
                    Err(_would_block) => continue,
                }
            }
        }
        match self.armed.get() {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = self.kick.notified() => {}
                }
            }
            None => self.kick.notified().await,
        }
    }
}

fn report_load(args: &Args, target: &Target, s: &Stats) {
    let secs = args.duration.as_secs_f64();
    let rps = s.responses as f64 / secs;
    let errors = s.status_errors + s.transport_errors + s.timeouts;
    let q = |p: f64| s.hist.value_at_quantile(p);
    let (p50, p90, p99, p999, max) = (q(0.5), q(0.9), q(0.99), q(0.999), s.hist.max());
    let mode = if args.rate.is_some() { "open" } else { "closed" };
    let rate = args.rate.map(|r| format!(" rate={r:.0}/s")).unwrap_or_default();
    println!(
        "{mode} {proto} {url} c={c} m={m}{rate} {secs:.1}s: {n} responses, {errors} errors \
         ({st} status, {tr} transport, {to} timeout), {rps:.1} rps | latency p50 {p50} \
         p90 {p90} p99 {p99} p99.9 {p999} max {max}",
        proto = target.proto(),
        url = args.url,
        c = args.connections,
        m = args.streams,
        n = s.responses,
        st = s.status_errors,
        tr = s.transport_errors,
        to = s.timeouts,
        p50 = fmt_us(p50),
        p90 = fmt_us(p90),
        p99 = fmt_us(p99),
        p999 = fmt_us(p999),
        max = fmt_us(max),
    );
    if args.json {
        let obj = json!({
            "mode": mode,
            "proto": target.proto(),
            "url": args.url,
            "connections": args.connections,
            "streams": args.streams,
            "threads": args.threads,
            "rate": args.rate,
            "duration_s": secs,
            "warmup_s": args.warmup.as_secs_f64(),
            "requests": s.responses,
            "rps": (rps * 10.0).round() / 10.0,
            "errors": errors,
            "status_errors": s.status_errors,
            "transport_errors": s.transport_errors,
            "timeouts": s.timeouts,
            "p50_us": p50,
            "p90_us": p90,
            "p99_us": p99,
            "p999_us": p999,
            "max_us": max,
            "mean_us": (s.hist.mean() * 10.0).round() / 10.0,
        });
        println!("{obj}");
    }
    let _ = std::io::stdout().flush();
}

fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}

// ---------------------------------------------------------------------------------------
// Hold mode
// ---------------------------------------------------------------------------------------

/// Counters shared by every hold thread.
#[derive(Default)]
struct HoldCounters {
    /// Connections or streams that got their response headers (2xx).
    established: AtomicU64,
    /// SSE streams still open.
    open_streams: AtomicU64,
    /// Connections whose connection task is still alive.
    open_conns: Arc<AtomicU64>,
    events: AtomicU64,
    errors: AtomicU64,
}

fn run_hold(args: &Args, target: Arc<Target>, n: usize) -> anyhow::Result<()> {
    let counters = Arc::new(HoldCounters::default());
    // SSE over h2 multiplexes `-m` streams per connection; everything else is one
    // connection per item.
    let per_conn = if args.sse && args.h2 { args.streams } else { 1 };
    let conns = n.div_ceil(per_conn);
    let threads = args.threads.min(conns.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ramp_start = std::time::Instant::now();
    let ramp_deadline = Instant::now() + args.ramp_timeout;

    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let conn_ids: Vec<usize> = (t..conns).step_by(threads).collect();
        let (target, counters, ready_tx) = (target.clone(), counters.clone(), ready_tx.clone());
        let mut stop_rx = stop_rx.clone();
        let sse = args.sse;
        let permits = (args.ramp_concurrency / threads).max(1);
        let handle = std::thread::Builder::new().name(format!("hold-{t}")).spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let local = LocalSet::new();
            local.block_on(&rt, async move {
                let ramp = Rc::new(Semaphore::new(permits));
                let mut tasks = Vec::with_capacity(conn_ids.len());
                for id in conn_ids {
                    let streams = per_conn.min(n - id * per_conn);
                    let (target, counters, ramp) = (target.clone(), counters.clone(), ramp.clone());
                    let stop = stop_rx.clone();
                    tasks.push(tokio::task::spawn_local(async move {
                        let _permit = ramp.acquire().await;
                        let fut = hold_one(target, counters.clone(), streams, sse, stop);
                        match timeout_at(ramp_deadline, fut).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) | Err(_) => {
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
                let _ = ready_tx.send(());
                // Keep the runtime (and so every connection) alive until told to stop.
                let _ = stop_rx.wait_for(|stop| *stop).await;
            });
            Ok(())
        })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..threads {
        let left = (ramp_start + args.ramp_timeout + Duration::from_secs(1))
            .saturating_duration_since(std::time::Instant::now());
        if ready_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let ramp_secs = ramp_start.elapsed().as_secs_f64();
    let established = counters.established.load(Ordering::Relaxed);
    eprintln!(
        "hold: established {established}/{n} {what} in {ramp_secs:.1}s; holding for {:.1}s",
        args.duration.as_secs_f64(),
        what = if args.sse { "streams" } else { "connections" },
    );
    let events_before = counters.events.load(Ordering::Relaxed);
    std::thread::sleep(args.duration);
    let open_conns = counters.open_conns.load(Ordering::Relaxed);
    let open = if args.sse { counters.open_streams.load(Ordering::Relaxed) } else { open_conns };
    let events = counters.events.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for h in handles {
        match h.join() {
            Ok(r) => r?,
            Err(_) => bail!("hold thread panicked"),
        }
    }
    let hold_secs = args.duration.as_secs_f64();
    let events_per_s = (events - events_before) as f64 / hold_secs;
    let mode = if args.sse { "hold-sse" } else { "hold" };
    println!(
        "{mode} {proto} {url}: {established}/{n} established in {ramp_secs:.1}s over {conns} \
         connections, {open} open after {hold_secs:.1}s, {events} events ({events_per_s:.0}/s \
         while held), {errors} errors",
        proto = target.proto(),
        url = args.url,
    );
    if args.json {
        let obj = json!({
            "mode": mode,
            "proto": target.proto(),
            "url": args.url,
            "requested": n,
            "connections": conns,
            "streams_per_connection": per_conn,
            "established": established,
            "open": open,
            "open_connections": open_conns,
            "events": events,
            "events_per_s": events_per_s.round(),
            "errors": errors,
            "ramp_s": (ramp_secs * 100.0).round() / 100.0,
            "hold_s": hold_secs,
        });
        println!("{obj}");
    }
    let _ = std::io::stdout().flush();
    if established == 0 {
        bail!("nothing could be established");
    }
    Ok(())
}

/// Establishes one connection and its `streams` requests, then returns, leaving tasks
/// that keep them open (and count events) until `stop`.
async fn hold_one(
    target: Arc<Target>,
    counters: Arc<HoldCounters>,
    streams: usize,
    sse: bool,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut sender = connect(&target, Some(counters.open_conns.clone())).await?;
    if !sse {
        sender.ready().await?;
        let res = sender.send(target.request()).await?;
        let status = res.status();
        drain(res.into_body()).await?;
        if !status.is_success() {
            bail!("status {status}");
        }
        counters.established.fetch_add(1, Ordering::Relaxed);
        // The idle connection stays open as long as its handle lives.
        let mut stop = stop;
        tokio::task::spawn_local(async move {
            let _ = stop.wait_for(|s| *s).await;
            drop(sender);
        });
        return Ok(());
    }
    let mut firsts = Vec::with_capacity(streams);
    for _ in 1..streams {
        if let Some(s) = sender.try_clone() {
            firsts.push(s);
        }
    }
    firsts.push(sender);
    let mut result = Ok(());
    for mut s in firsts {
        s.ready().await?;
        let res = s.send(target.request()).await?;
        if !res.status().is_success() {
            result = Err(anyhow::anyhow!("status {}", res.status()));
            continue;
        }
        counters.established.fetch_add(1, Ordering::Relaxed);
        counters.open_streams.fetch_add(1, Ordering::Relaxed);
        let counters = counters.clone();
        let mut stop = stop.clone();
        tokio::task::spawn_local(async move {
            let _keep = s;
            let mut body = res.into_body();
            let mut events = EventCounter::default();
            let ended_early = loop {
                tokio::select! {
                    frame = body.frame() => match frame {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                let n = events.feed(data);
                                counters.events.fetch_add(n, Ordering::Relaxed);
                            }
                        }
                        Some(Err(_)) | None => break true,
                    },
                    _ = stop.wait_for(|s| *s) => break false,
                }
            };
            counters.open_streams.fetch_sub(1, Ordering::Relaxed);
            if ended_early {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    result
}

/// Counts server-sent events (blank-line terminated) across arbitrary chunk boundaries.
#[derive(Default)]
struct EventCounter {
    after_newline: bool,
}

impl EventCounter {
    fn feed(&mut self, data: &[u8]) -> u64 {
        let mut n = 0;
        for &b in data {
            match b {
                b'\n' if self.after_newline => {
                    n += 1;
                    self.after_newline = false;
                }
                b'\n' => self.after_newline = true,
                b'\r' => {}
                _ => self.after_newline = false,
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_events_across_chunks() {
        let mut c = EventCounter::default();
        assert_eq!(c.feed(b"data: tick 1\n\ndata: tick 2\n"), 1);
        assert_eq!(c.feed(b"\n"), 1);
        assert_eq!(c.feed(b"data: x\r\n\r\n"), 1);
    }

    #[test]
    fn target_forms() -> anyhow::Result<()> {
        let t = Target::parse("http://127.0.0.1:18081/sse?interval_ms=5", false)?;
        assert_eq!(t.uri.to_string(), "/sse?interval_ms=5");
        assert_eq!(t.host, "127.0.0.1:18081");
        let t = Target::parse("http://127.0.0.1:18081", true)?;
        assert_eq!(t.uri.to_string(), "http://127.0.0.1:18081/");
        assert!(Target::parse("https://x/", false).is_err());
        Ok(())
    }
}

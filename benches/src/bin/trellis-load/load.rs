//! Closed and open loop: lanes of requests per connection (or h2 stream slot), open-loop
//! pacing from intended send times, and the report.

use super::*;

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

pub(crate) fn run_load(args: &Args, target: Arc<Target>) -> anyhow::Result<()> {
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

//! Hold mode: N idle keep-alive connections, N connections that have sent nothing, or N
//! open SSE streams, held to measure a proxy's memory per connection or stream.

use super::*;

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

pub(crate) fn run_hold(args: &Args, target: Arc<Target>, n: usize) -> anyhow::Result<()> {
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
        let silent = args.silent;
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
                        let fut = async {
                            if silent {
                                hold_silent(&target, &counters, stop).await
                            } else {
                                hold_one(target.clone(), counters.clone(), streams, sse, stop).await
                            }
                        };
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

/// Opens one connection that sends nothing, and leaves a task holding it until `stop`.
async fn hold_silent(target: &Target, counters: &Arc<HoldCounters>, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(target.addr).await?;
    counters.established.fetch_add(1, Ordering::Relaxed);
    counters.open_conns.fetch_add(1, Ordering::Relaxed);
    let (counters, mut stop) = (counters.clone(), stop);
    tokio::task::spawn_local(async move {
        // Open until told to stop, or until the server closes it (noticed, not waited for).
        let mut byte = [0u8; 1];
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = tokio::io::AsyncReadExt::read(&mut stream, &mut byte) => {}
        }
        counters.open_conns.fetch_sub(1, Ordering::Relaxed);
    });
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
}

//! Simulated users calling the planner in a loop, and the live one-line summary.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counters shared by the users and the reporter.
#[derive(Clone)]
pub struct Stats {
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    latency: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            ok: Arc::default(),
            errors: Arc::default(),
            latency: Arc::new(Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid"),
            )),
            started: Instant::now(),
        }
    }
}

impl Stats {
    fn record(&self, ok: bool, took: Duration) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record(took.as_micros().max(1) as u64);
        }
    }

    /// Totals since the start.
    pub fn summary_total(&self) -> String {
        let ok = self.ok.load(Ordering::Relaxed);
        let errors = self.errors.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        format!(
            "total: {ok} plans ok, {errors} errors in {secs:.0}s ({:.0} plans/s, each = 2 mesh calls)",
            ok as f64 / secs
        )
    }
}

/// `users` loops, each calling the planner's `/plan` back to back (with a short pause).
pub async fn drive(planner: SocketAddr, users: usize, stats: Stats) {
    let mut tasks = Vec::new();
    for _ in 0..users.max(1) {
        let stats = stats.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let t = Instant::now();
                let ok = call(planner).await;
                stats.record(ok, t.elapsed());
                tokio::time::sleep(Duration::from_millis(if ok { 20 } else { 200 })).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn call(planner: SocketAddr) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(planner).await else { return false };
    let Ok((mut tx, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else { return false };
    tokio::spawn(conn);
    let Ok(req) = http::Request::get("/plan").header("host", "planner").body(Empty::<Bytes>::new()) else {
        return false;
    };
    match tx.send_request(req).await {
        Ok(r) if r.status().is_success() => r.into_body().collect().await.is_ok(),
        _ => false,
    }
}

/// Prints a one-line summary every second (over the last second) until cancelled.
pub async fn report(stats: Stats) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut last_ok, mut last_err) = (0, 0);
    loop {
        tick.tick().await;
        let ok = stats.ok.load(Ordering::Relaxed);
        let errors = stats.errors.load(Ordering::Relaxed);
        let p99 = stats
            .latency
            .lock()
            .map(|mut h| {
                let v = h.value_at_quantile(0.99);
                h.reset();
                v
            })
            .unwrap_or(0);
        print!(
            "\r  plans/s {:>5} | mesh calls/s {:>5} | p99 {:>7.1} ms | errors {:>4} (total {})   ",
            ok - last_ok,
            2 * (ok - last_ok),
            p99 as f64 / 1000.0,
            errors - last_err,
            errors
        );
        let _ = std::io::stdout().flush();
        (last_ok, last_err) = (ok, errors);
    }
}

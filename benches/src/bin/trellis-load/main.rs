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
//!   they arrive; with `--h2`, `-m` streams share a connection); with `--silent`, N
//!   connections that send nothing at all. Held for `-d` after all are established;
//!   used to measure a proxy's memory per connection/stream.
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
//! trellis-load --url http://127.0.0.1:18080/ --hold 5000 --silent -d 5s
//! ```

mod hold;
mod load;

use hold::run_hold;
use load::run_load;

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
    /// Hold mode: connections that send nothing (not even a request), instead of idle
    /// keep-alive connections.
    #[arg(long, requires = "hold", conflicts_with = "sse")]
    silent: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! `trellis-origin`: a tiny, fast HTTP origin server for benchmarks.
//!
//! One OS thread per `--threads`, each with its own current-thread tokio runtime and its
//! own `SO_REUSEPORT` listening socket on the same address (the kernel spreads
//! connections over them). Each connection is served as HTTP/1.1 or as h2c with prior
//! knowledge, chosen by peeking for the HTTP/2 connection preface, so one port serves
//! both protocols.
//!
//! Routes:
//! - `/sse?interval_ms=N` — an endless `text/event-stream` sending `data: tick K\n\n`
//!   every N ms (default 1000; the first event is sent at once);
//! - `/slow?ms=N` — waits N ms (default 100), then answers like any other path;
//! - any other path — `200` with the 2-byte body `ok` (`content-length: 2`).
//!
//! Prints `listening on ADDR` on stdout once every socket is bound.
//!
//! ```text
//! trellis-origin --listen 127.0.0.1:18081 --threads 1
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest `/slow` or SSE interval accepted, so a typo cannot park a task for days.
const MAX_WAIT_MS: u64 = 3_600_000;

#[derive(Parser, Debug)]
#[command(name = "trellis-origin", about = "Fast HTTP/1.1 + h2c benchmark origin")]
struct Args {
    /// Address to listen on (port 0 picks a free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: SocketAddr,
    /// Worker threads, each with a current-thread runtime and its own SO_REUSEPORT socket.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// listen(2) backlog per socket.
    #[arg(long, default_value_t = 4096)]
    backlog: i32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised on h2 connections.
    #[arg(long, default_value_t = 100_000)]
    h2_max_streams: u32,
    /// Adds `x-origin: NAME` to every response (examples use it to show where a request went).
    #[arg(long)]
    name: Option<String>,
}

/// `--name`, as a header value, set once at start.
static ORIGIN_NAME: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-origin: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    trellis_bench::raise_nofile_limit();
    let threads = args.threads.max(1);
    if let Some(name) = &args.name {
        let _ = ORIGIN_NAME.set(HeaderValue::try_from(name.as_str()).context("--name is not a valid header value")?);
    }

    // Bind every socket before announcing the address, so a script that waits for the
    // line can connect at once. With port 0 the first socket picks the port and the
    // others join it.
    let first = bind(args.listen, args.backlog)?;
    let addr = first.local_addr().context("local_addr")?;
    let mut sockets = vec![first];
    for _ in 1..threads {
        sockets.push(bind(addr, args.backlog)?);
    }
    println!("listening on {addr}");

    let mut handles = Vec::with_capacity(threads);
    for (i, socket) in sockets.into_iter().enumerate() {
        let max_streams = args.h2_max_streams;
        let handle = std::thread::Builder::new()
            .name(format!("origin-{i}"))
            .spawn(move || -> anyhow::Result<()> {
                let rt =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().context("building runtime")?;
                rt.block_on(accept_loop(socket, max_streams))
            })
            .context("spawning worker thread")?;
        handles.push(handle);
    }
    for handle in handles {
        match handle.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("worker thread panicked"),
        }
    }
    Ok(())
}

/// Creates a non-blocking `SO_REUSEADDR` + `SO_REUSEPORT` listening socket.
fn bind(addr: SocketAddr, backlog: i32) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

async fn accept_loop(socket: std::net::TcpListener, max_streams: u32) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(socket)?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Best effort: a failure here only costs latency.
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, max_streams));
            }
            Err(e) => {
                // EMFILE/ENFILE or a connection reset before accept: back off briefly
                // instead of spinning, and keep serving.
                eprintln!("accept error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one connection as HTTP/1.1 or h2c (prior knowledge), by its first bytes.
async fn serve(stream: TcpStream, max_streams: u32) {
    let h2 = match sniff_h2(&stream).await {
        Ok(h2) => h2,
        Err(_) => return,
    };
    let io = TokioIo::new(stream);
    let service = service_fn(handle);
    // Connection errors (peer resets, aborted streams) are normal under load tests and
    // are not worth a line each.
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(max_streams)
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, service).await;
    }
}

/// Peeks at the first bytes: `true` if they are the HTTP/2 preface. Only a partial
/// preface (rare: the client split its first write) makes this wait for more bytes.
async fn sniff_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        // `peek` returns at once while any byte is buffered: poll gently for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The whole routing table.
async fn handle(req: Request<Incoming>) -> Result<Response<OriginBody>, Infallible> {
    let path = req.uri().path();
    if path == "/sse" {
        let interval_ms = query_u64(req.uri().query(), "interval_ms").unwrap_or(1000).clamp(1, MAX_WAIT_MS);
        let mut interval = tokio::time::interval(Duration::from_millis(interval_ms));
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut res = Response::new(OriginBody::Sse { interval, tick: 0 });
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(res);
    }
    if path == "/slow" {
        let ms = query_u64(req.uri().query(), "ms").unwrap_or(100).min(MAX_WAIT_MS);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // Read and drop any request body so HTTP/1.1 keep-alive can continue.
    if !req.body().is_end_stream() {
        let mut body = req.into_body();
        while let Some(Ok(_)) = body.frame().await {}
    }
    // hyper writes `content-length: 2` from the body's exact size hint (h1 and h2).
    let mut res = Response::new(OriginBody::Full(Some(Bytes::from_static(b"ok"))));
    if let Some(name) = ORIGIN_NAME.get() {
        res.headers_mut().insert("x-origin", name.clone());
    }
    Ok(res)
}

/// Finds `key=<u64>` in a query string; malformed values count as absent.
fn query_u64(query: Option<&str>, key: &str) -> Option<u64> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k == key { v.parse().ok() } else { None }
    })
}

/// Response body: a fixed buffer, or an endless server-sent-events ticker.
enum OriginBody {
    Full(Option<Bytes>),
    Sse { interval: Interval, tick: u64 },
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            OriginBody::Full(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
            OriginBody::Sse { interval, tick } => {
                ready!(interval.poll_tick(cx));
                *tick += 1;
                let event = format!("data: tick {tick}\n\n");
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, OriginBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OriginBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            OriginBody::Full(None) => SizeHint::with_exact(0),
            OriginBody::Sse { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::query_u64;

    #[test]
    fn query_parsing() {
        assert_eq!(query_u64(Some("interval_ms=250"), "interval_ms"), Some(250));
        assert_eq!(query_u64(Some("a=1&ms=30"), "ms"), Some(30));
        assert_eq!(query_u64(Some("ms=x"), "ms"), None);
        assert_eq!(query_u64(None, "ms"), None);
    }
}

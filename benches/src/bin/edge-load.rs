//! `edge-load`: a closed-loop load driver for a TLS edge listener, over HTTP/3 (quinn + h3)
//! or HTTP/2 over TLS (hyper + tokio-rustls), so both protocols are measured by the same
//! driver against the same listener. (Debian's h2load is built without QUIC support: it
//! falls back to TCP when asked for h3.)
//!
//! `-c` connections each keep `-m` requests in flight back to back (GET, body read to the
//! end); after `--warmup`, latencies are recorded for `-d` in an HdrHistogram (µs). With
//! `--hold N`, opens N HTTP/3 connections, sends one GET on each and keeps them idle for
//! `-d` (memory per connection).
//!
//! ```text
//! edge-load --addr 127.0.0.1:18443 --sni edge.test --ca pki/ca.pem --proto h3 -c 8 -m 8 -d 8s --json
//! edge-load --addr 127.0.0.1:18443 --sni edge.test --ca pki/ca.pem --proto h2 -c 8 -m 8 -d 8s --json
//! edge-load --addr 127.0.0.1:18443 --sni edge.test --ca pki/ca.pem --hold 1000 -d 20s
//! ```

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Buf, Bytes};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::time::Instant;
use trellis_bench::parse_duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proto {
    H3,
    H2,
}

#[derive(Parser, Debug)]
#[command(about = "Closed-loop HTTP/3 or TLS HTTP/2 load against a Trellis edge listener")]
struct Args {
    /// The listener (UDP for h3, TCP for h2: the same port).
    #[arg(long)]
    addr: SocketAddr,
    /// Server name (SNI and :authority).
    #[arg(long, default_value = "edge.test")]
    sni: String,
    /// Trust bundle (PEM) the server's certificate must chain to.
    #[arg(long)]
    ca: String,
    #[arg(long, value_enum, default_value_t = Proto::H3)]
    proto: Proto,
    /// Path requested.
    #[arg(long, default_value = "/")]
    path: String,
    /// Connections.
    #[arg(short = 'c', long, default_value_t = 8)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(short = 'm', long, default_value_t = 8)]
    streams: usize,
    /// Measured duration.
    #[arg(short = 'd', long, default_value = "8s", value_parser = parse_duration)]
    duration: Duration,
    /// Requests sent but not recorded before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Hold mode: N idle HTTP/3 connections (one GET each) for `-d`.
    #[arg(long)]
    hold: Option<usize>,
    /// Also print the result as one JSON object line.
    #[arg(long)]
    json: bool,
}

/// What the request loops record.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    last_error: Option<String>,
}

type Shared = Rc<RefCell<Tally>>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    trellis_bench::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(args))
}

fn tls_config(ca: &str, alpn: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).with_context(|| format!("reading {ca}"))?;
    for cert in rustls_pemfile_certs(&pem)? {
        roots.add(cert)?;
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(c))
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(pem: &[u8]) -> anyhow::Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().context("parsing the CA bundle")
}

async fn run(args: Args) -> anyhow::Result<()> {
    let uri: Uri = format!("https://{}{}", args.sni, args.path).parse()?;
    if let Some(n) = args.hold {
        return hold(&args, &uri, n).await;
    }
    let tally: Shared = Rc::new(RefCell::new(Tally {
        hist: Histogram::new_with_bounds(1, 100_000_000, 3)?,
        ok: 0,
        errors: 0,
        last_error: None,
    }));
    let start = Instant::now();
    let record_from = start + args.warmup;
    let stop = record_from + args.duration;
    let mut tasks = Vec::new();
    let endpoint = quic_endpoint(&args)?;
    for _ in 0..args.connections {
        match args.proto {
            Proto::H3 => {
                let send = h3_connect(&endpoint, &args).await?;
                for _ in 0..args.streams {
                    let (send, uri, tally) = (send.clone(), uri.clone(), tally.clone());
                    tasks.push(tokio::task::spawn_local(h3_loop(send, uri, tally, record_from, stop)));
                }
            }
            Proto::H2 => {
                let send = h2_connect(&args).await?;
                for _ in 0..args.streams {
                    let (send, uri, tally) = (send.clone(), uri.clone(), tally.clone());
                    tasks.push(tokio::task::spawn_local(h2_loop(send, uri, tally, record_from, stop)));
                }
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let t = tally.borrow();
    let secs = args.duration.as_secs_f64();
    let rps = t.ok as f64 / secs;
    let q = |p: f64| t.hist.value_at_quantile(p);
    let proto = match args.proto {
        Proto::H3 => "h3",
        Proto::H2 => "h2-tls",
    };
    println!(
        "{proto}: {} conns x {} streams: {rps:.0} req/s, p50 {} us, p99 {} us, p99.9 {} us, errors {}",
        args.connections,
        args.streams,
        q(0.5),
        q(0.99),
        q(0.999),
        t.errors
    );
    if let Some(e) = &t.last_error {
        eprintln!("last error: {e}");
    }
    if args.json {
        let j = json!({
            "mode": "closed", "proto": proto, "connections": args.connections, "streams": args.streams,
            "requests": t.ok, "rps": rps, "errors": t.errors,
            "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": t.hist.max(),
        });
        println!("{j}");
    }
    Ok(())
}

fn record(tally: &Shared, began: Instant, record_from: Instant, result: anyhow::Result<()>) {
    let mut t = tally.borrow_mut();
    if began < record_from {
        return;
    }
    match result {
        Ok(()) => {
            t.ok += 1;
            let _ = t.hist.record(began.elapsed().as_micros() as u64);
        }
        Err(e) => {
            t.errors += 1;
            t.last_error = Some(format!("{e:#}"));
        }
    }
}

fn quic_endpoint(args: &Args) -> anyhow::Result<quinn::Endpoint> {
    let tls = tls_config(&args.ca, b"h3")?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let bind: SocketAddr = if args.addr.is_ipv6() { "[::1]:0".parse()? } else { "127.0.0.1:0".parse()? };
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}

type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

async fn h3_connect(endpoint: &quinn::Endpoint, args: &Args) -> anyhow::Result<H3Send> {
    let conn = endpoint.connect(args.addr, &args.sni)?.await.context("QUIC handshake")?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
    tokio::task::spawn_local(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(send)
}

async fn h3_get(send: &mut H3Send, uri: &Uri) -> anyhow::Result<()> {
    let req = Request::get(uri.clone()).body(())?;
    let mut stream = send.send_request(req).await?;
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    while let Some(mut chunk) = stream.recv_data().await? {
        chunk.advance(chunk.remaining());
    }
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    Ok(())
}

async fn h3_loop(mut send: H3Send, uri: Uri, tally: Shared, record_from: Instant, stop: Instant) {
    while Instant::now() < stop {
        let began = Instant::now();
        let result = h3_get(&mut send, &uri).await;
        let failed = result.is_err();
        record(&tally, began, record_from, result);
        if failed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

type H2Send = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2_connect(args: &Args) -> anyhow::Result<H2Send> {
    let tcp = tokio::net::TcpStream::connect(args.addr).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(tls_config(&args.ca, b"h2")?);
    let name = rustls_pki_types::ServerName::try_from(args.sni.clone())?;
    let tls = connector.connect(name, tcp).await.context("TLS handshake")?;
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::task::spawn_local(conn);
    Ok(send)
}

async fn h2_loop(mut send: H2Send, uri: Uri, tally: Shared, record_from: Instant, stop: Instant) {
    while Instant::now() < stop {
        let began = Instant::now();
        let result = async {
            send.ready().await?;
            let resp = send.send_request(Request::get(uri.clone()).body(Empty::new())?).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            if !status.is_success() {
                bail!("status {status}");
            }
            Ok(())
        }
        .await;
        let failed = result.is_err();
        record(&tally, began, record_from, result);
        if failed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Opens `n` HTTP/3 connections (64 handshakes at a time), one GET on each, then holds them
/// idle for the duration.
async fn hold(args: &Args, uri: &Uri, n: usize) -> anyhow::Result<()> {
    let endpoint = quic_endpoint(args)?;
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    let began = Instant::now();
    for batch in (0..n).collect::<Vec<_>>().chunks(64) {
        let opened = futures_util::future::join_all(batch.iter().map(|_| async {
            let mut send = h3_connect(&endpoint, args).await?;
            h3_get(&mut send, uri).await?;
            anyhow::Ok(send)
        }))
        .await;
        for c in opened {
            match c {
                Ok(s) => held.push(s),
                Err(e) => {
                    failed += 1;
                    eprintln!("connection failed: {e:#}");
                }
            }
        }
    }
    eprintln!("hold: established {}/{n} in {:.1}s", held.len(), began.elapsed().as_secs_f64());
    tokio::time::sleep(args.duration).await;
    println!("hold: requested {n}, established {}, failed {failed}", held.len());
    drop(held);
    endpoint.close(0u32.into(), b"");
    endpoint.wait_idle().await;
    Ok(())
}

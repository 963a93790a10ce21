//! `tls-handshakes`: how many new mTLS handshakes a mesh listener completes per second.
//!
//! Keeps `--concurrency` connections in flight, each a TCP connect plus a full TLS 1.3
//! handshake (session resumption off) presenting a client identity and verifying the
//! server's SPIFFE ID with the proxy's own mesh client config, then a close. Reports
//! handshakes per second, failures and the handshake-time percentiles.
//!
//! ```text
//! tls-handshakes --addr 127.0.0.1:4143 --cert pki/frontend.pem --key pki/frontend.key \
//!     --bundle pki/ca.pem --server-id spiffe://trellis.local/ns/default/sa/checkout -d 10s
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "Measures new mTLS handshakes per second against a Trellis mesh listener")]
struct Args {
    /// The mesh listener.
    #[arg(long)]
    addr: SocketAddr,
    /// Client certificate chain (PEM) with a SPIFFE ID.
    #[arg(long)]
    cert: String,
    /// Its private key (PEM).
    #[arg(long)]
    key: String,
    /// Trust bundle (PEM) the server's certificate must chain to.
    #[arg(long)]
    bundle: String,
    /// The SPIFFE ID the server must present.
    #[arg(long)]
    server_id: String,
    /// Handshakes in flight at once.
    #[arg(short, long, default_value_t = 32)]
    concurrency: usize,
    /// How long to run, e.g. `10s`.
    #[arg(short, long, default_value = "10s", value_parser = parse_secs)]
    duration: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let n = s.strip_suffix('s').unwrap_or(s);
    n.parse::<f64>().map(Duration::from_secs_f64).map_err(|e| format!("bad duration {s:?}: {e}"))
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    last_error: Option<String>,
    micros: Option<Histogram<u64>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let identity = trellis_api::Identity {
        cert: args.cert.clone(),
        key: args.key.clone(),
        trust_bundle: args.bundle.clone(),
        issuer: None,
    };
    let mesh = trellis_proxy::tls::mesh::load(&identity).context("loading the client identity")?;
    let config = trellis_proxy::tls::mesh::client_config(&mesh, &args.server_id, b"h2")
        .context("building the mesh client config")?;
    let mut config = (*config).clone();
    // Every connection must pay for a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = Instant::now();
    let tallies = rt.block_on(async {
        let until = tokio::time::Instant::now() + args.duration;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.concurrency.max(1) {
            let connector = connector.clone();
            let addr = args.addr;
            tasks.spawn(async move {
                let mut t = Tally { micros: Histogram::new_with_bounds(1, 60_000_000, 3).ok(), ..Tally::default() };
                while tokio::time::Instant::now() < until {
                    let began = Instant::now();
                    match handshake(&connector, addr).await {
                        Ok(()) => {
                            t.ok += 1;
                            if let Some(h) = t.micros.as_mut() {
                                let _ = h.record(began.elapsed().as_micros() as u64);
                            }
                        }
                        Err(e) => {
                            t.failed += 1;
                            t.last_error = Some(format!("{e:#}"));
                        }
                    }
                }
                t
            });
        }
        tasks.join_all().await
    });
    let secs = started.elapsed().as_secs_f64();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut failed, mut last_error) = (0, 0, None);
    for t in tallies {
        ok += t.ok;
        failed += t.failed;
        last_error = last_error.or(t.last_error);
        if let Some(h) = t.micros {
            all.add(h)?;
        }
    }
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "handshakes {ok} in {secs:.1}s = {:.0}/s, failed {failed}; handshake p50 {:.2} ms, p99 {:.2} ms",
        ok as f64 / secs,
        ms(0.5),
        ms(0.99)
    );
    if let Some(e) = last_error {
        println!("last error: {e}");
    }
    Ok(())
}

/// One TCP connection, one full mTLS handshake, a clean close.
async fn handshake(connector: &tokio_rustls::TlsConnector, addr: SocketAddr) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    let _ = tcp.set_nodelay(true);
    // The mesh verifier checks the SPIFFE ID, not this name.
    let name = ServerName::from(addr.ip());
    let mut tls = connector.connect(name, tcp).await.context("handshake")?;
    let _ = tls.shutdown().await;
    Ok(())
}

//! `tcp-echo`: an opaque-TCP benchmark peer. `--listen ADDR` echoes every connection's
//! bytes back; `--connect ADDR` runs `-c` connections that each, in a loop for `-d`,
//! write a `--size` message and read it back whole, then prints one line (and with
//! `--json` one JSON object): round trips per second, MB/s each way, and the p50/p99 of
//! one round trip.
//!
//! ```text
//! tcp-echo --listen 0.0.0.0:7000
//! tcp-echo --connect 10.250.0.3:7000 -c 4 --size 1048576 -d 6s --json
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(name = "tcp-echo", about = "Opaque TCP echo server and round-trip load")]
struct Args {
    /// Echo server: listen here.
    #[arg(long, conflicts_with = "connect")]
    listen: Option<SocketAddr>,
    /// Client: connect here.
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Client connections.
    #[arg(short, default_value_t = 1)]
    c: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 1 << 20)]
    size: usize,
    /// How long the client runs (`6s`, `500ms`).
    #[arg(short, long, default_value = "6s", value_parser = duration)]
    d: Duration,
    /// Print a JSON line too.
    #[arg(long)]
    json: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| format!("not a duration: {s}"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("not a duration: {s} (use s or ms)")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match (args.listen, args.connect) {
        (Some(addr), _) => rt.block_on(serve(addr)),
        (None, Some(addr)) => rt.block_on(load(addr, &args)),
        (None, None) => anyhow::bail!("give --listen or --connect"),
    }
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
    println!("listening on {}", l.local_addr()?);
    loop {
        let (mut s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

async fn load(addr: SocketAddr, args: &Args) -> anyhow::Result<()> {
    let until = Instant::now() + args.d;
    let mut tasks = Vec::with_capacity(args.c);
    for _ in 0..args.c {
        let size = args.size;
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
            s.set_nodelay(true)?;
            let msg = vec![0x5a_u8; size];
            let mut back = vec![0u8; size];
            let mut trips = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let (mut r, mut w) = s.split();
                // Write and read at once: a message larger than the socket buffers would
                // otherwise block both ends.
                let (wrote, read) = tokio::join!(w.write_all(&msg), r.read_exact(&mut back));
                wrote?;
                read?;
                trips.push(t.elapsed());
            }
            anyhow::Ok(trips)
        }));
    }
    let started = Instant::now();
    let mut trips = Vec::new();
    for t in tasks {
        trips.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64().max(args.d.as_secs_f64());
    trips.sort();
    let q = |p: f64| trips.get(((trips.len() as f64 * p) as usize).min(trips.len().saturating_sub(1))).copied();
    let (p50, p99) = (q(0.5).unwrap_or_default(), q(0.99).unwrap_or_default());
    let rps = trips.len() as f64 / secs;
    let mbps = rps * args.size as f64 / 1e6;
    println!(
        "{} round trips of {} bytes on {} connections in {secs:.1}s: {rps:.1}/s, {mbps:.1} MB/s each way, p50 {:.2} ms, p99 {:.2} ms",
        trips.len(),
        args.size,
        args.c,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "trips": trips.len(), "size": args.size, "connections": args.c, "rps": rps, "mb_per_s": mbps,
                "p50_us": p50.as_micros() as u64, "p99_us": p99.as_micros() as u64,
            })
        );
    }
    Ok(())
}

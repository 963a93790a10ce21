//! Control-plane scale benchmark: an in-process fleet of simulated proxies, each holding a
//! real discovery stream (tonic) to a running `trellis control-plane`, ACKing every push.
//! Measures the time from a REST write to every proxy's ACK of it, the control plane's RSS
//! and CPU while holding the fleet; then, with a 10,000-endpoint cluster in every proxy's
//! view, the bytes each proxy receives (protobuf-encoded response size) and the time to
//! the last ACK when one endpoint changes, and the control plane's RSS around it.
//!
//! Several replicas (`--api`, `--xds`, `--cp-pid` as comma-separated lists, e.g. three
//! `trellis control-plane --store etcd://…` on one etcd): the fleet is spread over their
//! discovery ports, writes go to each REST API in turn, and every proxy must ACK each write
//! whichever replica took it. `--write-rate N` then measures the writes per second the
//! replicas sustain into their store (N writes of clusters outside the fleet's view, from
//! `--write-concurrency` clients spread over the replicas).

use anyhow::{Context, bail};
use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};
use trellis_api::discovery::{DiscoveryRequest, Node, ResourceType, discovery_client::DiscoveryClient};
use trellis_control_plane::{Kind, client::Client};

#[derive(Parser, Debug)]
#[command(name = "cp-fleet", about = "Discovery fan-out benchmark against a running control plane")]
struct Args {
    /// Control plane REST API (several: one per replica, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:7070")]
    api: Vec<String>,
    /// Control plane discovery address (several: the fleet is spread over them).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:7071")]
    xds: Vec<String>,
    /// PID of the control plane (several: one per replica), for RSS and CPU.
    #[arg(long, value_delimiter = ',')]
    cp_pid: Vec<u32>,
    /// Simulated proxies (streams).
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// REST writes to time, one after the other.
    #[arg(long, default_value_t = 20)]
    writes: usize,
    /// Endpoints in the big cluster.
    #[arg(long, default_value_t = 10_000)]
    endpoints: usize,
    /// Writes for the store write-rate measurement (0: skip it).
    #[arg(long, default_value_t = 0)]
    write_rate: usize,
    /// Concurrent writers for `--write-rate`.
    #[arg(long, default_value_t = 8)]
    write_concurrency: usize,
}

/// RSS of every replica, in KB.
fn rss_all(pids: &[u32]) -> Vec<u64> {
    pids.iter().map(|p| rss_kb(*p)).collect()
}

fn cpu_all(pids: &[u32]) -> u64 {
    pids.iter().map(|p| cpu_ticks(*p)).sum()
}

/// What the fleet saw: per proxy, the highest system_version received, and the size of
/// the last response.
struct Fleet {
    acked: Vec<AtomicU64>,
    bytes: Vec<AtomicU64>,
    /// (system_version, when) of every response, for latency.
    seen: Mutex<Vec<(u64, Instant)>>,
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// Peak RSS since the process started.
fn hwm_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

async fn stream(xds: String, i: usize, fleet: Arc<Fleet>) -> anyhow::Result<()> {
    let mut client = DiscoveryClient::connect(xds).await?.max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    let node = Node { id: format!("fleet-{i}"), service: "fleet".into(), ..Default::default() };
    tx.send(DiscoveryRequest { node: Some(node.clone()), ..Default::default() }).await?;
    let reqs = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut resp = client.stream(reqs).await?.into_inner();
    let mut bytes = 0;
    while let Some(r) = resp.message().await? {
        // A large response comes in parts (`more`); it counts, and is answered, as one.
        bytes += prost::Message::encoded_len(&r) as u64;
        if r.more {
            continue;
        }
        let now = Instant::now();
        let v: u64 = r.system_version.parse().unwrap_or(0);
        fleet.bytes[i].store(std::mem::take(&mut bytes), Ordering::Relaxed);
        fleet.seen.lock().await.push((v, now));
        tx.send(DiscoveryRequest {
            node: Some(node.clone()),
            r#type: ResourceType::Unspecified as i32,
            response_nonce: r.nonce,
            ..Default::default()
        })
        .await?;
        fleet.acked[i].fetch_max(v, Ordering::Relaxed);
    }
    Ok(())
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted.get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let apis =
        args.api.iter().map(|a| Client::new(a, None).context("api client")).collect::<anyhow::Result<Vec<_>>>()?;
    let api = &apis[0];
    let pids = &args.cp_pid;
    let put = |kind: Kind, name: &'static str, v: serde_json::Value| async move {
        api.put(kind, name, &v).await.with_context(|| format!("PUT {name}"))
    };
    put(Kind::Cluster, "fleet-origin", serde_json::json!({ "endpoints": [{ "address": "127.0.0.1:9" }] })).await?;
    put(Kind::Route, "fleet", serde_json::json!({ "backends": [{ "cluster": "fleet-origin" }] })).await?;
    put(
        Kind::Listener,
        "fleet",
        serde_json::json!({ "service": "fleet", "address": "127.0.0.1:1", "routes": ["fleet"] }),
    )
    .await?;

    let fleet = Arc::new(Fleet {
        acked: (0..args.proxies).map(|_| AtomicU64::new(0)).collect(),
        bytes: (0..args.proxies).map(|_| AtomicU64::new(0)).collect(),
        seen: Mutex::new(Vec::new()),
    });
    let rss_before = rss_all(pids);
    for i in 0..args.proxies {
        let (xds, fleet) = (args.xds[i % args.xds.len()].clone(), fleet.clone());
        tokio::spawn(async move {
            if let Err(e) = stream(xds, i, fleet).await {
                eprintln!("proxy {i}: {e}");
            }
        });
    }
    let wait_all = |want: u64, limit: Duration| {
        let fleet = fleet.clone();
        async move {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if fleet.acked.iter().all(|a| a.load(Ordering::Relaxed) >= want) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            false
        }
    };
    let base = api.get_json("/v1/routes").await?["revision"].as_u64().unwrap_or(0);
    if !wait_all(base, Duration::from_secs(60)).await {
        bail!("the fleet did not connect and ACK within 60 s");
    }
    println!(
        "fleet: {} streams over {} replica(s) connected and synced (control plane RSS {:?} KB → {:?} KB)",
        args.proxies,
        args.xds.len(),
        rss_before,
        rss_all(pids)
    );

    // Writes: time from the REST answer to each proxy's receipt, and to the last ACK. Each
    // write goes to the next replica's REST API.
    let mut to_each = Vec::new();
    let mut to_last = Vec::new();
    let cpu0 = cpu_all(pids);
    let t_all = Instant::now();
    for w in 0..args.writes {
        let api = &apis[w % apis.len()];
        fleet.seen.lock().await.clear();
        let body = serde_json::json!({ "backends": [{ "cluster": "fleet-origin" }], "headers": { "add": { "x-gen": w.to_string() } } });
        api.put(Kind::Route, "fleet", &body).await?;
        let answered = Instant::now();
        let rev = api.get_json("/v1/routes").await?["revision"].as_u64().unwrap_or(0);
        if !wait_all(rev, Duration::from_secs(30)).await {
            bail!("write {w}: not every proxy ACKed revision {rev} within 30 s");
        }
        to_last.push(answered.elapsed());
        for (v, at) in fleet.seen.lock().await.iter() {
            if *v >= rev {
                to_each.push(at.saturating_duration_since(answered));
            }
        }
    }
    let held = t_all.elapsed();
    let cpu = (cpu_all(pids) - cpu0) as f64 / 100.0 / held.as_secs_f64() * 100.0;
    to_each.sort();
    to_last.sort();
    println!(
        "writes: {} × {} proxies: REST answer → proxy receives: p50 {:?} p99 {:?}; → last ACK: p50 {:?} p99 {:?} max {:?}",
        args.writes,
        args.proxies,
        pct(&to_each, 0.5),
        pct(&to_each, 0.99),
        pct(&to_last, 0.5),
        pct(&to_last, 0.99),
        to_last.last().copied().unwrap_or_default()
    );
    if !pids.is_empty() {
        println!("control plane while pushing: RSS {:?} KB, CPU {cpu:.0}% of one core (all replicas)", rss_all(pids));
    }

    if args.write_rate > 0 {
        write_rate(&apis, args.write_rate, args.write_concurrency, "small set").await?;
    }

    // A big cluster, then one endpoint of it changes, `writes` times: what does each proxy
    // receive, and how long until the last ACK?
    let eps = |n: usize, last: u32| -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| {
                let a = if i + 1 == n { last } else { i as u32 };
                serde_json::json!({ "address": format!("10.{}.{}.{}:8080", (a >> 16) & 255, (a >> 8) & 255, a & 255) })
            })
            .collect()
    };
    let rss_small = rss_all(pids);
    let t = Instant::now();
    put(Kind::Cluster, "fleet-origin", serde_json::json!({ "endpoints": eps(args.endpoints, 1 << 20) })).await?;
    let rev = api.get_json("/v1/clusters").await?["revision"].as_u64().unwrap_or(0);
    if !wait_all(rev, Duration::from_secs(120)).await {
        bail!("not every proxy ACKed the {}-endpoint cluster within 120 s", args.endpoints);
    }
    let full = fleet.bytes[0].load(Ordering::Relaxed);
    println!(
        "{}-endpoint cluster sent to {} proxies: {} bytes each, all ACKed in {:?}; control plane RSS {:?} KB → {:?} KB (peak {:?} KB)",
        args.endpoints,
        args.proxies,
        full,
        t.elapsed(),
        rss_small,
        rss_all(pids),
        pids.iter().map(|p| hwm_kb(*p)).collect::<Vec<_>>()
    );
    let mut to_last = Vec::new();
    let (mut least, mut most) = (u64::MAX, 0);
    for w in 0..args.writes {
        let api = &apis[w % apis.len()];
        let last = (1 << 20) + 1 + w as u32;
        api.put(Kind::Cluster, "fleet-origin", &serde_json::json!({ "endpoints": eps(args.endpoints, last) })).await?;
        let answered = Instant::now();
        let rev = api.get_json("/v1/clusters").await?["revision"].as_u64().unwrap_or(0);
        if !wait_all(rev, Duration::from_secs(60)).await {
            bail!("endpoint change {w}: not every proxy ACKed revision {rev} within 60 s");
        }
        to_last.push(answered.elapsed());
        for b in &fleet.bytes {
            let b = b.load(Ordering::Relaxed);
            (least, most) = (least.min(b), most.max(b));
        }
    }
    to_last.sort();
    println!(
        "one endpoint of {} changed, {} times: {}–{} bytes per proxy (one ENDPOINTS resource + one removed name); REST answer → last of {} ACKs: p50 {:?} p99 {:?} max {:?}",
        args.endpoints,
        args.writes,
        least,
        most,
        args.proxies,
        pct(&to_last, 0.5),
        pct(&to_last, 0.99),
        to_last.last().copied().unwrap_or_default()
    );
    if !pids.is_empty() {
        println!(
            "control plane after: RSS {:?} KB (peak {:?} KB)",
            rss_all(pids),
            pids.iter().map(|p| hwm_kb(*p)).collect::<Vec<_>>()
        );
    }
    if args.write_rate > 0 {
        write_rate(&apis, args.write_rate, args.write_concurrency, "with the 10,000-endpoint cluster in the set")
            .await?;
    }
    Ok(())
}

/// `n` cluster writes (outside the fleet's view: no pushes) from `concurrency` writers,
/// each on the next replica: writes per second answered, and their latency. Every write is
/// validated against the whole set, so the set's size counts.
async fn write_rate(apis: &[Client], n: usize, concurrency: usize, what: &str) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut writers = Vec::new();
    for c in 0..concurrency {
        let (api, next) = (apis[c % apis.len()].clone(), next.clone());
        writers.push(tokio::spawn(async move {
            let mut took = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<_, anyhow::Error>(took);
                }
                let body = serde_json::json!({ "endpoints": [{ "address": format!("127.0.0.1:{}", 1 + i % 60_000) }] });
                let started = Instant::now();
                api.put(Kind::Cluster, &format!("rate-{}", i % 100), &body).await.context("rate write")?;
                took.push(started.elapsed());
            }
        }));
    }
    let mut took = Vec::new();
    for w in writers {
        took.extend(w.await??);
    }
    let elapsed = t.elapsed();
    took.sort();
    println!(
        "store writes ({what}): {n} from {concurrency} writers over {} replica(s): {:.0} writes/s; each p50 {:?} p99 {:?}",
        apis.len(),
        n as f64 / elapsed.as_secs_f64(),
        pct(&took, 0.5),
        pct(&took, 0.99)
    );
    Ok(())
}

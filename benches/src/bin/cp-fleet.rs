//! Control-plane scale benchmark: an in-process fleet of simulated proxies, each holding a
//! real discovery stream (tonic) to a running `trellis control-plane`, ACKing every push.
//! Measures the time from a REST write to every proxy's ACK of it, the control plane's RSS
//! and CPU while holding the fleet; then, with a 10,000-endpoint cluster in every proxy's
//! view, the bytes each proxy receives (protobuf-encoded response size) and the time to
//! the last ACK when one endpoint changes, and the control plane's RSS around it.

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
    /// Control plane REST API.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    api: String,
    /// Control plane discovery address.
    #[arg(long, default_value = "http://127.0.0.1:7071")]
    xds: String,
    /// PID of the control plane, for RSS and CPU.
    #[arg(long)]
    cp_pid: Option<u32>,
    /// Simulated proxies (streams).
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// REST writes to time, one after the other.
    #[arg(long, default_value_t = 20)]
    writes: usize,
    /// Endpoints in the big cluster.
    #[arg(long, default_value_t = 10_000)]
    endpoints: usize,
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
    let api = Client::new(&args.api, None).context("api client")?;
    let put = |kind: Kind, name: &'static str, v: serde_json::Value| {
        let api = &api;
        async move { api.put(kind, name, &v).await.with_context(|| format!("PUT {name}")) }
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
    let rss_before = args.cp_pid.map(rss_kb).unwrap_or(0);
    for i in 0..args.proxies {
        let (xds, fleet) = (args.xds.clone(), fleet.clone());
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
        "fleet: {} streams connected and synced (control plane RSS {} KB → {} KB)",
        args.proxies,
        rss_before,
        args.cp_pid.map(rss_kb).unwrap_or(0)
    );

    // Writes: time from the REST answer to each proxy's receipt, and to the last ACK.
    let mut to_each = Vec::new();
    let mut to_last = Vec::new();
    let cpu0 = args.cp_pid.map(cpu_ticks).unwrap_or(0);
    let t_all = Instant::now();
    for w in 0..args.writes {
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
    let cpu = args.cp_pid.map(|p| (cpu_ticks(p) - cpu0) as f64 / 100.0 / held.as_secs_f64() * 100.0);
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
    if let (Some(pid), Some(cpu)) = (args.cp_pid, cpu) {
        println!("control plane while pushing: RSS {} KB, CPU {cpu:.0}% of one core", rss_kb(pid));
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
    let rss_small = args.cp_pid.map(rss_kb).unwrap_or(0);
    let t = Instant::now();
    put(Kind::Cluster, "fleet-origin", serde_json::json!({ "endpoints": eps(args.endpoints, 1 << 20) })).await?;
    let rev = api.get_json("/v1/clusters").await?["revision"].as_u64().unwrap_or(0);
    if !wait_all(rev, Duration::from_secs(120)).await {
        bail!("not every proxy ACKed the {}-endpoint cluster within 120 s", args.endpoints);
    }
    let full = fleet.bytes[0].load(Ordering::Relaxed);
    println!(
        "{}-endpoint cluster sent to {} proxies: {} bytes each, all ACKed in {:?}; control plane RSS {} KB → {} KB (peak {} KB)",
        args.endpoints,
        args.proxies,
        full,
        t.elapsed(),
        rss_small,
        args.cp_pid.map(rss_kb).unwrap_or(0),
        args.cp_pid.map(hwm_kb).unwrap_or(0)
    );
    let mut to_last = Vec::new();
    let (mut least, mut most) = (u64::MAX, 0);
    for w in 0..args.writes {
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
    if let Some(pid) = args.cp_pid {
        println!("control plane after: RSS {} KB (peak {} KB)", rss_kb(pid), hwm_kb(pid));
    }
    Ok(())
}

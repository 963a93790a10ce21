//! Mesh sidecars for the mTLS tests: inbound (mesh listener + policy) and outbound configs,
//! mesh clients, load loops over fresh handshakes, and a TCP echo.

use super::*;
use crate::config::{self, Bootstrap, ClusterProtocol, Identity, Policy, PolicyDefault, PolicyRule, Yaml};
use std::time::SystemTime;

pub const FRONTEND: &str = "spiffe://trellis.local/ns/default/sa/frontend";
pub const CHECKOUT: &str = "spiffe://trellis.local/ns/default/sa/checkout";
pub const INTRUDER: &str = "spiffe://trellis.local/ns/default/sa/intruder";

/// A server-side sidecar: mesh listeners `(name, address, policy)` in front of an HTTP/1.1
/// app; policy `authz` lets the frontend GET/POST `/api/*`, `open` lets any mesh peer in.
pub fn inbound(identity: &Identity, listeners: &[(&str, SocketAddr, Option<&str>)], app: SocketAddr) -> Bootstrap {
    let mut b =
        Bootstrap { drain_timeout: Some(config::ms(1000)), identity: Some(identity.clone()), ..config::bootstrap() };
    for (name, addr, policy) in listeners {
        let mut l = config::listener(name, *addr, &["local"]);
        l.tls = Some(config::mesh_tls());
        l.policy = policy.map(str::to_owned);
        b.listeners.push(l);
    }
    b.routes.push(config::route("local", "/", "app"));
    b.clusters.push(config::cluster("app", ClusterProtocol::Http1, &[app]));
    let api = PolicyRule {
        from: vec![FRONTEND.into()],
        paths: vec!["/api/*".into()],
        methods: vec!["GET".into(), "POST".into()],
        ..Default::default()
    };
    b.policies.push(Policy { name: "authz".into(), default: PolicyDefault::Deny, rules: vec![api] });
    b.policies.push(Policy { name: "open".into(), default: PolicyDefault::Allow, rules: vec![] });
    b
}

/// [`inbound`] as config text.
pub fn inbound_config(identity: &Identity, listeners: &[(&str, SocketAddr, Option<&str>)], app: SocketAddr) -> String {
    inbound(identity, listeners, app).yaml()
}

/// A client-side sidecar: plaintext listener `outbound` → mTLS HTTP/2 to `inbound`, whose
/// SPIFFE ID must be `expect`.
pub fn outbound(identity: &Identity, listen: SocketAddr, inbound: SocketAddr, expect: &str) -> Bootstrap {
    let mut b =
        Bootstrap { drain_timeout: Some(config::ms(1000)), identity: Some(identity.clone()), ..config::bootstrap() };
    b.listeners.push(config::listener("outbound", listen, &["mesh"]));
    b.routes.push(config::route("mesh", "/", "checkout"));
    let mut checkout = config::cluster("checkout", ClusterProtocol::Http2, &[inbound]);
    checkout.tls = Some(config::mesh_cluster_tls(expect));
    b.clusters.push(checkout);
    b
}

/// [`outbound`] as config text.
pub fn outbound_config(identity: &Identity, listen: SocketAddr, inbound: SocketAddr, expect: &str) -> String {
    outbound(identity, listen, inbound, expect).yaml()
}

/// A test client presenting `PREFIX.pem`/`PREFIX.key` (any server certificate accepted).
pub fn mesh_client(identity: Option<(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
    tls_client_config(&TlsClientOpts { identity, alpn: vec![b"http/1.1".to_vec()], ..Default::default() })
}

/// Established TCP connections (IPv4) whose remote port is `port`, from /proc/net/tcp.
pub fn established_to(port: u16) -> usize {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    text.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "01"
                && f[2].rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) == Some(port)
        })
        .count()
}

pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

pub const DENIED: &str = "trellis_authz_denied_total";
pub const HS_ERRORS: &str = "trellis_tls_handshake_errors_total";
pub const EXPIRY: &str = "trellis_tls_cert_expiry_timestamp_seconds";

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Runs `tasks` client loops against a mesh listener until `stop_at`: each opens a fresh
/// TLS connection, sends up to 5 GETs on it, and starts over. Returns (ok, failures).
pub fn mesh_load(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    tasks: usize,
    stop_at: Instant,
) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
    (0..tasks)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                for _ in 0..10_000 {
                    if Instant::now() >= stop_at {
                        break;
                    }
                    match TlsConn::open(addr, config.clone(), "checkout").await {
                        Ok(mut c) => {
                            for _ in 0..5 {
                                match c.get("/api/load").await {
                                    Ok(g) if g.status == 200 => ok += 1,
                                    Ok(g) => failed.push(format!("status {}: {}", g.status, g.text())),
                                    Err(e) => failed.push(e),
                                }
                            }
                        }
                        Err(e) => failed.push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (ok, failed)
            })
        })
        .collect()
}

pub async fn load_results(tasks: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>) -> (usize, Vec<String>) {
    let (mut ok, mut failed) = (0, Vec::new());
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    (ok, failed)
}

/// The SHA-256 of the leaf a fresh handshake gets.
pub async fn presented(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Result<String, String> {
    TlsConn::open(addr, config.clone(), "checkout").await.map(|c| c.seen.leaf.sha256)
}

/// A TCP echo server: writes back whatever it reads.
pub async fn tcp_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, task) = accept_each(l, |mut s, _| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    (addr, task)
}

/// Over a fresh mTLS connection: writes `ping`, returns what came back before EOF/error (5 s).
pub async fn tls_ping(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("checkout").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        let mut got = Vec::new();
        while got.len() < 4 {
            match tls.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if got.is_empty() => return Err(e.to_string()),
                Err(_) => break,
            }
        }
        Ok(got)
    };
    tokio::time::timeout(secs(5), work).await.map_err(|_| "timed out".to_owned())?
}

//! Mesh identity end to end (DESIGN §4) against the real binary with real TLS and
//! certificates from `trellis-certs`: mTLS listeners authenticate clients and authorize
//! their SPIFFE IDs, plaintext and TLS 1.2 are refused, a sidecar pair multiplexes one mTLS
//! HTTP/2 connection and checks the server's identity, and identity files and roots rotate
//! under load without a failed request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use trellis_certs::Ca;

const FRONTEND: &str = "spiffe://trellis.local/ns/default/sa/frontend";
const CHECKOUT: &str = "spiffe://trellis.local/ns/default/sa/checkout";
const INTRUDER: &str = "spiffe://trellis.local/ns/default/sa/intruder";

/// A root CA and its files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        ring_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path().join("ca"), false).unwrap();
        Pki { dir, ca }
    }

    /// `DIR/ca/ca.pem`.
    fn bundle(&self) -> PathBuf {
        Ca::cert_path(self.dir.path().join("ca"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues `id` (plus DNS SANs) to `DIR/NAME.pem` + `DIR/NAME.key`.
    fn issue(&self, name: &str, id: &str, dns: &[&str]) -> (PathBuf, PathBuf) {
        let prefix = self.path(name);
        issue_to(&self.ca, id, dns, &prefix);
        pem_key(&prefix)
    }
}

fn identity_yaml(cert: &Path, key: &Path, bundle: &Path) -> String {
    format!(
        "identity: {{ cert: \"{}\", key: \"{}\", trust_bundle: \"{}\" }}\n",
        cert.display(),
        key.display(),
        bundle.display()
    )
}

/// A server-side sidecar: mesh listeners `(name, address, policy)` in front of an HTTP/1.1
/// app; policy `authz` lets the frontend GET/POST `/api/*`, `open` lets any mesh peer in.
fn inbound_config(identity: &str, listeners: &[(&str, SocketAddr, Option<&str>)], app: SocketAddr) -> String {
    let mut y = format!("admin: {{ address: \"{{admin}}\" }}\ndrain_timeout: 1s\n{identity}listeners:\n");
    for (name, addr, policy) in listeners {
        y.push_str(&format!("  - name: {name}\n    address: \"{addr}\"\n    tls: {{ mode: mesh }}\n"));
        if let Some(p) = policy {
            y.push_str(&format!("    policy: {p}\n"));
        }
        y.push_str("    routes: [local]\n");
    }
    y.push_str(&format!(
        r#"routes:
  - name: local
    match: {{ path_prefix: / }}
    backends: [{{ cluster: app }}]
clusters:
  - name: app
    protocol: http1
    endpoints: [{{ address: "{app}" }}]
policies:
  - name: authz
    default: deny
    rules:
      - from: [{FRONTEND}]
        paths: ["/api/*"]
        methods: [GET, POST]
  - name: open
    default: allow
"#
    ));
    y
}

/// A client-side sidecar: plaintext listener `outbound` → mTLS HTTP/2 to `inbound`, whose
/// SPIFFE ID must be `expect`.
fn outbound_config(identity: &str, listen: SocketAddr, inbound: SocketAddr, expect: &str) -> String {
    format!(
        r#"admin: {{ address: "{{admin}}" }}
drain_timeout: 1s
{identity}listeners:
  - name: outbound
    address: "{listen}"
    routes: [mesh]
routes:
  - name: mesh
    match: {{ path_prefix: / }}
    backends: [{{ cluster: checkout }}]
clusters:
  - name: checkout
    protocol: http2
    tls: {{ mode: mesh, identity: "{expect}" }}
    endpoints: [{{ address: "{inbound}" }}]
"#
    )
}

/// A test client presenting `PREFIX.pem`/`PREFIX.key` (any server certificate accepted).
fn mesh_client(identity: Option<(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
    tls_client_config(&TlsClientOpts { identity, alpn: vec![b"http/1.1".to_vec()], ..Default::default() })
}

/// Established TCP connections (IPv4) whose remote port is `port`, from /proc/net/tcp.
fn established_to(port: u16) -> usize {
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

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

const DENIED: &str = "trellis_authz_denied_total";
const HS_ERRORS: &str = "trellis_tls_handshake_errors_total";
const EXPIRY: &str = "trellis_tls_cert_expiry_timestamp_seconds";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_listener_authenticates_and_authorizes_peers() {
    within(Duration::from_secs(40), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let frontend = pki.issue("frontend", FRONTEND, &[]);
        let intruder = pki.issue("intruder", INTRUDER, &[]);
        // The frontend's ID, but from another CA; and the frontend's ID, expired.
        let other_ca = Ca::generate().unwrap();
        issue_to(&other_ca, FRONTEND, &[], &pki.path("foreign"));
        let foreign = pem_key(&pki.path("foreign"));
        let now = SystemTime::now();
        let expired_leaf = pki
            .ca
            .issue_with_validity(
                &trellis_certs::SpiffeId::parse(FRONTEND).unwrap(),
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
                &[],
            )
            .unwrap();
        expired_leaf.write(pki.path("expired")).unwrap();
        let expired = pem_key(&pki.path("expired"));

        let app = Origin::echo("app").await;
        let (mesh, closed) = (listen_addr(), listen_addr());
        let identity = identity_yaml(&cert, &key, &pki.bundle());
        let proxy = Proxy::start(&inbound_config(
            &identity,
            &[("mesh", mesh, Some("authz")), ("nopolicy", closed, None)],
            app.addr,
        ));

        // Not authenticated: no HTTP response at all.
        for (what, id) in [("no client cert", None), ("other CA", Some(foreign)), ("expired", Some(expired))] {
            let r = tls_fetch(mesh, mesh_client(id), "checkout", "GET", "/api/orders").await;
            assert!(r.is_err(), "{what}: expected a refused handshake, got {:?}", r.map(|(g, _)| g.status));
        }
        // Each Trellis root has its own name, so another CA's certificate has no candidate
        // issuer in the bundle: `unknown_issuer`.
        for reason in ["no_client_certificate", "expired_certificate", "unknown_issuer"] {
            let v = wait_metric(&proxy, HS_ERRORS, &[("listener", "mesh"), ("reason", reason)], |v| v >= 1.0, secs(3))
                .await;
            assert_eq!(v, Some(1.0), "{HS_ERRORS}{{reason={reason}}}:\n{}", blocking(|| proxy.metrics()));
        }

        // Authenticated but not allowed: 403 and an audit line naming the peer.
        let (got, seen) = tls_fetch(mesh, mesh_client(Some(intruder)), "checkout", "GET", "/api/orders").await.unwrap();
        assert_eq!(got.status, 403, "{}", got.text());
        assert_eq!(got.header("x-trellis-error"), Some("forbidden"));
        assert_eq!(seen.leaf.spiffe_id.as_ref().map(|i| i.as_str()), Some(CHECKOUT), "the server's identity");
        assert_eq!(seen.version, Some(rustls::ProtocolVersion::TLSv1_3));
        assert!(wait_log(&proxy, INTRUDER, secs(2)).await, "no audit line: {}", log_tail(&proxy, 20));
        let audit = plain_logs(&proxy).lines().find(|l| l.contains(INTRUDER)).unwrap_or_default().to_owned();
        assert!(audit.contains("authorization denied"), "{audit}");

        // The frontend: allowed on GET/POST /api/*, denied elsewhere.
        let fe = mesh_client(Some(frontend.clone()));
        let mut conn = TlsConn::open(mesh, fe.clone(), "checkout").await.unwrap();
        for (method, path, want) in [
            ("GET", "/api/orders", 200),
            ("POST", "/api/orders", 200),
            ("GET", "/api", 200),
            ("GET", "/admin", 403),
            ("DELETE", "/api/orders", 403),
            ("GET", "/apix", 403),
        ] {
            let got = conn.request(method, path).await.unwrap();
            assert_eq!(got.status, want, "{method} {path}: {}", got.text());
            if want == 200 {
                let j = got.json();
                assert_eq!(j["path"], path);
                assert_eq!(j["headers"]["x-forwarded-proto"], "https", "{j}");
            } else {
                assert_eq!(got.header("x-trellis-error"), Some("forbidden"), "{method} {path}");
            }
        }
        assert!(wait_log(&proxy, "path=\"/apix\"", secs(2)).await, "{}", log_tail(&proxy, 20));
        let audit = plain_logs(&proxy).lines().find(|l| l.contains("path=\"/admin\"")).unwrap_or_default().to_owned();
        assert!(audit.contains("authorization denied") && audit.contains(FRONTEND), "{audit}");
        // intruder + /admin + DELETE + /apix.
        let v = wait_metric(&proxy, DENIED, &[("listener", "mesh")], |v| v >= 4.0, secs(2)).await;
        assert_eq!(v, Some(4.0), "{}", blocking(|| proxy.metrics()));

        // A mesh listener without a policy lets nobody in.
        let got = tls_fetch(closed, fe, "checkout", "GET", "/api/orders").await.unwrap().0;
        assert_eq!(got.status, 403, "{}", got.text());
        assert_eq!(got.header("x-trellis-error"), Some("forbidden"));
        let v = wait_metric(&proxy, DENIED, &[("listener", "nopolicy")], |v| v >= 1.0, secs(2)).await;
        assert_eq!(v, Some(1.0));

        // The identity's expiry is exported.
        let leaf = trellis_certs::inspect_file(&cert).unwrap().remove(0);
        let v = metric_value(&blocking(|| proxy.metrics()), EXPIRY, &[("cert", "identity")]);
        assert_eq!(v.map(|v| v as i64), Some(leaf.not_after));
    })
    .await;
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_port_speaks_only_tls13() {
    within(Duration::from_secs(30), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let frontend = pki.issue("frontend", FRONTEND, &[]);
        let app = Origin::echo("app").await;
        let mesh = listen_addr();
        let identity = identity_yaml(&cert, &key, &pki.bundle());
        let proxy = Proxy::start(&inbound_config(&identity, &[("mesh", mesh, Some("authz"))], app.addr));

        // Plaintext HTTP: the connection ends without an HTTP answer.
        let mut s = tokio::net::TcpStream::connect(mesh).await.unwrap();
        s.write_all(b"GET /api/orders HTTP/1.1\r\nHost: checkout\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(secs(5), s.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the proxy kept a plaintext connection open");
        assert!(!got.starts_with(b"HTTP/"), "plaintext answered: {}", String::from_utf8_lossy(&got));
        let v =
            wait_metric(&proxy, HS_ERRORS, &[("listener", "mesh"), ("reason", "not_tls")], |v| v >= 1.0, secs(2)).await;
        assert_eq!(v, Some(1.0), "{}", blocking(|| proxy.metrics()));

        // TLS 1.2 (with a good client certificate) is refused between proxies…
        let tls12 = tls_client_config(&TlsClientOpts {
            identity: Some(frontend.clone()),
            tls12_only: true,
            alpn: vec![b"http/1.1".to_vec()],
            ..Default::default()
        });
        let r = tls_fetch(mesh, tls12, "checkout", "GET", "/api/orders").await;
        assert!(r.is_err(), "TLS 1.2 accepted on a mesh listener: {:?}", r.map(|(g, s)| (g.status, s.version)));
        // The server counts the failure just after sending its alert: poll for it.
        let total = |m: &str| -> f64 {
            m.lines()
                .filter(|l| l.starts_with(HS_ERRORS) && l.contains("listener=\"mesh\""))
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                .sum()
        };
        let mut m = String::new();
        for _ in 0..40 {
            m = blocking(|| proxy.metrics());
            if total(&m) >= 2.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(total(&m), 2.0, "plaintext + TLS 1.2:\n{m}");
        let v = metric_value(&m, HS_ERRORS, &[("listener", "mesh"), ("reason", "incompatible")]);
        assert_eq!(v, Some(1.0), "TLS 1.2 counted as `incompatible`:\n{m}");

        // …while TLS 1.3 with the same certificate works.
        let (got, seen) = tls_fetch(mesh, mesh_client(Some(frontend)), "checkout", "GET", "/api/x").await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(seen.version, Some(rustls::ProtocolVersion::TLSv1_3));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_pair_multiplexes_one_mtls_connection() {
    within(Duration::from_secs(40), async {
        let pki = Pki::new();
        let (ccert, ckey) = pki.issue("checkout", CHECKOUT, &[]);
        let (fcert, fkey) = pki.issue("frontend", FRONTEND, &[]);
        let app = Origin::echo("checkout-app").await;
        let (inbound, outbound) = (listen_addr(), listen_addr());
        let access = tempfile::tempdir().unwrap();
        let access = access.path().join("access.log");
        let checkout = Proxy::start(&format!(
            "access_log: {{ path: \"{}\" }}\n{}",
            access.display(),
            inbound_config(
                &identity_yaml(&ccert, &ckey, &pki.bundle()),
                &[("inbound", inbound, Some("authz"))],
                app.addr
            )
        ));
        let frontend =
            Proxy::start(&outbound_config(&identity_yaml(&fcert, &fkey, &pki.bundle()), outbound, inbound, CHECKOUT));

        let mut c = Client::h1(outbound).await;
        let got = c.get("/api/orders").await;
        assert_eq!(got.status, 200, "{} / {}", got.text(), log_tail(&frontend, 10));
        let j = got.json();
        assert_eq!(j["origin"], "checkout-app");
        assert_eq!(j["path"], "/api/orders");
        assert_eq!(j["headers"]["x-forwarded-proto"], "https", "{j}");

        // 20 requests from 4 HTTP/1.1 client connections (plus the one above) share one
        // mTLS connection between the sidecars.
        let answers = load(outbound, 4, 5, "/api/x", None).await;
        assert_eq!(answers.len(), 20);
        for (got, _) in &answers {
            assert_eq!(got.status, 200, "{}", got.text());
        }
        let accepted = metric_value(
            &blocking(|| checkout.metrics()),
            "trellis_downstream_connections_total",
            &[("listener", "inbound")],
        );
        assert_eq!(accepted, Some(1.0), "connections accepted by the inbound sidecar");
        assert_eq!(established_to(inbound.port()), 1, "established connections to {inbound}");

        // The inbound's policy applies to the frontend's identity through the pair.
        let got = c.fetch(http::Request::delete("/api/orders").body(full("")).unwrap()).await;
        assert_eq!(got.status, 403, "{}", got.text());
        assert_eq!(got.header("x-trellis-error"), Some("forbidden"));
        assert!(wait_log(&checkout, "authorization denied", secs(2)).await);
        let audit = plain_logs(&checkout).lines().find(|l| l.contains("authorization denied")).unwrap().to_owned();
        assert!(audit.contains(FRONTEND) && audit.contains("DELETE"), "{audit}");

        // The peer's verified identity reaches the access log, allowed or denied.
        let mut lines = Vec::new();
        for _ in 0..40 {
            let text = std::fs::read_to_string(&access).unwrap_or_default();
            lines = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect();
            if lines.len() >= 22 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(lines.len(), 22, "{lines:#?}");
        for l in &lines {
            assert_eq!(l["peer_id"], FRONTEND, "{l}");
            assert_eq!(l["listener"], "inbound", "{l}");
            assert_eq!(l["protocol"], "HTTP/2", "between the sidecars: {l}");
        }
        let denied = lines.iter().find(|l| l["method"] == "DELETE").expect("the denied request's line");
        assert_eq!((denied["status"].as_u64(), denied["error"].as_str()), (Some(403), Some("forbidden")), "{denied}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_identity_mismatch_is_a_502() {
    within(Duration::from_secs(30), async {
        let pki = Pki::new();
        let (ccert, ckey) = pki.issue("checkout", CHECKOUT, &[]);
        let (fcert, fkey) = pki.issue("frontend", FRONTEND, &[]);
        let app = Origin::echo("checkout-app").await;
        let (inbound, outbound) = (listen_addr(), listen_addr());
        let _checkout = Proxy::start(&inbound_config(
            &identity_yaml(&ccert, &ckey, &pki.bundle()),
            &[("inbound", inbound, Some("authz"))],
            app.addr,
        ));
        let frontend = Proxy::start(&outbound_config(
            &identity_yaml(&fcert, &fkey, &pki.bundle()),
            outbound,
            inbound,
            "spiffe://trellis.local/ns/default/sa/other",
        ));
        let mut c = Client::h1(outbound).await;
        let got = c.get("/api/orders").await;
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(got.header("x-trellis-error"), Some("upstream identity mismatch"), "{}", got.text());
        assert!(got.text().contains(CHECKOUT), "the body names what the server presented: {}", got.text());
        drop(frontend);
    })
    .await;
}

/// Runs `tasks` client loops against a mesh listener until `stop_at`: each opens a fresh
/// TLS connection, sends up to 5 GETs on it, and starts over. Returns (ok, failures).
fn mesh_load(
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

async fn load_results(tasks: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>) -> (usize, Vec<String>) {
    let (mut ok, mut failed) = (0, Vec::new());
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    (ok, failed)
}

/// The SHA-256 of the leaf a fresh handshake gets.
async fn presented(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Result<String, String> {
    TlsConn::open(addr, config.clone(), "checkout").await.map(|c| c.seen.leaf.sha256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_rotation_under_load_fails_no_request() {
    within(Duration::from_secs(40), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let frontend = pki.issue("frontend", FRONTEND, &[]);
        let app = Origin::echo("app").await;
        let mesh = listen_addr();
        let proxy = Proxy::start(&inbound_config(
            &identity_yaml(&cert, &key, &pki.bundle()),
            &[("mesh", mesh, Some("authz"))],
            app.addr,
        ));
        let old_leaf = trellis_certs::inspect_file(&cert).unwrap().remove(0);
        let fe = mesh_client(Some(frontend));
        assert_eq!(presented(mesh, &fe).await.unwrap(), old_leaf.sha256);

        // A connection opened before the rotation.
        let mut established = TlsConn::open(mesh, fe.clone(), "checkout").await.unwrap();
        assert_eq!(established.get("/api/before").await.unwrap().status, 200);

        let tasks = mesh_load(mesh, fe.clone(), 4, Instant::now() + secs(4));
        tokio::time::sleep(Duration::from_millis(1000)).await;

        // Rotate: new key to a temp name then over the old one, then the certificate.
        let new = pki.ca.issue(&spiffe("checkout"), secs(7200), &[]).unwrap();
        let new_leaf = trellis_certs::inspect(new.cert_pem.as_bytes()).unwrap();
        assert_ne!(new_leaf.sha256, old_leaf.sha256);
        replace_file(&key, new.key_pem.as_bytes());
        replace_file(&cert, new.cert_pem.as_bytes());
        let rotated = Instant::now();
        let mut took = None;
        for _ in 0..100 {
            if rotated.elapsed() > secs(3) {
                break;
            }
            if presented(mesh, &fe).await.as_deref() == Ok(new_leaf.sha256.as_str()) {
                took = Some(rotated.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = took.unwrap_or_else(|| panic!("new leaf never presented: {}", log_tail(&proxy, 20)));
        assert!(took <= secs(2), "new leaf presented only after {took:?}");

        // The old connection keeps working (with the certificate it was opened with).
        let got = established.get("/api/after").await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(established.seen.leaf.sha256, old_leaf.sha256);

        let (ok, failed) = load_results(tasks).await;
        assert!(
            failed.is_empty(),
            "{} of {} requests failed, e.g. {:?}",
            failed.len(),
            ok + failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok >= 50, "only {ok} requests in 4 s");

        let v = metric_value(&blocking(|| proxy.metrics()), EXPIRY, &[("cert", "identity")]);
        assert_eq!(v.map(|v| v as i64), Some(new_leaf.not_after), "expiry gauge after rotation");
        assert_eq!(new_leaf.not_after, unix(new.not_after));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_identity_pair_is_refused_and_old_identity_kept() {
    within(Duration::from_secs(40), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let frontend = pki.issue("frontend", FRONTEND, &[]);
        let app = Origin::echo("app").await;
        let mesh = listen_addr();
        let proxy = Proxy::start(&inbound_config(
            &identity_yaml(&cert, &key, &pki.bundle()),
            &[("mesh", mesh, Some("authz"))],
            app.addr,
        ));
        let old_leaf = trellis_certs::inspect_file(&cert).unwrap().remove(0);
        let fe = mesh_client(Some(frontend));
        let tasks = mesh_load(mesh, fe.clone(), 3, Instant::now() + secs(3));
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Half a rotation: a new certificate, the old key.
        let new = pki.ca.issue(&spiffe("checkout"), secs(7200), &[]).unwrap();
        let new_leaf = trellis_certs::inspect(new.cert_pem.as_bytes()).unwrap();
        replace_file(&cert, new.cert_pem.as_bytes());
        assert!(
            wait_log(&proxy, "config reload refused", secs(3)).await,
            "no refusal logged: {}",
            log_tail(&proxy, 20)
        );
        let line = plain_logs(&proxy).lines().find(|l| l.contains("config reload refused")).unwrap().to_owned();
        assert!(line.contains("do not belong together"), "{line}");
        assert!(line.contains("checkout.pem") && line.contains("checkout.key"), "names the files: {line}");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(presented(mesh, &fe).await.unwrap(), old_leaf.sha256, "the old identity stays");
        let v = metric_value(&blocking(|| proxy.metrics()), EXPIRY, &[("cert", "identity")]);
        assert_eq!(v.map(|v| v as i64), Some(old_leaf.not_after), "expiry gauge of the refused leaf");

        let (ok, failed) = load_results(tasks).await;
        assert!(failed.is_empty(), "{} failed, e.g. {:?}", failed.len(), &failed[..failed.len().min(5)]);
        assert!(ok >= 30, "only {ok} requests");

        // The matching key completes the rotation.
        replace_file(&key, new.key_pem.as_bytes());
        let mut seen = String::new();
        for _ in 0..60 {
            seen = presented(mesh, &fe).await.unwrap();
            if seen == new_leaf.sha256 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(seen, new_leaf.sha256, "{}", log_tail(&proxy, 10));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_ca_rotation_fails_no_request() {
    within(Duration::from_secs(60), async {
        let pki = Pki::new();
        let new_ca = Ca::generate().unwrap();
        let old_root = pki.ca.cert_pem().to_owned();
        let new_root = new_ca.cert_pem().to_owned();
        // Each side has its own files. The checkout leaf also names a DNS SAN so the test's
        // probes can verify the server chain against the current bundle.
        let (ccert, ckey) = pki.issue("checkout", CHECKOUT, &["checkout.mesh.test"]);
        let (fcert, fkey) = pki.issue("frontend", FRONTEND, &[]);
        let (cbundle, fbundle) = (pki.path("checkout-bundle.pem"), pki.path("frontend-bundle.pem"));
        std::fs::write(&cbundle, &old_root).unwrap();
        std::fs::write(&fbundle, &old_root).unwrap();

        let app = Origin::echo("checkout-app").await;
        let (inbound, outbound) = (listen_addr(), listen_addr());
        let checkout = Proxy::start(&inbound_config(
            &identity_yaml(&ccert, &ckey, &cbundle),
            &[("inbound", inbound, Some("authz"))],
            app.addr,
        ));
        let frontend =
            Proxy::start(&outbound_config(&identity_yaml(&fcert, &fkey, &fbundle), outbound, inbound, CHECKOUT));

        // Continuous load through the pair: 3 clients, a new connection every 5 requests.
        let stop = Arc::new(AtomicBool::new(false));
        let load_tasks: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0usize, Vec::<String>::new());
                    let started = Instant::now();
                    'outer: while !stop.load(Ordering::Relaxed) && started.elapsed() < secs(40) {
                        let mut c = Client::h1(outbound).await;
                        for _ in 0..5 {
                            if stop.load(Ordering::Relaxed) {
                                break 'outer;
                            }
                            let sent = c.send(http::Request::get("/api/load").body(full("")).unwrap()).await;
                            // Read each answer to its end so the connection can carry the next.
                            let answer = match sent {
                                Ok(r) => {
                                    let (parts, body) = r.into_parts();
                                    body.collect().await.map(|_| parts.status).map_err(|e| e.to_string())
                                }
                                Err(e) => Err(e.to_string()),
                            };
                            match answer {
                                Ok(status) if status == 200 => ok += 1,
                                Ok(status) => failed.push(format!("status {status} at {:?}", started.elapsed())),
                                Err(e) => failed.push(format!("{e} at {:?}", started.elapsed())),
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();

        // A fresh handshake to the inbound sidecar, as the frontend, trusting `bundle`.
        let probe = |client: (PathBuf, PathBuf), bundle: PathBuf| async move {
            let config = tls_client_config(&TlsClientOpts {
                identity: Some(client),
                roots: Some(bundle),
                alpn: vec![b"http/1.1".to_vec()],
                ..Default::default()
            });
            tls_fetch(inbound, config, "checkout.mesh.test", "GET", "/api/probe").await.map(|(g, s)| (g.status, s))
        };
        let both = format!("{old_root}{new_root}");
        let (f_old, b_tmp) = (pki.path("frontend-old"), pki.path("probe-bundle.pem"));
        issue_to(&pki.ca, FRONTEND, &[], &f_old);

        // 1. Both sides trust old + new roots.
        let (cv, fv) = (blocking(|| checkout.version()), blocking(|| frontend.version()));
        replace_file(&cbundle, both.as_bytes());
        replace_file(&fbundle, both.as_bytes());
        assert!(wait_version_above(&checkout, cv, secs(3)).await, "{}", log_tail(&checkout, 10));
        assert!(wait_version_above(&frontend, fv, secs(3)).await, "{}", log_tail(&frontend, 10));
        let r = probe(pem_key(&f_old), cbundle.clone()).await.unwrap();
        assert_eq!(r.0, 200, "step 1");

        // 2. The inbound side gets a leaf from the new root.
        let cv = blocking(|| checkout.version());
        let leaf = new_ca.issue(&spiffe("checkout"), secs(3600), &["checkout.mesh.test".to_owned()]).unwrap();
        replace_file(&ckey, leaf.key_pem.as_bytes());
        replace_file(&ccert, leaf.cert_pem.as_bytes());
        assert!(wait_version_above(&checkout, cv, secs(3)).await, "{}", log_tail(&checkout, 10));
        let want = trellis_certs::inspect(leaf.cert_pem.as_bytes()).unwrap().sha256;
        let mut r = probe(pem_key(&f_old), cbundle.clone()).await.unwrap();
        for _ in 0..20 {
            if r.1.leaf.sha256 == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            r = probe(pem_key(&f_old), cbundle.clone()).await.unwrap();
        }
        assert_eq!((r.0.as_u16(), r.1.leaf.sha256), (200, want), "step 2");

        // 3. The outbound side too.
        let fv = blocking(|| frontend.version());
        let leaf = new_ca.issue(&spiffe("frontend"), secs(3600), &[]).unwrap();
        replace_file(&fkey, leaf.key_pem.as_bytes());
        replace_file(&fcert, leaf.cert_pem.as_bytes());
        assert!(wait_version_above(&frontend, fv, secs(3)).await, "{}", log_tail(&frontend, 10));
        let r = probe((fcert.clone(), fkey.clone()), cbundle.clone()).await.unwrap();
        assert_eq!(r.0, 200, "step 3");

        // 4. The old root goes.
        let (cv, fv) = (blocking(|| checkout.version()), blocking(|| frontend.version()));
        replace_file(&cbundle, new_root.as_bytes());
        replace_file(&fbundle, new_root.as_bytes());
        assert!(wait_version_above(&checkout, cv, secs(3)).await, "{}", log_tail(&checkout, 10));
        assert!(wait_version_above(&frontend, fv, secs(3)).await, "{}", log_tail(&frontend, 10));
        std::fs::write(&b_tmp, &new_root).unwrap();
        let r = probe((fcert.clone(), fkey.clone()), b_tmp.clone()).await.unwrap();
        assert_eq!(r.0, 200, "step 4");
        // A leaf of the old root is no longer accepted by the inbound side.
        assert!(probe(pem_key(&f_old), b_tmp.clone()).await.is_err(), "old-root client still accepted");
        tokio::time::sleep(Duration::from_millis(300)).await;

        stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for t in load_tasks {
            let (o, f) = t.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        assert!(
            failed.is_empty(),
            "{} of {} failed, e.g. {:?}",
            failed.len(),
            ok + failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok >= 30, "only {ok} requests during the rotation");

        // A new sidecar with only the new root talks to the rotated inbound side.
        let outbound2 = listen_addr();
        let _frontend2 =
            Proxy::start(&outbound_config(&identity_yaml(&fcert, &fkey, &fbundle), outbound2, inbound, CHECKOUT));
        let got = Client::h1(outbound2).await.get("/api/fresh").await;
        assert_eq!(got.status, 200, "{}", got.text());
    })
    .await;
}

/// A TCP echo server: writes back whatever it reads.
async fn tcp_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

/// Over a fresh mTLS connection: writes `ping`, returns what came back before EOF/error (5 s).
async fn tls_ping(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, String> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mesh_listener_closes_unauthorized_peers() {
    within(Duration::from_secs(30), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let frontend = pki.issue("frontend", FRONTEND, &[]);
        let intruder = pki.issue("intruder", INTRUDER, &[]);
        let (echo, _task) = tcp_echo().await;
        let l4 = listen_addr();
        let yaml = format!(
            r#"admin: {{ address: "{{admin}}" }}
{}listeners:
  - name: l4
    address: "{l4}"
    protocol: tcp
    tls: {{ mode: mesh }}
    policy: fe
    cluster: echo
clusters:
  - name: echo
    endpoints: [{{ address: "{echo}" }}]
policies:
  - name: fe
    rules: [{{ from: [{FRONTEND}] }}]
"#,
            identity_yaml(&cert, &key, &pki.bundle())
        );
        let proxy = Proxy::start(&yaml);

        assert_eq!(tls_ping(l4, mesh_client(Some(frontend))).await.unwrap(), b"ping");
        let denied = tls_ping(l4, mesh_client(Some(intruder))).await;
        assert!(denied.as_ref().is_ok_and(|b| b.is_empty()) || denied.is_err(), "intruder got {denied:?}");
        assert!(wait_log(&proxy, INTRUDER, secs(2)).await, "{}", log_tail(&proxy, 10));
        let audit = plain_logs(&proxy).lines().find(|l| l.contains(INTRUDER)).unwrap().to_owned();
        assert!(audit.contains("authorization denied") && audit.contains("listener=\"l4\""), "{audit}");
        let v = wait_metric(&proxy, DENIED, &[("listener", "l4")], |v| v >= 1.0, secs(2)).await;
        assert_eq!(v, Some(1.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reload_leaves_the_expiry_gauge_of_the_identity_in_use() {
    within(Duration::from_secs(30), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let (ecert, ekey) = pki.issue("edge", "spiffe://trellis.local/ns/edge/sa/edge", &["edge.test"]);
        let app = Origin::echo("app").await;
        let (mesh, edge) = (listen_addr(), listen_addr());
        let config = |cert: &Path, key: &Path, ecert: &Path| {
            format!(
                r#"admin: {{ address: "{{admin}}" }}
{}listeners:
  - name: mesh
    address: "{mesh}"
    tls: {{ mode: mesh }}
    policy: open
    routes: [all]
  - name: edge
    address: "{edge}"
    tls: {{ mode: terminate, certificates: [{{ cert: "{}", key: "{}" }}] }}
    routes: [all]
routes:
  - name: all
    match: {{ path_prefix: / }}
    backends: [{{ cluster: app }}]
clusters:
  - name: app
    endpoints: [{{ address: "{}" }}]
policies:
  - name: open
    default: allow
"#,
                identity_yaml(cert, key, &pki.bundle()),
                ecert.display(),
                ekey.display(),
                app.addr
            )
        };
        let proxy = Proxy::start(&config(&cert, &key, &ecert));
        let old = trellis_certs::inspect_file(&cert).unwrap().remove(0);
        let gauge = || metric_value(&blocking(|| proxy.metrics()), EXPIRY, &[("cert", "identity")]).map(|v| v as i64);
        assert_eq!(gauge(), Some(old.not_after));

        // One config change: a good new identity, and an edge certificate that does not match
        // its key. The whole reload is refused…
        let (ncert, nkey) = pem_key(&pki.path("checkout-next"));
        let next = pki.ca.issue(&spiffe("checkout"), secs(7200), &[]).unwrap();
        next.write(pki.path("checkout-next")).unwrap();
        let (bad_edge, _) = pki.issue("edge-other", "spiffe://trellis.local/ns/edge/sa/other", &["edge.test"]);
        proxy.write_config(&config(&ncert, &nkey, &bad_edge));
        assert!(wait_log(&proxy, "config reload refused", secs(3)).await, "{}", log_tail(&proxy, 10));
        let fe = mesh_client(Some(pki.issue("frontend", FRONTEND, &[])));
        assert_eq!(presented(mesh, &fe).await.unwrap(), old.sha256, "the old identity stays in use");
        // …so the gauge must still describe the identity in use.
        assert_eq!(gauge(), Some(old.not_after), "gauge shows the refused identity's expiry: {}", log_tail(&proxy, 3));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_do_not_escape_a_path_rule() {
    within(Duration::from_secs(20), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let frontend = pki.issue("frontend", FRONTEND, &[]);
        let app = Origin::echo("app").await;
        let mesh = listen_addr();
        let _proxy = Proxy::start(&inbound_config(
            &identity_yaml(&cert, &key, &pki.bundle()),
            &[("mesh", mesh, Some("authz"))],
            app.addr,
        ));
        let fe = mesh_client(Some(frontend));
        for path in ["/api/../admin", "/api/./../admin", "/api/%2e%2e/admin", "/api/%2E%2E/admin"] {
            let (got, _) = tls_fetch(mesh, fe.clone(), "checkout", "GET", path).await.unwrap();
            // Refused, or normalized before the policy and still inside /api/.
            let ok = match got.status.as_u16() {
                400 | 403 => true,
                200 => {
                    let p = got.json()["path"].as_str().unwrap_or_default().to_ascii_lowercase();
                    p.starts_with("/api/") && !p.contains("..") && !p.contains("%2e")
                }
                _ => false,
            };
            assert!(ok, "{path}: {} reached the app as {}", got.status, got.text());
        }
    })
    .await;
}

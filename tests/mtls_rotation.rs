//! Mesh identity rotation end to end (DESIGN §4): identity files and root CAs rotate under
//! load without a failed request, a mismatched key/cert pair is refused with the old identity
//! kept, and a refused reload leaves the expiry gauge of the identity in use.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{self, Yaml};
use trellis_testkit::*;

use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use trellis_certs::Ca;

use trellis_testkit::mesh::*;

/// An inbound sidecar for `checkout` (mesh listener, `authz` policy) in front of an echo
/// app, and a client config holding the `frontend` identity.
struct Checkout {
    pki: Pki,
    cert: PathBuf,
    key: PathBuf,
    _app: Origin,
    mesh: SocketAddr,
    proxy: Proxy,
    old_leaf: trellis_certs::CertInfo,
    fe: Arc<rustls::ClientConfig>,
}

impl Checkout {
    async fn start() -> Self {
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let frontend = pki.issue("frontend", FRONTEND, &[]);
        let app = Origin::echo("app").await;
        let mesh = listen_addr();
        let proxy = Proxy::start(&inbound_config(
            &config::identity(&cert, &key, &pki.bundle()),
            &[("mesh", mesh, Some("authz"))],
            app.addr,
        ));
        let old_leaf = trellis_certs::inspect_file(&cert).unwrap().remove(0);
        let fe = mesh_client(Some(frontend));
        Self { pki, cert, key, _app: app, mesh, proxy, old_leaf, fe }
    }
}

/// Polls (every 50 ms, for at most `limit`) until `mesh` presents the leaf `sha256`; how
/// long that took. A failed handshake fails the test.
async fn presents_within(
    mesh: SocketAddr,
    fe: &Arc<rustls::ClientConfig>,
    sha256: &str,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= limit {
        // Every handshake must succeed meanwhile: the old identity serves until the new one.
        if presented(mesh, fe).await.expect("handshake during the rotation") == sha256 {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_rotation_under_load_fails_no_request() {
    within(Duration::from_secs(40), async {
        let Checkout { pki, cert, key, _app, mesh, proxy, old_leaf, fe } = Checkout::start().await;
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
        let took = presents_within(mesh, &fe, &new_leaf.sha256, secs(3))
            .await
            .unwrap_or_else(|| panic!("new leaf never presented: {}", log_tail(&proxy, 20)));
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
        let Checkout { pki, cert, key, _app, mesh, proxy, old_leaf, fe } = Checkout::start().await;
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
        assert!(presents_within(mesh, &fe, &new_leaf.sha256, secs(3)).await.is_some(), "{}", log_tail(&proxy, 10));
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
            &config::identity(&ccert, &ckey, &cbundle),
            &[("inbound", inbound, Some("authz"))],
            app.addr,
        ));
        let frontend =
            Proxy::start(&outbound_config(&config::identity(&fcert, &fkey, &fbundle), outbound, inbound, CHECKOUT));

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
            Proxy::start(&outbound_config(&config::identity(&fcert, &fkey, &fbundle), outbound2, inbound, CHECKOUT));
        let got = Client::h1(outbound2).await.get("/api/fresh").await;
        assert_eq!(got.status, 200, "{}", got.text());
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
            let mut b =
                config::Bootstrap { identity: Some(config::identity(cert, key, &pki.bundle())), ..config::bootstrap() };
            let mesh_listener =
                config::Listener { tls: Some(config::mesh_tls()), ..config::listener("mesh", mesh, &["all"]) };
            b.listeners.push(config::Listener { policy: Some("open".into()), ..mesh_listener });
            let terminate = config::terminate(&[(ecert.to_owned(), ekey.clone())]);
            b.listeners.push(config::Listener { tls: Some(terminate), ..config::listener("edge", edge, &["all"]) });
            b.routes.push(config::route("all", "/", "app"));
            b.clusters.push(config::cluster("app", config::ClusterProtocol::default(), &[app.addr]));
            b.policies.push(config::Policy {
                name: "open".into(),
                default: config::PolicyDefault::Allow,
                rules: vec![],
            });
            b.yaml()
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

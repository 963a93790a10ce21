//! Mesh identity end to end (DESIGN §4) against the real binary with real TLS and
//! certificates from `trellis-certs`: mTLS listeners authenticate clients and authorize
//! their SPIFFE IDs, plaintext and TLS 1.2 are refused, a sidecar pair multiplexes one mTLS
//! HTTP/2 connection and checks the server's identity, L4 mesh listeners close unauthorized
//! peers, and dot segments cannot escape a path rule. Rotation is in mtls_rotation.rs.
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
        let identity = config::identity(&cert, &key, &pki.bundle());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_port_speaks_only_tls13() {
    within(Duration::from_secs(30), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let frontend = pki.issue("frontend", FRONTEND, &[]);
        let app = Origin::echo("app").await;
        let mesh = listen_addr();
        let identity = config::identity(&cert, &key, &pki.bundle());
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
        let checkout = Proxy::start(
            &config::Bootstrap {
                access_log: Some(config::AccessLog { path: access.display().to_string() }),
                ..mesh::inbound(
                    &config::identity(&ccert, &ckey, &pki.bundle()),
                    &[("inbound", inbound, Some("authz"))],
                    app.addr,
                )
            }
            .yaml(),
        );
        let frontend = Proxy::start(&outbound_config(
            &config::identity(&fcert, &fkey, &pki.bundle()),
            outbound,
            inbound,
            CHECKOUT,
        ));

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
        let lines = access_log_lines(&access, 22).await;
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
            &config::identity(&ccert, &ckey, &pki.bundle()),
            &[("inbound", inbound, Some("authz"))],
            app.addr,
        ));
        let frontend = Proxy::start(&outbound_config(
            &config::identity(&fcert, &fkey, &pki.bundle()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mesh_listener_closes_unauthorized_peers() {
    within(Duration::from_secs(30), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let frontend = pki.issue("frontend", FRONTEND, &[]);
        let intruder = pki.issue("intruder", INTRUDER, &[]);
        let (echo, _task) = tcp_echo().await;
        let l4 = listen_addr();
        let mut b =
            config::Bootstrap { identity: Some(config::identity(&cert, &key, &pki.bundle())), ..config::bootstrap() };
        b.listeners.push(config::Listener {
            tls: Some(config::mesh_tls()),
            policy: Some("fe".into()),
            ..config::tcp_listener("l4", l4, "echo")
        });
        b.clusters.push(config::cluster("echo", config::ClusterProtocol::default(), &[echo]));
        b.policies.push(config::allow_from("fe", &[FRONTEND]));
        let yaml = b.yaml();
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
async fn dot_segments_do_not_escape_a_path_rule() {
    within(Duration::from_secs(20), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let frontend = pki.issue("frontend", FRONTEND, &[]);
        let app = Origin::echo("app").await;
        let mesh = listen_addr();
        let _proxy = Proxy::start(&inbound_config(
            &config::identity(&cert, &key, &pki.bundle()),
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

/// Each app is spoken to in its own protocol (DESIGN §9): the sidecars share one mTLS h2
/// connection, and the inbound's app cluster is `protocol: auto`. An HTTP/1.1 request (and
/// an h2c one, whose app's version is unknown) reaches an HTTP/1.1-only app as HTTP/1.1 —
/// it used to get h2 and a 502 "frame with invalid size" — while a gRPC request, which
/// needs h2, reaches an app that speaks it as h2. The header between the proxies saying
/// so never reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_pair_speaks_each_apps_own_protocol() {
    within(Duration::from_secs(40), async {
        let pki = Pki::new();
        let (ccert, ckey) = pki.issue("checkout", CHECKOUT, &[]);
        let (fcert, fkey) = pki.issue("frontend", FRONTEND, &[]);
        let h1_app = Origin::echo_h1_only("h1-only-app").await;
        let any_app = Origin::echo("h1-h2c-app").await;
        let (to_h1, to_any, out_h1, out_any) = (listen_addr(), listen_addr(), listen_addr(), listen_addr());
        let inbound_identity = config::identity(&ccert, &ckey, &pki.bundle());
        let inbound = |listen, app| {
            let mut b = inbound(&inbound_identity, &[("inbound", listen, Some("open"))], app);
            b.clusters[0].protocol = config::ClusterProtocol::Auto;
            b.yaml()
        };
        let _h1_side = Proxy::start(&inbound(to_h1, h1_app.addr));
        let _any_side = Proxy::start(&inbound(to_any, any_app.addr));
        let identity = config::identity(&fcert, &fkey, &pki.bundle());
        let _fe_h1 = Proxy::start(&outbound_config(&identity, out_h1, to_h1, CHECKOUT));
        let _fe_any = Proxy::start(&outbound_config(&identity, out_any, to_any, CHECKOUT));

        for (client, version) in [(Client::h1(out_h1).await, "HTTP/1.1"), (Client::h2(out_h1).await, "h2c")] {
            let mut client = client;
            let got = client.get("/api/orders").await;
            assert_eq!(got.status, 200, "{version} client: {}", got.text());
            let j = got.json();
            assert_eq!((j["origin"].as_str(), j["version"].as_str()), (Some("h1-only-app"), Some("HTTP/1.1")), "{j}");
            assert!(j["headers"].get("x-trellis-orig-proto").is_none(), "{j}");
        }
        let mut c = Client::h2(out_any).await;
        let grpc =
            http::Request::post("/pkg.Svc/Call").header("content-type", "application/grpc").body(full("")).unwrap();
        let got = c.fetch(grpc).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["version"], "HTTP/2.0", "{}", got.text());
    })
    .await;
}

/// `tls: { mode: permissive }` takes mTLS clients (with their identity) and plaintext ones
/// (without: the policy sees no peer), counting the plaintext connections; `mesh` next to
/// it stays strict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_listener_takes_plaintext_too_and_counts_it() {
    within(Duration::from_secs(40), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("checkout", CHECKOUT, &[]);
        let frontend = pki.issue("frontend", FRONTEND, &[]);
        let app = Origin::echo("app").await;
        let (open, guarded, strict) = (listen_addr(), listen_addr(), listen_addr());
        let mut b = inbound(
            &config::identity(&cert, &key, &pki.bundle()),
            &[("open", open, Some("open")), ("guarded", guarded, Some("authz")), ("strict", strict, Some("open"))],
            app.addr,
        );
        for l in &mut b.listeners[..2] {
            l.tls = Some(config::ListenerTls { mode: config::ListenerTlsMode::Permissive, ..Default::default() });
        }
        let access = tempfile::tempdir().unwrap();
        let log = access.path().join("access.log");
        b.access_log = Some(config::AccessLog { path: log.display().to_string() });
        let proxy = Proxy::start(&b.yaml());

        // mTLS: the caller's identity, as on a mesh listener.
        let (got, _) = tls_fetch(open, mesh_client(Some(frontend.clone())), "checkout", "GET", "/api/a").await.unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        // Plaintext, HTTP/1.1 and h2c: served, no identity.
        assert_eq!(Client::h1(open).await.get("/api/b").await.status, 200);
        assert_eq!(Client::h2(open).await.get("/api/c").await.status, 200);
        let lines = access_log_lines(&log, 3).await;
        let peer_ids: Vec<Option<&str>> = lines.iter().map(|l| l["peer_id"].as_str()).collect();
        assert_eq!(peer_ids, [Some(FRONTEND), None, None], "{lines:#?}");
        let v = wait_metric(&proxy, "trellis_inbound_plaintext_total", &[("listener", "open")], |v| v >= 2.0, secs(3));
        assert_eq!(v.await, Some(2.0));

        // A policy naming callers: plaintext has no identity, so it is denied (403); the
        // frontend over mTLS is let in.
        let got = Client::h1(guarded).await.get("/api/d").await;
        assert_eq!(got.status, 403, "{}", got.text());
        let (got, _) = tls_fetch(guarded, mesh_client(Some(frontend)), "checkout", "GET", "/api/d").await.unwrap();
        assert_eq!(got.status, 200, "{}", got.text());

        // `mesh` is strict: plaintext gets no response at all.
        let mut s = tokio::net::TcpStream::connect(strict).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /api/e HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(secs(5), s.read_to_end(&mut buf)).await;
        assert!(!String::from_utf8_lossy(&buf).starts_with("HTTP/"), "{}", String::from_utf8_lossy(&buf));
    })
    .await;
}

/// An endpoint with an `identity` is reached over mesh mTLS checking it, with no `tls`
/// block on its cluster (auto-mTLS); the wrong identity is a 502 naming the mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_identity_is_auto_mtls() {
    within(Duration::from_secs(40), async {
        let pki = Pki::new();
        let (ccert, ckey) = pki.issue("checkout", CHECKOUT, &[]);
        let (fcert, fkey) = pki.issue("frontend", FRONTEND, &[]);
        let app = Origin::echo("checkout-app").await;
        let (inbound, outbound) = (listen_addr(), listen_addr());
        let _checkout = Proxy::start(&inbound_config(
            &config::identity(&ccert, &ckey, &pki.bundle()),
            &[("inbound", inbound, Some("authz"))],
            app.addr,
        ));
        // The outbound sidecar's config with the cluster's `protocol` and `tls` lines taken
        // out and the identity put on the endpoint.
        let identity = config::identity(&fcert, &fkey, &pki.bundle());
        let expecting = |id: &str| {
            let mut b = mesh::outbound(&identity, outbound, inbound, CHECKOUT);
            let checkout = &mut b.clusters[0];
            (checkout.protocol, checkout.tls) = (config::ClusterProtocol::default(), None);
            checkout.endpoints[0].identity = Some(id.into());
            b.yaml()
        };
        let frontend = Proxy::start(&expecting(CHECKOUT));
        let got = Client::h1(outbound).await.get("/api/orders").await;
        assert_eq!(got.status, 200, "{} / {}", got.text(), log_tail(&frontend, 10));
        assert_eq!(got.json()["version"], "HTTP/1.1", "the app is spoken to in its own protocol");

        frontend.reload(&expecting(INTRUDER));
        let got = Client::h1(outbound).await.get("/api/orders").await;
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(got.header("x-trellis-error"), Some("upstream identity mismatch"), "{}", got.text());
    })
    .await;
}

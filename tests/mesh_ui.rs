#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The control plane's mesh page `/ui` (DESIGN §14) in headless Chromium: a real control
//! plane, two real sidecars with mTLS between them reporting their counters, traffic (some
//! of it answered 5xx), a config one proxy NACKs, and the rendered DOM checked for the
//! proxies, their acked versions, the NACK, and the edge's rate and error ratio; a screenshot.

use trellis_testkit::config::{self, Yaml};
use trellis_testkit::*;

use http::Request;
use std::time::{Duration, Instant};

/// `data-NAME="VALUE"` of the element whose `data-KEY="ID"` opens it, in a dumped DOM.
fn data_attr(dom: &str, key: &str, id: &str, name: &str) -> Option<String> {
    let at = dom.find(&format!("data-{key}=\"{id}\""))?;
    let tag = &dom[..at];
    let start = tag.rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let element = &dom[start..end];
    let needle = format!("data-{name}=\"");
    let v = &element[element.find(&needle)? + needle.len()..];
    Some(v[..v.find('"')?].to_owned())
}

/// Between Chromium and the control plane: every request is passed on as it came, but the
/// page's second `GET /v1/mesh` (its first periodic refresh) is held, the test told it
/// arrived, until the test releases it. Chromium's virtual time stands still while a fetch
/// is pending, so the page's 2 s timer is exercised without waiting 2 s, and the state the
/// refresh shows is the one the test set up while the request was held.
async fn refresh_gate(
    cp: std::net::SocketAddr,
) -> (Origin, tokio::sync::mpsc::Receiver<()>, tokio::sync::watch::Sender<bool>) {
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (arrived_tx, arrived) = tokio::sync::mpsc::channel(1);
    let (release, released) = tokio::sync::watch::channel(false);
    let meshes = std::sync::Arc::new(AtomicUsize::new(0));
    let gate = Origin::start(move |req: Request<hyper::body::Incoming>| {
        let (arrived_tx, mut released, meshes) = (arrived_tx.clone(), released.clone(), meshes.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if parts.uri.path() == "/v1/mesh" && meshes.fetch_add(1, Ordering::SeqCst) == 1 {
                let _ = arrived_tx.try_send(());
                let _ = released.wait_for(|r| *r).await;
            }
            let mut fwd = Request::builder().method(parts.method).uri(parts.uri.path_and_query().unwrap().as_str());
            for (k, v) in &parts.headers {
                fwd = fwd.header(k, v);
            }
            let got = Client::h1(cp).await.fetch(fwd.body(full(body)).unwrap()).await;
            let mut resp = http::Response::builder().status(got.status);
            for (k, v) in &got.headers {
                if k != http::header::CONTENT_LENGTH && k != http::header::TRANSFER_ENCODING {
                    resp = resp.header(k, v);
                }
            }
            resp.body(full(got.body)).unwrap()
        }
    })
    .await;
    (gate, arrived, release)
}

/// The acked version of each proxy, from `/v1/proxies`.
async fn acked(pair: &SidecarPair, id: &str) -> u64 {
    let proxies = pair.cp_get("/v1/proxies").await.json();
    let p = proxies["proxies"].as_array().unwrap().iter().find(|p| p["id"] == id && p["connected"] == true).cloned();
    p.and_then(|p| p["acked_version"].as_u64()).unwrap_or_else(|| panic!("{id} not acked: {proxies}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_shows_proxies_versions_and_the_mtls_edge_in_chromium() {
    let Some(chromium) = chromium("ui_shows_proxies_versions_and_the_mtls_edge_in_chromium") else { return };
    within(Duration::from_secs(90), async {
        // b's app answers `/fail` with 500, anything else 200.
        let app = Origin::start(|req: Request<hyper::body::Incoming>| async move {
            let status = if req.uri().path() == "/fail" { 500 } else { 200 };
            http::Response::builder().status(status).body(full("b-app")).unwrap()
        })
        .await;
        let pair = SidecarPair::start(app.addr, None).await;

        // Steady traffic a → b over mTLS while the page is looked at (bounded: at most 2,000
        // requests, 10 ms apart), one in five answered 500: the edge's rate and error ratio
        // are measured between two reports.
        let mut c = Client::h1(pair.a_out).await;
        for _ in 0..40 {
            assert_eq!(c.get("/work").await.status, 200);
        }
        let traffic = tokio::spawn(async move {
            for i in 0..2000 {
                let (path, want) = if i % 5 == 4 { ("/fail", 500) } else { ("/work", 200) };
                assert_eq!(c.get(path).await.status, want);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        let edge = loop {
            let mesh = pair.cp_get("/v1/mesh").await.json();
            let edge = mesh["edges"].as_array().unwrap().iter().find(|e| e["from"] == "a" && e["to"] == "b").cloned();
            if let Some(e) =
                edge.filter(|e| e["requests_total"].as_u64() >= Some(40) && e["error_ratio"].as_f64() > Some(0.0))
            {
                break e;
            }
            assert!(Instant::now() < deadline, "no a → b edge with the traffic and its errors: {mesh}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(edge["mtls"], true, "{edge}");
        assert_eq!(edge["known_service"], true, "{edge}");
        assert!(edge["errors_total"].as_u64() >= Some(1), "{edge}");

        // A config only b's proxy can tell is bad (a collector CA file not on its host): b NACKs it.
        let missing = "/nonexistent/trellis-ui-test-ca.pem";
        let bad = serde_json::json!({ "service": "b",
            "tracing": { "otlp": { "endpoint": "https://localhost:4317", "ca_file": missing } } });
        let put = pair.cp.put_with_token(&pair.token, "telemetry", "b-tracing", bad).await;
        assert!(put.status.is_success(), "{}", put.text());
        let field = "telemetry[b-tracing].tracing.otlp.ca_file";
        let deadline = Instant::now() + Duration::from_secs(10);
        let nack = loop {
            let proxies = pair.cp_get("/v1/proxies").await.json();
            let b = proxies["proxies"].as_array().unwrap().iter().find(|p| p["id"] == "b-0").cloned().unwrap();
            if b["last_nack"]["error"].as_str().is_some_and(|e| e.contains(field)) {
                break b["last_nack"].clone();
            }
            assert!(Instant::now() < deadline, "b never NACKed: {proxies}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };

        // The page, with the token in the URL fragment (it never reaches the server).
        let url = format!("{}/ui#token={}", pair.cp.api_url(), pair.token);
        let (va, vb) = (acked(&pair, "a-0").await, acked(&pair, "b-0").await);
        let dom = blocking(|| headless_chromium(chromium, &url, Duration::from_secs(3), &["--dump-dom"]));
        assert_eq!(data_attr(&dom, "proxy", "a-0", "acked").as_deref(), Some(va.to_string().as_str()), "{dom}");
        assert_eq!(data_attr(&dom, "proxy", "b-0", "acked").as_deref(), Some(vb.to_string().as_str()), "{dom}");
        let rate: f64 = data_attr(&dom, "edge", "a|b", "rate").unwrap_or_default().parse().unwrap_or(0.0);
        assert!(rate > 0.0, "no request rate on a → b in the page: {dom}");
        let ratio: f64 = data_attr(&dom, "edge", "a|b", "error-ratio").unwrap_or_default().parse().unwrap_or(0.0);
        assert!(ratio > 0.0 && ratio <= 1.0, "no error ratio on a → b in the page: {dom}");
        let row = &dom[dom.find("data-edge=\"a|b\"").unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        let percent = row.split(" %<").next().and_then(|r| r.rsplit('>').next()).and_then(|p| p.parse::<f64>().ok());
        assert!(percent.is_some_and(|p| (p - 100.0 * ratio).abs() <= 0.051), "the error ratio is not shown: {row}");
        // b's NACK, in its row (and a has none).
        let shown = data_attr(&dom, "proxy", "b-0", "nack").unwrap_or_default();
        assert!(shown.contains(field) && shown.contains(missing), "b's NACK not in the page: {dom}");
        assert!(dom.contains(&format!("v{}: ", nack["version"])), "the NACKed version is not shown: {dom}");
        assert_eq!(data_attr(&dom, "proxy", "a-0", "nack").as_deref(), Some(""), "{dom}");
        assert!(dom.contains(">mTLS<"), "{dom}");
        assert!(dom.contains(">connected<"), "{dom}");
        assert!(dom.contains("data-near-expiry"), "no certificates in the page: {dom}");

        // A config change reaches an open page by its own periodic refresh: the page loads
        // (its first /v1/mesh passes), its refresh is held while a's acked version moves,
        // then let through; the DOM at the end shows the new version.
        let (gate, mut arrived, release) = refresh_gate(pair.cp.api).await;
        let gated = format!("http://{}/ui#token={}", gate.addr, pair.token);
        let page = tokio::task::spawn_blocking(move || {
            headless_chromium(chromium, &gated, Duration::from_secs(5), &["--dump-dom"])
        });
        tokio::time::timeout(Duration::from_secs(30), arrived.recv())
            .await
            .expect("the page never refreshed /v1/mesh")
            .unwrap();
        let to_b = serde_json::json!({ "backends": [{ "cluster": "b" }], "timeout": "9s" });
        assert!(pair.cp.put_with_token(&pair.token, "routes", "to-b", to_b).await.status.is_success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let va2 = loop {
            let v = acked(&pair, "a-0").await;
            if v > va {
                break v;
            }
            assert!(Instant::now() < deadline, "a never acked the change");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        release.send(true).unwrap();
        let dom = page.await.unwrap();
        assert_eq!(data_attr(&dom, "proxy", "a-0", "acked").as_deref(), Some(va2.to_string().as_str()), "{dom}");

        // A screenshot while traffic flows: a PNG of the rendered page. With
        // TRELLIS_UI_SCREENSHOT=docs/ui.png it is also kept there (the one in the docs).
        let shots = tempfile::tempdir().unwrap();
        let png = shots.path().join("ui.png");
        let shot = format!("--screenshot={}", png.display());
        blocking(|| headless_chromium(chromium, &url, Duration::from_secs(3), &[&shot, "--window-size=1280,1100"]));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
        assert!(bytes.len() > 1024 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {} bytes", bytes.len());
        if let Some(path) = std::env::var_os("TRELLIS_UI_SCREENSHOT") {
            std::fs::copy(&png, &path).unwrap();
        }
        traffic.abort();

        // Without the token: the page asks for it and shows no data; the data is refused.
        let dom = blocking(|| {
            headless_chromium(chromium, &format!("{}/ui", pair.cp.api_url()), Duration::from_secs(3), &["--dump-dom"])
        });
        assert!(!dom.contains("data-proxy=\"a-0\""), "{dom}");
        assert!(dom.contains("data-state=\"unauthorized\""), "{dom}");
        let mut anonymous = Client::h1(pair.cp.api).await;
        assert_eq!(anonymous.get("/v1/mesh").await.status, 401);
        let mut wrong = Client::h1(pair.cp.api).await;
        let req = Request::get("/v1/mesh").header("authorization", "Bearer nope").body(full("")).unwrap();
        assert_eq!(wrong.fetch(req).await.status, 401);
    })
    .await;
}

/// The page's files are the binary's own, with a policy that forbids fetching anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_files_are_served_without_the_token_and_hold_no_data() {
    within(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t0k3n").unwrap();
        let token = dir.path().join("token").display().to_string();
        let cp = blocking(|| {
            ControlPlane::start_with(&dir.path().join("cp"), listen_addr(), listen_addr(), &["--token-file", &token])
        });
        let mut c = Client::h1(cp.api).await;
        let page = c.get("/ui").await;
        assert_eq!(page.status, 200);
        assert!(page.header("content-type").unwrap().starts_with("text/html"));
        let csp = page.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
        assert!(page.text().contains("/ui/ui.js"));
        assert_eq!(c.get("/ui/ui.js").await.status, 200);
        assert_eq!(c.get("/ui/ui.css").await.status, 200);
        // Nothing else under /ui is public.
        assert_eq!(c.get("/ui/other").await.status, 401);
        assert_eq!(c.get("/v1/mesh").await.status, 401);
    })
    .await;
}

/// `Stats/Report` refuses a caller without the token, a node with no discovery stream here,
/// and a report over its bounds; a connected node's report is taken and answered with the
/// interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_reports_are_refused_without_token_stream_or_within_bounds() {
    use trellis_api::discovery::stats_client::StatsClient;
    use trellis_api::discovery::{ClusterCounters, StatsReport};
    within(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "t0k3n").unwrap();
        let token = token_file.display().to_string();
        let cp = blocking(|| {
            ControlPlane::start_with(&dir.path().join("cp"), listen_addr(), listen_addr(), &["--token-file", &token])
        });
        let mut b = config::discovery_bootstrap(cp.xds, "p1", "svc");
        b.drain_timeout = Some(config::ms(1000));
        b.control_plane.as_mut().unwrap().token_file = Some(token.clone());
        let _proxy = blocking(|| Proxy::start(&b.yaml()));
        let channel = tonic::transport::Endpoint::from_shared(cp.xds_url()).unwrap().connect().await.unwrap();
        let with_token = |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", "Bearer t0k3n".parse().unwrap());
            Ok(req)
        };
        let report = |node: &str, clusters: usize| StatsReport {
            node_id: node.into(),
            clusters: (0..clusters)
                .map(|i| ClusterCounters { cluster: format!("c{i}"), requests: 1, ..Default::default() })
                .collect(),
            certificates: vec![],
        };

        let mut anonymous = StatsClient::new(channel.clone());
        let err = anonymous.report(report("p1", 1)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

        let mut client = StatsClient::with_interceptor(channel, with_token);
        let err = client.report(report("ghost", 1)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        let err = client.report(report("p1", 1025)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("1025 clusters"), "{err}");
        let reply = client.report(report("p1", 1)).await.unwrap().into_inner();
        assert_eq!(reply.interval_ms, 10_000);
    })
    .await;
}

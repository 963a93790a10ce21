//! HTTP/3 on edge listeners (DESIGN §11) against the real binary, with aioquic as the
//! client (`tests/h3_client.py`): requests and responses streamed both ways, trailers,
//! SSE, certificates by SNI, `alt-svc` over TCP, 0-RTT (safe methods early, others 425),
//! hot reload, drain with GOAWAY, the access log and metrics. Bad input (garbage datagrams,
//! stream floods) is in `http3_abuse.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{self, ClusterProtocol, Yaml};
use trellis_testkit::*;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const EDGE_A: &str = "spiffe://trellis.local/ns/edge/sa/a";
const EDGE_B: &str = "spiffe://trellis.local/ns/edge/sa/b";
const MIB: usize = 1024 * 1024;

fn edge_yaml(listen: SocketAddr, certs: &[(PathBuf, PathBuf)], app: SocketAddr) -> String {
    h3_edge(listen, certs, app).yaml()
}

/// [`h3_edge`] with its TLS settings changed by `tls`.
fn edge_yaml_with(
    listen: SocketAddr,
    certs: &[(PathBuf, PathBuf)],
    app: SocketAddr,
    tls: impl FnOnce(&mut config::ListenerTls),
) -> String {
    let mut b = h3_edge(listen, certs, app);
    tls(b.listeners[0].tls.as_mut().unwrap());
    b.yaml()
}

/// Byte `i` of every generated body (the client's `bytes(range(256))` pattern).
fn pattern(i: usize) -> u8 {
    (i % 256) as u8
}

fn sha256_hex(data: &[u8]) -> String {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hash = suite.tls13().unwrap().common.hash_provider.hash(data);
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The application behind the edge:
/// - `/upload`: reads the body as it streams, checks the pattern, and once 4 MiB are in
///   creates the file named in `x-resume-file`; answers `{body_len, pattern_ok}`.
/// - `/big?n=N`: N pattern bytes in 64 KiB chunks.
/// - `/sse`: five events 300 ms apart, then the end.
/// - `/slow[?mark=FILE]`: the echo after 1 s (creating FILE when the request arrives).
/// - anything else: a JSON echo (method, path, version, headers, body_len, request
///   trailers); with `x-want-trailers`, the response ends with trailers.
async fn app(req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/upload" => upload(req).await,
        "/big" => {
            let n: usize = req.uri().query().and_then(|q| q.strip_prefix("n=")?.parse().ok()).unwrap_or(0);
            let (tx, body) = chan_body();
            tokio::spawn(async move {
                let mut at = 0;
                while at < n {
                    let len = (n - at).min(64 * 1024);
                    let chunk: Vec<u8> = (at..at + len).map(pattern).collect();
                    if tx.send(Bytes::from(chunk)).await.is_err() {
                        return;
                    }
                    at += len;
                }
            });
            Response::new(body)
        }
        "/sse" => {
            let (tx, body) = chan_body();
            tokio::spawn(async move {
                for n in 0..5 {
                    if tx.send(Bytes::from(format!("data: event {n}\n\n"))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
            Response::builder().header("content-type", "text/event-stream").body(body).unwrap()
        }
        "/slow" => {
            // `?mark=FILE`: the file tells the test the request has arrived.
            if let Some(mark) = req.uri().query().and_then(|q| q.strip_prefix("mark=")) {
                std::fs::write(mark, b"here").unwrap();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            echo(req).await
        }
        _ => echo(req).await,
    }
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Ok(collected) = body.collect().await else {
        return Response::builder().status(400).body(full("request body failed")).unwrap();
    };
    let trailers: serde_json::Map<String, Value> = collected
        .trailers()
        .map(|t| t.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into())).collect())
        .unwrap_or_default();
    let body = collected.to_bytes();
    let headers: serde_json::Map<String, Value> =
        parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into())).collect();
    let j = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
        "trailers": trailers,
    })
    .to_string();
    if !parts.headers.contains_key("x-want-trailers") {
        return Response::builder().header("content-type", "application/json").body(full(j)).unwrap();
    }
    let mut t = http::HeaderMap::new();
    t.insert("x-checksum", body.len().to_string().parse().unwrap());
    t.insert("x-end", "done".parse().unwrap());
    let frames = vec![Ok(Frame::data(Bytes::from(j))), Ok(Frame::trailers(t))];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    Response::builder().header("content-type", "application/json").body(body.boxed()).unwrap()
}

async fn upload(req: Request<Incoming>) -> Response<Body> {
    let resume = req.headers().get("x-resume-file").and_then(|v| v.to_str().ok()).map(PathBuf::from);
    let mut body = req.into_body();
    let (mut len, mut ok) = (0usize, true);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else { continue };
        ok &= data.iter().enumerate().all(|(i, b)| *b == pattern(len + i));
        len += data.len();
        if len >= 4 * MIB
            && let Some(f) = &resume
            && !f.exists()
        {
            std::fs::write(f, b"go").unwrap();
        }
    }
    Response::new(full(json!({ "body_len": len, "pattern_ok": ok }).to_string()))
}

/// The first connection's responses.
fn responses(result: &Value) -> &Vec<Value> {
    let conn = &result["connections"][0];
    assert!(conn["error"].is_null(), "client failed: {result}");
    conn["responses"].as_array().unwrap()
}

fn body_json(resp: &Value) -> Value {
    serde_json::from_str(resp["body"].as_str().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_trailers_and_observability() {
    with_h3_client("requests_trailers_and_observability", Duration::from_secs(60), async {
        let pki = Pki::new();
        let certs = [pki.issue("edge", EDGE_A, &["edge.test"])];
        let app = Origin::start(app).await;
        let edge = listen_addr();
        let log = pki.path("access.log");
        let mut b = h3_edge(edge, &certs, app.addr);
        b.access_log = Some(config::AccessLog { path: log.display().to_string() });
        let proxy = Proxy::start(&b.yaml());
        // 70 KB of headers (aioquic sends no single value that long), over the 64 KiB default.
        let big_head: serde_json::Map<String, Value> =
            (0..10).map(|i| (format!("x-big-{i}"), "a".repeat(7000).into())).collect();

        let got = h3_client(h3_plan(
            edge,
            "edge.test",
            Some(&pki.bundle()),
            json!([{ "requests": [
                { "method": "GET", "path": "/get?q=1", "headers": { "x-test": "yes" } },
                { "method": "POST", "path": "/post", "body": "hello h3",
                  "headers": { "content-type": "text/plain", "x-want-trailers": "1" },
                  "trailers": { "x-request-trailer": "t1" } },
                { "method": "GET", "path": "/big?n=10485760" },
                { "method": "GET", "path": "/big?n=0" },
                // Bad input: a body shorter than its content-length, a header block over
                // max_header_bytes.
                { "method": "POST", "path": "/short", "body": "12345", "headers": { "content-length": "10" } },
                { "method": "GET", "path": "/huge-head", "headers": big_head },
            ]}]),
        ))
        .await;
        let conn = &got["connections"][0];
        assert_eq!(conn["alpn"], "h3", "{got}");
        assert_eq!(conn["peer_cert"]["uri"][0], EDGE_A, "{got}");
        let r = responses(&got);

        assert_eq!(r[0]["status"], 200, "{got}");
        assert!(r[0]["headers"].get("alt-svc").is_none(), "no alt-svc over h3: {got}");
        let j = body_json(&r[0]);
        assert_eq!(j["path"], "/get?q=1");
        assert_eq!(j["version"], "HTTP/2.0", "protocol: http2 upstream for an h3 client");
        assert_eq!(j["headers"]["x-test"], "yes");
        assert_eq!(j["headers"]["x-forwarded-proto"], "https");
        assert!(j["headers"].get("early-data").is_none(), "{j}");

        // Request body and trailers upstream; response trailers back.
        assert_eq!(r[1]["status"], 200, "{got}");
        let j = body_json(&r[1]);
        assert_eq!(j["body_len"], 8);
        assert_eq!(j["trailers"]["x-request-trailer"], "t1", "{j}");
        assert_eq!(r[1]["trailers"]["x-checksum"], "8", "{got}");
        assert_eq!(r[1]["trailers"]["x-end"], "done", "{got}");

        // A 10 MiB response, whole and in order.
        assert_eq!(r[2]["status"], 200);
        assert_eq!(r[2]["body_len"], 10 * MIB);
        let want: Vec<u8> = (0..10 * MIB).map(pattern).collect();
        assert_eq!(r[2]["body_sha256"], sha256_hex(&want));

        // An empty response: no DATA frame at all. (Not HEAD: aioquic's client checks
        // content-length against the data even there.)
        assert_eq!(r[3]["status"], 200);
        assert_eq!(r[3]["body_len"], 0);

        // The short body is malformed (RFC 9114 §4.1.2): the upstream stream is reset, so
        // the app never takes it as whole, and the client gets the proxy's error. (Which
        // side the error names is the shared forwarding path's: today "upstream reset".)
        assert!(r[4]["status"].as_u64().is_some_and(|s| s >= 400), "{got}");
        assert!(r[4]["headers"].get("x-trellis-error").is_some(), "{got}");
        assert_eq!(r[5]["status"], 431, "{got}");
        assert_eq!(r[5]["headers"]["x-trellis-error"], "header block too large", "{got}");

        // A client that offers no ALPN the listener speaks fails its handshake, counted.
        let mut plan = h3_plan(edge, "edge.test", Some(&pki.bundle()), json!([{ "requests": [{ "path": "/" }] }]));
        plan["alpn"] = json!(["h3-29"]);
        plan["timeout"] = json!(5);
        let failed = h3_client(plan).await;
        assert!(failed["connections"][0]["error"].is_string(), "{failed}");
        let v = wait_metric(
            &proxy,
            "trellis_tls_handshake_errors_total",
            &[("listener", "edge"), ("reason", "incompatible")],
            |v| v >= 1.0,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(v, Some(1.0), "{}", blocking(|| proxy.metrics()));

        // Access log: protocol HTTP/3; metrics: protocol="h3".
        let lines = access_log_lines(&log, 6).await;
        let post = lines.iter().find(|l| l["path"] == "/post").unwrap_or_else(|| panic!("{lines:?}"));
        assert_eq!(post["protocol"], "HTTP/3", "{post}");
        assert_eq!(post["status"], 200);
        assert_eq!(post["listener"], "edge");
        let big = lines.iter().find(|l| l["path"] == "/big?n=10485760").unwrap();
        assert_eq!(big["bytes_sent"], 10 * MIB);
        let m = blocking(|| proxy.metrics());
        let h3 = metric_value(&m, "trellis_downstream_requests_total", &[("listener", "edge"), ("protocol", "h3")]);
        assert_eq!(h3, Some(6.0), "{m}");
        let accepted =
            metric_value(&m, "trellis_http3_connections_total", &[("listener", "edge"), ("result", "accepted")]);
        // Both attempts were taken into a handshake; the h3-29 one then failed it.
        assert_eq!(accepted, Some(2.0), "{m}");
        let open = wait_metric(
            &proxy,
            "trellis_http3_connections",
            &[("listener", "edge")],
            |v| v == 0.0,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(open, Some(0.0), "the connection closed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_is_streamed_and_sse_arrives_event_by_event() {
    with_h3_client("large_upload_is_streamed_and_sse_arrives_event_by_event", Duration::from_secs(60), async {
        let pki = Pki::new();
        let certs = [pki.issue("edge", EDGE_A, &["edge.test"])];
        let app = Origin::start(app).await;
        let edge = listen_addr();
        let _proxy = Proxy::start(&edge_yaml(edge, &certs, app.addr));

        // The client stops after 6 MiB until the app has received 4 MiB: the proxy must
        // forward the body as it comes (its windows hold ~3 MiB), not wait for its end.
        let resume = pki.path("resume");
        let got = h3_client(h3_plan(
            edge,
            "edge.test",
            Some(&pki.bundle()),
            json!([{ "requests": [
                { "method": "POST", "path": "/upload", "body_size": 10 * MIB,
                  "headers": { "content-length": (10 * MIB).to_string(), "x-resume-file": resume.display().to_string() },
                  "pause_after": 6 * MIB, "resume_file": resume.display().to_string() },
                { "method": "GET", "path": "/sse" },
            ]}]),
        ))
        .await;
        let r = responses(&got);
        assert_eq!(r[0]["status"], 200, "{got}");
        let j = body_json(&r[0]);
        assert_eq!(j["body_len"], 10 * MIB, "{j}");
        assert_eq!(j["pattern_ok"], true, "{j}");

        // Five events, each in its own DATA frame as the app sent it, 300 ms apart: not
        // all at the end.
        assert_eq!(r[1]["status"], 200, "{got}");
        let times: Vec<f64> = r[1]["data_times"].as_array().unwrap().iter().map(|d| d["t"].as_f64().unwrap()).collect();
        let texts: Vec<&str> =
            r[1]["data_times"].as_array().unwrap().iter().map(|d| d["text"].as_str().unwrap_or("")).collect();
        assert_eq!(texts, (0..5).map(|n| format!("data: event {n}\n\n")).collect::<Vec<_>>(), "{got}");
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= 0.15, "events bunched together: {times:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_by_sni_and_alt_svc_over_tcp() {
    with_h3_client("certificates_by_sni_and_alt_svc_over_tcp", Duration::from_secs(60), async {
        let pki = Pki::new();
        let certs = [pki.issue("a", EDGE_A, &["a.example.com"]), pki.issue("b", EDGE_B, &["b.example.com"])];
        let app = Origin::start(app).await;
        let edge = listen_addr();
        let _proxy = Proxy::start(&edge_yaml(edge, &certs, app.addr));

        let conn = json!([{ "requests": [{ "path": "/sni" }] }]);
        for (name, id, verified) in [
            ("a.example.com", EDGE_A, true),
            ("b.example.com", EDGE_B, true),
            // No certificate for the name: the first one.
            ("other.example.org", EDGE_A, false),
        ] {
            let ca = verified.then(|| pki.bundle());
            let got = h3_client(h3_plan(edge, name, ca.as_deref(), conn.clone())).await;
            assert_eq!(responses(&got)[0]["status"], 200, "{name}: {got}");
            assert_eq!(got["connections"][0]["peer_cert"]["uri"][0], id, "{name}: {got}");
        }

        // The TCP side advertises HTTP/3 on the same port, over HTTP/1.1 and h2 (on the
        // responses of the listener's routes).
        let want = format!("h3=\":{}\"; ma=86400", edge.port());
        for alpn in [&b"http/1.1"[..], b"h2"] {
            let client = tls_client_config(&TlsClientOpts {
                roots: Some(pki.bundle()),
                alpn: vec![alpn.to_vec()],
                ..Default::default()
            });
            let mut c = TlsConn::open(edge, client, "a.example.com").await.unwrap();
            let got = c.get("/tcp").await.unwrap();
            assert_eq!(got.status, 200);
            assert_eq!(got.header("alt-svc"), Some(want.as_str()), "{alpn:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_takes_safe_methods_only() {
    with_h3_client("zero_rtt_takes_safe_methods_only", Duration::from_secs(60), async {
        let pki = Pki::new();
        let certs = [pki.issue("edge", EDGE_A, &["edge.test"])];
        let app = Origin::start(app).await;
        let (on, off) = (listen_addr(), listen_addr());
        let _on = Proxy::start(&edge_yaml_with(on, &certs, app.addr, |tls| tls.early_data = true));
        let _off = Proxy::start(&edge_yaml(off, &certs, app.addr));

        // A first connection gets a session ticket; the second resumes with it and sends
        // its first requests in 0-RTT, then one more once the handshake is done.
        let plan = |addr| {
            h3_plan(
                addr,
                "edge.test",
                Some(&pki.bundle()),
                json!([
                    { "requests": [{ "path": "/first" }] },
                    { "zero_rtt": true, "requests": [
                        { "method": "GET", "path": "/early-get" },
                        { "method": "POST", "path": "/early-post", "body": "x" },
                        { "method": "POST", "path": "/later-post", "body": "x", "after_handshake": true },
                    ]},
                ]),
            )
        };
        // Whether a request counts as early depends on whether the client's Finished has
        // been processed when its head is read, which a loaded machine may reorder: what
        // must always hold is that nothing unsafe goes upstream as early data. A run where
        // neither early request was taken early proves nothing, so it is tried again.
        let mut seen_early = false;
        for _ in 0..5 {
            let got = h3_client(plan(on)).await;
            let second = &got["connections"][1];
            assert_eq!(second["early_data_accepted"], true, "{got}");
            let r = second["responses"].as_array().unwrap();
            let marked = |r: &Value| body_json(r)["headers"].get("early-data").is_some();
            assert_eq!(r[0]["status"], 200, "{got}");
            match r[1]["status"].as_u64() {
                Some(425) => assert_eq!(r[1]["headers"]["x-trellis-error"], "too early", "{got}"),
                Some(200) => assert!(!marked(&r[1]), "an unsafe method went upstream as early data: {got}"),
                other => panic!("early POST: {other:?}: {got}"),
            }
            assert_eq!(r[2]["status"], 200, "{got}");
            assert!(!marked(&r[2]), "after the handshake: {got}");
            if marked(&r[0]) && r[1]["status"] == 425 {
                seen_early = true;
                break;
            }
        }
        assert!(seen_early, "no run had its early GET marked (RFC 8470) and its early POST refused with 425");

        // Off (the default): the ticket allows no early data; everything waits for the
        // handshake and is served.
        let got = h3_client(plan(off)).await;
        let second = &got["connections"][1];
        assert_eq!(second["early_data_accepted"], false, "{got}");
        let r = second["responses"].as_array().unwrap();
        let statuses: Vec<&Value> = r.iter().map(|r| &r["status"]).collect();
        assert_eq!(statuses, [200, 200, 200], "{got}");
        assert!(r.iter().all(|r| body_json(r)["headers"].get("early-data").is_none()), "{got}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_to_http3_and_a_removed_listener_stops() {
    with_h3_client("reload_applies_to_http3_and_a_removed_listener_stops", Duration::from_secs(60), async {
        let pki = Pki::new();
        let a = [pki.issue("a", EDGE_A, &["edge.test"])];
        let b = [pki.issue("b", EDGE_B, &["edge.test"])];
        let app = Origin::start(app).await;
        let other = Origin::echo("other").await;
        let edge = listen_addr();
        let proxy = Proxy::start(&edge_yaml(edge, &a, app.addr));
        let once = |path: &str| json!([{ "requests": [{ "path": path }] }]);
        let got = h3_client(h3_plan(edge, "edge.test", Some(&pki.bundle()), once("/one"))).await;
        assert_eq!(got["connections"][0]["peer_cert"]["uri"][0], EDGE_A, "{got}");

        // New certificate and a new upstream: the next connection sees both.
        proxy.reload(&edge_yaml(edge, &b, other.addr));
        let got = h3_client(h3_plan(edge, "edge.test", Some(&pki.bundle()), once("/two"))).await;
        assert_eq!(got["connections"][0]["peer_cert"]["uri"][0], EDGE_B, "{got}");
        assert_eq!(body_json(&responses(&got)[0])["origin"], "other", "{got}");

        // HTTP/3 off: the UDP side stops, the TCP side stays and stops advertising it.
        proxy.reload(&edge_yaml_with(edge, &b, other.addr, |tls| tls.http3 = false));
        let mut plan = h3_plan(edge, "edge.test", Some(&pki.bundle()), once("/three"));
        plan["timeout"] = json!(3);
        let got = h3_client(plan.clone()).await;
        assert!(got["connections"][0]["error"].is_string(), "HTTP/3 still answered: {got}");
        let client = tls_client_config(&TlsClientOpts {
            roots: Some(pki.bundle()),
            alpn: vec![b"http/1.1".to_vec()],
            ..Default::default()
        });
        let (tcp, _) = tls_fetch(edge, client, "edge.test", "GET", "/tcp").await.unwrap();
        assert_eq!(tcp.status, 200);
        assert_eq!(tcp.header("alt-svc"), None);

        // Back on, then the listener removed: nothing answers on UDP.
        proxy.reload(&edge_yaml(edge, &a, app.addr));
        let got = h3_client(h3_plan(edge, "edge.test", Some(&pki.bundle()), once("/four"))).await;
        assert_eq!(responses(&got)[0]["status"], 200, "{got}");
        let other_port = listen_addr();
        proxy.reload(&config::simple(other_port, app.addr, ClusterProtocol::Auto).yaml());
        let got = h3_client(plan).await;
        assert!(got["connections"][0]["error"].is_string(), "removed listener still answers: {got}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_goaway_and_finishes_requests_in_flight() {
    with_h3_client("drain_sends_goaway_and_finishes_requests_in_flight", Duration::from_secs(60), async {
        let pki = Pki::new();
        let certs = [pki.issue("edge", EDGE_A, &["edge.test"])];
        let app = Origin::start(app).await;
        let edge = listen_addr();
        let mut proxy = Proxy::start(&edge_yaml(edge, &certs, app.addr));

        // A request that takes 1 s, on a connection kept until the server closes it.
        let mark = pki.path("arrived");
        let path = format!("/slow?mark={}", mark.display());
        let plan = h3_plan(
            edge,
            "edge.test",
            Some(&pki.bundle()),
            json!([{ "requests": [{ "path": path }], "goaway_wait": true }]),
        );
        let client = tokio::spawn(h3_client(plan));
        assert!(
            wait_until(Duration::from_secs(20), || async { mark.exists() }).await,
            "the slow request never arrived"
        );
        proxy.signal("TERM");
        let got = client.await.unwrap();
        let conn = &got["connections"][0];
        assert_eq!(conn["goaway"], true, "{got}");
        assert_eq!(conn["responses"][0]["status"], 200, "the request in flight finished: {got}");
        assert!(conn["error"].is_null(), "the server closed the connection: {got}");
        assert_eq!(conn["closed"]["error_code"], 0x100, "H3_NO_ERROR: {got}");
        let status = blocking(move || proxy.wait_exit(Duration::from_secs(10)).map(|s| s.code()));
        assert_eq!(status, Some(Some(0)));
    })
    .await;
}

/// Cluster `protocol: auto` in front of an app that speaks only HTTP/1.1 (DESIGN §11): an
/// HTTP/3 client gets the app's answer, the app sees HTTP/1.1, and request bodies cross
/// with and without a length (the latter chunked upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_client_of_an_http1_only_app_gets_its_answer() {
    with_h3_client("an_http3_client_of_an_http1_only_app_gets_its_answer", Duration::from_secs(60), async {
        let pki = Pki::new();
        let certs = [pki.issue("edge", EDGE_A, &["edge.test"])];
        let app = Origin::echo_h1_only("h1-only-app").await;
        let edge = listen_addr();
        let mut b = h3_edge(edge, &certs, app.addr);
        b.clusters[0].protocol = ClusterProtocol::Auto;
        let proxy = Proxy::start(&b.yaml());

        let got = h3_client(h3_plan(
            edge,
            "edge.test",
            Some(&pki.bundle()),
            json!([{ "requests": [
                { "method": "GET", "path": "/orders?id=7" },
                { "method": "POST", "path": "/orders", "body": "no length given" },
                { "method": "POST", "path": "/sized", "body": "12345", "headers": { "content-length": "5" } },
            ]}]),
        ))
        .await;
        let r = responses(&got);
        let statuses: Vec<&Value> = r.iter().map(|r| &r["status"]).collect();
        assert_eq!(statuses, [200, 200, 200], "{got}\n{}", proxy.logs());
        for (resp, (method, path, len)) in
            r.iter().zip([("GET", "/orders?id=7", 0), ("POST", "/orders", 15), ("POST", "/sized", 5)])
        {
            let j = body_json(resp);
            assert_eq!(j["origin"], "h1-only-app", "{j}");
            assert_eq!(j["version"], "HTTP/1.1", "the app is spoken to in its own protocol: {j}");
            assert_eq!((j["method"].as_str(), j["path"].as_str()), (Some(method), Some(path)), "{j}");
            assert_eq!(j["body_len"], len, "{j}");
            assert_eq!(j["headers"]["x-forwarded-proto"], "https", "{j}");
        }
        let j = body_json(&r[1]);
        assert_eq!(j["headers"]["transfer-encoding"], "chunked", "a body of unknown length is chunked: {j}");
        let m = blocking(|| proxy.metrics());
        let h3 = metric_value(&m, "trellis_downstream_requests_total", &[("listener", "edge"), ("protocol", "h3")]);
        assert_eq!(h3, Some(3.0), "{m}");
    })
    .await;
}

/// The listener's policy holds over HTTP/3 as over TCP: a request no rule allows gets 403
/// (`x-trellis-error: forbidden`) and never reaches the app, counted in
/// `trellis_authz_denied_total`; an allowed one is served, on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denies_over_http3_before_the_app() {
    with_h3_client("policy_denies_over_http3_before_the_app", Duration::from_secs(60), async {
        let pki = Pki::new();
        let certs = [pki.issue("edge", EDGE_A, &["edge.test"])];
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let app = {
            let seen = seen.clone();
            Origin::start(move |req: Request<Incoming>| {
                seen.lock().unwrap().push(format!("{} {}", req.method(), req.uri().path()));
                echo(req)
            })
            .await
        };
        let edge = listen_addr();
        let mut b = h3_edge(edge, &certs, app.addr);
        b.listeners[0].policy = Some("edge-authz".into());
        // Default deny; GETs under /public/ allowed.
        let rule =
            config::PolicyRule { paths: vec!["/public/*".into()], methods: vec!["GET".into()], ..Default::default() };
        b.policies.push(config::Policy {
            name: "edge-authz".into(),
            default: config::PolicyDefault::Deny,
            rules: vec![rule],
        });
        let proxy = Proxy::start(&b.yaml());

        let got = h3_client(h3_plan(
            edge,
            "edge.test",
            Some(&pki.bundle()),
            json!([{ "requests": [
                { "method": "GET", "path": "/admin/users" },
                { "method": "POST", "path": "/public/form", "body": "x" },
                { "method": "GET", "path": "/public/page" },
            ]}]),
        ))
        .await;
        let r = responses(&got);
        for denied in &r[..2] {
            assert_eq!(denied["status"], 403, "{got}");
            assert_eq!(denied["headers"]["x-trellis-error"], "forbidden", "{got}");
        }
        assert_eq!(r[2]["status"], 200, "{got}");
        assert_eq!(body_json(&r[2])["path"], "/public/page");
        assert_eq!(*seen.lock().unwrap(), ["GET /public/page"], "denied requests never reach the app");
        let denied = metric_value(&blocking(|| proxy.metrics()), "trellis_authz_denied_total", &[("listener", "edge")]);
        assert_eq!(denied, Some(2.0));
    })
    .await;
}

/// `tls.http3_max_connections`: a listener limited to two serves two connections at once
/// and refuses a third (QUIC CONNECTION_REFUSED), counted as `result="refused"`; once the
/// two have closed, a new connection is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_listeners_limit_are_refused_and_counted() {
    with_h3_client("connections_over_the_listeners_limit_are_refused_and_counted", Duration::from_secs(60), async {
        let pki = Pki::new();
        let certs = [pki.issue("edge", EDGE_A, &["edge.test"])];
        let app = Origin::start(app).await;
        let edge = listen_addr();
        let mut b = h3_edge(edge, &certs, app.addr);
        b.listeners[0].tls.as_mut().unwrap().http3_max_connections = Some(2);
        let proxy = Proxy::start(&b.yaml());
        let plan = |path: &str, hold: bool, timeout: u64| {
            let mut p = h3_plan(
                edge,
                "edge.test",
                Some(&pki.bundle()),
                json!([{ "requests": [{ "path": path }], "goaway_wait": hold }]),
            );
            p["timeout"] = json!(timeout);
            p
        };

        // Two clients that each keep their connection open for 8 s after a request.
        let holders = [tokio::spawn(h3_client(plan("/one", true, 8))), tokio::spawn(h3_client(plan("/two", true, 8)))];
        let open = wait_metric(
            &proxy,
            "trellis_http3_connections",
            &[("listener", "edge")],
            |v| v >= 2.0,
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(open, Some(2.0), "{}", proxy.logs());
        let refused = h3_client(plan("/three", false, 3)).await;
        let conn = &refused["connections"][0];
        assert!(conn["error"].is_string() && conn["responses"].as_array().unwrap().is_empty(), "{refused}");
        let m = blocking(|| proxy.metrics());
        let count =
            |result| metric_value(&m, "trellis_http3_connections_total", &[("listener", "edge"), ("result", result)]);
        assert_eq!((count("accepted"), count("refused")), (Some(2.0), Some(1.0)), "{m}");

        for holder in holders {
            let got = holder.await.unwrap();
            assert_eq!(got["connections"][0]["responses"][0]["status"], 200, "{got}");
        }
        let open = wait_metric(
            &proxy,
            "trellis_http3_connections",
            &[("listener", "edge")],
            |v| v == 0.0,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(open, Some(0.0));
        let again = h3_client(plan("/four", false, 10)).await;
        assert_eq!(responses(&again)[0]["status"], 200, "{again}");
    })
    .await;
}

#[test]
fn bad_http3_config_is_refused_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    let yaml = "listeners:\n  - name: plain\n    address: \"127.0.0.1:1\"\n    tls: { mode: none, http3: true }\n    routes: []\n";
    std::fs::write(&config, yaml).unwrap();
    let (code, err) = trellis(&["proxy", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("listeners[plain].tls.http3: HTTP/3 needs mode terminate"), "{err}");
}

#[test]
fn a_busy_udp_port_fails_the_start_with_the_field() {
    let pki = Pki::new();
    let certs = [pki.issue("edge", EDGE_A, &["edge.test"])];
    let edge = listen_addr();
    // Held without SO_REUSEPORT: the proxy cannot share it.
    let _taken = std::net::UdpSocket::bind(edge).unwrap();
    let admin = listen_addr();
    let yaml = edge_yaml(edge, &certs, "127.0.0.1:9".parse().unwrap()).replace("{admin}", &admin.to_string());
    let config = pki.path("busy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let (code, err) = trellis(&["proxy", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("listeners[edge].tls.http3: cannot bind UDP"), "{err}");
}

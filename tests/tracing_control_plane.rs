//! Tracing configured from the control plane (DESIGN §14, `Telemetry` resources) and OTLP
//! collectors over TLS, end to end: the real `trellis control-plane` and `trellis proxy`
//! binaries, a real OTLP collector (`trellis_testkit::otlp`: OTLP/HTTP and OTLP/gRPC,
//! plaintext or TLS with certificates from our `certs` crate), resources written through
//! the REST API and `trellis ctl apply`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::otlp::Collector;
use trellis_testkit::*;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A listener on `listen` routing everything to `origin`, for proxies of `web`.
async fn serve_web(cp: &ControlPlane, listen: SocketAddr, origin: &Origin) {
    for (kind, name, body) in [
        ("clusters", "origin", json!({ "endpoints": [{ "address": origin.addr.to_string() }] })),
        ("routes", "all", json!({ "backends": [{ "cluster": "origin" }] })),
        ("listeners", "web", json!({ "address": listen.to_string(), "routes": ["all"] })),
    ] {
        let got = cp.put(kind, name, body).await;
        assert!(got.status.is_success(), "{kind}/{name}: {}", got.text());
    }
}

async fn put_telemetry(cp: &ControlPlane, name: &str, body: Value) {
    let got = cp.put("telemetry", name, body).await;
    assert!(got.status.is_success(), "telemetry/{name}: {}", got.text());
}

async fn delete(cp: &ControlPlane, path: &str) {
    let mut c = Client::h1(cp.api).await;
    let got = c.fetch(http::Request::delete(path).body(full("")).unwrap()).await;
    assert!(got.status.is_success(), "DELETE {path}: {}", got.text());
}

/// The proxy's applied `tracing` (`/config_dump`), `null` when it has none.
fn applied_tracing(proxy: &Proxy) -> Value {
    let dump: Value = serde_json::from_str(&admin_get(proxy.admin, "/config_dump").unwrap().1).unwrap();
    dump["config"]["tracing"].clone()
}

/// Waits until the proxy's applied tracing satisfies `ok`.
async fn wait_tracing(proxy: &Proxy, ok: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok(&applied_tracing(proxy)) {
        assert!(Instant::now() < deadline, "tracing not applied: {}\n{}", applied_tracing(proxy), proxy.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a request carrying a sampled `traceparent` of `trace`; whether the proxy made a
/// span for it (the upstream then sees the proxy's try as parent, not the client's span).
async fn traced(listen: SocketAddr, trace: u128) -> bool {
    let client_span = 0x1111_2222_3333_4444u64;
    let sent = format!("00-{trace:032x}-{client_span:016x}-01");
    let mut c = Client::h1(listen).await;
    let got = c.fetch(http::Request::get("/").header("traceparent", &sent).body(full("")).unwrap()).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = got.json()["headers"]["traceparent"].as_str().unwrap_or_default().to_owned();
    assert!(seen.starts_with(&format!("00-{trace:032x}-")), "the trace id goes upstream: {seen}");
    seen != sent
}

/// Plain requests (no `traceparent`): sampled by the proxy's ratio.
async fn requests(listen: SocketAddr, n: usize) {
    let mut c = Client::h1(listen).await;
    for _ in 0..n {
        assert_eq!(c.get("/").await.status, 200);
    }
}

/// Span export to `endpoint`, as a bootstrap's `tracing`.
fn tracing_to(
    endpoint: String,
    protocol: trellis_api::OtlpProtocol,
    ca_file: Option<String>,
    sample_ratio: Option<f64>,
) -> trellis_api::Tracing {
    trellis_api::Tracing { otlp: trellis_api::Otlp { endpoint, protocol, ca_file }, sample_ratio, max_queue: None }
}

fn of_trace(spans: &[opentelemetry_proto::tonic::trace::v1::Span], trace: u128) -> usize {
    spans.iter().filter(|s| s.trace_id == trace.to_be_bytes()).count()
}

/// A proxy without tracing in its bootstrap gets it from a mesh-wide Telemetry resource
/// and exports a server and a client span per request; a sample_ratio of 0 then stops
/// spans of new traces (a sampled parent is still honoured); deleting the resource turns
/// tracing off again. Every change applies without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_turns_tracing_on_changes_its_ratio_and_deleting_it_turns_it_off() {
    within(Duration::from_secs(60), async {
        let (cp, _dir) = ControlPlane::fresh();
        let collector = Collector::plain().await;
        let origin = Origin::echo("app").await;
        let listen = listen_addr();
        serve_web(&cp, listen, &origin).await;
        let proxy = blocking(|| Proxy::start(&cp.bootstrap("web-0", "web")));
        assert!(applied_tracing(&proxy).is_null());
        assert!(!traced(listen, 1).await, "no tracing before the Telemetry resource");

        let endpoint = format!("http://{}", collector.addr());
        let on = json!({ "tracing": { "otlp": { "endpoint": endpoint, "protocol": "http" }, "sample_ratio": 1.0 } });
        put_telemetry(&cp, "mesh", on).await;
        wait_tracing(&proxy, |t| t["otlp"]["endpoint"] == endpoint.as_str()).await;
        let pid = proxy.child.id();
        requests(listen, 5).await;
        assert_eq!(collector.spans.wait_count(10, Duration::from_secs(5)).await, 10, "{}", proxy.logs());
        let server = collector.spans.all().iter().filter(|s| s.kind == 2).count();
        assert_eq!(server, 5, "one server span per request");

        // Ratio 0: no span for new traces. The exporter is one FIFO queue: once a marker
        // request's spans (a sampled parent: still traced) arrived, anything the plain
        // requests made before it would have arrived too.
        let off = json!({ "tracing": { "otlp": { "endpoint": endpoint, "protocol": "http" }, "sample_ratio": 0.0 } });
        put_telemetry(&cp, "mesh", off).await;
        wait_tracing(&proxy, |t| t["sample_ratio"] == 0.0).await;
        let before = collector.spans.count();
        requests(listen, 20).await;
        assert!(traced(listen, 2).await, "a sampled parent is honoured at ratio 0");
        collector.spans.wait_count(before + 2, Duration::from_secs(5)).await;
        let spans = collector.spans.all();
        assert_eq!(spans.len() - before, 2, "only the marker's spans after ratio 0");
        assert_eq!(of_trace(&spans, 2), 2);

        // Deleted: back to the bootstrap, which has no tracing.
        delete(&cp, "/v1/telemetry/mesh").await;
        wait_tracing(&proxy, Value::is_null).await;
        assert!(!traced(listen, 3).await, "no span once the resource is gone");
        requests(listen, 5).await;
        tokio::time::sleep(Duration::from_millis(1200)).await; // two export intervals
        assert_eq!(collector.spans.count(), before + 2, "no spans after the delete");
        assert_eq!(proxy.child.id(), pid, "no restart");
    })
    .await;
}

/// A Telemetry resource selecting the proxy's service wins over its bootstrap's tracing
/// (another collector, gRPC instead of HTTP); deleting it falls back to the bootstrap's.
/// A proxy of another service keeps its bootstrap's tracing all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_telemetry_overrides_the_bootstrap_and_its_removal_falls_back() {
    within(Duration::from_secs(60), async {
        let (cp, _dir) = ControlPlane::fresh();
        let (from_file, from_cp) = (Collector::plain().await, Collector::plain().await);
        let origin = Origin::echo("app").await;
        let listen = listen_addr();
        serve_web(&cp, listen, &origin).await;
        let mut b = config::discovery_bootstrap(cp.xds, "web-0", "web");
        b.tracing =
            Some(tracing_to(format!("http://{}", from_file.addr()), trellis_api::OtlpProtocol::Http, None, Some(1.0)));
        let proxy = blocking(|| Proxy::start(&b.yaml()));
        assert!(traced(listen, 10).await);
        assert_eq!(from_file.spans.wait_count(2, Duration::from_secs(5)).await, 2);

        // A Telemetry for another service does not apply to this proxy.
        put_telemetry(&cp, "api", json!({ "service": "api" })).await;
        let grpc = format!("http://{}", from_cp.addr());
        put_telemetry(&cp, "web", json!({ "service": "web", "tracing": { "otlp": { "endpoint": grpc } } })).await;
        wait_tracing(&proxy, |t| t["otlp"]["endpoint"] == grpc.as_str()).await;
        assert!(traced(listen, 11).await);
        assert_eq!(from_cp.spans.wait_count(2, Duration::from_secs(5)).await, 2, "{}", proxy.logs());
        assert_eq!(of_trace(&from_cp.spans.all(), 11), 2, "over OTLP/gRPC to the control plane's collector");

        delete(&cp, "/v1/telemetry/web").await;
        wait_tracing(&proxy, |t| t["otlp"]["protocol"] == "http").await;
        assert!(traced(listen, 12).await);
        from_file.spans.wait_count(4, Duration::from_secs(5)).await;
        assert_eq!(of_trace(&from_file.spans.all(), 12), 2, "the bootstrap's collector again");
        assert_eq!(of_trace(&from_cp.spans.all(), 12), 0);
    })
    .await;
}

/// Switching a proxy to another collector loses no span queued for the first one: the
/// old exporter, released by the update, sends what it holds before it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_collectors_loses_no_queued_span() {
    within(Duration::from_secs(60), async {
        let (cp, _dir) = ControlPlane::fresh();
        let (first, second) = (Collector::plain().await, Collector::plain().await);
        let origin = Origin::echo("app").await;
        let listen = listen_addr();
        serve_web(&cp, listen, &origin).await;
        let proxy = blocking(|| Proxy::start(&cp.bootstrap("web-0", "web")));
        let to = |c: &Collector| json!({ "tracing": { "otlp": { "endpoint": format!("http://{}", c.addr()), "protocol": "http" } } });
        put_telemetry(&cp, "mesh", to(&first)).await;
        wait_tracing(&proxy, |t| !t.is_null()).await;
        // Spans wait up to 500 ms for a batch: these are most likely still queued when the
        // update lands.
        for trace in 60..70 {
            assert!(traced(listen, trace).await);
        }
        put_telemetry(&cp, "mesh", to(&second)).await;
        wait_tracing(&proxy, |t| t["otlp"]["endpoint"] == format!("http://{}", second.addr()).as_str()).await;
        assert!(traced(listen, 70).await);
        assert_eq!(first.spans.wait_count(20, Duration::from_secs(5)).await, 20, "{}", proxy.logs());
        second.spans.wait_count(2, Duration::from_secs(5)).await;
        assert_eq!(of_trace(&second.spans.all(), 70), 2);
        assert_eq!(of_trace(&first.spans.all(), 70), 0);
    })
    .await;
}

/// Invalid Telemetry resources are refused by the REST API with the field named, and
/// nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_telemetry_is_refused_with_the_field_named() {
    within(Duration::from_secs(30), async {
        let (cp, _dir) = ControlPlane::fresh();
        put_telemetry(&cp, "mesh", json!({ "tracing": { "otlp": { "endpoint": "http://127.0.0.1:4317" } } })).await;
        let cases = [
            (
                json!({ "tracing": { "otlp": { "endpoint": "http://c:4317" }, "sample_ratio": 2.0 } }),
                "telemetry[bad].tracing.sample_ratio",
            ),
            (
                json!({ "tracing": { "otlp": { "endpoint": "collector:4317" } } }),
                "telemetry[bad].tracing.otlp.endpoint",
            ),
            (
                json!({ "tracing": { "otlp": { "endpoint": "http://c:4317", "ca_file": "/ca.pem" } } }),
                "telemetry[bad].tracing.otlp.ca_file",
            ),
            (json!({ "tracing": { "otlp": { "endpoint": "http://c:1", "protcol": "http" } } }), "tracing.otlp.protcol"),
            (json!({ "service": "" }), "telemetry[bad].service"),
            // A second mesh-wide resource: which one applies would be ambiguous.
            (json!({}), "telemetry[bad].service"),
        ];
        for (i, (mut body, field)) in cases.into_iter().enumerate() {
            // The first ones select a service, so that only the field under test is wrong.
            if i < 4 {
                body["service"] = "web".into();
            }
            let got = cp.put("telemetry", "bad", body.clone()).await;
            assert_eq!(got.status, 400, "{body}: {}", got.text());
            let err = got.json();
            let named =
                err["field"].as_str().unwrap_or_default().to_owned() + " " + err["error"].as_str().unwrap_or("");
            assert!(named.contains(field), "{body}: expected {field} in {err}");
        }
        let mut c = Client::h1(cp.api).await;
        assert_eq!(c.get("/v1/telemetry/bad").await.status, 404, "nothing stored");
        let list = c.get("/v1/telemetry").await.json();
        assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    })
    .await;
}

/// `trellis ctl apply` takes `kind: Telemetry` documents like the other kinds, and `get`
/// prints them back.
#[test]
fn ctl_applies_and_gets_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_in(&dir.path().join("data"));
    let file = dir.path().join("telemetry.yaml");
    std::fs::write(
        &file,
        "kind: Telemetry\nname: web\nservice: web\ntracing:\n  otlp: { endpoint: \"https://otel.example:4317\", ca_file: /etc/trellis/otel-ca.pem }\n  sample_ratio: 0.05\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = trellis_command().arg("ctl").args(args).env("TRELLIS_SERVER", cp.api_url()).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (Some(0), "telemetry/web created\n"), "{err}");
    let (code, out, _) = run(&["get", "telemetry", "web"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("kind: Telemetry\n") && out.contains("sample_ratio: 0.05"), "{out}");

    std::fs::write(
        &file,
        "kind: Telemetry\nname: web\ntracing: { otlp: { endpoint: \"http://c:4317\" }, sample_ratio: 7 }\n",
    )
    .unwrap();
    let (code, _, err) = run(&["apply", "-f", file.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(err.contains("telemetry[web].tracing.sample_ratio"), "{err}");
}

/// A Telemetry resource the proxy cannot apply (its `ca_file` is not on the proxy's host:
/// only the proxy can tell) is NACKed, naming the resource and field, shown in
/// `/v1/proxies`, and the tracing before it keeps exporting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_the_proxy_cannot_apply_is_nacked_and_the_old_tracing_serves() {
    within(Duration::from_secs(60), async {
        let (cp, _dir) = ControlPlane::fresh();
        let collector = Collector::plain().await;
        let origin = Origin::echo("app").await;
        let listen = listen_addr();
        serve_web(&cp, listen, &origin).await;
        let proxy = blocking(|| Proxy::start(&cp.bootstrap("web-0", "web")));
        let endpoint = format!("http://{}", collector.addr());
        put_telemetry(&cp, "mesh", json!({ "tracing": { "otlp": { "endpoint": endpoint } } })).await;
        wait_tracing(&proxy, |t| t["otlp"]["endpoint"] == endpoint.as_str()).await;

        let missing = "/nonexistent/trellis-otel-ca.pem";
        let bad = json!({ "tracing": { "otlp": { "endpoint": "https://localhost:4317", "ca_file": missing } } });
        put_telemetry(&cp, "mesh", bad).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = String::new();
        while Instant::now() < deadline {
            seen = admin_get(cp.api, "/v1/proxies").unwrap().1;
            if seen.contains("telemetry[mesh].tracing.otlp.ca_file") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen.contains("telemetry[mesh].tracing.otlp.ca_file") && seen.contains(missing), "no NACK: {seen}");
        assert_eq!(applied_tracing(&proxy)["otlp"]["endpoint"], endpoint.as_str(), "the old tracing stays");
        assert!(traced(listen, 20).await);
        collector.spans.wait_count(2, Duration::from_secs(5)).await;
        assert_eq!(of_trace(&collector.spans.all(), 20), 2, "spans still go to the old collector");
    })
    .await;
}

/// `https://` collectors: OTLP/gRPC and OTLP/HTTP over TLS, the collector's certificate
/// (from our `certs` crate, naming `localhost`) trusted through `ca_file`. A collector whose
/// certificate does not chain to `ca_file` gets nothing: its exports fail, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_collectors_over_grpc_and_http_trust_ca_file() {
    within(Duration::from_secs(60), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("collector", "spiffe://trellis.local/ns/obs/sa/collector", &["localhost"]);
        let collector = Collector::tls(&cert, &key).await;
        let (cp, _dir) = ControlPlane::fresh();
        let origin = Origin::echo("app").await;
        let listen = listen_addr();
        serve_web(&cp, listen, &origin).await;
        let proxy = blocking(|| Proxy::start(&cp.bootstrap("web-0", "web")));
        let endpoint = format!("https://localhost:{}", collector.addr().port());
        let ca = pki.bundle().display().to_string();
        for (i, protocol) in ["grpc", "http"].into_iter().enumerate() {
            let t = json!({ "tracing": { "otlp": { "endpoint": endpoint, "protocol": protocol, "ca_file": ca } } });
            put_telemetry(&cp, "mesh", t).await;
            wait_tracing(&proxy, |t| t["otlp"]["protocol"] == protocol).await;
            let trace = 30 + i as u128;
            assert!(traced(listen, trace).await);
            assert_eq!(collector.spans.trace(trace, 2).await.len(), 2, "{protocol} over TLS: {}", proxy.logs());
        }

        // Another CA's bundle: the handshake fails, the spans are dropped and counted.
        let other = Pki::new();
        let t = json!({ "tracing": { "otlp": { "endpoint": endpoint, "protocol": "http",
                                              "ca_file": other.bundle().display().to_string() } } });
        put_telemetry(&cp, "mesh", t).await;
        wait_tracing(&proxy, |t| t["otlp"]["ca_file"] != ca.as_str()).await;
        let before = collector.spans.count();
        assert!(traced(listen, 40).await);
        let dropped = ("reason", "export_failed");
        let failed =
            wait_metric(&proxy, "trellis_trace_spans_dropped_total", &[dropped], |v| v >= 2.0, Duration::from_secs(15))
                .await;
        assert!(failed.is_some_and(|v| v >= 2.0), "{}", proxy.metrics());
        assert_eq!(collector.spans.count(), before, "an untrusted collector gets nothing");
        assert!(plain_logs(&proxy).contains("span export failed"), "{}", proxy.logs());
    })
    .await;
}

/// A bootstrap whose `tracing.otlp.ca_file` cannot be read is refused at start with the
/// field named; one with a good `ca_file` exports to the https:// collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_https_collector_with_a_bad_ca_file_is_a_config_error() {
    within(Duration::from_secs(60), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("collector", "spiffe://trellis.local/ns/obs/sa/collector", &["localhost"]);
        let collector = Collector::tls(&cert, &key).await;
        let origin = Origin::echo("app").await;
        let listen = listen_addr();
        let with_ca = |ca: &str| {
            let mut b = config::simple(listen, origin.addr, config::ClusterProtocol::Auto);
            b.tracing = Some(tracing_to(
                format!("https://localhost:{}", collector.addr().port()),
                trellis_api::OtlpProtocol::Grpc,
                Some(ca.to_owned()),
                None,
            ));
            b.yaml()
        };
        let junk = pki.path("junk.pem");
        std::fs::write(&junk, "not PEM\n").unwrap();
        let mut bad = blocking(|| Proxy::spawn(&with_ca(junk.to_str().unwrap()), &[]));
        let status = blocking(|| bad.wait_exit(Duration::from_secs(10))).expect("exits");
        assert!(!status.success());
        assert!(plain_logs(&bad).contains("tracing.otlp.ca_file"), "{}", bad.logs());

        let good = blocking(|| Proxy::start(&with_ca(pki.bundle().to_str().unwrap())));
        assert!(traced(listen, 50).await);
        assert_eq!(collector.spans.trace(50, 2).await.len(), 2, "{}", good.logs());
    })
    .await;
}

/// Without `ca_file`, an `https://` collector is trusted through the system's roots (here
/// `SSL_CERT_FILE`, which OpenSSL and the proxy read, names our CA's bundle); with no system
/// roots at all, the config is refused with the endpoint named and the way out said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ca_file_the_system_roots_are_trusted() {
    within(Duration::from_secs(60), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("collector", "spiffe://trellis.local/ns/obs/sa/collector", &["localhost"]);
        let collector = Collector::tls(&cert, &key).await;
        let origin = Origin::echo("app").await;
        let listen = listen_addr();
        let mut b = config::simple(listen, origin.addr, config::ClusterProtocol::Auto);
        b.tracing = Some(tracing_to(
            format!("https://localhost:{}", collector.addr().port()),
            trellis_api::OtlpProtocol::Http,
            None,
            None,
        ));
        let yaml = b.yaml();
        let bundle = pki.bundle().display().to_string();
        let proxy = blocking(|| Proxy::start_with_env(&yaml, &[("SSL_CERT_FILE", &bundle), ("SSL_CERT_DIR", "")]));
        assert!(traced(listen, 80).await);
        assert_eq!(collector.spans.trace(80, 2).await.len(), 2, "{}", proxy.logs());
        drop(proxy);

        let empty = pki.path("no-roots.pem");
        std::fs::write(&empty, "").unwrap();
        let empty = empty.display().to_string();
        let env = [("SSL_CERT_FILE", empty.as_str()), ("SSL_CERT_DIR", "/nonexistent-trellis-certs")];
        let mut bad = blocking(|| Proxy::spawn_with_env(&yaml, &[], &env));
        let status = blocking(|| bad.wait_exit(Duration::from_secs(10))).expect("exits");
        assert!(!status.success());
        let logs = plain_logs(&bad);
        assert!(logs.contains("tracing.otlp.endpoint") && logs.contains("give ca_file"), "{logs}");
    })
    .await;
}

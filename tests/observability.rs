#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Observability (DESIGN §14) through the real `trellis` binary: `/metrics` of the proxy and
//! of the control plane pass `promtool check metrics`.

use trellis_testkit::config::{self, Bootstrap, ClusterProtocol, RetryPolicy, Route, Tracing, Yaml};
use trellis_testkit::*;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// `promtool`, or `None` (with a message) when it is absent and not required.
fn promtool(test: &str) -> Option<&'static str> {
    let install = "Debian package `prometheus`: apt-get install prometheus";
    program_available(test, "promtool", "TRELLIS_REQUIRE_PROMTOOL", install).then_some("promtool")
}

/// Runs `promtool check metrics` on `text`; panics with its findings, if any.
fn check_metrics(promtool: &str, what: &str, text: &str) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && findings.trim().is_empty(), "promtool on {what}:\n{findings}\n---\n{text}");
}

/// Up to `attempts` tries on `on` (`connect_failure`, `gateway_error`, …), 1–2 ms apart.
fn quick_retry(attempts: u32, on: &[&str]) -> Option<RetryPolicy> {
    Some(config::part(json!({ "attempts": attempts, "on": on, "backoff": { "base": "1ms", "max": "2ms" } })))
}

/// Traffic that makes the proxy's families appear: answered requests, retries, an outlier
/// ejection, a connect error, a rate-limited request, then promtool on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_control_plane_metrics_pass_promtool() {
    let Some(promtool) = promtool("proxy_and_control_plane_metrics_pass_promtool") else { return };
    within(Duration::from_secs(60), async {
        let ok = Origin::echo("ok").await;
        let failing = Origin::start(|_req: Request<Incoming>| async {
            Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(full("down")).unwrap()
        })
        .await;
        let dead = listen_addr();
        let listen = listen_addr();
        let routes = vec![
            config::route("ok", "/ok", "ok"),
            Route {
                retry: quick_retry(3, &["connect_failure", "gateway_error"]),
                ..config::route("flaky", "/flaky", "flaky")
            },
            Route {
                rate_limit: Some(config::part(json!({ "requests_per_second": 1, "burst": 1 }))),
                ..config::route("limited", "/limited", "ok")
            },
        ];
        let mut flaky = config::cluster("flaky", ClusterProtocol::default(), &[failing.addr, dead]);
        flaky.outlier_detection =
            Some(config::part(json!({ "consecutive_gateway_errors": 2, "base_ejection": "30s" })));
        let clusters = vec![config::cluster("ok", ClusterProtocol::default(), &[ok.addr]), flaky];
        let yaml = config::serving(listen, routes, clusters).yaml();
        let proxy = blocking(|| Proxy::start(&yaml));
        let mut c = Client::h1(listen).await;
        for _ in 0..3 {
            assert_eq!(c.get("/ok").await.status, 200);
            c.get("/flaky").await;
            c.get("/limited").await;
        }
        let labels = [("listener", "in"), ("route", "ok"), ("cluster", "ok")];
        wait_metric(&proxy, "trellis_request_duration_seconds_count", &labels, |v| v >= 3.0, Duration::from_secs(3))
            .await;
        let text = blocking(|| proxy.metrics());
        for family in [
            "trellis_requests_total",
            "trellis_request_duration_seconds_bucket",
            "trellis_upstream_retries_total",
            "trellis_outlier_ejections_total",
            "trellis_upstream_connect_errors_total",
            "trellis_rate_limited_total",
            "trellis_downstream_connections_total",
        ] {
            assert!(text.contains(family), "{family} missing:\n{text}");
        }
        check_metrics(promtool, "the proxy's /metrics", &text);
        let exported = exported_names();
        for f in families(&text) {
            assert!(exported.contains(&f.as_str()), "{f} is served but not in telemetry::ALL");
        }

        // The control plane, with a proxy connected (its first push ACKed) and one write done.
        let (cp, _dir) = blocking(ControlPlane::fresh);
        let sidecar = blocking(|| Proxy::start(&cp.bootstrap("p1", "svc")));
        let cluster = serde_json::json!({ "endpoints": [{ "address": ok.addr.to_string() }] });
        assert!(cp.put("clusters", "c1", cluster).await.status.is_success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let (status, text) = admin_get(cp.api, "/metrics").unwrap();
            assert_eq!(status, 200, "{text}");
            let acked = metric_value(&text, "trellis_cp_acks_total", &[]).unwrap_or(0.0);
            if acked >= 1.0 || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(metric_value(&text, "trellis_cp_connected_proxies", &[]), Some(1.0), "{text}");
        assert!(metric_value(&text, "trellis_cp_pushes_total", &[]).unwrap() >= 1.0, "{text}");
        assert!(metric_value(&text, "trellis_cp_acks_total", &[]).unwrap() >= 1.0, "{text}");
        assert_eq!(metric_value(&text, "trellis_cp_nacks_total", &[]), Some(0.0), "{text}");
        assert!(metric_value(&text, "trellis_cp_push_duration_seconds_count", &[]).unwrap() >= 1.0, "{text}");
        let put = [("op", "put")];
        assert_eq!(metric_value(&text, "trellis_cp_store_write_duration_seconds_count", &put), Some(1.0), "{text}");
        assert!(metric_value(&text, "trellis_cp_config_revision", &[]).unwrap() >= 1.0, "{text}");
        check_metrics(promtool, "the control plane's /metrics", &text);
        for f in families(&text) {
            assert!(exported.contains(&f.as_str()), "{f} is served but not in metrics::ALL");
        }
        // The proxy that took its config from the control plane, too.
        check_metrics(promtool, "a discovery proxy's /metrics", &blocking(|| sidecar.metrics()));
        drop(sidecar);
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric_value(&admin_get(cp.api, "/metrics").unwrap().1, "trellis_cp_connected_proxies", &[]) != Some(0.0)
        {
            assert!(Instant::now() < deadline, "connected_proxies never went back to 0");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// With a token, the control plane's `/metrics` needs it like the rest of the REST API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_metrics_need_the_token() {
    within(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-token-0123456789\n").unwrap();
        let cp = blocking(|| {
            ControlPlane::start_with(
                &dir.path().join("cp"),
                listen_addr(),
                listen_addr(),
                &["--token-file", token.to_str().unwrap()],
            )
        });
        assert_eq!(admin_get(cp.api, "/metrics").unwrap().0, 401);
        let mut c = Client::h1(cp.api).await;
        let req =
            Request::get("/metrics").header("authorization", "Bearer s3cret-token-0123456789").body(full("")).unwrap();
        let got = c.fetch(req).await;
        assert_eq!(got.status, 200);
        assert!(got.text().contains("# TYPE trellis_cp_pushes_total counter"), "{}", got.text());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// OTLP tracing
// ---------------------------------------------------------------------------------------------

use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use trellis_testkit::otlp::Collector;

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn attr_str<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(AnyValue::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn attr_int(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(AnyValue::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn traced_config(listen: SocketAddr, origin: SocketAddr, tracing: Tracing) -> String {
    let route = Route { retry: quick_retry(3, &["gateway_error"]), ..config::route("r", "/", "up") };
    let cluster = config::cluster("up", ClusterProtocol::default(), &[origin]);
    Bootstrap {
        node: config::Node { id: "p1".into(), service: Some("front".into()), zone: None },
        tracing: Some(tracing),
        ..config::serving(listen, vec![route], vec![cluster])
    }
    .yaml()
}

/// A sampled `traceparent` from the client: the proxy's server span is its child, each try
/// (the first answered 503, the retry 200) is a client span of its own under the server
/// span, and the upstream saw, per try, a `traceparent` whose parent is that try's span.
/// An unsampled `traceparent` makes no span and reaches the upstream as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_spans_per_request_and_per_try_with_w3c_parentage() {
    within(Duration::from_secs(60), async {
        let collector = Collector::plain().await;
        let got = collector.spans.clone();
        // Every odd request fails (503): each traced request is retried once.
        let (origin, seen) = counting_origin(|n, _| {
            let status = if n % 2 == 1 { 503 } else { 200 };
            Response::builder().status(status).body(full("x")).unwrap()
        })
        .await;
        let listen = listen_addr();
        let tracing = config::otlp_http_tracing(collector.addr());
        let proxy = blocking(|| Proxy::start(&traced_config(listen, origin.addr, tracing)));
        let mut c = Client::h1(listen).await;
        let trace: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
        let parent: u64 = 0x00f067aa0ba902b7;
        let req = Request::get("/orders?id=7")
            .header("traceparent", format!("00-{trace:032x}-{parent:016x}-01"))
            .header("user-agent", "obs-test")
            .body(full(""))
            .unwrap();
        let resp = c.fetch(req).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-trellis-attempts"), Some("2"));

        let spans = got.trace(trace, 3).await;
        assert_eq!(spans.len(), 3, "{spans:#?}");
        let server: Vec<&Span> = spans.iter().filter(|s| s.kind == SpanKind::Server as i32).collect();
        let mut clients: Vec<&Span> = spans.iter().filter(|s| s.kind == SpanKind::Client as i32).collect();
        assert_eq!((server.len(), clients.len()), (1, 2), "{spans:#?}");
        let server = server[0];
        assert_eq!(server.parent_span_id, parent.to_be_bytes(), "the client's span is the server span's parent");
        assert_eq!(attr_str(server, "http.request.method"), Some("GET"));
        assert_eq!(attr_str(server, "url.path"), Some("/orders"));
        assert_eq!(attr_str(server, "url.query"), Some("id=7"));
        assert_eq!(attr_str(server, "user_agent.original"), Some("obs-test"));
        assert_eq!(attr_str(server, "network.protocol.version"), Some("1.1"));
        assert_eq!(attr_str(server, "trellis.listener"), Some("in"));
        assert_eq!(attr_str(server, "trellis.route"), Some("r"));
        assert_eq!(attr_str(server, "trellis.cluster"), Some("up"));
        assert_eq!(attr_str(server, "trellis.endpoint"), Some(origin.addr.to_string().as_str()));
        assert_eq!(attr_int(server, "http.response.status_code"), Some(200));
        assert!(server.end_time_unix_nano >= server.start_time_unix_nano);

        clients.sort_by_key(|s| s.start_time_unix_nano);
        for c in &clients {
            assert_eq!(c.parent_span_id, server.span_id, "each try is a child of the server span");
            assert_eq!(attr_str(c, "trellis.cluster"), Some("up"));
            assert_eq!(attr_int(c, "server.port"), Some(i64::from(origin.addr.port())));
        }
        assert_ne!(clients[0].span_id, clients[1].span_id);
        assert_eq!(attr_int(clients[0], "http.response.status_code"), Some(503));
        assert_eq!(attr_int(clients[0], "http.request.resend_count"), None);
        assert_eq!(clients[0].status.as_ref().map(|s| s.code), Some(2), "a 503 try is an error");
        assert_eq!(attr_int(clients[1], "http.response.status_code"), Some(200));
        assert_eq!(attr_int(clients[1], "http.request.resend_count"), Some(1));

        // What the upstream saw: per try, the trace and that try's span as parent.
        let sent: Vec<String> = seen
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _, _)| p.headers["traceparent"].to_str().unwrap().to_owned())
            .collect();
        assert_eq!(sent.len(), 2);
        for (tp, c) in sent.iter().zip(&clients) {
            let span_id = u64::from_be_bytes(c.span_id.as_slice().try_into().unwrap());
            assert_eq!(tp, &format!("00-{trace:032x}-{span_id:016x}-01"));
        }

        // Unsampled parent: passed on untouched, no span.
        let quiet: u128 = 0x11112222333344445555666677778888;
        let tp = format!("00-{quiet:032x}-{parent:016x}-00");
        let req = Request::get("/quiet").header("traceparent", &tp).body(full("")).unwrap();
        assert_eq!(c.fetch(req).await.status, 200);
        assert_eq!(seen.requests.lock().unwrap().last().unwrap().0.headers["traceparent"], tp.as_str());

        // No traceparent, ratio 1.0: a new trace whose root is the server span.
        assert_eq!(c.get("/fresh").await.status, 200);
        let last = seen.requests.lock().unwrap().last().unwrap().0.headers["traceparent"].to_str().unwrap().to_owned();
        let fresh = u128::from_str_radix(&last[3..35], 16).unwrap();
        let spans = got.trace(fresh, 3).await;
        let root = spans.iter().find(|s| s.kind == SpanKind::Server as i32).expect("server span");
        assert!(root.parent_span_id.is_empty(), "{root:?}");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(got.trace(quiet, 0).await.is_empty(), "an unsampled request made spans");
        let exported =
            wait_metric(&proxy, "trellis_trace_spans_exported_total", &[], |v| v >= 6.0, Duration::from_secs(3)).await;
        assert_eq!(exported, Some(6.0), "{}", proxy.metrics());
        check_metrics_if_present(&proxy.metrics());
    })
    .await;
}

fn check_metrics_if_present(text: &str) {
    if let Some(p) = promtool("otlp (metrics check)") {
        check_metrics(p, "the traced proxy's /metrics", text);
    }
}

/// OTLP/gRPC export at sample_ratio 0: only requests whose `traceparent` is sampled are
/// traced; others reach the upstream with an unsampled `traceparent` of their own.
/// A collector that is down loses spans, counted, and requests do not notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_export_honours_sampled_parents_and_counts_failed_exports() {
    within(Duration::from_secs(60), async {
        let collector = Collector::plain().await;
        let got = collector.spans.clone();
        let origin = Origin::echo("up").await;
        let listen = listen_addr();
        let tracing = config::part(
            json!({ "otlp": { "endpoint": format!("http://{}", collector.addr()) }, "sample_ratio": 0.0 }),
        );
        let proxy = blocking(|| Proxy::start(&traced_config(listen, origin.addr, tracing)));
        let mut c = Client::h2(listen).await;
        let got_echo = c.get("/unsampled").await;
        let tp = got_echo.json()["headers"]["traceparent"].as_str().unwrap().to_owned();
        assert!(tp.ends_with("-00"), "{tp}");
        let trace: u128 = 0xabcdef;
        let req = Request::get("/sampled")
            .header("traceparent", format!("00-{trace:032x}-{:016x}-01", 7))
            .body(full(""))
            .unwrap();
        let echo = c.fetch(req).await;
        assert_eq!(echo.status, 200);
        let spans = got.trace(trace, 2).await;
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).unwrap();
        let client = spans.iter().find(|s| s.kind == SpanKind::Client as i32).unwrap();
        assert_eq!(attr_str(server, "network.protocol.version"), Some("2"));
        assert_eq!(client.parent_span_id, server.span_id);
        let span_id = u64::from_be_bytes(client.span_id.as_slice().try_into().unwrap());
        assert_eq!(echo.json()["headers"]["traceparent"], format!("00-{trace:032x}-{span_id:016x}-01").as_str());
        let unsampled = u128::from_str_radix(&tp[3..35], 16).unwrap();
        assert!(got.trace(unsampled, 0).await.is_empty());

        // A collector that is gone: the request is answered, the spans are counted as lost.
        let dead = listen_addr();
        let tracing = config::part(json!({ "otlp": { "endpoint": format!("http://{dead}"), "protocol": "http" } }));
        let proxy2_listen = listen_addr();
        let proxy2 = blocking(|| Proxy::start(&traced_config(proxy2_listen, origin.addr, tracing)));
        let mut c2 = Client::h1(proxy2_listen).await;
        assert_eq!(c2.get("/lost").await.status, 200);
        let failed = [("reason", "export_failed")];
        let lost =
            wait_metric(&proxy2, "trellis_trace_spans_dropped_total", &failed, |v| v >= 2.0, Duration::from_secs(5))
                .await;
        assert_eq!(lost, Some(2.0), "{}", proxy2.metrics());
        drop(proxy);
    })
    .await;
}

/// A collector that takes the connection and never answers, and an export queue of one span:
/// once the exporter is stuck sending its first batch (the collector took its connection),
/// a burst of sampled requests fills the queue; the spans that do not fit are dropped and
/// counted as `queue_full`, and every request is answered without waiting for the exporter
/// (a stuck export holds for its 10 s limit; a request that waited on it would take that long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_export_queue_drops_spans_counted_and_requests_do_not_wait() {
    within(Duration::from_secs(60), async {
        let stalled = trellis_testkit::otlp::Stalled::start().await;
        let origin = Origin::echo("up").await;
        let listen = listen_addr();
        let tracing = config::part(json!({
            "otlp": { "endpoint": format!("http://{}", stalled.addr), "protocol": "http" },
            "sample_ratio": 1.0,
            "max_queue": 1,
        }));
        let proxy = blocking(|| Proxy::start(&traced_config(listen, origin.addr, tracing)));
        let mut c = Client::h1(listen).await;
        assert_eq!(c.get("/first").await.status, 200);
        // The first batch goes out within the exporter's 500 ms gathering window.
        assert_eq!(stalled.wait_accepted(1, Duration::from_secs(5)).await, 1, "the exporter never connected");

        const BURST: usize = 20;
        for i in 0..BURST {
            let started = Instant::now();
            assert_eq!(c.get(&format!("/burst/{i}")).await.status, 200);
            let took = started.elapsed();
            assert!(took < Duration::from_secs(5), "request {i} waited {took:?}: blocked behind the exporter?");
        }
        // Two spans a request (server + client), at most one of them queued.
        let full = [("reason", "queue_full")];
        let want = (2 * BURST - 1) as f64;
        let dropped =
            wait_metric(&proxy, "trellis_trace_spans_dropped_total", &full, |v| v >= want, Duration::from_secs(3))
                .await;
        assert!(dropped.is_some_and(|d| d >= want), "queue_full drops {dropped:?}:\n{}", proxy.metrics());
        assert_eq!(metric_value(&proxy.metrics(), "trellis_trace_spans_exported_total", &[]).unwrap_or(0.0), 0.0);
    })
    .await;
}

/// A hedged request whose first try stalls and whose hedge answers: both tries are client
/// spans under the server span, the first without `http.request.resend_count` (0: the
/// conventions set it only on resends), the hedge with 1; the first, given up when the hedge
/// won, is exported as cancelled (`error.type: cancelled`, status unset), ended when it was
/// given up rather than when its upstream would have answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_and_the_try_it_beat_are_separate_client_spans() {
    within(Duration::from_secs(60), async {
        let collector = Collector::plain().await;
        let got = collector.spans.clone();
        const STALL: Duration = Duration::from_secs(5);
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let origin = Origin::start(move |_req: Request<Incoming>| {
            let first = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move {
                if first {
                    tokio::time::sleep(STALL).await;
                }
                Response::builder().body(full(if first { "slow" } else { "hedge" })).unwrap()
            }
        })
        .await;
        let listen = listen_addr();
        let route =
            Route { hedge: Some(config::part(json!({ "delay": "100ms", "max": 1 }))), ..config::route("h", "/", "up") };
        let yaml = Bootstrap {
            tracing: Some(config::otlp_http_tracing(collector.addr())),
            ..config::serving(
                listen,
                vec![route],
                vec![config::cluster("up", ClusterProtocol::default(), &[origin.addr])],
            )
        }
        .yaml();
        let proxy = blocking(|| Proxy::start(&yaml));
        let mut c = Client::h1(listen).await;
        let trace: u128 = 0x5eed_0000_0000_0000_0000_0000_0000_0042;
        let req = Request::get("/hedged")
            .header("traceparent", format!("00-{trace:032x}-{:016x}-01", 9))
            .body(full(""))
            .unwrap();
        let resp = c.fetch(req).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "hedge");
        assert_eq!(resp.header("x-trellis-attempts"), Some("2"));

        let spans = got.trace(trace, 3).await;
        assert_eq!(spans.len(), 3, "{spans:#?}");
        let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).expect("server span");
        let mut tries: Vec<&Span> = spans.iter().filter(|s| s.kind == SpanKind::Client as i32).collect();
        tries.sort_by_key(|s| s.start_time_unix_nano);
        let [first, hedge] = tries[..] else { panic!("two client spans: {spans:#?}") };
        for t in [first, hedge] {
            assert_eq!(t.parent_span_id, server.span_id, "each try is a child of the server span");
            assert_eq!(attr_str(t, "trellis.cluster"), Some("up"));
        }
        assert_eq!(attr_int(first, "http.request.resend_count"), None, "the first try is no resend");
        assert_eq!(attr_int(hedge, "http.request.resend_count"), Some(1));
        assert_eq!(attr_int(hedge, "http.response.status_code"), Some(200));
        assert_eq!(hedge.status.as_ref().map_or(0, |s| s.code), 0, "{hedge:?}");

        assert_eq!(attr_str(first, "error.type"), Some("cancelled"), "{first:?}");
        assert_eq!(attr_int(first, "http.response.status_code"), None);
        assert_eq!(first.status.as_ref().map_or(0, |s| s.code), 0, "a cancelled try's status is unset: {first:?}");
        assert!(first.end_time_unix_nano >= hedge.end_time_unix_nano, "given up once the hedge answered");
        assert!(first.end_time_unix_nano <= server.end_time_unix_nano);
        let held = Duration::from_nanos(first.end_time_unix_nano - first.start_time_unix_nano);
        assert!(held < STALL, "the first try's span lasted {held:?}: ended by its upstream, not when given up");
        assert_eq!(attr_int(server, "http.response.status_code"), Some(200));
        drop(proxy);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard
// ---------------------------------------------------------------------------------------------

/// Every `# TYPE` family of a `/metrics` text.
fn families(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next().map(str::to_owned)).collect()
}

/// The metric names an exporter's families are declared under (constants the code uses).
fn exported_names() -> Vec<&'static str> {
    trellis_proxy::telemetry::ALL.iter().chain(trellis_control_plane::metrics::ALL).copied().collect()
}

/// `deploy/grafana/trellis.json` is a dashboard Grafana loads (the model's required fields,
/// every panel placed and queried) and every PromQL expression in it names only metrics
/// Trellis exports.
#[test]
fn grafana_dashboard_is_well_formed_and_queries_only_trellis_metrics() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/trellis.json");
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "uid: at most 40 characters");
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var_names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    for v in ["datasource", "listener", "route", "cluster"] {
        assert!(var_names.contains(&v), "templating variable {v}: {var_names:?}");
    }
    for v in vars {
        assert!(v["type"].as_str().is_some(), "{v}");
    }
    let exported = exported_names();
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = std::collections::HashSet::new();
    let mut queried = std::collections::BTreeSet::new();
    for p in panels {
        let kind = p["type"].as_str().expect("panel type");
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id {}", p["id"]);
        let g = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(g[k].as_u64().is_some(), "gridPos.{k} of {}", p["title"]);
        }
        assert!(g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24, "panel wider than the grid: {}", p["title"]);
        if kind == "row" {
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("targets of {}", p["title"]));
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert!(t["refId"].as_str().is_some(), "{t}");
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("expr in {t}"));
            let mut rest = expr;
            while let Some(i) = rest.find("trellis_") {
                let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[i + name.len()..];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(b)))
                    .unwrap_or(&name);
                assert!(exported.contains(&base), "{} queries {name}, which Trellis does not export", p["title"]);
                queried.insert(base.to_owned());
            }
        }
    }
    // The golden signals, resilience, versions and expiry are all there.
    for m in [
        "trellis_requests_total",
        "trellis_request_duration_seconds",
        "trellis_upstream_retries_total",
        "trellis_outlier_ejections_total",
        "trellis_circuit_breaker_rejections_total",
        "trellis_config_version",
        "trellis_tls_cert_expiry_timestamp_seconds",
        "trellis_cp_push_duration_seconds",
    ] {
        assert!(queried.contains(m), "the dashboard does not show {m}");
    }
}

/// One trace across a sidecar pair (app → outbound sidecar `a` → mTLS → inbound sidecar `b`
/// → app): `a`'s server span is the calling app's child, `a`'s client span (the try) is its
/// child, `b`'s server span is the child of `a`'s client span (the `traceparent` crossed
/// the mTLS hop), `b`'s client span is its child, and the app behind `b` sees `b`'s client
/// span as its parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_pair_makes_one_trace_with_parentage_across_the_mtls_hop() {
    within(Duration::from_secs(60), async {
        let collector = Collector::plain().await;
        let got = collector.spans.clone();
        let (app, seen) = counting_origin(|_, _| Response::builder().body(full("ok")).unwrap()).await;
        let pair = SidecarPair::start(app.addr, Some(config::otlp_http_tracing(collector.addr()))).await;
        let trace: u128 = 0x0af7651916cd43dd8448eb211c80319c;
        let caller: u64 = 0xb7ad6b7169203331;
        let mut c = Client::h1(pair.a_out).await;
        let req = Request::get("/orders/42")
            .header("traceparent", format!("00-{trace:032x}-{caller:016x}-01"))
            .body(full(""))
            .unwrap();
        assert_eq!(c.fetch(req).await.status, 200);

        let spans = got.trace(trace, 4).await;
        assert_eq!(spans.len(), 4, "{spans:#?}");
        let child = |parent: &[u8], kind: SpanKind| {
            let found: Vec<&Span> =
                spans.iter().filter(|s| s.parent_span_id == parent && s.kind == kind as i32).collect();
            assert_eq!(found.len(), 1, "one {kind:?} span under {parent:02x?}: {spans:#?}");
            found[0]
        };
        let a_server = child(&caller.to_be_bytes(), SpanKind::Server);
        let a_client = child(&a_server.span_id, SpanKind::Client);
        let b_server = child(&a_client.span_id, SpanKind::Server);
        let b_client = child(&b_server.span_id, SpanKind::Client);
        assert_eq!(attr_str(a_server, "trellis.listener"), Some("a-out"));
        assert_eq!(attr_str(a_client, "trellis.cluster"), Some("b"));
        assert_eq!(attr_str(b_server, "trellis.listener"), Some("b-in"));
        assert_eq!(attr_str(b_server, "trellis.peer.spiffe_id"), Some(spiffe("a").as_str()));
        assert_eq!(attr_str(b_client, "trellis.cluster"), Some("b-app"));
        for s in [a_server, a_client, b_server, b_client] {
            assert_eq!(attr_int(s, "http.response.status_code"), Some(200), "{s:?}");
        }

        // The app behind `b` got the trace with `b`'s try as its parent.
        let sent = seen.requests.lock().unwrap().last().unwrap().0.headers["traceparent"].to_str().unwrap().to_owned();
        let b_try = u64::from_be_bytes(b_client.span_id.as_slice().try_into().unwrap());
        assert_eq!(sent, format!("00-{trace:032x}-{b_try:016x}-01"));
    })
    .await;
}

/// An MCP route's server span names the JSON-RPC method and the tool, for a call that goes
/// through and for one the policy refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_spans_carry_the_method_and_the_tool() {
    within(Duration::from_secs(30), async {
        let collector = Collector::plain().await;
        let got = collector.spans.clone();
        let origin = Origin::start(|_req: Request<Incoming>| async { empty_tool_result() }).await;
        let listen = listen_addr();
        let mcp = Route { mcp: Some(Box::default()), matches: config::RouteMatch::default(), ..config::route("mcp", "/", "app") };
        let mut b = Bootstrap {
            tracing: Some(config::otlp_http_tracing(collector.addr())),
            ..config::serving(listen, vec![mcp], vec![config::cluster("app", ClusterProtocol::Http1, &[origin.addr])])
        };
        b.listeners[0].policy = Some("p".into());
        let search = config::PolicyMcp { tools: vec!["search".into()], ..Default::default() };
        let rule = config::PolicyRule { mcp: Some(search), ..Default::default() };
        b.policies.push(config::Policy { name: "p".into(), default: config::PolicyDefault::Deny, rules: vec![rule] });
        let yaml = b.yaml();
        let _proxy = blocking(|| Proxy::start(&yaml));
        let mut c = Client::h1(listen).await;
        for (trace, tool) in [(0x51u128, "search"), (0x52u128, "delete")] {
            let body = serde_json::json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": tool, "arguments": {} } });
            let req = Request::post("/mcp")
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("traceparent", format!("00-{trace:032x}-{:016x}-01", 7))
                .body(full(body.to_string()))
                .unwrap();
            c.fetch(req).await;
            let spans = got.trace(trace, 1).await;
            let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).expect("a server span");
            assert_eq!(attr_str(server, "mcp.method.name"), Some("tools/call"), "{server:?}");
            assert_eq!(attr_str(server, "gen_ai.tool.name"), Some(tool), "{server:?}");
        }
    })
    .await;
}

/// The server span lasts as long as the response: a body the upstream sends 400 ms after
/// its head ends the span then (not at the head), and a body cut by the upstream marks the
/// span as an error although its head said 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_span_ends_with_the_response_body() {
    within(Duration::from_secs(30), async {
        let collector = Collector::plain().await;
        let got = collector.spans.clone();
        let origin = Origin::start(|req: Request<Incoming>| async move {
            let (tx, body) = chan_body();
            let cut = req.uri().path() == "/cut";
            tokio::spawn(async move {
                let _ = tx.send(bytes::Bytes::from_static(b"first ")).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
                if !cut {
                    let _ = tx.send(bytes::Bytes::from_static(b"last")).await;
                }
                // `cut`: dropped with no end: the origin resets the stream.
            });
            let mut resp = Response::builder().header("content-type", "text/plain");
            if cut {
                resp = resp.header("content-length", "100");
            }
            resp.body(body).unwrap()
        })
        .await;
        let listen = listen_addr();
        let tracing = config::otlp_http_tracing(collector.addr());
        let proxy = blocking(|| Proxy::start(&traced_config(listen, origin.addr, tracing)));
        let mut c = Client::h1(listen).await;
        for (path, trace) in [("/slow", 0x51u128), ("/cut", 0x52u128)] {
            let req = Request::get(path)
                .header("traceparent", format!("00-{trace:032x}-{:016x}-01", 9))
                .body(full(""))
                .unwrap();
            let started = Instant::now();
            let resp = c.send(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = http_body_util::BodyExt::collect(resp.into_body()).await;
            assert!(started.elapsed() >= Duration::from_millis(400));
            let spans = got.trace(trace, 2).await;
            let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).expect("server span");
            let lasted = Duration::from_nanos(server.end_time_unix_nano - server.start_time_unix_nano);
            assert!(lasted >= Duration::from_millis(390), "{path}: the server span lasted {lasted:?}");
            assert_eq!(attr_int(server, "http.response.status_code"), Some(200));
            if path == "/cut" {
                assert!(body.is_err(), "a cut body must reach the client as cut");
                assert!(server.status.as_ref().is_some_and(|s| s.code == 2), "{server:?}");
                assert!(attr_str(server, "error.type").is_some(), "{server:?}");
                // The connection is not reused after a cut body.
                c = Client::h1(listen).await;
            } else {
                assert_eq!(body.unwrap().to_bytes(), "first last");
                assert!(server.status.is_none(), "{server:?}");
            }
        }
        drop(proxy);
    })
    .await;
}

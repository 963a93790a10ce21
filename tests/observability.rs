#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test file uses part of the shared helpers and imports.
#![allow(dead_code, unused_imports)]
//! Observability (DESIGN §14) through the real `trellis` binary: `/metrics` of the proxy and
//! of the control plane pass `promtool check metrics`.

mod common;
use common::*;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// `promtool`, or `None` (with a message) when it is absent and not required.
fn promtool(test: &str) -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var_os("TRELLIS_REQUIRE_PROMTOOL").is_none(),
        "TRELLIS_REQUIRE_PROMTOOL is set but promtool is missing (apt-get install prometheus)"
    );
    eprintln!("SKIPPED {test}: promtool not found (Debian package `prometheus`)");
    None
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

fn route(name: &str, prefix: &str, cluster: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    backends: [{{ cluster: {cluster} }}]\n{extra}"
    )
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
        let retry = "    retry: { attempts: 3, on: [connect_failure, gateway_error], backoff: { base: 1ms, max: 2ms } }\n";
        let routes = route("ok", "/ok", "ok", "")
            + &route("flaky", "/flaky", "flaky", retry)
            + &route("limited", "/limited", "ok", "    rate_limit: { requests_per_second: 1, burst: 1 }\n");
        let clusters = format!(
            "  - name: ok\n    endpoints: [{{ address: \"{}\" }}]\n  - name: flaky\n    outlier_detection: {{ consecutive_gateway_errors: 2, base_ejection: 30s }}\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{dead}\" }}]\n",
            ok.addr, failing.addr
        );
        let yaml = bootstrap(listen, &["ok", "flaky", "limited"], &routes, &clusters);
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

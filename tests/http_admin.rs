#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test file uses part of the shared helpers and imports.
#![allow(dead_code, unused_imports)]
//! The admin/metrics view, listener limits and further proxy semantics, through the real
//! `trellis` binary.

use trellis_testkit::config::{self, Yaml};
use trellis_testkit::*;

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use trellis_testkit::raw::*;

// ---------------------------------------------------------------------------------------------
// Admin and metrics
// ---------------------------------------------------------------------------------------------

/// After 7 requests: `/metrics` counts them with the right labels and has the duration
/// histogram; `/config_dump` shows the version and config; `/live`, `/ready` answer;
/// `/clusters` lists the endpoint with its request count.
#[tokio::test]
async fn admin_metrics_config_dump_and_clusters() {
    within(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Auto).yaml());
        let mut c = Client::h1(listen).await;
        for i in 0..4 {
            assert_eq!(c.get(&format!("/m/{i}")).await.status, 200);
        }
        let mut c = Client::h2(listen).await;
        for i in 0..3 {
            assert_eq!(c.get(&format!("/m/{i}")).await.status, 200);
        }

        let labels = [("listener", "in"), ("route", "all"), ("cluster", "origin")];
        // The duration is recorded when the response body has been handed over: poll briefly.
        let deadline = Instant::now() + Duration::from_secs(3);
        let m = loop {
            let m = proxy.metrics();
            let count = metric_value(&m, "trellis_request_duration_seconds_count", &labels);
            if count == Some(7.0) || Instant::now() > deadline {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            m.contains(r#"trellis_requests_total{listener="in",route="all",cluster="origin",code="200"} 7"#),
            "{m}"
        );
        assert_eq!(metric_value(&m, "trellis_request_duration_seconds_count", &labels), Some(7.0), "{m}");
        let buckets: Vec<&str> =
            m.lines().filter(|l| l.starts_with("trellis_request_duration_seconds_bucket{")).collect();
        assert!(buckets.len() >= 10, "{m}");
        let inf = [("listener", "in"), ("route", "all"), ("cluster", "origin"), ("le", "+Inf")];
        assert_eq!(metric_value(&m, "trellis_request_duration_seconds_bucket", &inf), Some(7.0), "{m}");
        let sum = metric_value(&m, "trellis_request_duration_seconds_sum", &labels).unwrap();
        assert!(sum > 0.0 && sum < 7.0, "sum {sum}");

        let (s, body) = admin_get(proxy.admin, "/config_dump").unwrap();
        assert_eq!(s, 200);
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(dump["version"], 1, "{dump}");
        assert_eq!(dump["config"]["listeners"][0]["name"], "in", "{dump}");
        assert_eq!(dump["config"]["listeners"][0]["address"], listen.to_string(), "{dump}");
        assert_eq!(dump["config"]["routes"][0]["name"], "all", "{dump}");
        assert_eq!(dump["config"]["clusters"][0]["name"], "origin", "{dump}");
        assert_eq!(dump["config"]["clusters"][0]["endpoints"][0]["address"], origin.addr.to_string(), "{dump}");

        assert_eq!(admin_get(proxy.admin, "/live").unwrap().0, 200);
        assert_eq!(admin_get(proxy.admin, "/ready").unwrap().0, 200);
        assert_eq!(admin_get(proxy.admin, "/no-such-page").unwrap().0, 404);

        let (s, body) = admin_get(proxy.admin, "/clusters").unwrap();
        assert_eq!(s, 200);
        let cl: serde_json::Value = serde_json::from_str(&body).unwrap();
        let list = cl["clusters"].as_array().unwrap_or_else(|| panic!("{cl}"));
        assert_eq!(list.len(), 1, "{cl}");
        assert_eq!(list[0]["name"], "origin");
        let ep = &list[0]["endpoints"][0];
        assert_eq!(ep["address"], origin.addr.to_string(), "{cl}");
        assert_eq!(ep["total_requests"], 7, "{cl}");
        assert_eq!(ep["active_requests"], 0, "{cl}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// More proxy semantics
// ---------------------------------------------------------------------------------------------

/// An upstream's own error statuses and bodies reach the client untouched (no proxy error
/// header), and the downstream connection stays usable.
#[tokio::test]
async fn upstream_error_statuses_pass_through() {
    within(LIMIT, async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
            let code: u16 = req.uri().path().trim_start_matches('/').parse().unwrap_or(200);
            Response::builder()
                .status(code)
                .header("x-from", "origin")
                .body(full(format!("origin says {code}")))
                .unwrap()
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Auto).yaml());
        for h2 in [false, true] {
            let mut c = client(listen, h2).await;
            for code in [404u16, 500, 502, 503, 504, 418] {
                let got = c.get(&format!("/{code}")).await;
                let ctx = format!("{} {code}", proto_name(h2));
                assert_eq!(got.status.as_u16(), code, "{ctx}");
                assert_eq!(got.text(), format!("origin says {code}"), "{ctx}");
                assert_eq!(got.header("x-from"), Some("origin"), "{ctx}");
                assert!(got.header("x-trellis-error").is_none(), "{ctx}");
            }
        }
        let m = proxy.metrics();
        let n = metric_value(&m, "trellis_requests_total", &[("route", "all"), ("code", "418")]);
        assert_eq!(n, Some(2.0), "uncommon codes are counted too: {m}");
    })
    .await;
}

/// An HTTP/1.0 client gets its answer and the connection closes after it (1.0 has no
/// keep-alive by default); the upstream still sees an HTTP/1.1 request.
#[tokio::test]
async fn http10_client() {
    within(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Auto).yaml());
        let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
        s.write_all(b"GET /old HTTP/1.0\r\nHost: legacy.test\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("HTTP/1.0 connection not closed after the response")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"), "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let j: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(j["path"], "/old");
        assert_eq!(j["host"], "legacy.test");
        assert_eq!(j["version"], "HTTP/1.1");
    })
    .await;
}

/// An upstream that closes every connection after one response (without saying so) must not
/// turn into 502s: closed pooled connections are skipped or retried unsent.
#[tokio::test]
async fn upstream_closing_after_each_response_is_handled() {
    within(LIMIT, async {
        let one_shot = raw_origin(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&config::simple(listen, one_shot.addr, config::ClusterProtocol::Http1).yaml());
        let mut c = Client::h1(listen).await;
        for i in 0..30 {
            let got = c.get(&format!("/{i}")).await;
            assert_eq!(got.status, 200, "request {i}: {} {:?}; logs: {}", got.text(), got.headers, log_tail(&proxy, 5));
            assert_eq!(got.text(), "ok");
            // Half back to back (racing the close), half after the close has landed.
            if i >= 15 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await;
}

/// 250 concurrent h2c streams from one client to an http1 cluster (one upstream connection
/// per request in flight) and to an http2 cluster (multiplexed, over 100 streams per
/// connection) all succeed, and no request stays counted as active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_to_http1_and_http2_clusters() {
    within(LIMIT, async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Response::new(full(req.uri().path().to_owned()))
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&versions_config(listen, origin.addr));
        for prefix in ["/h1", "/h2"] {
            // One h2c connection; its SendRequest is cloned per stream.
            let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(listen).await.unwrap());
            let (tx, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            let mut tasks = Vec::new();
            for i in 0..250 {
                let mut tx: hyper::client::conn::http2::SendRequest<Body> = tx.clone();
                let path = format!("{prefix}/{i}");
                tasks.push(tokio::spawn(async move {
                    tx.ready().await.unwrap();
                    let req = Request::get(format!("http://{listen}{path}")).body(full("")).unwrap();
                    let resp = tx.send_request(req).await.unwrap();
                    let status = resp.status();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    (path, status, body)
                }));
            }
            let t0 = Instant::now();
            for t in tasks {
                let (path, status, body) = t.await.unwrap();
                assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
                assert_eq!(body, path.as_bytes());
            }
            // Concurrent, not one after the other (250 × 100 ms would be 25 s).
            assert!(t0.elapsed() < Duration::from_secs(10), "{prefix}: took {:?}", t0.elapsed());
        }
        let (_, body) = admin_get(proxy.admin, "/clusters").unwrap();
        let cl: serde_json::Value = serde_json::from_str(&body).unwrap();
        for c in cl["clusters"].as_array().unwrap() {
            for ep in c["endpoints"].as_array().unwrap() {
                assert_eq!(ep["active_requests"], 0, "{cl}");
            }
        }
    })
    .await;
}

/// Bodiless responses (HEAD, 204, 304) keep their headers, carry no body, and leave the
/// connection usable for the next request.
#[tokio::test]
async fn bodiless_responses_keep_the_connection_usable() {
    within(LIMIT, async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
            if req.method() == Method::HEAD {
                // hyper's h2 server would send the body of a HEAD response; a real origin does not.
                return Response::builder()
                    .header("x-k", "page")
                    .header("content-length", "10")
                    .body(full(""))
                    .unwrap();
            }
            match req.uri().path().rsplit('/').next().unwrap_or("") {
                "204" => Response::builder().status(204).header("x-k", "204").body(full("")).unwrap(),
                "304" => Response::builder().status(304).header("etag", "\"v1\"").body(full("")).unwrap(),
                _ => Response::builder().header("x-k", "page").body(full("0123456789")).unwrap(),
            }
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&versions_config(listen, origin.addr));
        for h2 in [false, true] {
            for prefix in ["/h1", "/h2"] {
                let ctx = format!("{} → {prefix}", proto_name(h2));
                let mut c = client(listen, h2).await;
                let head = c
                    .send(req(Method::HEAD, &format!("{prefix}/page"), "svc", h2).body(full("")).unwrap())
                    .await
                    .unwrap_or_else(|e| panic!("{ctx} HEAD: {e:?}; proxy log: {}", log_tail(&proxy, 10)));
                assert_eq!(head.status(), 200, "{ctx} HEAD");
                let len = head.headers().get("content-length").cloned();
                assert_eq!(len.as_ref().map(|v| v.to_str().unwrap()), Some("10"), "{ctx} HEAD keeps the length");
                let body = head.into_body().collect().await.unwrap().to_bytes();
                assert!(body.is_empty(), "{ctx}");
                let nc = c.fetch(get(&format!("{prefix}/204"), "svc", h2).body(full("")).unwrap()).await;
                assert_eq!(nc.status, 204, "{ctx}");
                assert_eq!(nc.header("x-k"), Some("204"), "{ctx}");
                assert!(nc.body.is_empty(), "{ctx}");
                let nm = c
                    .fetch(
                        get(&format!("{prefix}/304"), "svc", h2)
                            .header("if-none-match", "\"v1\"")
                            .body(full(""))
                            .unwrap(),
                    )
                    .await;
                assert_eq!(nm.status, 304, "{ctx}");
                assert_eq!(nm.header("etag"), Some("\"v1\""), "{ctx}");
                let page = c.fetch(get(&format!("{prefix}/page"), "svc", h2).body(full("")).unwrap()).await;
                assert_eq!(page.text(), "0123456789", "{ctx}: the connection still frames responses right");
            }
        }
    })
    .await;
}

/// `Expect: 100-continue`: the client gets its interim 100 and can then send the body.
#[tokio::test]
async fn expect_100_continue() {
    within(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("no interim response within 2 s of Expect: 100-continue")
            .unwrap();
        let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
        s.write_all(b"hello").await.unwrap();
        let mut out = interim.into_bytes();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&out).contains("\"body_len\"") {
            let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("no final response").unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("HTTP/1.1 200"), "{text}");
        assert!(text.contains("\"body_len\":5"), "{text}");
    })
    .await;
}

/// A request in absolute form (`GET http://host/path`) is routed by the target's host; a
/// proxy forwarding it "MUST generate a new Host field value based on the received
/// request-target rather than forward the received Host" (RFC 9112 §3.2.2), so the upstream
/// sees the host the route was chosen by.
#[tokio::test]
async fn absolute_form_target_host_wins_over_host_header() {
    within(LIMIT, async {
        let api = echo("api").await;
        let other = echo("other").await;
        let listen = listen_addr();
        let b = config::Bootstrap {
            listeners: vec![config::listener("in", listen, &["api", "rest"])],
            routes: vec![
                config::host_route("api", "api.example.com", "api"),
                config::Route { matches: config::RouteMatch::default(), ..config::route("rest", "/", "other") },
            ],
            clusters: vec![
                config::cluster("api", config::ClusterProtocol::Http1, &[api.addr]),
                config::cluster("other", config::ClusterProtocol::Http1, &[other.addr]),
            ],
            ..config::bootstrap()
        };
        let proxy = Proxy::start(&b.yaml());
        let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
        s.write_all(b"GET http://api.example.com/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let j: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(j["origin"], "api", "routed by the request-target's host: {j}");
        assert_eq!(j["path"], "/x", "origin-form upstream: {j}");
        assert_eq!(
            j["host"],
            "api.example.com",
            "upstream Host must match the routed host: {j}; logs: {}",
            log_tail(&proxy, 5)
        );
    })
    .await;
}

/// HTTP/2 may split `cookie` into several fields; towards an HTTP/1.1 upstream they "MUST be
/// concatenated into a single octet string using the two-octet delimiter of `; `"
/// (RFC 9113 §8.2.3). Several `set-cookie` response lines all reach the client.
#[tokio::test]
async fn h2_cookie_crumbs_are_joined_for_http1_upstreams() {
    within(LIMIT, async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
            let lines: Vec<String> =
                req.headers().get_all("cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
            Response::builder()
                .header("set-cookie", "a=1; Path=/")
                .header("set-cookie", "b=2; Path=/")
                .body(full(serde_json::json!(lines).to_string()))
                .unwrap()
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&versions_config(listen, origin.addr));
        let mut c = Client::h2(listen).await;
        let got = c
            .fetch(get("/h1/c", "svc", true).header("cookie", "a=1").header("cookie", "b=2").body(full("")).unwrap())
            .await;
        assert_eq!(got.status, 200);
        let set: Vec<&str> = got.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(set, vec!["a=1; Path=/", "b=2; Path=/"]);
        let lines: Vec<String> = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(
            lines,
            vec!["a=1; b=2".to_owned()],
            "cookie lines the HTTP/1.1 upstream got; logs: {}",
            log_tail(&proxy, 3)
        );
    })
    .await;
}

/// Waits (up to 3 s) until `/clusters` shows no request in flight on any endpoint.
async fn assert_no_active_requests(proxy: &Proxy, ctx: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, body) = admin_get(proxy.admin, "/clusters").unwrap();
        let cl: serde_json::Value = serde_json::from_str(&body).unwrap();
        let busy: Vec<String> = cl["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| {
                c["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["active_requests"] != 0)
                    .map(move |e| format!("{}/{}: {}", c["name"], e["address"], e["active_requests"]))
            })
            .collect();
        if busy.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{ctx}: requests still counted active: {busy:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Failed and timed-out exchanges do not leak in-flight counts (which least-request
/// balancing reads).
#[tokio::test]
async fn failed_exchanges_release_their_endpoint() {
    within(LIMIT, async {
        let env = error_env().await;
        for h2 in [false, true] {
            let mut c = client(env.listen, h2).await;
            for path in ["/refused", "/h2-refused", "/reset1", "/reset2", "/slow", "/silent"] {
                let got = c.get(path).await;
                assert!(got.status.is_server_error(), "{path}: {}", got.status);
            }
            for path in ["/sse-silent", "/sse-forever", "/trunc"] {
                let resp = c.send(Request::get(path).body(full("")).unwrap()).await.unwrap();
                let _ = read_timed(resp, Instant::now()).await;
                // HTTP/1.1: a cut body ends the connection; start a fresh one.
                c = client(env.listen, h2).await;
            }
        }
        assert_no_active_requests(&env.proxy, "after errors").await;
    })
    .await;
}

/// A client that goes away mid-stream makes the proxy abandon the upstream exchange: the
/// origin's stream is dropped and nothing stays in flight.
#[tokio::test]
async fn client_going_away_cancels_the_upstream_stream() {
    within(LIMIT, async {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        let origin = Origin::start(move |_req: Request<Incoming>| {
            let guard = Guard(d.clone());
            async move {
                let s = futures_util::stream::unfold((0u32, guard), |(i, g)| async move {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {i}\n\n")))), (i + 1, g)))
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(StreamBody::new(s).boxed())
                    .unwrap()
            }
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&versions_config(listen, origin.addr));
        let mut n = 0;
        for h2 in [false, true] {
            for prefix in ["/h1", "/h2"] {
                let ctx = format!("{} → {prefix}", proto_name(h2));
                let mut c = client(listen, h2).await;
                let resp = c.send(Request::get(format!("{prefix}/events")).body(full("")).unwrap()).await.unwrap();
                let mut body = resp.into_body();
                for _ in 0..3 {
                    body.frame().await.unwrap().unwrap();
                }
                drop(body);
                drop(c);
                n += 1;
                let deadline = Instant::now() + Duration::from_secs(3);
                while dropped.load(Ordering::SeqCst) < n {
                    assert!(Instant::now() < deadline, "{ctx}: the origin's stream was never cancelled");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_no_active_requests(&proxy, &ctx).await;
            }
        }
    })
    .await;
}

/// A slow upload is client progress, not upstream silence: with `idle_timeout: 500ms`, a
/// body sent in chunks every 150 ms for ~1.5 s still reaches the origin and gets its answer.
#[tokio::test(flavor = "multi_thread")]
async fn slow_upload_is_not_cut_by_the_idle_timeout() {
    use http_body_util::BodyExt;
    within(Duration::from_secs(15), async {
        let origin = Origin::start(|req: Request<hyper::body::Incoming>| async move {
            let n = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
            Response::new(full(n.to_string()))
        })
        .await;
        let listen = listen_addr();
        let mut b = config::simple(listen, origin.addr, config::ClusterProtocol::Http1);
        b.routes[0].idle_timeout = Some(config::ms(500));
        let _proxy = Proxy::start(&b.yaml());
        let mut c = Client::h1(listen).await;
        let (tx, body) = chan_body();
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if tx.send(Bytes::from(vec![b'x'; 100])).await.is_err() {
                    break;
                }
            }
        });
        let got = c.fetch(Request::post("/upload").body(body).unwrap()).await;
        feeder.await.unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.text(), "1000");
    })
    .await;
}

/// Many concurrent requests to an http2 cluster share one upstream connection: streams
/// given back at the end of each response keep it under its stream limit.
#[tokio::test(flavor = "multi_thread")]
async fn http2_cluster_multiplexes_concurrent_requests_on_one_connection() {
    within(Duration::from_secs(20), async {
        let origin = Origin::echo("o").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http2).yaml());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            tasks.push(tokio::spawn(async move {
                let mut c = Client::h1(listen).await;
                for _ in 0..100 {
                    assert_eq!(c.get("/").await.status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (_, body) = admin_get(proxy.admin, "/clusters").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let ep = &v["clusters"][0]["endpoints"][0];
        assert_eq!(ep["http2_connections"], 1, "{ep}");
        assert_eq!(ep["active_requests"], 0, "{ep}");
    })
    .await;
}

//! Resilience features against the real binary: circuit-breaker thresholds, outlier
//! ejection, retries (conditions, budget, idempotency, body replay, Retry-After), hedging,
//! rate limits, fault injection and active health checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{self, Cluster, ClusterProtocol, Route, Yaml};
use trellis_testkit::*;

use http::Request;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A route `name` taking `prefix` to `cluster`, with `extra` settings (fields of a route).
fn route(name: &str, prefix: &str, cluster: &str, extra: serde_json::Value) -> Route {
    config::with(config::route(name, prefix, cluster), extra)
}

/// A cluster `name` over `eps` (weight 1 each), with `extra` settings (fields of a cluster).
fn cluster(name: &str, extra: serde_json::Value, eps: &[SocketAddr]) -> Cluster {
    config::with(config::cluster(name, ClusterProtocol::default(), eps), extra)
}

/// Listener `in` taking `routes` to `clusters`.
fn serving(listen: SocketAddr, routes: Vec<Route>, clusters: Vec<Cluster>) -> String {
    config::serving(listen, routes, clusters).yaml()
}

/// One catch-all route `all` (with `route_extra`) to cluster `c` (with `cluster_extra`).
fn single(
    listen: SocketAddr,
    route_extra: serde_json::Value,
    cluster_extra: serde_json::Value,
    eps: &[SocketAddr],
) -> String {
    serving(listen, vec![route("all", "/", "c", route_extra)], vec![cluster("c", cluster_extra, eps)])
}

fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&proxy.metrics(), name, labels).unwrap_or(0.0)
}

fn breaker_rejections(proxy: &Proxy, threshold: &str) -> f64 {
    metric(proxy, "trellis_circuit_breaker_rejections_total", &[("cluster", "c"), ("threshold", threshold)])
}

fn breaker_counts(proxy: &Proxy) -> serde_json::Value {
    clusters_json(proxy)["clusters"][0]["circuit_breaker"].clone()
}

fn attempts(got: &Got) -> Option<u32> {
    got.header("x-trellis-attempts").and_then(|v| v.parse().ok())
}

fn is_overloaded(got: &Got) -> bool {
    got.status == 503 && got.header("x-trellis-error") == Some("overloaded")
}

async fn get(listen: SocketAddr, path: &str) -> Got {
    Client::h1(listen).await.get(path).await
}

// ---------------------------------------------------------------------------------------
// Circuit breakers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_max_requests_trips_and_recovers() {
    within(Duration::from_secs(15), async {
        let slow = echo_after("slow", Duration::from_millis(400)).await;
        let listen = listen_addr();
        let proxy = blocking(|| {
            Proxy::start(&single(listen, json!({}), json!({ "circuit_breaker": { "max_requests": 2 } }), &[slow.addr]))
        });
        let answers = load(listen, 5, 1, "/", None).await;
        let ok: Vec<_> = answers.iter().filter(|(g, _)| g.status == 200).collect();
        let refused: Vec<_> = answers.iter().filter(|(g, _)| is_overloaded(g)).collect();
        assert_eq!(
            (ok.len(), refused.len()),
            (2, 3),
            "statuses {:?}",
            answers.iter().map(|(g, _)| g.status).collect::<Vec<_>>()
        );
        for (_, took) in &refused {
            assert!(*took < Duration::from_millis(200), "an overloaded answer took {took:?}: not at once");
        }
        assert_eq!(blocking(|| breaker_rejections(&proxy, "max_requests")), 3.0);
        // Recovered: nothing in flight any more, later requests pass.
        assert_eq!(blocking(|| breaker_counts(&proxy))["requests"], 0);
        let again = load(listen, 2, 2, "/", None).await;
        assert!(again.iter().all(|(g, _)| g.status == 200));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_max_connections_trips_and_recovers() {
    within(Duration::from_secs(15), async {
        let slow = echo_after("slow", Duration::from_millis(400)).await;
        let listen = listen_addr();
        // One worker, so one idle pool: the cluster's single connection is reusable by all.
        let yaml = single(
            listen,
            json!({}),
            json!({ "protocol": "http1", "circuit_breaker": { "max_connections": 1 } }),
            &[slow.addr],
        );
        let proxy = blocking(|| Proxy::start_with(&yaml, &["--threads", "1"]));
        let answers = load(listen, 5, 1, "/", None).await;
        let ok = answers.iter().filter(|(g, _)| g.status == 200).count();
        let refused: Vec<_> = answers.iter().filter(|(g, _)| is_overloaded(g)).collect();
        assert_eq!((ok, refused.len()), (1, 4), "HTTP/1.1 requests in parallel need a connection each");
        assert!(refused.iter().all(|(_, took)| *took < Duration::from_millis(200)));
        assert_eq!(blocking(|| breaker_rejections(&proxy, "max_connections")), 4.0);
        // Later requests go over the one pooled connection.
        let mut c = Client::h1(listen).await;
        for _ in 0..3 {
            assert_eq!(c.get("/").await.status, 200);
        }
        assert_eq!(blocking(|| breaker_counts(&proxy))["connections"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_max_connections_is_given_back_when_an_upstream_connection_closes() {
    within(Duration::from_secs(15), async {
        // The origin closes every connection after its answer.
        let (origin, seen) =
            counting_origin(|_, _| http::Response::builder().header("connection", "close").body(full("bye")).unwrap())
                .await;
        let listen = listen_addr();
        let yaml = single(
            listen,
            json!({}),
            json!({ "protocol": "http1", "circuit_breaker": { "max_connections": 1 } }),
            &[origin.addr],
        );
        let proxy = blocking(|| Proxy::start_with(&yaml, &["--threads", "1"]));
        let mut c = Client::h1(listen).await;
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let got = c.get("/").await;
            statuses.push((got.status.as_u16(), got.header("x-trellis-error").map(str::to_owned)));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let counts = blocking(|| breaker_counts(&proxy));
        assert!(
            statuses.iter().all(|(s, _)| *s == 200),
            "sequential requests, each on a fresh connection after the last one closed, got {statuses:?}; \
             origin saw {} requests; /clusters circuit_breaker: {counts}; log:\n{}",
            seen.count(),
            log_tail(&proxy, 12)
        );
        assert_eq!(counts["connections"], 0, "closed upstream connections still counted: {counts}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_max_pending_trips_and_recovers() {
    within(Duration::from_secs(15), async {
        // A listener whose accept queue (backlog 0: one connection) is full: further
        // connects get no SYN-ACK and stay pending until the connect timeout.
        let hole = tokio::net::TcpSocket::new_v4().unwrap();
        hole.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let hole = hole.listen(0).unwrap();
        let hole_addr = hole.local_addr().unwrap();
        let _filler = tokio::net::TcpStream::connect(hole_addr).await.unwrap();
        let extra = json!({ "protocol": "http1", "connect_timeout": "1s", "circuit_breaker": { "max_pending": 1 } });
        let listen = listen_addr();
        let proxy = blocking(|| Proxy::start(&single(listen, json!({}), extra.clone(), &[hole_addr])));
        let answers = load(listen, 3, 1, "/", None).await;
        let refused: Vec<_> = answers.iter().filter(|(g, _)| is_overloaded(g)).collect();
        let timed_out: Vec<_> = answers
            .iter()
            .filter(|(g, _)| g.status == 502 && g.header("x-trellis-error") == Some("upstream connect failure"))
            .collect();
        assert_eq!(
            (refused.len(), timed_out.len()),
            (2, 1),
            "answers {:?}",
            answers
                .iter()
                .map(|(g, t)| (g.status, g.header("x-trellis-error").map(str::to_owned), *t))
                .collect::<Vec<_>>()
        );
        assert!(refused.iter().all(|(_, t)| *t < Duration::from_millis(500)), "refusals were not at once");
        assert!(timed_out[0].1 >= Duration::from_millis(900), "the pending connect waited {:?}", timed_out[0].1);
        assert_eq!(blocking(|| breaker_rejections(&proxy, "max_pending")), 2.0);
        assert_eq!(blocking(|| breaker_counts(&proxy))["pending"], 0);
        // Recovered: the same cluster (its counts survive a reload) now pointing at a live origin.
        let live = Origin::echo("live").await;
        blocking(|| proxy.reload(&single(listen, json!({}), extra, &[live.addr])));
        let mut c = Client::h1(listen).await;
        for _ in 0..3 {
            let got = c.get("/").await;
            assert_eq!(got.status, 200, "{}", got.text());
        }
        drop(hole);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_max_retries_zero_means_no_retries() {
    within(Duration::from_secs(15), async {
        let (origin, seen) = counting_origin(|_, _| status_response(503)).await;
        let listen = listen_addr();
        let retry = json!({ "retry": { "attempts": 3, "backoff": { "base": "1ms", "max": "5ms" } } });
        let yaml = serving(
            listen,
            vec![route("limited", "/limited", "c", retry.clone()), route("control", "/control", "c2", retry)],
            vec![
                cluster("c", json!({ "circuit_breaker": { "max_retries": 0 } }), &[origin.addr]),
                cluster("c2", json!({}), &[origin.addr]),
            ],
        );
        let proxy = blocking(|| Proxy::start(&yaml));
        let mut c = Client::h1(listen).await;
        for _ in 0..5 {
            let got = c.get("/limited").await;
            assert_eq!(got.status, 503);
            assert_eq!(attempts(&got), Some(1), "a retry went out despite max_retries: 0");
        }
        assert_eq!(seen.count(), 5);
        assert_eq!(blocking(|| breaker_rejections(&proxy, "max_retries")), 5.0);
        // The same policy without the breaker does retry.
        let got = c.get("/control").await;
        assert_eq!(attempts(&got), Some(3));
        assert_eq!(seen.count(), 8);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Outlier detection
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outlier_detection_ejects_returns_and_ejects_again_for_longer() {
    within(Duration::from_secs(15), async {
        let good1 = Origin::echo("good1").await;
        let good2 = Origin::echo("good2").await;
        let (bad, seen) = counting_origin(|_, _| status_response(500)).await;
        let listen = listen_addr();
        let od = json!({ "consecutive_5xx": 3, "base_ejection": "1s", "interval": "1s", "max_ejection_percent": 50 });
        let yaml = single(
            listen,
            json!({}),
            json!({ "lb": "round_robin", "outlier_detection": od }),
            &[good1.addr, bad.addr, good2.addr],
        );
        let proxy = blocking(|| Proxy::start(&yaml));

        // Steady traffic for 4.5 s: one request every ~5 ms.
        let driver = tokio::spawn(async move {
            let mut c = Client::h1(listen).await;
            let end = Instant::now() + Duration::from_millis(4500);
            let mut statuses = Vec::new();
            while Instant::now() < end {
                statuses.push(c.get("/").await.status.as_u16());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        });
        assert!(wait_health(&proxy, "c", bad.addr, "ejected", Duration::from_secs(2)).await, "never ejected");
        assert!(blocking(|| metric(&proxy, "trellis_outlier_ejections_total", &[("cluster", "c")])) >= 1.0);
        let statuses = driver.await.unwrap();
        let view = blocking(|| endpoint_json(&proxy, "c", bad.addr));

        // The bad endpoint's hits come in bursts of 3 (then it is ejected); the pauses between
        // bursts are the ejections: 1 s, then 2 s (the second ejection in a row lasts twice as long).
        let times = seen.times();
        let gaps: Vec<(usize, Duration)> = times
            .windows(2)
            .enumerate()
            .map(|(i, w)| (i + 1, w[1] - w[0]))
            .filter(|(_, g)| *g > Duration::from_millis(300))
            .collect();
        let detail = format!("hits {}, long gaps (after hit n, length) {gaps:?}, /clusters {view}", times.len());
        assert!(gaps.len() >= 2, "{detail}");
        assert_eq!(gaps[0].0, 3, "first ejection not after 3 consecutive 5xx: {detail}");
        assert_eq!(gaps[1].0, 6, "second ejection not after 3 more: {detail}");
        assert!(gaps[0].1 >= Duration::from_millis(950) && gaps[0].1 < Duration::from_millis(1600), "{detail}");
        assert!(gaps[1].1 >= Duration::from_millis(1950) && gaps[1].1 < Duration::from_millis(2700), "{detail}");
        assert!(view["times_ejected"].as_u64().unwrap() >= 2, "{detail}");
        // Everything but the bad endpoint's own answers succeeded.
        let failed = statuses.iter().filter(|s| **s != 200).count();
        assert_eq!(failed, times.len(), "only requests to the bad endpoint fail");
        assert!(statuses.len() > 100, "only {} requests in 4.5 s: {detail}", statuses.len());
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_of_three_upstreams_under_load_fails_no_request() {
    within(Duration::from_secs(15), async {
        let a = KillableOrigin::echo("a").await;
        let b = KillableOrigin::echo("b").await;
        let c = KillableOrigin::echo("c").await;
        let listen = listen_addr();
        let yaml = single(
            listen,
            json!({ "retry": { "attempts": 3, "on": ["connect_failure", "reset", "gateway_error"], "backoff": { "base": "5ms", "max": "20ms" } } }),
            json!({ "lb": "round_robin", "outlier_detection": { "consecutive_gateway_errors": 3, "base_ejection": "10s" } }),
            &[a.addr, b.addr, c.addr],
        );
        let proxy = blocking(|| Proxy::start(&yaml));
        let start = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(tokio::spawn(async move {
                let mut client = Client::h1(listen).await;
                let mut out = Vec::new();
                while start.elapsed() < Duration::from_secs(4) {
                    let got = client.get("/").await;
                    out.push((got.status.as_u16(), origin_name(&got), start.elapsed()));
                }
                out
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        b.kill();
        let mut all = Vec::new();
        for t in clients {
            all.extend(t.await.unwrap());
        }
        let ok = all.iter().filter(|(s, _, _)| *s == 200).count();
        let rate = ok as f64 / all.len() as f64;
        let retries = blocking(|| metric(&proxy, "trellis_upstream_retries_total", &[("cluster", "c")]));
        eprintln!("{ok} of {} requests succeeded; {retries} retries", all.len());
        let failures: Vec<_> = all.iter().filter(|(s, _, _)| *s != 200).take(5).collect();
        assert!(rate >= 0.999, "{ok} of {} succeeded; failures {failures:?}; {}", all.len(), log_tail(&proxy, 20));
        assert!(all.len() > 400, "too little load: {}", all.len());
        // b took traffic before the kill and none a little after it.
        assert!(all.iter().any(|(_, o, t)| o == "b" && *t < Duration::from_secs(2)));
        assert!(!all.iter().any(|(_, o, t)| o == "b" && *t > Duration::from_millis(2500)));
        assert_eq!(blocking(|| endpoint_json(&proxy, "c", b.addr))["health"], "ejected");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_stay_within_the_budget_when_every_upstream_fails() {
    within(Duration::from_secs(15), async {
        let mut seen = Vec::new();
        let mut origins = Vec::new();
        for _ in 0..3 {
            let (o, s) = counting_origin(|_, _| status_response(503)).await;
            origins.push(o);
            seen.push(s);
        }
        let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
        let listen = listen_addr();
        let yaml = single(
            listen,
            json!({ "retry": { "attempts": 5, "budget": { "ratio": 0.2, "min_per_second": 1 }, "backoff": { "base": "1ms", "max": "5ms" } } }),
            json!({}),
            &addrs,
        );
        let proxy = blocking(|| Proxy::start(&yaml));
        const REQUESTS: usize = 200;
        let mut c = Client::h1(listen).await;
        let mut tries = 0;
        for _ in 0..REQUESTS {
            let got = c.get("/").await;
            assert_eq!(got.status, 503);
            tries += attempts(&got).expect("x-trellis-attempts") as usize;
        }
        let hits: usize = seen.iter().map(|s| s.count()).sum();
        // Budget over its 10 s window: min_per_second × 10 + ratio × requests.
        let allowed = 10 + REQUESTS / 5;
        assert_eq!(hits, tries, "x-trellis-attempts disagrees with what the origins saw");
        assert!(
            hits <= REQUESTS + allowed,
            "{hits} origin hits for {REQUESTS} requests; budget allows {allowed} retries"
        );
        assert!(hits >= REQUESTS + allowed - 5, "{hits} origin hits: the budget's retries were not used");
        let exhausted = blocking(|| metric(&proxy, "trellis_retry_budget_exhausted_total", &[("cluster", "c")]));
        assert!(exhausted > 0.0);
        let retries = blocking(|| metric(&proxy, "trellis_upstream_retries_total", &[("cluster", "c")]));
        assert_eq!(retries as usize, hits - REQUESTS);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_is_retried_only_with_non_idempotent() {
    within(Duration::from_secs(15), async {
        let (origin, seen) = counting_origin(|_, _| status_response(503)).await;
        let listen = listen_addr();
        let yaml = serving(
            listen,
            vec![
                route("strict", "/strict", "c", json!({ "retry": { "attempts": 3, "backoff": { "base": "1ms", "max": "5ms" } } })),
                route(
                    "lenient",
                    "/lenient",
                    "c",
                    json!({ "retry": { "attempts": 3, "non_idempotent": true, "backoff": { "base": "1ms", "max": "5ms" } } }),
                ),
            ],
            vec![cluster("c", json!({}), &[origin.addr])],
        );
        let _proxy = blocking(|| Proxy::start(&yaml));
        let mut c = Client::h1(listen).await;
        let post = |path: &str| Request::post(path).body(full("order=1")).unwrap();
        let got = c.fetch(post("/strict")).await;
        assert_eq!((got.status.as_u16(), attempts(&got)), (503, Some(1)));
        assert_eq!(seen.count(), 1, "a POST was retried");
        // Control: a GET on the same route is retried.
        let got = c.get("/strict").await;
        assert_eq!(attempts(&got), Some(3));
        assert_eq!(seen.count(), 4);
        let got = c.fetch(post("/lenient")).await;
        assert_eq!((got.status.as_u16(), attempts(&got)), (503, Some(3)));
        assert_eq!(seen.count(), 7);
        assert!(seen.bodies()[4..].iter().all(|b| b.as_ref() == b"order=1"), "every try carries the body");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_over_the_buffer_are_not_retried_smaller_ones_are_replayed_whole() {
    within(Duration::from_secs(15), async {
        // The first two requests fail, then everything succeeds.
        let (origin, seen) =
            counting_origin(|n, _| if n <= 2 { status_response(503) } else { status_response(200) }).await;
        let listen = listen_addr();
        let retry =
            json!({ "retry": { "attempts": 2, "max_body_bytes": 1024, "backoff": { "base": "1ms", "max": "5ms" } } });
        let _proxy = blocking(|| Proxy::start(&single(listen, retry, json!({}), &[origin.addr])));
        let mut c = Client::h1(listen).await;
        let big: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let got = c.fetch(Request::put("/big").body(full(big.clone())).unwrap()).await;
        assert_eq!(
            (got.status.as_u16(), attempts(&got)),
            (503, Some(1)),
            "a 4 KiB body over max_body_bytes was retried"
        );
        assert_eq!(seen.count(), 1);
        assert_eq!(seen.bodies()[0].as_ref(), &big[..], "the streamed body arrived whole");

        let small: Vec<u8> = (0..512u32).map(|i| (i * 7 % 256) as u8).collect();
        let got = c.fetch(Request::put("/small").body(full(small.clone())).unwrap()).await;
        assert_eq!((got.status.as_u16(), attempts(&got)), (200, Some(2)));
        let bodies = seen.bodies();
        assert_eq!(bodies.len(), 3);
        assert_eq!(bodies[1].as_ref(), &small[..], "first try's body");
        assert_eq!(bodies[2].as_ref(), &small[..], "the retry did not carry the whole body");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_is_honoured() {
    within(Duration::from_secs(15), async {
        let (origin, seen) = counting_origin(|n, _| {
            if n == 1 {
                http::Response::builder().status(503).header("retry-after", "1").body(full("later")).unwrap()
            } else {
                status_response(200)
            }
        })
        .await;
        let listen = listen_addr();
        let _proxy = blocking(|| {
            Proxy::start(&single(listen, json!({ "retry": { "attempts": 3 } }), json!({}), &[origin.addr]))
        });
        let mut c = Client::h1(listen).await;
        let t = Instant::now();
        let got = c.get("/").await;
        let took = t.elapsed();
        assert_eq!((got.status.as_u16(), attempts(&got)), (200, Some(2)));
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(3), "took {took:?}");
        let times = seen.times();
        assert!(times[1] - times[0] >= Duration::from_millis(990), "retried after {:?}", times[1] - times[0]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Hedging
// ---------------------------------------------------------------------------------------

fn hedge_config(listen: SocketAddr, lb: &str, slow: SocketAddr, fast: SocketAddr) -> String {
    serving(
        listen,
        vec![
            route("hedged", "/h", "hedged", json!({ "hedge": { "delay": "50ms", "max": 1 } })),
            route("plain", "/p", "plain", json!({})),
        ],
        vec![
            cluster("hedged", json!({ "lb": lb }), &[slow, fast]),
            cluster("plain", json!({ "lb": lb }), &[slow, fast]),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hedging_cuts_the_tail_when_one_endpoint_stalls() {
    within(Duration::from_secs(15), async {
        let slow = echo_after("slow", Duration::from_secs(1)).await;
        let fast = echo_after("fast", Duration::from_millis(2)).await;
        let listen = listen_addr();
        let proxy = blocking(|| Proxy::start(&hedge_config(listen, "round_robin", slow.addr, fast.addr)));

        let mut c = Client::h1(listen).await;
        let mut hedged = 0;
        for i in 0..20 {
            let t = Instant::now();
            let got = c.get("/h").await;
            let took = t.elapsed();
            assert_eq!(got.status, 200);
            assert!(took < Duration::from_millis(500), "hedged request {i} took {took:?}");
            assert_eq!(origin_name(&got), "fast");
            match attempts(&got) {
                Some(2) => hedged += 1,
                Some(1) => {}
                other => panic!("x-trellis-attempts {other:?}"),
            }
        }
        assert!(hedged >= 9, "round robin sends at least every other first try to the slow endpoint; {hedged} hedged");
        let hedges = blocking(|| metric(&proxy, "trellis_upstream_hedges_total", &[("cluster", "hedged")]));
        assert_eq!(hedges as usize, hedged);

        // Without a hedge policy half the requests wait for the slow endpoint.
        let plain = load(listen, 10, 1, "/p", None).await;
        let mut took: Vec<Duration> = plain.iter().map(|(_, t)| *t).collect();
        took.sort();
        assert!(plain.iter().all(|(g, _)| g.status == 200));
        assert!(*took.last().unwrap() >= Duration::from_secs(1), "p99 without hedging {:?}", took.last());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hedge_goes_to_another_endpoint_than_the_stalled_try() {
    within(Duration::from_secs(30), async {
        let slow = echo_after("slow", Duration::from_secs(1)).await;
        let fast = echo_after("fast", Duration::from_millis(2)).await;
        let listen = listen_addr();
        let proxy = blocking(|| Proxy::start(&hedge_config(listen, "random", slow.addr, fast.addr)));
        let mut c = Client::h1(listen).await;
        let mut stalled = Vec::new();
        for i in 0..16 {
            let t = Instant::now();
            let got = c.get("/h").await;
            if t.elapsed() >= Duration::from_millis(500) {
                stalled.push((i, t.elapsed(), attempts(&got), origin_name(&got)));
            }
        }
        let view = blocking(|| clusters_json(&proxy));
        assert!(
            stalled.is_empty(),
            "requests still waited for the stalled endpoint (index, latency, attempts, origin): {stalled:?}; /clusters {view}; log:\n{}",
            log_tail(&proxy, 12)
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Rate limits and fault injection
// ---------------------------------------------------------------------------------------

/// How many of `n` requests to `/keyed` as `x-agent: agent` pass.
async fn keyed_successes(c: &mut Client, agent: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let req = Request::get("/keyed").header("x-agent", agent).body(full("")).unwrap();
        if c.fetch(req).await.status == 200 {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_allows_the_burst_then_429_and_keys_are_independent() {
    within(Duration::from_secs(15), async {
        let (origin, seen) = counting_origin(|_, _| status_response(200)).await;
        let listen = listen_addr();
        let yaml = serving(
            listen,
            vec![
                route("shared", "/shared", "c", json!({ "rate_limit": { "requests_per_second": 5, "burst": 5 } })),
                route(
                    "keyed",
                    "/keyed",
                    "c",
                    json!({ "rate_limit": { "requests_per_second": 5, "burst": 5, "per_header": "x-agent" } }),
                ),
            ],
            vec![cluster("c", json!({}), &[origin.addr])],
        );
        let proxy = blocking(|| Proxy::start(&yaml));
        let mut c = Client::h1(listen).await;
        let mut statuses = Vec::new();
        for _ in 0..10 {
            let got = c.get("/shared").await;
            if got.status == 429 {
                assert_eq!(got.header("x-trellis-error"), Some("rate limited"));
                let after: u64 = got.header("retry-after").expect("Retry-After").parse().unwrap();
                assert!((1..=2).contains(&after), "Retry-After {after}");
            }
            statuses.push(got.status.as_u16());
        }
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);
        assert_eq!(seen.count(), 5, "limited requests must not reach the origin");
        assert_eq!(blocking(|| metric(&proxy, "trellis_rate_limited_total", &[("route", "shared")])), 5.0);

        // One bucket per x-agent value, none shared with the other route.
        assert_eq!(keyed_successes(&mut c, "a", 8).await, 5);
        assert_eq!(keyed_successes(&mut c, "b", 8).await, 5);
        assert_eq!(keyed_successes(&mut c, "a", 3).await, 0);

        // A second later the bucket is full again.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut again = Vec::new();
        for _ in 0..6 {
            again.push(c.get("/shared").await.status.as_u16());
        }
        assert_eq!(again, [200, 200, 200, 200, 200, 429]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_injection_aborts_and_delays() {
    within(Duration::from_secs(15), async {
        let (origin, seen) = counting_origin(|_, _| status_response(200)).await;
        let listen = listen_addr();
        let yaml = serving(
            listen,
            vec![
                route("abort", "/abort", "c", json!({ "fault": { "abort": { "percent": 100, "status": 418 } } })),
                route("delay", "/delay", "c", json!({ "fault": { "delay": { "percent": 100, "duration": "300ms" } } })),
                route("half", "/half", "c", json!({ "fault": { "abort": { "percent": 50, "status": 503 } } })),
            ],
            vec![cluster("c", json!({}), &[origin.addr])],
        );
        let _proxy = blocking(|| Proxy::start(&yaml));
        let mut c = Client::h1(listen).await;
        for _ in 0..20 {
            let got = c.get("/abort").await;
            assert_eq!(got.status, 418);
            assert_eq!(got.header("x-trellis-error"), Some("fault injected"));
        }
        assert_eq!(seen.count(), 0, "aborted requests reached the origin");
        for _ in 0..4 {
            let t = Instant::now();
            let got = c.get("/delay").await;
            assert_eq!(got.status, 200);
            assert!(t.elapsed() >= Duration::from_millis(300), "delay fault took only {:?}", t.elapsed());
        }
        assert_eq!(seen.count(), 4);
        let mut aborted = 0;
        for _ in 0..400 {
            let got = c.get("/half").await;
            if got.status == 503 && got.header("x-trellis-error") == Some("fault injected") {
                aborted += 1;
            } else {
                assert_eq!(got.status, 200);
            }
        }
        // Binomial(400, 0.5): σ = 10.
        assert!((150..=250).contains(&aborted), "percent 50 aborted {aborted} of 400");
        assert_eq!(seen.count(), 4 + 400 - aborted);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Active health checks
// ---------------------------------------------------------------------------------------

/// An HTTP health check of `/healthz` every 200 ms.
fn http_health() -> serde_json::Value {
    json!({ "path": "/healthz", "interval": "200ms", "timeout": "100ms", "unhealthy": 2, "healthy": 2 })
}

/// A TCP health check (connect) every 200 ms.
fn tcp_health() -> serde_json::Value {
    json!({ "interval": "200ms", "timeout": "100ms", "unhealthy": 2, "healthy": 2 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_health_check_takes_an_endpoint_out_and_back() {
    within(Duration::from_secs(15), async {
        let good = Origin::echo("good").await;
        let failing = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (flag, count) = (failing.clone(), served.clone());
        let flaky = Origin::start(move |req: http::Request<hyper::body::Incoming>| {
            let (flag, count) = (flag.clone(), count.clone());
            async move {
                if req.uri().path() == "/healthz" {
                    assert_eq!(req.headers()["user-agent"], "trellis-health-check");
                    return status_response(if flag.load(Ordering::SeqCst) { 500 } else { 200 });
                }
                count.fetch_add(1, Ordering::SeqCst);
                http::Response::new(full(serde_json::json!({ "origin": "flaky" }).to_string()))
            }
        })
        .await;
        let listen = listen_addr();
        let yaml = single(
            listen,
            json!({}),
            json!({ "lb": "round_robin", "health_check": http_health() }),
            &[good.addr, flaky.addr],
        );
        let proxy = blocking(|| Proxy::start(&yaml));

        let before = load(listen, 1, 20, "/", None).await;
        assert!(before.iter().all(|(g, _)| g.status == 200));
        assert!(served.load(Ordering::SeqCst) >= 8, "both endpoints take traffic at first");

        failing.store(true, Ordering::SeqCst);
        let t = Instant::now();
        assert!(
            wait_health(&proxy, "c", flaky.addr, "unhealthy", Duration::from_secs(3)).await,
            "never marked unhealthy"
        );
        assert!(t.elapsed() >= Duration::from_millis(200), "unhealthy after one check ({:?})", t.elapsed());
        assert_eq!(blocking(|| endpoint_json(&proxy, "c", good.addr))["health"], "healthy");
        let n = served.load(Ordering::SeqCst);
        let during = load(listen, 2, 15, "/", None).await;
        assert!(during.iter().all(|(g, _)| g.status == 200 && origin_name(g) == "good"));
        assert_eq!(served.load(Ordering::SeqCst), n, "an unhealthy endpoint got traffic");

        failing.store(false, Ordering::SeqCst);
        assert!(wait_health(&proxy, "c", flaky.addr, "healthy", Duration::from_secs(3)).await, "never healthy again");
        let after = load(listen, 1, 20, "/", None).await;
        assert!(after.iter().all(|(g, _)| g.status == 200));
        assert!(served.load(Ordering::SeqCst) >= n + 8, "a recovered endpoint takes traffic again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_health_check_marks_a_closed_port_unhealthy() {
    within(Duration::from_secs(15), async {
        let good = Origin::echo("good").await;
        let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listen = listen_addr();
        let proxy = blocking(|| {
            Proxy::start(&single(
                listen,
                json!({}),
                json!({ "lb": "round_robin", "health_check": tcp_health() }),
                &[good.addr, closed],
            ))
        });
        assert!(wait_health(&proxy, "c", closed, "unhealthy", Duration::from_secs(3)).await);
        assert_eq!(blocking(|| endpoint_json(&proxy, "c", good.addr))["health"], "healthy");
        let answers = load(listen, 2, 15, "/", None).await;
        assert!(answers.iter().all(|(g, _)| g.status == 200 && origin_name(g) == "good"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_endpoints_unhealthy_gives_503_until_one_comes_back() {
    within(Duration::from_secs(15), async {
        let a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let b: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listen = listen_addr();
        let proxy =
            blocking(|| Proxy::start(&single(listen, json!({}), json!({ "health_check": tcp_health() }), &[a, b])));
        assert!(wait_health(&proxy, "c", a, "unhealthy", Duration::from_secs(3)).await);
        assert!(wait_health(&proxy, "c", b, "unhealthy", Duration::from_secs(3)).await);
        let got = get(listen, "/").await;
        assert_eq!(got.status, 503, "{}", got.text());
        assert_eq!(got.header("x-trellis-error"), Some("no healthy endpoint"));
        // An origin appears on one of the ports: checks pass twice and it serves again.
        let back = Origin::start_on(a, |_req: http::Request<hyper::body::Incoming>| async {
            http::Response::new(full(serde_json::json!({ "origin": "back" }).to_string()))
        })
        .await;
        assert!(wait_health(&proxy, "c", back.addr, "healthy", Duration::from_secs(3)).await);
        let got = get(listen, "/").await;
        assert_eq!((got.status.as_u16(), origin_name(&got)), (200, "back".to_owned()));
    })
    .await;
}

//! Discovery end to end with the real binaries: `trellis control-plane` and `trellis proxy`
//! processes talking over the real gRPC stream; resources written through the REST API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

async fn setup(cp: &ControlPlane, listen: SocketAddr, a: &Origin, b: &Origin, service: Option<&str>) {
    for (name, o) in [("a", a), ("b", b)] {
        let got =
            cp.put("clusters", name, serde_json::json!({ "endpoints": [{ "address": o.addr.to_string() }] })).await;
        assert!(got.status.is_success(), "{}", got.text());
    }
    route_to(cp, "a").await;
    let mut l = serde_json::json!({ "address": listen.to_string(), "routes": ["r"] });
    if let Some(s) = service {
        l["service"] = s.into();
    }
    let got = cp.put("listeners", "web", l).await;
    assert!(got.status.is_success(), "{}", got.text());
}

async fn route_to(cp: &ControlPlane, cluster: &str) {
    let got = cp.put("routes", "r", serde_json::json!({ "backends": [{ "cluster": cluster }] })).await;
    assert!(got.status.is_success(), "{}", got.text());
}

async fn origin_at(listen: SocketAddr) -> String {
    let mut c = Client::h1(listen).await;
    c.get("/").await.json()["origin"].as_str().unwrap_or("").to_owned()
}

/// Polls until requests reach `want`; returns how long it took.
async fn until_origin(listen: SocketAddr, want: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if origin_at(listen).await == want {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("requests did not reach {want} within {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_changes_reach_a_running_proxy_within_a_second_and_none_fails_under_load() {
    within(Duration::from_secs(60), async {
        let (cp, _dir) = ControlPlane::fresh();
        let (a, b) = (Origin::echo("a").await, Origin::echo("b").await);
        let listen = listen_addr();
        setup(&cp, listen, &a, &b, None).await;
        let proxy = blocking(|| Proxy::start(&cp.bootstrap("web-0", "web")));
        assert_eq!(origin_at(listen).await, "a");

        // One change: served within a second of the REST answer.
        route_to(&cp, "b").await;
        let took = until_origin(listen, "b", Duration::from_secs(1)).await;
        assert!(took < Duration::from_secs(1), "took {took:?}");

        // 100 changes under continuous load: no request fails.
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            clients.push(tokio::spawn(async move {
                let mut c = Client::h1(listen).await;
                while !stop.load(Ordering::Relaxed) {
                    let got = c.get("/").await;
                    if got.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed)
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed)
                    };
                }
            }));
        }
        for i in 0..100 {
            route_to(&cp, if i % 2 == 0 { "a" } else { "b" }).await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        until_origin(listen, "b", Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests; logs: {}", proxy.logs());
        assert!(ok.load(Ordering::Relaxed) > 100);
        let dump: serde_json::Value = serde_json::from_str(&admin_get(proxy.admin, "/config_dump").unwrap().1).unwrap();
        assert_eq!(dump["control_plane"]["connected"], true, "{dump}");
        assert!(proxy.metrics().contains("trellis_config_version{type=\"route\"}"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_while_the_control_plane_is_down_and_resync_when_it_returns() {
    within(Duration::from_secs(60), async {
        let (cp, dir) = ControlPlane::fresh();
        let (api, xds) = (cp.api, cp.xds);
        let (a, b) = (Origin::echo("a").await, Origin::echo("b").await);
        let listen = listen_addr();
        setup(&cp, listen, &a, &b, None).await;
        let proxy = blocking(|| Proxy::start(&cp.bootstrap("web-0", "web")));
        assert_eq!(origin_at(listen).await, "a");

        drop(cp); // kill -9
        for _ in 0..20 {
            assert_eq!(origin_at(listen).await, "a");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(admin_get(proxy.admin, "/ready").unwrap().0, 200);

        let cp = blocking(|| ControlPlane::start(dir.path(), api, xds));
        assert_eq!(cp.data, dir.path());
        route_to(&cp, "b").await;
        // Reconnect backoff (jittered, capped while the outage is short) plus the push.
        until_origin(listen, "b", Duration::from_secs(15)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_the_proxy_cannot_apply_is_nacked_visible_and_the_old_config_serves() {
    within(Duration::from_secs(60), async {
        let (cp, _dir) = ControlPlane::fresh();
        let (a, b) = (Origin::echo("a").await, Origin::echo("b").await);
        let listen = listen_addr();
        setup(&cp, listen, &a, &b, None).await;
        let proxy = blocking(|| Proxy::start(&cp.bootstrap("web-0", "web")));
        // A port someone else holds: valid for the control plane, unbindable for the proxy.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap();
        let got =
            cp.put("listeners", "second", serde_json::json!({ "address": busy.to_string(), "routes": ["r"] })).await;
        assert!(got.status.is_success(), "{}", got.text());
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = String::new();
        while Instant::now() < deadline {
            seen = admin_get(cp.api, "/v1/proxies").unwrap().1;
            if seen.contains("cannot bind") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen.contains("cannot bind") && seen.contains(&busy.to_string()), "no NACK in /v1/proxies: {seen}");
        assert_eq!(origin_at(listen).await, "a", "the old config keeps serving; logs: {}", proxy.logs());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_get_only_the_listeners_of_their_service() {
    within(Duration::from_secs(60), async {
        let (cp, _dir) = ControlPlane::fresh();
        let (a, b) = (Origin::echo("a").await, Origin::echo("b").await);
        let (web_listen, api_listen) = (listen_addr(), listen_addr());
        setup(&cp, web_listen, &a, &b, Some("web")).await;
        let got = cp
            .put(
                "listeners",
                "api",
                serde_json::json!({ "service": "api", "address": api_listen.to_string(), "routes": ["r"] }),
            )
            .await;
        assert!(got.status.is_success(), "{}", got.text());
        let web = blocking(|| Proxy::start(&cp.bootstrap("web-0", "web")));
        let api = blocking(|| Proxy::start(&cp.bootstrap("api-0", "api")));
        let names = |p: &Proxy| {
            let dump: serde_json::Value = serde_json::from_str(&admin_get(p.admin, "/config_dump").unwrap().1).unwrap();
            dump["config"]["listeners"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&web), vec!["web"]);
        assert_eq!(names(&api), vec!["api"]);
        assert_eq!(origin_at(web_listen).await, "a");
        assert_eq!(origin_at(api_listen).await, "a");
    })
    .await;
}

/// A cluster of `n` endpoints: `n - 1` with weight 0 (never picked, never connected to)
/// and one real one, `live`, with weight 1.
fn many_endpoints(n: u32, live: SocketAddr) -> serde_json::Value {
    let mut eps: Vec<serde_json::Value> = (1..n)
        .map(|i| serde_json::json!({ "address": format!("10.255.{}.{}:9", i >> 8, i & 255), "weight": 0 }))
        .collect();
    eps.push(serde_json::json!({ "address": live.to_string() }));
    serde_json::json!({ "lb": "round_robin", "endpoints": eps })
}

/// `GET /v1/proxies` entry of `id`.
fn proxy_status(cp: &ControlPlane, id: &str) -> serde_json::Value {
    let all: serde_json::Value = serde_json::from_str(&admin_get(cp.api, "/v1/proxies").unwrap().1).unwrap();
    all["proxies"].as_array().unwrap().iter().find(|p| p["id"] == id).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_of_a_large_cluster_changes_as_a_delta_and_is_routed_to_within_a_second() {
    within(Duration::from_secs(60), async {
        let (cp, _dir) = ControlPlane::fresh();
        let (a, b) = (Origin::echo("a").await, Origin::echo("b").await);
        let listen = listen_addr();
        let got = cp.put("clusters", "many", many_endpoints(2_000, a.addr)).await;
        assert!(got.status.is_success(), "{}", got.text());
        route_to(&cp, "many").await;
        let got =
            cp.put("listeners", "web", serde_json::json!({ "address": listen.to_string(), "routes": ["r"] })).await;
        assert!(got.status.is_success(), "{}", got.text());
        let proxy = blocking(|| Proxy::start(&cp.bootstrap("web-0", "web")));
        assert_eq!(origin_at(listen).await, "a");
        let first = proxy_status(&cp, "web-0");
        assert!(first["bytes_sent"].as_u64().unwrap() > 50_000, "the whole set first: {first}");

        // The live endpoint moves (a pod replaced): one endpoint of 2,000 changes.
        let got = cp.put("clusters", "many", many_endpoints(2_000, b.addr)).await;
        assert!(got.status.is_success(), "{}", got.text());
        let took = until_origin(listen, "b", Duration::from_secs(1)).await;
        assert!(took < Duration::from_secs(1), "took {took:?}");

        // It travelled as that endpoint only: one resource, one removed name, a few hundred bytes.
        let status = within(Duration::from_secs(2), async {
            loop {
                let s = proxy_status(&cp, "web-0");
                if s["acked_version"] == s["sent_version"] && s["pushes"].as_u64() > first["pushes"].as_u64() {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let push = &status["last_push"];
        assert_eq!((push["resources"].as_u64(), push["removed"].as_u64()), (Some(1), Some(1)), "{status}");
        assert!(push["bytes"].as_u64().unwrap() < 500, "{status}");

        // The proxy holds the same effective cluster as if it had been sent whole.
        let dump: serde_json::Value = serde_json::from_str(&admin_get(proxy.admin, "/config_dump").unwrap().1).unwrap();
        let cluster = dump["config"]["clusters"].as_array().unwrap().iter().find(|c| c["name"] == "many").unwrap();
        let eps = cluster["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2_000);
        assert_eq!(cluster["lb"], "round_robin");
        let live: Vec<&serde_json::Value> = eps.iter().filter(|e| e["weight"] == 1).collect();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0]["address"], b.addr.to_string());
        assert!(!eps.iter().any(|e| e["address"] == a.addr.to_string()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoints_resources_are_nacked_and_the_old_config_serves() {
    use trellis_api::discovery::ResourceType;
    use trellis_testkit::fake_cp::{resource, response};
    within(Duration::from_secs(60), async {
        let a = Origin::echo("a").await;
        let listen = listen_addr();
        let res = |t: ResourceType, name: &str, body: String| resource(t, name, "1", body);
        let ep = |name: String, body: String| res(ResourceType::Endpoints, &name, body);
        let good = response(
            "1",
            vec![
                res(ResourceType::Listener, "web", format!(r#"{{"name":"web","address":"{listen}","routes":["r"]}}"#)),
                res(ResourceType::Route, "r", r#"{"name":"r","backends":[{"cluster":"c"}]}"#.into()),
                res(ResourceType::Cluster, "c", r#"{"name":"c","endpoints":[]}"#.into()),
                ep(format!("c/{}", a.addr), format!(r#"{{"address":"{}"}}"#, a.addr)),
            ],
        );
        let unknown_cluster = response("2", vec![ep("nope/127.0.0.1:1".into(), r#"{"address":"127.0.0.1:1"}"#.into())]);
        let malformed =
            response("3", vec![ep("c/127.0.0.1:1".into(), r#"{"address":"127.0.0.1:1","weight":"x"}"#.into())]);
        let mismatched = response("4", vec![ep("c/127.0.0.1:2".into(), r#"{"address":"127.0.0.1:1"}"#.into())]);
        let mut fake = FakeControlPlane::start(vec![good, unknown_cluster, malformed, mismatched]).await;
        let proxy = blocking(|| Proxy::start(&fake.bootstrap("web-0", "web")));
        let ack = fake.next_answer().await;
        assert_eq!((ack.response_nonce.as_str(), ack.error.as_str()), ("1", ""));
        assert_eq!(origin_at(listen).await, "a");
        let nack = fake.next_answer().await;
        assert_eq!(nack.response_nonce, "2");
        assert_eq!(nack.error, r#"endpoints[nope/127.0.0.1:1]: no cluster named "nope""#);
        let nack = fake.next_answer().await;
        assert_eq!(nack.response_nonce, "3");
        assert!(nack.error.starts_with("endpoints[c/127.0.0.1:1]: weight: "), "{}", nack.error);
        let nack = fake.next_answer().await;
        assert_eq!(nack.response_nonce, "4");
        assert!(nack.error.contains("differs from the body's"), "{}", nack.error);
        // The old config serves, whole.
        assert_eq!(origin_at(listen).await, "a");
        let dump: serde_json::Value = serde_json::from_str(&admin_get(proxy.admin, "/config_dump").unwrap().1).unwrap();
        assert_eq!(dump["config"]["clusters"][0]["endpoints"].as_array().unwrap().len(), 1, "{dump}");
    })
    .await;
}

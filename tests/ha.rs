//! The control plane on etcd (DESIGN §12), for real: an etcd process on loopback, two or
//! three `trellis control-plane --store etcd://…` replicas, real `trellis proxy` processes.
//! Writes through any replica reach every replica's proxies; If-Match holds across
//! replicas; a compaction in the middle of writes loses nothing; a killed replica's
//! registrations expire while its proxies fail over, resume and register elsewhere; an etcd
//! outage refuses writes (503) and loses no proxy config; a hand-written invalid value is
//! skipped and counted; TLS to etcd with a client certificate. Skipped (with a message) where etcd is not installed; CI installs it
//! and sets TRELLIS_REQUIRE_ETCD so that they run there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{self, Yaml};
use trellis_testkit::*;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use trellis_control_plane::client::{Answer, Client as Rest};

/// A replica on `etcd` (registration TTL 2 s, endpoint grace 1 s).
fn replica(etcd: &str, dir: &Path, extra: &[&str]) -> ControlPlane {
    let mut args = vec!["--store", etcd, "--registration-ttl", "2s"];
    args.extend_from_slice(extra);
    ControlPlane::start_with(dir, listen_addr(), listen_addr(), &args)
}

fn rest(cp: &ControlPlane) -> Rest {
    Rest::new(&cp.api_url(), None).unwrap()
}

async fn send(c: &Rest, method: Method, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Answer {
    c.send(method, path, body.map(|b| serde_json::to_vec(&b).unwrap()), headers).await.unwrap()
}

async fn ok_put(c: &Rest, path: &str, body: Value) -> u64 {
    let a = send(c, Method::PUT, path, Some(body), &[]).await;
    assert!(a.status.is_success(), "PUT {path}: {} {}", a.status, String::from_utf8_lossy(&a.body));
    a.etag().expect("an ETag")
}

/// Polls `f` every 50 ms until it gives `Some`, up to `limit`.
async fn eventually<T>(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A proxy of `service` taking its config from `addresses` (one, or a fail-over list).
fn proxy_on(id: &str, service: &str, addresses: &[String], inbound: Option<SocketAddr>) -> Proxy {
    let yaml = config::Bootstrap {
        node: config::Node { id: id.into(), service: Some(service.into()), zone: None },
        drain_timeout: Some(config::ms(1000)),
        control_plane: Some(config::ControlPlaneConfig {
            inbound_address: inbound.map(|a| a.to_string()),
            ..config::control_plane(addresses)
        }),
        ..config::bootstrap()
    }
    .yaml();
    blocking(|| Proxy::start(&yaml))
}

/// The `x-gen` response header a request through `listen` gets.
async fn generation(listen: SocketAddr) -> Option<String> {
    let mut c = Client::h1(listen).await;
    let got = c.get("/").await;
    (got.status == 200).then(|| got.header("x-gen").unwrap_or("").to_string())
}

/// Through `writer`: an origin, route `all` (generation `generation`) to it, and listener
/// `in` of service `s`; then a proxy `p` of `s` on `discovery`. Returns the origin, the
/// listener's address, the proxy and the route's version.
async fn served(writer: &Rest, generation: &str, discovery: &ControlPlane) -> (Origin, SocketAddr, Proxy, u64) {
    let origin = Origin::echo("origin").await;
    ok_put(writer, "/v1/clusters/origin", json!({ "endpoints": [{ "address": origin.addr.to_string() }] })).await;
    let version = ok_put(writer, "/v1/routes/all", route(generation)).await;
    let listen = listen_addr();
    ok_put(writer, "/v1/listeners/in", json!({ "service": "s", "address": listen.to_string(), "routes": ["all"] }))
        .await;
    let proxy = proxy_on("p", "s", &[discovery.xds_url()], None);
    (origin, listen, proxy, version)
}

fn route(generation: &str) -> Value {
    json!({ "backends": [{ "cluster": "origin" }], "response_headers": { "add": { "x-gen": generation } } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_replica_reach_every_replica_and_if_match_holds_across_them() {
    let Some(etcd) = Etcd::start() else { return };
    within(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let reps: Vec<ControlPlane> =
            (0..3).map(|i| replica(&etcd.url(), &dir.path().join(format!("r{i}")), &[])).collect();
        let rests: Vec<Rest> = reps.iter().map(rest).collect();
        let origin = Origin::echo("origin").await;

        // Through replica 0: an origin cluster, a route, and one listener per service.
        ok_put(&rests[0], "/v1/clusters/origin", json!({ "endpoints": [{ "address": origin.addr.to_string() }] }))
            .await;
        ok_put(&rests[0], "/v1/routes/all", route("1")).await;
        let listens: Vec<SocketAddr> = (0..3).map(|_| listen_addr()).collect();
        for (i, l) in listens.iter().enumerate() {
            let listener = json!({ "service": format!("s{i}"), "address": l.to_string(), "routes": ["all"] });
            ok_put(&rests[0], &format!("/v1/listeners/l{i}"), listener).await;
        }
        // A proxy on each replica.
        let _proxies: Vec<Proxy> =
            (0..3).map(|i| proxy_on(&format!("p{i}"), &format!("s{i}"), &[reps[i].xds_url()], None)).collect();
        for l in &listens {
            assert_eq!(generation(*l).await.as_deref(), Some("1"));
        }

        // A write through replica 1 reaches the proxies of all three.
        ok_put(&rests[1], "/v1/routes/all", route("2")).await;
        let t = Instant::now();
        for l in &listens {
            eventually(Duration::from_secs(5), "route change on every replica's proxy", async || {
                (generation(*l).await.as_deref() == Some("2")).then_some(())
            })
            .await;
        }
        eprintln!("write on replica 1 served by the proxies of all 3 replicas after {:?}", t.elapsed());

        // Every replica reads the same version (ETag) of it.
        let tags: Vec<Option<u64>> = {
            let mut v = Vec::new();
            for r in &rests {
                v.push(send(r, Method::GET, "/v1/routes/all", None, &[]).await.etag());
            }
            v
        };
        assert!(tags.iter().all(|t| *t == tags[0] && t.is_some()), "{tags:?}");
        let seen = tags[0].unwrap().to_string();

        // If-Match across replicas: the version read on replica 2 lets a write through on
        // replica 0; then it is stale on replica 1.
        let tag = format!("\"{seen}\"");
        let a = send(&rests[0], Method::PUT, "/v1/routes/all", Some(route("3")), &[("if-match", &tag)]).await;
        assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.body));
        let a = send(&rests[1], Method::PUT, "/v1/routes/all", Some(route("4")), &[("if-match", &tag)]).await;
        assert_eq!(a.status, StatusCode::PRECONDITION_FAILED, "{}", String::from_utf8_lossy(&a.body));

        // Two replicas racing with the same If-Match: exactly one wins.
        let current = send(&rests[2], Method::GET, "/v1/routes/all", None, &[]).await.etag().unwrap();
        let tag = format!("\"{current}\"");
        let cond = [("if-match", tag.as_str())];
        let (x, y) = tokio::join!(
            send(&rests[1], Method::PUT, "/v1/routes/all", Some(route("5")), &cond),
            send(&rests[2], Method::PUT, "/v1/routes/all", Some(route("6")), &cond),
        );
        let mut statuses = [x.status.as_u16(), y.status.as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 412], "one write wins, the other is stale");

        // One transaction per write: a delete refused on one replica because another
        // replica's route references the cluster.
        let a = send(&rests[2], Method::DELETE, "/v1/clusters/origin", None, &[]).await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&a.body));

        // `trellis ctl` against any replica.
        let manifest = dir.path().join("extra.yaml");
        std::fs::write(&manifest, "kind: Cluster\nname: extra\nendpoints: [{address: \"127.0.0.1:9\"}]\n").unwrap();
        let (code, err) = trellis(&["ctl", "--server", &reps[1].api_url(), "apply", "-f", manifest.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let out = trellis_command()
            .args(["ctl", "--server", &reps[2].api_url(), "get", "clusters", "extra"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:9"), "{out:?}");
        let (code, err) = trellis(&["ctl", "--server", &reps[0].api_url(), "delete", "cluster", "extra"]);
        assert_eq!(code, 0, "{err}");
        eventually(Duration::from_secs(5), "the delete on replica 2", async || {
            (send(&rests[2], Method::GET, "/v1/clusters/extra", None, &[]).await.status == 404).then_some(())
        })
        .await;

        // One CA: every replica signs with it and serves it as the trust bundle.
        let cas: Vec<String> =
            reps.iter().map(|r| std::fs::read_to_string(r.data.join("ca/ca.pem")).unwrap()).collect();
        assert!(cas.iter().all(|c| *c == cas[0]));
        for r in &rests {
            let id = trellis_certs::SpiffeId::parse("spiffe://trellis.local/ns/default/sa/s0").unwrap();
            let csr = trellis_certs::new_csr(&id).unwrap().csr_pem;
            let a = send(r, Method::POST, "/v1/certificates", Some(json!({ "csr": csr })), &[]).await;
            assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.body));
            let chain = a.json().unwrap()["certificate"].as_str().unwrap().to_string();
            assert!(chain.trim_end().ends_with(cas[0].trim_end()), "the chain ends with the shared CA");
        }
        for r in &rests {
            let health = r.get_json("/healthz").await.unwrap();
            assert_eq!(health["store"]["engine"], "etcd", "{health}");
            assert_eq!(health["store"]["connected"], true, "{health}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_every_replica_all_land_and_never_make_an_invalid_set() {
    let Some(etcd) = Etcd::start() else { return };
    within(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let reps: Vec<ControlPlane> =
            (0..3).map(|i| replica(&etcd.url(), &dir.path().join(format!("r{i}")), &[])).collect();
        let rests: Vec<Rest> = reps.iter().map(rest).collect();

        // 3 replicas × 4 writers × 5 writes, all at once: every write is answered 2xx.
        let mut writers = Vec::new();
        for (r, c) in rests.iter().enumerate() {
            for w in 0..4 {
                let c = c.clone();
                writers.push(tokio::spawn(async move {
                    for i in 0..5 {
                        let body = json!({ "endpoints": [{ "address": format!("127.0.0.1:{}", 1000 + i) }] });
                        ok_put(&c, &format!("/v1/clusters/r{r}-w{w}-{i}"), body).await;
                    }
                }));
            }
        }
        for w in writers {
            w.await.unwrap();
        }
        for c in &rests {
            eventually(Duration::from_secs(5), "all 60 clusters on every replica", async || {
                (c.list(trellis_control_plane::Kind::Cluster).await.ok()?.len() == 60).then_some(())
            })
            .await;
        }

        // Two writes that are each valid but clash, on two replicas at once: a delete of a
        // cluster and a route to it. Never both.
        for round in 0..8 {
            let cluster = format!("/v1/clusters/target{round}");
            ok_put(&rests[0], &cluster, json!({ "endpoints": [{ "address": "127.0.0.1:9" }] })).await;
            let route = format!("/v1/routes/to-target{round}");
            let body = json!({ "backends": [{ "cluster": format!("target{round}") }] });
            let (deleted, routed) = tokio::join!(
                send(&rests[1], Method::DELETE, &cluster, None, &[]),
                send(&rests[2], Method::PUT, &route, Some(body), &[]),
            );
            let (deleted, routed) = (deleted.status.is_success(), routed.status.is_success());
            assert!(deleted != routed, "round {round}: exactly one of them (deleted {deleted}, routed {routed})");
            for c in &rests {
                eventually(Duration::from_secs(5), "the same outcome on every replica", async || {
                    let has_cluster = send(c, Method::GET, &cluster, None, &[]).await.status == 200;
                    let has_route = send(c, Method::GET, &route, None, &[]).await.status == 200;
                    (has_cluster == routed && has_route == routed).then_some(())
                })
                .await;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_in_the_middle_of_writes_loses_nothing() {
    let Some(etcd) = Etcd::start() else { return };
    within(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        // Replica b reaches etcd through a gate the test shuts, so that its watch is behind
        // when etcd compacts.
        let gate = Gate::start(etcd.client).await;
        let a = replica(&etcd.url(), &dir.path().join("a"), &[]);
        let b = replica(&format!("etcd://{}", gate.addr), &dir.path().join("b"), &[]);
        let (ra, rb) = (rest(&a), rest(&b));
        let (_origin, listen, _p, _) = served(&ra, "0", &b).await;
        let kv = etcd.api();
        let compact_now = async || {
            let now = kv.range(b"/", b"").await.unwrap().header.unwrap().revision;
            kv.compact(now).await.unwrap();
        };

        for i in 1..=60 {
            ok_put(&ra, "/v1/routes/all", route(&i.to_string())).await;
            ok_put(&ra, &format!("/v1/clusters/c{i}"), json!({ "endpoints": [{ "address": "127.0.0.1:9" }] })).await;
            if i % 2 == 0 {
                send(&ra, Method::DELETE, &format!("/v1/clusters/c{}", i - 1), None, &[]).await.ok().unwrap();
            }
            match i {
                // Both replicas follow: a compaction does not disturb a live watch.
                10 => compact_now().await,
                20 => gate.shut(),
                // b's watch resumes from a revision etcd has compacted away: it lists again.
                40 => {
                    compact_now().await;
                    gate.open();
                }
                _ => {}
            }
        }
        let want = ra.get_json("/v1/clusters").await.unwrap();
        let want_route = send(&ra, Method::GET, "/v1/routes/all", None, &[]).await.etag();
        eventually(Duration::from_secs(20), "replica b holds what replica a holds", async || {
            let got = rb.get_json("/v1/clusters").await.ok()?;
            let route = send(&rb, Method::GET, "/v1/routes/all", None, &[]).await.etag();
            (got["versions"] == want["versions"] && route == want_route).then_some(())
        })
        .await;
        eventually(Duration::from_secs(5), "the last write at b's proxy", async || {
            (generation(listen).await.as_deref() == Some("60")).then_some(())
        })
        .await;
        let health = rb.get_json("/healthz").await.unwrap();
        assert!(health["store"]["relists"].as_u64().unwrap() >= 1, "b listed again after the compaction: {health}");
        assert_eq!(ra.get_json("/healthz").await.unwrap()["store"]["relists"], 0, "a's watch never broke");
        assert_eq!(want["items"].as_array().unwrap().len(), 31, "origin + the 30 clusters not deleted");
    })
    .await;
}

/// The addresses of a proxy's cluster `name`, from its admin `/clusters`.
fn endpoints_of(p: &Proxy, name: &str) -> Vec<String> {
    let Ok((200, body)) = admin_get(p.admin, "/clusters") else { return Vec::new() };
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    let clusters = v["clusters"].as_array().cloned().unwrap_or_default();
    let c = clusters.iter().find(|c| c["name"] == name).cloned().unwrap_or_default();
    c["endpoints"].as_array().into_iter().flatten().filter_map(|e| e["address"].as_str().map(str::to_string)).collect()
}

async fn proxy_entry(c: &Rest, id: &str) -> Option<Value> {
    c.proxies().await.ok()?.into_iter().find(|p| p["id"] == id && p["connected"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_registrations_expire_while_its_proxies_fail_over_and_resume() {
    let Some(etcd) = Etcd::start() else { return };
    within(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let mut a = replica(&etcd.url(), &dir.path().join("a"), &[]);
        let (b_api, b_xds) = (listen_addr(), listen_addr());
        let ra = rest(&a);
        ok_put(&ra, "/v1/clusters/web", json!({ "endpoints": [] })).await;
        ok_put(&ra, "/v1/routes/to-web", json!({ "backends": [{ "cluster": "web" }] })).await;
        let out = listen_addr();
        ok_put(&ra, "/v1/listeners/out", json!({ "service": "client", "address": out.to_string(), "routes": ["to-web"] }))
            .await;

        // Two sidecars of `web` register through replica a: s1 knows only a; s2 lists b
        // first, which is not up yet, so it lands on a too. So does the client c.
        let (p1, p2) = (listen_addr(), listen_addr());
        let b_url = format!("http://{b_xds}");
        let _s1 = proxy_on("s1", "web", &[a.xds_url()], Some(p1));
        let _s2 = proxy_on("s2", "web", &[b_url.clone(), a.xds_url()], Some(p2));
        let c = proxy_on("c", "client", &[b_url.clone(), a.xds_url()], None);
        let both = vec![p1.to_string(), p2.to_string()];
        eventually(Duration::from_secs(10), "both sidecars in c's cluster web", async || {
            let mut got = endpoints_of(&c, "web");
            got.sort();
            let mut want = both.clone();
            want.sort();
            (got == want).then_some(())
        })
        .await;
        let on_a = proxy_entry(&ra, "c").await.expect("c is on replica a");
        let full_view_bytes = on_a["bytes_sent"].as_u64().unwrap();
        let b = ControlPlane::start_with(
            &dir.path().join("b"),
            b_api,
            b_xds,
            &["--store", &etcd.url(), "--registration-ttl", "2s"],
        );
        let rb = rest(&b);
        let config_before = c.version();

        // kill -9 a.
        a.kill();
        let killed = Instant::now();
        let (mut p2_gap, mut p2_missing_since) = (Duration::ZERO, None::<Instant>);
        let mut p1_gone_after = None;
        while killed.elapsed() < Duration::from_secs(8) {
            let got = endpoints_of(&c, "web");
            match (got.contains(&p2.to_string()), p2_missing_since) {
                (false, None) => p2_missing_since = Some(Instant::now()),
                (true, Some(since)) => {
                    p2_gap = p2_gap.max(since.elapsed());
                    p2_missing_since = None;
                }
                _ => {}
            }
            if p1_gone_after.is_none() && !got.contains(&p1.to_string()) {
                p1_gone_after = Some(killed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(since) = p2_missing_since {
            p2_gap = p2_gap.max(since.elapsed());
        }
        let p1_gone_after = p1_gone_after.expect("s1's registration expired with a's lease");
        eprintln!("after kill -9 of replica a: s1 (pinned to a) gone after {p1_gone_after:?}; s2 (failed over) longest gap {p2_gap:?}");
        // TTL 2 s, renewed every third of it: the lease runs out 1.3–2 s after the kill
        // (etcd checks leases twice a second), not at once.
        assert!(p1_gone_after >= Duration::from_secs(1), "not before the lease ran out: {p1_gone_after:?}");
        // Registered again through b before a's lease ran out: at most TTL + reconnect backoff.
        assert!(p2_gap < Duration::from_secs(3), "s2's endpoint was gone for {p2_gap:?}");
        assert_eq!(endpoints_of(&c, "web"), vec![p2.to_string()]);

        // The proxies failed over to b; c resumed there (b sent what changed, not its whole
        // view) and never lost its config.
        let s2 = proxy_entry(&rb, "s2").await.expect("s2 registered through b");
        assert_eq!(s2["inbound_address"], p2.to_string());
        let on_b = proxy_entry(&rb, "c").await.expect("c failed over to b");
        let resumed_bytes = on_b["bytes_sent"].as_u64().unwrap();
        assert!(resumed_bytes * 2 < full_view_bytes, "resumed: {resumed_bytes} bytes on b vs {full_view_bytes} for the whole view on a");
        assert!(b.logs().contains("proxy resumed"), "{}", b.logs());
        assert_eq!(admin_get(c.admin, "/ready").unwrap().0, 200);
        assert!(c.version() > config_before, "c applied the removal of s1 (and nothing went missing)");
        let dump: Value = serde_json::from_str(&admin_get(c.admin, "/config_dump").unwrap().1).unwrap();
        assert_eq!(dump["config"]["listeners"][0]["name"], "out", "{dump}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_for_longer_than_its_lease_registers_its_sidecars_again() {
    let Some(etcd) = Etcd::start() else { return };
    within(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let gate = Gate::start(etcd.client).await;
        let a = replica(&format!("etcd://{}", gate.addr), &dir.path().join("a"), &[]);
        let b = replica(&etcd.url(), &dir.path().join("b"), &[]);
        let rb = rest(&b);
        ok_put(&rb, "/v1/clusters/web", json!({ "endpoints": [] })).await;
        ok_put(&rb, "/v1/routes/to-web", json!({ "backends": [{ "cluster": "web" }] })).await;
        let out = listen_addr();
        ok_put(
            &rb,
            "/v1/listeners/out",
            json!({ "service": "client", "address": out.to_string(), "routes": ["to-web"] }),
        )
        .await;
        let c = proxy_on("c", "client", &[b.xds_url()], None);
        let (p1, p2) = (listen_addr(), listen_addr());
        let _s1 = proxy_on("s1", "web", &[a.xds_url()], Some(p1));
        let sees = |want: Vec<String>| {
            let c = &c;
            async move || {
                let mut got = endpoints_of(c, "web");
                got.sort();
                (got == want).then_some(())
            }
        };
        eventually(Duration::from_secs(10), "s1 registered through a", sees(vec![p1.to_string()])).await;

        // a loses etcd; its lease runs out and s1's registration with it. Meanwhile s2
        // registers through a: it waits.
        gate.shut();
        eventually(Duration::from_secs(10), "s1's registration expired", sees(vec![])).await;
        let _s2 = proxy_on("s2", "web", &[a.xds_url()], Some(p2));
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Back: a new lease, both registered again.
        gate.open();
        let mut both = vec![p1.to_string(), p2.to_string()];
        both.sort();
        eventually(Duration::from_secs(15), "s1 and s2 registered again through a", sees(both)).await;
        assert!(a.logs().contains("registering again under a new one"), "{}", a.logs());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_refuses_writes_with_503_keeps_proxies_serving_and_catches_up() {
    let Some(mut etcd) = Etcd::start() else { return };
    within(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let a = replica(&etcd.url(), &dir.path().join("a"), &[]);
        let b = replica(&etcd.url(), &dir.path().join("b"), &[]);
        let (ra, rb) = (rest(&a), rest(&b));
        let (_origin, listen, p, _) = served(&ra, "1", &b).await;
        assert_eq!(generation(listen).await.as_deref(), Some("1"));

        etcd.kill();
        let refused = send(&ra, Method::PUT, "/v1/routes/all", Some(route("2")), &[]).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&refused.body));
        let error = refused.json().unwrap()["error"].as_str().unwrap().to_string();
        assert!(error.contains("etcd") && error.contains(&etcd.client.to_string()), "{error}");
        // Reads and the proxies keep the last view.
        let got = send(&rb, Method::GET, "/v1/routes/all", None, &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        eventually(Duration::from_secs(5), "healthz shows etcd lost", async || {
            (rb.get_json("/healthz").await.ok()?["store"]["connected"] == false).then_some(())
        })
        .await;
        for _ in 0..5 {
            assert_eq!(generation(listen).await.as_deref(), Some("1"), "the proxy keeps serving");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(p.logs().lines().all(|l| !l.contains("NACK")), "{}", p.logs());

        etcd.restart();
        eventually(Duration::from_secs(20), "a write once etcd is back", async || {
            let a = send(&ra, Method::PUT, "/v1/routes/all", Some(route("2")), &[]).await;
            a.status.is_success().then_some(())
        })
        .await;
        eventually(Duration::from_secs(10), "the write at b's proxy", async || {
            (generation(listen).await.as_deref() == Some("2")).then_some(())
        })
        .await;
        for r in [&ra, &rb] {
            eventually(Duration::from_secs(10), "watch back", async || {
                (r.get_json("/healthz").await.ok()?["store"]["connected"] == true).then_some(())
            })
            .await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_over_etcds_request_limit_is_413_and_stores_nothing() {
    let Some(etcd) = Etcd::start_with_args(&["--max-request-bytes", "4096"]) else { return };
    within(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let a = replica(&etcd.url(), &dir.path().join("a"), &[]);
        let ra = rest(&a);
        let many: Vec<Value> = (0..200).map(|i| json!({ "address": format!("127.0.0.1:{}", 1000 + i) })).collect();
        let refused = send(&ra, Method::PUT, "/v1/clusters/big", Some(json!({ "endpoints": many })), &[]).await;
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", String::from_utf8_lossy(&refused.body));
        let error = refused.json().unwrap()["error"].as_str().unwrap().to_string();
        assert!(error.contains("max-request-bytes") && error.contains(&etcd.client.to_string()), "{error}");
        assert_eq!(send(&ra, Method::GET, "/v1/clusters/big", None, &[]).await.status, StatusCode::NOT_FOUND);
        ok_put(&ra, "/v1/clusters/small", json!({ "endpoints": [{ "address": "127.0.0.1:9" }] })).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_invalid_values_are_skipped_counted_and_never_pushed() {
    let Some(etcd) = Etcd::start() else { return };
    within(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let a = replica(&etcd.url(), &dir.path().join("a"), &[]);
        let ra = rest(&a);
        let (_origin, listen, p, v1) = served(&ra, "1", &a).await;
        let applied = p.version();

        // By hand, around the REST API: not JSON; a route to a cluster that does not exist;
        // a registration that does not parse.
        let kv = etcd.api();
        kv.put(b"/trellis/resources/routes/all", b"{not json", 0).await.unwrap();
        let dangling = json!({ "name": "bad", "backends": [{ "cluster": "nowhere" }] }).to_string();
        kv.put(b"/trellis/resources/routes/bad", dangling.as_bytes(), 0).await.unwrap();
        kv.put(b"/trellis/registrations/web/127.0.0.1:1", b"[]", 0).await.unwrap();
        let health = eventually(Duration::from_secs(5), "three refused values", async || {
            let h = ra.get_json("/healthz").await.ok()?;
            (h["store"]["invalid_values"] == 3).then_some(h)
        })
        .await;
        let invalid = &health["store"]["invalid"];
        assert!(invalid["resources/routes/all"].as_str().unwrap().contains("not valid"), "{health}");
        assert!(invalid["resources/routes/bad"].as_str().unwrap().contains("nowhere"), "{health}");
        assert!(invalid["registrations/web/127.0.0.1:1"].is_string(), "{health}");
        assert!(a.logs().contains("skipped an invalid value in etcd"));
        // The last good route stays; the dangling one never appears.
        assert_eq!(send(&ra, Method::GET, "/v1/routes/all", None, &[]).await.etag(), Some(v1));
        assert_eq!(send(&ra, Method::GET, "/v1/routes/bad", None, &[]).await.status, StatusCode::NOT_FOUND);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(p.version(), applied, "nothing was pushed");
        assert_eq!(generation(listen).await.as_deref(), Some("1"));

        // A replica starting now lists them: skipped there too. It never saw a good value of
        // routes/all, so it leaves that out, and the listener that needs it.
        let b = replica(&etcd.url(), &dir.path().join("b"), &[]);
        let hb = rest(&b).get_json("/healthz").await.unwrap();
        assert_eq!(hb["store"]["invalid_values"], 4, "{hb}");
        assert!(hb["store"]["invalid"]["resources/listeners/in"].as_str().unwrap().contains("no route named"), "{hb}");
        assert_eq!(send(&rest(&b), Method::GET, "/v1/routes/bad", None, &[]).await.status, StatusCode::NOT_FOUND);

        // A REST write repairs the key.
        ok_put(&ra, "/v1/routes/all", route("2")).await;
        eventually(Duration::from_secs(5), "the repaired route served", async || {
            (generation(listen).await.as_deref() == Some("2")).then_some(())
        })
        .await;
        let h = ra.get_json("/healthz").await.unwrap();
        assert!(h["store"]["invalid"].get("resources/routes/all").is_none(), "{h}");
        // b takes the listener it had to leave out, now that its route is good.
        let rb = rest(&b);
        eventually(Duration::from_secs(5), "b holds the listener again", async || {
            (send(&rb, Method::GET, "/v1/listeners/in", None, &[]).await.status == 200).then_some(())
        })
        .await;
        let hb = rb.get_json("/healthz").await.unwrap();
        let left: Vec<&String> = hb["store"]["invalid"].as_object().unwrap().keys().collect();
        assert_eq!(left, ["registrations/web/127.0.0.1:1", "resources/routes/bad"], "{hb}");
    })
    .await;
}

#[test]
fn a_ca_given_as_files_is_the_one_every_replica_uses_and_another_is_refused() {
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, c_dir) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    // The operator's CA in the first replica's data directory: stored in etcd for all.
    let (code, err) = trellis(&["certs", "init", "--dir", a_dir.join("ca").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let given = std::fs::read_to_string(a_dir.join("ca/ca.pem")).unwrap();
    let _a = replica(&etcd.url(), &a_dir, &[]);
    let _b = replica(&etcd.url(), &b_dir, &[]);
    assert_eq!(std::fs::read_to_string(b_dir.join("ca/ca.pem")).unwrap(), given, "b copied the given CA");

    // A replica holding another CA would split the mesh: it does not start.
    let (code, err) = trellis(&["certs", "init", "--dir", c_dir.join("ca").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = trellis(&["control-plane", "--data-dir", c_dir.to_str().unwrap(), "--store", &etcd.url()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("holds another CA") && err.contains(c_dir.to_str().unwrap()), "{err}");

    // A CA certificate in etcd without its key (written by hand): refused, naming it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { etcd.api().put(b"/other/ca/cert", given.as_bytes(), 0).await }).unwrap();
    let d_dir = dir.path().join("d");
    let (code, err) = trellis(&[
        "control-plane",
        "--data-dir",
        d_dir.to_str().unwrap(),
        "--store",
        &etcd.url(),
        "--etcd-prefix",
        "/other",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/other/ca") && err.contains("not its key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_speak_tls_to_etcd_and_present_their_certificate() {
    let Some(etcd) = Etcd::start_tls() else { return };
    within(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let flags = etcd.tls_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let a = replica(&etcd.url(), &dir.path().join("a"), &flags);
        let b = replica(&etcd.url(), &dir.path().join("b"), &flags);
        let v = ok_put(&rest(&a), "/v1/clusters/web", json!({ "endpoints": [{ "address": "127.0.0.1:9" }] })).await;
        eventually(Duration::from_secs(5), "the write on b", async || {
            (send(&rest(&b), Method::GET, "/v1/clusters/web", None, &[]).await.etag() == Some(v)).then_some(())
        })
        .await;
        let health = rest(&b).get_json("/healthz").await.unwrap();
        assert!(health["store"]["at"].as_str().unwrap().ends_with("(TLS)"), "{health}");
        let kv = etcd.api();
        assert_eq!(kv.range(b"/trellis/resources/clusters/web", b"").await.unwrap().kvs.len(), 1);

        // Refused at start (exit 1 naming etcd): plaintext to it; no client certificate;
        // a CA that did not sign its certificate.
        let data = dir.path().join("c");
        let data = data.to_str().unwrap();
        let url = etcd.url();
        let plain = trellis(&["control-plane", "--data-dir", data, "--store", &url]);
        let ca = etcd.tls.as_ref().unwrap().ca.to_str().unwrap().to_string();
        let no_cert = trellis(&["control-plane", "--data-dir", data, "--store", &url, "--etcd-ca-file", &ca]);
        let other = EtcdTls::make(dir.path());
        let wrong_ca = trellis(&[
            "control-plane",
            "--data-dir",
            data,
            "--store",
            &url,
            "--etcd-ca-file",
            other.ca.to_str().unwrap(),
            "--etcd-cert-file",
            flags[3],
            "--etcd-key-file",
            flags[5],
        ]);
        for (what, (code, err)) in [("plaintext", plain), ("no client certificate", no_cert), ("another CA", wrong_ca)]
        {
            assert_eq!(code, 1, "{what}: {err}");
            eprintln!("{what}: {err}");
            assert!(err.contains(&format!("etcd at {}", etcd.client)), "{what}: {err}");
        }
        let (_, err) = trellis(&[
            "control-plane",
            "--data-dir",
            data,
            "--store",
            &url,
            "--etcd-ca-file",
            other.ca.to_str().unwrap(),
        ]);
        assert!(err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"), "{err}");
    })
    .await;
}

#[test]
fn an_unreachable_etcd_at_start_is_exit_1_naming_it_and_bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let nobody = format!("127.0.0.1:{}", free_port());
    let t = Instant::now();
    let (code, err) = trellis(&["control-plane", "--data-dir", data, "--store", &format!("etcd://{nobody}")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&nobody) && err.contains("etcd"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "no hang: {:?}", t.elapsed());

    let (code, err) = trellis(&["control-plane", "--data-dir", data, "--store", "etcd://nohost"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--store") && err.contains("HOST:PORT"), "{err}");
    let (code, err) =
        trellis(&["control-plane", "--data-dir", data, "--store", &format!("etcd://{nobody}"), "--etcd-prefix", "rel"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--etcd-prefix"), "{err}");
    let (code, err) = trellis(&[
        "control-plane",
        "--data-dir",
        data,
        "--store",
        &format!("etcd://{nobody}"),
        "--registration-ttl",
        "500ms",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--registration-ttl") && err.contains("at least 1s"), "{err}");
}

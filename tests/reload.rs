//! Config reloads against the real binary (DESIGN §8): SIGHUP and file changes apply a new
//! config without dropping connections, failing requests, cutting streams or sending GOAWAY;
//! an invalid file is refused and the old config keeps serving; /config_dump's version counts
//! accepted reloads. (Reloads that remove routes and listeners: tests/drain.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{self, Bootstrap, ClusterProtocol, Yaml};
use trellis_testkit::*;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The origin the catch-all route reaches in config generation `generation`: A when even, B when odd.
fn origin_of(generation: u64) -> &'static str {
    if generation.is_multiple_of(2) { "a" } else { "b" }
}

/// How a generation points the route at its origin.
#[derive(Clone, Copy, Debug)]
enum Switch {
    /// Clusters `a` and `b` both exist; the route's backend names one of them.
    Cluster,
    /// One cluster `origin` whose endpoint address changes.
    Endpoint,
}

/// Listener `in` with one catch-all route `main` that adds `x-gen: GENERATION` and goes to origin A
/// (even generations) or B (odd ones).
fn gen_config(listen: SocketAddr, a: SocketAddr, b: SocketAddr, generation: u64, switch: Switch) -> String {
    gen_bootstrap(listen, a, b, generation, switch).yaml()
}

fn gen_bootstrap(listen: SocketAddr, a: SocketAddr, b: SocketAddr, generation: u64, switch: Switch) -> Bootstrap {
    let (cluster, clusters) = match switch {
        Switch::Cluster => (origin_of(generation), vec![("a", a), ("b", b)]),
        Switch::Endpoint => ("origin", vec![("origin", if generation.is_multiple_of(2) { a } else { b })]),
    };
    let mut main = config::route("main", "/", cluster);
    main.headers.add.insert("x-gen".into(), generation.to_string());
    Bootstrap {
        drain_timeout: Some(config::ms(5000)),
        listeners: vec![config::listener("in", listen, &["main"])],
        routes: vec![main],
        clusters: clusters
            .into_iter()
            .map(|(name, addr)| config::cluster(name, ClusterProtocol::default(), &[addr]))
            .collect(),
        ..config::bootstrap()
    }
}

/// Checks an echo answer: 200, served by one consistent config generation (origin and header
/// rule from the same config), no older than `floor`, with the whole request body. Returns
/// the generation.
fn check_echo(status: StatusCode, body: &[u8], floor: u64, sent: usize) -> Result<u64, String> {
    let text = String::from_utf8_lossy(body);
    if status != StatusCode::OK {
        return Err(format!("status {status}: {text}"));
    }
    let j: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not json ({e}): {text}"))?;
    let generation: u64 = j["headers"]["x-gen"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| format!("no x-gen header reached the origin: {text}"))?;
    if j["origin"] != origin_of(generation) {
        return Err(format!("generation {generation}'s header but origin {} (configs mixed)", j["origin"]));
    }
    if generation < floor {
        return Err(format!("served by generation {generation} after generation {floor} was applied"));
    }
    if j["body_len"] != sent {
        return Err(format!("origin got {} body bytes, {sent} were sent", j["body_len"]));
    }
    Ok(generation)
}

async fn connect(listen: SocketAddr, h2: bool) -> Client {
    if h2 { Client::h2(listen).await } else { Client::h1(listen).await }
}

#[derive(Default)]
struct Tally {
    ok: usize,
    generations_seen: std::collections::BTreeSet<u64>,
    failures: Vec<String>,
}

/// Sends requests back to back on one keep-alive connection until `stop`; every answer must
/// pass [`check_echo`] against the generation published before the request was sent.
async fn hammer(listen: SocketAddr, h2: bool, id: usize, published: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Tally {
    let proto = if h2 { "h2c" } else { "h1" };
    let mut c = connect(listen, h2).await;
    let mut t = Tally::default();
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let floor = published.load(Ordering::Acquire);
        let (req, sent) = if n.is_multiple_of(2) {
            (Request::get(format!("/load/{id}/{n}")).body(full("")).unwrap(), 0)
        } else {
            let body = vec![b'x'; 1000 + n % 100];
            let len = body.len();
            (Request::post(format!("/load/{id}/{n}")).body(full(body)).unwrap(), len)
        };
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            let resp = c.send(req).await.map_err(|e| format!("send: {e}"))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok::<_, String>((status, body))
        })
        .await;
        let checked = match outcome {
            Err(_) => Err("no answer within 5s".to_owned()),
            Ok(Err(e)) => Err(e),
            Ok(Ok((status, body))) => check_echo(status, &body, floor, sent),
        };
        match checked {
            Ok(g) => {
                t.ok += 1;
                t.generations_seen.insert(g);
            }
            Err(e) => {
                t.failures.push(format!("client {id} ({proto}) request {n}: {e}"));
                c = connect(listen, h2).await;
            }
        }
    }
    t
}

/// 8 keep-alive clients (h1 and h2c) hammer the proxy while 10 reloads flip the route between
/// origins A and B and change its header rule.
async fn reload_under_load(switch: Switch) {
    let a = Origin::echo("a").await;
    let b = Origin::echo("b").await;
    let listen = listen_addr();
    let proxy = Proxy::start(&gen_config(listen, a.addr, b.addr, 0, switch));
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> =
        (0..8).map(|i| tokio::spawn(hammer(listen, i % 2 == 1, i, published.clone(), stop.clone()))).collect();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for generation in 1..=10u64 {
        let version = blocking(|| proxy.reload(&gen_config(listen, a.addr, b.addr, generation, switch)));
        published.store(generation, Ordering::Release);
        // Fresh connections opened after the reload see the new config at once.
        for h2 in [false, true] {
            let mut c = connect(listen, h2).await;
            let got = c.get("/after-reload").await;
            let checked = check_echo(got.status, &got.body, generation, 0);
            assert_eq!(checked, Ok(generation), "reload {generation} (version {version}), h2={h2}");
        }
        tokio::time::sleep(Duration::from_millis(270)).await;
    }
    let rest = Duration::from_millis(4300).saturating_sub(start.elapsed());
    tokio::time::sleep(rest.max(Duration::from_millis(300))).await;
    stop.store(true, Ordering::Release);

    let (mut total, mut failures) = (0, Vec::new());
    for (i, c) in clients.into_iter().enumerate() {
        let t = c.await.unwrap();
        assert!(t.ok >= 20 || !t.failures.is_empty(), "client {i} sent only {} requests", t.ok);
        assert!(
            t.generations_seen.len() >= 5 || !t.failures.is_empty(),
            "client {i} saw only generations {:?}: its keep-alive connection did not follow the reloads",
            t.generations_seen
        );
        total += t.ok;
        failures.extend(t.failures);
    }
    assert!(
        failures.is_empty(),
        "{} requests failed ({total} ok) across 10 reloads; first ones:\n{}\nproxy log tail:\n{}",
        failures.len(),
        failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n"),
        log_tail(&proxy, 30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_switching_cluster_fails_no_request() {
    within(Duration::from_secs(40), async {
        reload_under_load(Switch::Cluster).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_switching_endpoint_fails_no_request() {
    within(Duration::from_secs(40), async {
        reload_under_load(Switch::Endpoint).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_change_alone_reloads_the_config() {
    within(Duration::from_secs(40), async {
        let a = Origin::echo("a").await;
        let b = Origin::echo("b").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&gen_config(listen, a.addr, b.addr, 0, Switch::Cluster));
        let mut c = Client::h1(listen).await;
        let got = c.get("/").await;
        assert_eq!(check_echo(got.status, &got.body, 0, 0), Ok(0));
        let before = blocking(|| proxy.version());

        proxy.write_config(&gen_config(listen, a.addr, b.addr, 1, Switch::Cluster));
        let written = Instant::now();
        loop {
            let got = c.get("/poll").await;
            assert_eq!(got.status, 200, "{}", got.text());
            if got.json()["origin"] == "b" {
                assert_eq!(check_echo(got.status, &got.body, 1, 0), Ok(1));
                break;
            }
            assert!(
                written.elapsed() < Duration::from_millis(2500),
                "config file changed {:?} ago and requests still go to A:\n{}",
                written.elapsed(),
                log_tail(&proxy, 10)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Applied once: later polls of the unchanged file do not reload again.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(blocking(|| proxy.version()), before + 1);
        let logs = proxy.logs();
        assert!(logs.contains("file changed"), "reload trigger not logged:\n{logs}");
        assert!(!logs.contains("SIGHUP"), "no signal was sent:\n{logs}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_change_keeping_size_and_mtime_is_still_noticed() {
    within(Duration::from_secs(40), async {
        let a = Origin::echo("a").await;
        let b = Origin::echo("b").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&gen_config(listen, a.addr, b.addr, 0, Switch::Cluster));
        let old = std::fs::metadata(&proxy.config).unwrap();
        // Same length (only "a"→"b" and "0"→"1" change) and the same mtime, as two saves within
        // one coarse clock tick, or a copy that preserves times (cp -p, rsync -t, tar), give.
        let next = gen_config(listen, a.addr, b.addr, 1, Switch::Cluster).replace("{admin}", &proxy.admin.to_string());
        assert_eq!(next.len(), std::fs::read_to_string(&proxy.config).unwrap().len());
        let tmp = proxy.dir.path().join("same-stamp.yaml");
        std::fs::write(&tmp, next).unwrap();
        std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(old.modified().unwrap()).unwrap();
        std::fs::rename(&tmp, &proxy.config).unwrap();

        // The file poll notices the new inode (a version above the first), or the check fails.
        wait_version_above(&proxy, 1, Duration::from_millis(2000)).await;
        let mut c = Client::h1(listen).await;
        let got = c.get("/").await;
        assert_eq!(
            check_echo(got.status, &got.body, 0, 0),
            Ok(1),
            "the config file was replaced 2s ago (new inode and content) but is not applied"
        );
    })
    .await;
}

/// Writes `yaml`, sends SIGHUP, and waits until the proxy logs a refusal whose text contains
/// `needle` (the field path). Also lets the file poll see the change, which must refuse too.
async fn expect_refused(proxy: &Proxy, yaml: &str, needle: &str) {
    let from = proxy.logs().len();
    proxy.write_config(yaml);
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let logs = proxy.logs();
        let fresh = logs.get(from..).unwrap_or_default();
        if fresh.contains("config reload refused") && fresh.contains(needle) {
            break;
        }
        assert!(Instant::now() < deadline, "no refusal naming {needle:?} logged; new log lines:\n{fresh}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    within(Duration::from_secs(40), async {
        let a = Origin::echo("a").await;
        let b = Origin::echo("b").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&gen_config(listen, a.addr, b.addr, 0, Switch::Cluster));
        let version = blocking(|| proxy.version());
        let mut kept = Client::h1(listen).await;
        let next_config = gen_bootstrap(listen, a.addr, b.addr, 1, Switch::Cluster);
        let next = next_config.yaml();
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_addr = busy.local_addr().unwrap();
        let edited = |edit: &dyn Fn(&mut Bootstrap)| {
            let mut b = next_config.clone();
            edit(&mut b);
            b.yaml()
        };
        // A field no config type has: only the text can hold it.
        let mut misspelt = serde_json::to_value(&next_config).unwrap();
        misspelt["routes"][0]["timeuot"] = "5s".into();

        let cases = [
            ("unknown field", misspelt.to_string(), "routes[0].timeuot"),
            (
                "dangling cluster reference",
                edited(&|b| b.routes[0].backends[0].cluster = "nope".into()),
                r#"routes[main].backends[0].cluster: no cluster named "nope""#,
            ),
            (
                "dangling route reference",
                edited(&|b| b.listeners[0].routes.push("ghost".into())),
                r#"listeners[in].routes[1]: no route named "ghost""#,
            ),
            (
                "new listener on a busy port",
                edited(&|b| b.listeners.push(config::listener("extra", busy_addr, &["main"]))),
                "listeners[extra].address: cannot bind",
            ),
        ];
        for (what, yaml, needle) in &cases {
            assert_ne!(yaml, &next, "{what}: the test failed to break the config");
            expect_refused(&proxy, yaml, needle).await;
            assert_eq!(blocking(|| proxy.version()), version, "{what}: version moved");
            assert_eq!(blocking(|| admin_get(proxy.admin, "/ready")).unwrap().0, 200, "{what}");
            for c in [&mut kept, &mut Client::h1(listen).await, &mut Client::h2(listen).await] {
                let got = c.get("/still").await;
                assert_eq!(check_echo(got.status, &got.body, 0, 0), Ok(0), "{what}: old config must keep serving");
            }
        }
        drop(busy);
        let logs = proxy.logs();
        assert!(logs.contains("unknown field `timeuot`"), "{logs}");

        // A valid config after the refused ones is applied.
        let v = blocking(|| proxy.reload(&next));
        assert!(v > version);
        let got = kept.get("/next").await;
        assert_eq!(check_echo(got.status, &got.body, 1, 0), Ok(1));
    })
    .await;
}

/// Listener `in` with routes `events` (`/events` → the SSE origin) and `api` (`/api` → A or
/// B); `spare` (an unrelated route, listed first) exists in odd generations only. Every
/// generation changes header rules of both `events` and `api`.
fn sse_config(listen: SocketAddr, sse: SocketAddr, a: SocketAddr, b: SocketAddr, generation: u64) -> String {
    let tag = generation.to_string();
    let mut events = config::route("events", "/events", "sse");
    events.response_headers.add.insert("x-gen".into(), tag.clone());
    let mut api = config::route("api", "/api", origin_of(generation));
    api.headers.add.insert("x-gen".into(), tag);
    let (mut names, mut routes) = (vec![], vec![]);
    if generation % 2 == 1 {
        names.push("spare");
        routes.push(config::route("spare", "/spare", "a"));
    }
    names.extend(["events", "api"]);
    routes.extend([events, api]);
    let clusters = [("sse", sse), ("a", a), ("b", b)];
    Bootstrap {
        drain_timeout: Some(config::ms(1000)),
        listeners: vec![config::listener("in", listen, &names)],
        routes,
        clusters: clusters
            .into_iter()
            .map(|(name, addr)| config::cluster(name, ClusterProtocol::default(), &[addr]))
            .collect(),
        ..config::bootstrap()
    }
    .yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_stream_keeps_flowing_across_reloads_that_keep_its_route() {
    within(Duration::from_secs(40), async {
        let sse = sse_origin("tick", Duration::from_millis(100)).await;
        let a = Origin::echo("a").await;
        let b = Origin::echo("b").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&sse_config(listen, sse.addr, a.addr, b.addr, 0));
        let (mut c1, mut c2) = (Client::h1(listen).await, Client::h2(listen).await);
        let opened = Instant::now();
        let streams = [
            ("h1", EventReader::open(&mut c1, "/events/h1").await),
            ("h2c", EventReader::open(&mut c2, "/events/h2").await),
        ];

        for generation in 1..=10u64 {
            blocking(|| proxy.reload(&sse_config(listen, sse.addr, a.addr, b.addr, generation)));
            let mut c = Client::h1(listen).await;
            let got = c.get("/api/x").await;
            assert_eq!(check_echo(got.status, &got.body, generation, 0), Ok(generation));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let last_reload = Instant::now();
        // Longer than drain_timeout (1s): a stream wrongly retired by a reload would be cut by now.
        tokio::time::sleep(Duration::from_millis(1600)).await;

        for (proto, s) in &streams {
            assert!(!s.task.is_finished(), "{proto} stream ended during reloads\n{}", log_tail(&proxy, 20));
            let gap = s.longest_gap_since(opened);
            assert!(gap < Duration::from_secs(1), "{proto} stream stalled for {gap:?} during reloads");
            let recent = s.count_since(last_reload);
            assert!(recent >= 8, "{proto} stream delivered only {recent} events in the 1.6s after the last reload");
            assert!(s.count() >= 30, "{proto} stream delivered only {} events in total", s.count());
        }
        // The new config's response header reaches new streams on the kept route.
        let resp = Client::h1(listen).await.send(Request::get("/events/new").body(full("")).unwrap()).await.unwrap();
        assert_eq!(resp.headers()["x-gen"], "10");
        drop((c1, c2));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_upload_across_a_reload_reaches_the_origin_whole() {
    within(Duration::from_secs(40), async {
        const CHUNKS: usize = 20;
        const CHUNK: usize = 1024;
        let a = Origin::echo("a").await;
        let b = Origin::echo("b").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&gen_config(listen, a.addr, b.addr, 0, Switch::Cluster));

        let mut uploads = Vec::new();
        for h2 in [false, true] {
            let mut c = connect(listen, h2).await;
            let (tx, body) = chan_body();
            let feeder = tokio::spawn(async move {
                for i in 0..CHUNKS {
                    tx.send(Bytes::from(vec![b'a' + (i % 26) as u8; CHUNK])).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Instant::now()
            });
            let upload = tokio::spawn(async move {
                let resp = c.send(Request::post("/upload").body(body).unwrap()).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
                Ok::<_, String>((status, body))
            });
            uploads.push((h2, feeder, upload));
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        // The reload points the route at B; the uploads in flight stay on the config they began on.
        blocking(|| proxy.reload(&gen_config(listen, a.addr, b.addr, 1, Switch::Cluster)));
        let reloaded = Instant::now();

        for (h2, feeder, upload) in uploads {
            let finished = feeder.await.unwrap();
            assert!(reloaded < finished, "the reload did not happen mid-upload");
            let (status, body) = tokio::time::timeout(Duration::from_secs(5), upload)
                .await
                .expect("upload answered in 5s")
                .unwrap()
                .unwrap_or_else(|e| panic!("h2={h2}: upload failed: {e}\n{}", log_tail(&proxy, 20)));
            assert_eq!(check_echo(status, &body, 0, CHUNKS * CHUNK), Ok(0), "h2={h2}");
        }
        let mut c = Client::h1(listen).await;
        let got = c.get("/after").await;
        assert_eq!(check_echo(got.status, &got.body, 1, 0), Ok(1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_alive_connections_survive_reloads_without_goaway() {
    within(Duration::from_secs(40), async {
        let a = Origin::echo("a").await;
        let b = Origin::echo("b").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&gen_config(listen, a.addr, b.addr, 0, Switch::Cluster));

        let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
        let (mut h2, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
        let h2_conn = tokio::spawn(conn);
        let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        let h1_conn = tokio::spawn(conn);

        for generation in 0..=5u64 {
            if generation > 0 {
                blocking(|| proxy.reload(&gen_config(listen, a.addr, b.addr, generation, Switch::Cluster)));
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            assert!(!h2_conn.is_finished() && !h2.is_closed(), "h2 connection closed after reload {generation}");
            assert!(!h1_conn.is_finished() && !h1.is_closed(), "h1 connection closed after reload {generation}");
            let req = Request::get(format!("http://{listen}/h2/{generation}")).body(full("")).unwrap();
            h2.ready().await.unwrap_or_else(|e| panic!("h2 connection unusable after reload {generation}: {e}"));
            let resp = h2.send_request(req).await.unwrap_or_else(|e| panic!("h2 after reload {generation}: {e}"));
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(check_echo(status, &body, generation, 0), Ok(generation), "h2");

            let req =
                Request::get(format!("/h1/{generation}")).header("host", listen.to_string()).body(full("")).unwrap();
            h1.ready().await.unwrap_or_else(|e| panic!("h1 connection unusable after reload {generation}: {e}"));
            let resp = h1.send_request(req).await.unwrap_or_else(|e| panic!("h1 after reload {generation}: {e}"));
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(check_echo(status, &body, generation, 0), Ok(generation), "h1");
        }
    })
    .await;
}

fn wait_version(proxy: &Proxy, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let v = proxy.version();
        if v >= want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(proxy: &Proxy, series: &str) -> Option<f64> {
    proxy.metrics().lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_version_counts_accepted_reloads_and_ready_stays_200() {
    within(Duration::from_secs(40), async {
        let a = Origin::echo("a").await;
        let b = Origin::echo("b").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&gen_config(listen, a.addr, b.addr, 0, Switch::Cluster));
        let settle = Duration::from_millis(1200);
        let check = |want: u64, step: &str| {
            blocking(|| {
                assert_eq!(proxy.version(), want, "{step}: /config_dump version\n{}", log_tail(&proxy, 10));
                assert_eq!(admin_get(proxy.admin, "/ready").unwrap().0, 200, "{step}: /ready");
                let gauge = metric(&proxy, r#"trellis_config_version{type="static"}"#);
                assert_eq!(gauge, Some(want as f64), "{step}: trellis_config_version");
                let accepted = proxy.logs().matches("config reloaded").count() as u64;
                assert_eq!(accepted, want - 1, "{step}: accepted reloads logged vs version");
            })
        };
        check(1, "start");

        proxy.write_config(&gen_config(listen, a.addr, b.addr, 1, Switch::Cluster));
        blocking(|| wait_version(&proxy, 2));
        tokio::time::sleep(settle).await;
        check(2, "file changed");

        proxy.signal("HUP");
        blocking(|| wait_version(&proxy, 3));
        tokio::time::sleep(settle).await;
        check(3, "SIGHUP, file unchanged");

        let mut bad = serde_json::to_value(gen_bootstrap(listen, a.addr, b.addr, 2, Switch::Cluster)).unwrap();
        bad["routes"][0]["colour"] = "red".into();
        let bad = bad.to_string();
        expect_refused(&proxy, &bad, "routes[0].colour").await;
        tokio::time::sleep(settle).await;
        check(3, "refused");
        let errors = metric(&proxy, r#"trellis_config_reloads_total{result="error"}"#).unwrap_or(0.0);
        assert!(errors >= 1.0, "refused reloads not counted");

        proxy.write_config(&gen_config(listen, a.addr, b.addr, 2, Switch::Cluster));
        blocking(|| wait_version(&proxy, 4));
        tokio::time::sleep(settle).await;
        check(4, "fixed");
        let mut c = Client::h1(listen).await;
        let got = c.get("/").await;
        assert_eq!(check_echo(got.status, &got.body, 2, 0), Ok(2));
    })
    .await;
}

//! Draining against the real binary (DESIGN §8): SIGTERM/SIGINT stop accepting, let
//! in-flight requests finish for up to `drain_timeout`, and exit 0; a reload that removes a
//! route lets its streams run for `drain_timeout`, then cuts them; a removed listener stops
//! accepting at once while the others keep serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{self, Bootstrap, ClusterProtocol, Yaml};
use trellis_testkit::*;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// An origin that answers `/slow…` after `delay` (counting arrivals in `arrived`), `/stuck…`
/// never, `/probe` with the port of the connection it came on, and anything else at once.
async fn origin(delay: Duration, arrived: Arc<AtomicUsize>) -> Origin {
    origin_with_peer(move |peer: SocketAddr, req: Request<Incoming>| {
        let arrived = arrived.clone();
        async move {
            let path = req.uri().path().to_owned();
            let _ = req.into_body().collect().await;
            if path.starts_with("/slow") {
                arrived.fetch_add(1, Ordering::AcqRel);
                tokio::time::sleep(delay).await;
                return Response::new(full("done"));
            }
            if path.starts_with("/stuck") {
                arrived.fetch_add(1, Ordering::AcqRel);
                return std::future::pending().await;
            }
            if path.starts_with("/probe") {
                return Response::new(full(peer.port().to_string()));
            }
            Response::new(full("ok"))
        }
    })
    .await
}

fn config(listen: SocketAddr, origin: SocketAddr, drain_secs: u64) -> String {
    let mut b = config::simple(listen, origin, config::ClusterProtocol::Auto);
    b.drain_timeout = Some(trellis_api::Duration::from_secs(drain_secs));
    b.yaml()
}

/// Sends `GET path` in the background; the result is the status and body, or the error.
fn spawn_get(mut c: Client, path: &str) -> tokio::task::JoinHandle<Result<(StatusCode, String), String>> {
    let req = Request::get(path).body(full("")).unwrap();
    tokio::spawn(async move {
        let resp = c.send(req).await.map_err(|e| format!("head: {e}"))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

async fn wait_arrived(arrived: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while arrived.load(Ordering::Acquire) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} requests reached the origin",
            arrived.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request in flight when the signal arrives completes; new connections are refused at
/// once; the process exits 0 as soon as the in-flight work is done, well within drain_timeout.
async fn drains_on(sig: &str) {
    let arrived = Arc::new(AtomicUsize::new(0));
    let slow = Duration::from_millis(1500);
    let origin = origin(slow, arrived.clone()).await;
    let listen = listen_addr();
    let mut proxy = Proxy::start(&config(listen, origin.addr, 5));
    // An idle keep-alive connection (one request done) must not hold up the drain.
    let mut idle = Client::h1(listen).await;
    assert_eq!(idle.get("/warm").await.status, 200);
    let pending = [
        ("h1", spawn_get(Client::h1(listen).await, "/slow/h1")),
        ("h2c", spawn_get(Client::h2(listen).await, "/slow/h2")),
    ];
    wait_arrived(&arrived, 2).await;

    let signalled = Instant::now();
    proxy.signal(sig);
    let refused = wait_refused(listen, Duration::from_secs(1)).await;
    assert!(refused.is_some(), "{sig}: new connections still accepted 1s after the signal");

    for (proto, p) in pending {
        let got = tokio::time::timeout(Duration::from_secs(5), p).await.expect("in-flight answered in 5s").unwrap();
        assert_eq!(
            got,
            Ok((StatusCode::OK, "done".to_owned())),
            "{sig}: {proto} request in flight during the drain\n{}",
            log_tail(&proxy, 20)
        );
    }
    let status = blocking(|| proxy.wait_exit(Duration::from_secs(7)));
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| panic!("{sig}: still running 7s after the signal\n{}", log_tail(&proxy, 20)));
    assert_eq!(status.code(), Some(0), "{sig}: exit status\n{}", log_tail(&proxy, 20));
    // Nothing was left after the slow requests (~1.5s): no reason to sit out the 5s drain_timeout.
    assert!(took < Duration::from_millis(3500), "{sig}: exited {took:?} after the signal, drain_timeout 5s");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    within(Duration::from_secs(40), async {
        drains_on("TERM").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_drains_in_flight_requests_and_exits_0() {
    within(Duration::from_secs(40), async {
        drains_on("INT").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_a_request_that_never_ends_exits_0_after_drain_timeout() {
    within(Duration::from_secs(40), async {
        let arrived = Arc::new(AtomicUsize::new(0));
        let origin = origin(Duration::ZERO, arrived.clone()).await;
        let listen = listen_addr();
        let mut proxy = Proxy::start(&config(listen, origin.addr, 1));
        let stuck = [
            ("h1", spawn_get(Client::h1(listen).await, "/stuck/h1")),
            ("h2c", spawn_get(Client::h2(listen).await, "/stuck/h2")),
        ];
        wait_arrived(&arrived, 2).await;

        let signalled = Instant::now();
        proxy.signal("TERM");
        let status = blocking(|| proxy.wait_exit(Duration::from_secs(3)));
        let took = signalled.elapsed();
        let status = status.unwrap_or_else(|| panic!("still running 3s after SIGTERM\n{}", log_tail(&proxy, 20)));
        assert_eq!(status.code(), Some(0), "exit status\n{}", log_tail(&proxy, 20));
        assert!(took >= Duration::from_millis(900), "exited after {took:?}, before drain_timeout (1s) was over");
        // The stuck clients are told (connection closed), not left hanging.
        for (proto, s) in stuck {
            let got = tokio::time::timeout(Duration::from_secs(2), s).await;
            let got = got.unwrap_or_else(|_| panic!("{proto} client still waiting 2s after the proxy exited")).unwrap();
            assert!(got.is_err(), "{proto}: a request the origin never answered got {got:?}");
        }
    })
    .await;
}

/// `/probe` answers with the port of the upstream HTTP/1.1 connection the proxy used. The
/// proxy keeps idle HTTP/1.1 upstream connections per worker, so two downstream connections
/// whose probes come from the same upstream connection are served by the same worker.
async fn probe(c: &mut Client) -> String {
    let got = c.get("/probe").await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.text()
}

/// `/probe` goes to the origin over HTTP/1.1 (cluster `h1`), everything else over HTTP/2
/// (cluster `h2`).
fn split_config(listen: SocketAddr, o: SocketAddr) -> String {
    Bootstrap {
        drain_timeout: Some(config::ms(5000)),
        listeners: vec![config::listener("in", listen, &["probe", "h2"])],
        routes: vec![config::route("probe", "/probe", "h1"), config::route("h2", "/", "h2")],
        clusters: vec![
            config::cluster("h1", ClusterProtocol::Http1, &[o]),
            config::cluster("h2", ClusterProtocol::Http2, &[o]),
        ],
        ..config::bootstrap()
    }
    .yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_keeps_a_shared_h2_upstream_connection_for_other_workers() {
    within(Duration::from_secs(40), async {
        let arrived = Arc::new(AtomicUsize::new(0));
        let origin = origin(Duration::from_millis(1500), arrived.clone()).await;
        let listen = listen_addr();
        let yaml = split_config(listen, origin.addr);
        let mut proxy = Proxy::start(&yaml);

        // Find two downstream connections served by different workers.
        let mut first = Client::h1(listen).await;
        let first_port = probe(&mut first).await;
        let mut other = None;
        for _ in 0..32 {
            let mut c = Client::h1(listen).await;
            if probe(&mut c).await != first_port {
                other = Some(c);
                break;
            }
        }
        let other = other.expect("all 32 connections landed on one worker");

        // The first worker opens the (shared) HTTP/2 upstream connection; the other worker's
        // request then rides on it.
        let got = first.get("/fast").await;
        assert_eq!(got.status, 200);
        let in_flight = spawn_get(other, "/slow");
        wait_arrived(&arrived, 1).await;
        drop(first);

        proxy.signal("TERM");
        let got = tokio::time::timeout(Duration::from_secs(5), in_flight).await.expect("answered in 5s").unwrap();
        assert_eq!(
            got,
            Ok((StatusCode::OK, "done".to_owned())),
            "request in flight on another worker's HTTP/2 upstream connection during the drain\n{}",
            log_tail(&proxy, 20)
        );
        let status = blocking(|| proxy.wait_exit(Duration::from_secs(7))).expect("exited");
        assert_eq!(status.code(), Some(0));
    })
    .await;
}

/// `GET /ready` on the admin port with a short timeout: the status, or why there was none.
fn ready(admin: SocketAddr) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
    write!(s, "GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("no answer: {e}"))?;
    String::from_utf8_lossy(&out).get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| "garbled answer".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_is_503_while_draining() {
    within(Duration::from_secs(40), async {
        let arrived = Arc::new(AtomicUsize::new(0));
        let origin = origin(Duration::from_millis(2500), arrived.clone()).await;
        let listen = listen_addr();
        let mut proxy = Proxy::start(&config(listen, origin.addr, 5));
        assert_eq!(blocking(|| ready(proxy.admin)), Ok(200));
        let mut c = Client::h1(listen).await;
        assert_eq!(c.get("/x").await.status, 200);
        assert_eq!(blocking(|| ready(proxy.admin)), Ok(200));

        let in_flight = spawn_get(Client::h1(listen).await, "/slow");
        wait_arrived(&arrived, 1).await;
        proxy.signal("TERM");
        // /ready turns 503 while the in-flight request (2.5 s) still runs.
        let mut during = Ok(0);
        blocking(|| {
            poll_until(Duration::from_secs(2), || {
                during = ready(proxy.admin);
                during == Ok(503)
            })
        });
        assert_eq!(in_flight.await.unwrap(), Ok((StatusCode::OK, "done".to_owned())));
        assert_eq!(blocking(|| proxy.wait_exit(Duration::from_secs(5))).and_then(|s| s.code()), Some(0));
        assert_eq!(during, Ok(503), "/ready while draining");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_that_sent_nothing_does_not_hold_up_the_exit() {
    within(Duration::from_secs(40), async {
        let origin = Origin::echo("a").await;
        let listen = listen_addr();
        let mut proxy = Proxy::start(&config(listen, origin.addr, 5));
        // A client that connected ahead of need (a pre-connect) and has sent no byte yet.
        let silent = tokio::net::TcpStream::connect(listen).await.unwrap();
        let mut c = Client::h1(listen).await;
        assert_eq!(c.get("/x").await.status, 200);
        // Both connections accepted (the silent one too) before the signal.
        let accepted = wait_metric(
            &proxy,
            "trellis_downstream_connections_total",
            &[("listener", "in")],
            |v| v >= 2.0,
            Duration::from_secs(3),
        );
        assert_eq!(accepted.await, Some(2.0), "{}", log_tail(&proxy, 10));

        let signalled = Instant::now();
        proxy.signal("TERM");
        let status = blocking(|| proxy.wait_exit(Duration::from_secs(7))).expect("exited");
        let took = signalled.elapsed();
        assert_eq!(status.code(), Some(0));
        assert!(
            took < Duration::from_secs(2),
            "nothing was in flight, yet the exit took {took:?} (drain_timeout 5s)\n{}",
            log_tail(&proxy, 10)
        );
        drop(silent);
    })
    .await;
}

// Reloads that remove things: their streams and connections drain, then go.

/// Listener `in` with a route named `stream_route` (`stream_prefix` → the SSE origin) and
/// route `api` (`/api` → `api`); streams on removed routes get 1s to drain.
fn stream_config(
    listen: SocketAddr,
    sse: SocketAddr,
    api: SocketAddr,
    stream_route: &str,
    stream_prefix: &str,
) -> String {
    Bootstrap {
        drain_timeout: Some(config::ms(1000)),
        listeners: vec![config::listener("in", listen, &[stream_route, "api"])],
        routes: vec![config::route(stream_route, stream_prefix, "sse"), config::route("api", "/api", "api")],
        clusters: vec![
            config::cluster("sse", ClusterProtocol::default(), &[sse]),
            config::cluster("api", ClusterProtocol::default(), &[api]),
        ],
        ..config::bootstrap()
    }
    .yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_route_streams_run_for_drain_timeout_then_end() {
    within(Duration::from_secs(40), async {
        let sse = sse_origin("tick", Duration::from_millis(100)).await;
        let a = Origin::echo("a").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&stream_config(listen, sse.addr, a.addr, "events", "/events"));
        let (mut c1, mut c2) = (Client::h1(listen).await, Client::h2(listen).await);
        let streams = [
            ("h1", EventReader::open(&mut c1, "/events/h1").await),
            ("h2c", EventReader::open(&mut c2, "/events/h2").await),
        ];

        // `events` is replaced by a route of another name on another path.
        let after = stream_config(listen, sse.addr, a.addr, "feed", "/feed");
        let swap_started = Instant::now();
        blocking(|| proxy.reload(&after));
        let swapped = Instant::now();

        for (proto, s) in streams {
            let ended = tokio::time::timeout(Duration::from_secs(5), s.task).await;
            let (end, at) = ended
                .unwrap_or_else(|_| panic!("{proto} stream on the removed route still open 5s after the reload"))
                .unwrap();
            let lived = at.duration_since(swap_started);
            assert!(
                lived >= Duration::from_millis(800) && lived <= Duration::from_secs(3),
                "{proto} stream ended {lived:?} after the reload ({end:?}); drain_timeout is 1s"
            );
            let drained = s.events.lock().unwrap().iter().filter(|t| **t >= swapped).count();
            assert!(drained >= 5, "{proto} stream delivered only {drained} events while draining");
            // A stream cut short must not look complete to the client.
            assert!(matches!(end, StreamEnd::Error(_)), "{proto} stream ended cleanly, as if complete: {end:?}");
        }
        // New requests to the old path find no route; the new route and the h2 connection work.
        for c in [&mut Client::h1(listen).await, &mut c2] {
            let got = c.get("/events/again").await;
            assert_eq!(got.status, 404, "{}", got.text());
            assert_eq!(got.header("x-trellis-error"), Some("no route"));
            let got = c.get("/api/after").await;
            assert_eq!(got.status, 200);
            assert_eq!(got.json()["origin"], "a");
        }
        let resp = c2.send(Request::get("/feed").body(full("")).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
    })
    .await;
}

/// Listener `in` on `main`, plus listener `extra` on `extra` when given; both route to `origin`.
fn listeners_config(main: SocketAddr, extra: Option<SocketAddr>, origin: SocketAddr) -> String {
    let mut listeners = vec![config::listener("in", main, &["all"])];
    listeners.extend(extra.map(|e| config::listener("extra", e, &["all"])));
    Bootstrap {
        drain_timeout: Some(config::ms(1000)),
        listeners,
        routes: vec![config::route("all", "/", "origin")],
        clusters: vec![config::cluster("origin", ClusterProtocol::default(), &[origin])],
        ..config::bootstrap()
    }
    .yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listeners_are_added_and_removed_by_reload() {
    within(Duration::from_secs(40), async {
        let origin = Origin::echo("a").await;
        let (main, extra) = (listen_addr(), listen_addr());
        let proxy = Proxy::start(&listeners_config(main, None, origin.addr));
        let mut kept = Client::h1(main).await;
        assert!(tokio::net::TcpStream::connect(extra).await.is_err(), "nothing should listen on {extra} yet");

        for round in 0..2 {
            blocking(|| proxy.reload(&listeners_config(main, Some(extra), origin.addr)));
            for h2 in [false, true] {
                let got = tokio::time::timeout(Duration::from_secs(3), async {
                    let mut c = if h2 { Client::h2(extra).await } else { Client::h1(extra).await };
                    c.get("/x").await
                })
                .await
                .unwrap_or_else(|_| panic!("round {round}: added listener {extra} does not answer"));
                assert_eq!(got.status, 200, "round {round}, h2={h2}: {}", got.text());
                assert_eq!(got.json()["origin"], "a");
            }

            blocking(|| proxy.reload(&listeners_config(main, None, origin.addr)));
            let took = wait_refused(extra, Duration::from_secs(2)).await;
            assert!(took.is_some(), "round {round}: removed listener {extra} still accepts connections after 2s");
            for c in [&mut kept, &mut Client::h2(main).await] {
                let got = c.get("/main").await;
                assert_eq!(got.status, 200, "round {round}: the kept listener must keep serving");
            }
        }
    })
    .await;
}

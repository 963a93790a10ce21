#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The downstream HTTP/2 server (the `h2` crate, streams served inside the connection's
//! task) through the real `trellis` binary: many streams in flight at once on one h2c
//! connection, each answered with its own response; and a client resetting its stream
//! mid-response cancelling the upstream exchange while the connection carries on.

use trellis_testkit::config;
use trellis_testkit::*;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

/// 200 requests on one h2c connection are all in flight at the origin at once (it answers
/// only when all have arrived, or after 10 s), and each gets the answer to its own path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_connection() {
    const N: usize = 200;
    within(LIMIT, async {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (f, p) = (in_flight.clone(), peak.clone());
        let origin = Origin::start(move |req: Request<Incoming>| {
            let (in_flight, peak) = (f.clone(), p.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(10);
                while peak.load(Ordering::SeqCst) < N && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Response::new(full(format!("answer to {}", req.uri().path())))
            }
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        let c = Client::h2(listen).await;
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(N);
        for i in 0..N {
            let mut c = c.clone_h2();
            tasks.push(tokio::spawn(async move { c.get(&format!("/stream/{i}")).await }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let got = t.await.unwrap();
            assert_eq!(got.status, 200, "stream {i}: {}; logs: {}", got.text(), log_tail(&proxy, 10));
            assert_eq!(got.text(), format!("answer to /stream/{i}"));
        }
        assert_eq!(peak.load(Ordering::SeqCst), N, "not all streams were in flight at once");
        assert!(started.elapsed() < Duration::from_secs(10), "streams waited for each other");
    })
    .await;
}

/// Counts when it is dropped: an origin's response body going away.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// An origin whose `/events` streams a chunk every 50 ms for ever, counting in `ended` when
/// that body is dropped (its client went away); anything else answers `ok`.
async fn events_origin(ended: Arc<AtomicUsize>) -> Origin {
    Origin::start(move |req: Request<Incoming>| {
        let guard = DropCount(ended.clone());
        async move {
            if req.uri().path() != "/events" {
                return Response::new(full("ok"));
            }
            let s = futures_util::stream::unfold((0u32, guard), |(i, guard)| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok(Frame::data(Bytes::from(format!("tick {i}\n")))), (i + 1, guard)))
            });
            Response::new(StreamBody::new(s).boxed())
        }
    })
    .await
}

/// The client resets its stream (RST_STREAM: hyper's client sends CANCEL when the response
/// body is dropped) while the response streams: the proxy drops the exchange, which ends
/// the origin's body (HTTP/1.1 and HTTP/2 upstreams), and the connection serves on.
#[tokio::test]
async fn client_reset_mid_response_cancels_the_upstream_request() {
    within(LIMIT, async {
        for proto in ["http1", "http2"] {
            let ended = Arc::new(AtomicUsize::new(0));
            let origin = events_origin(ended.clone()).await;
            let listen = listen_addr();
            let proxy = Proxy::start(&config::simple(listen, origin.addr, config::protocol(proto)).yaml());
            let mut c = Client::h2(listen).await;
            let resp = c.send(Request::get("/events").body(full("")).unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            for _ in 0..2 {
                let frame = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("a tick");
                assert!(frame.expect("body open").expect("body ok").is_data());
            }
            assert_eq!(ended.load(Ordering::SeqCst), 0, "{proto}: origin body ended early");
            drop(body);
            let deadline = Instant::now() + Duration::from_secs(5);
            while ended.load(Ordering::SeqCst) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "{proto}: the origin's body was never dropped; logs: {}",
                    log_tail(&proxy, 20)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let got = c.get("/after").await;
            assert_eq!(got.status, 200, "{proto}: connection unusable after the reset: {}", got.text());
            assert_eq!(got.text(), "ok");
        }
    })
    .await;
}

/// A client reset before the response head (the origin has not answered yet) cancels the
/// upstream request too.
#[tokio::test]
async fn client_reset_before_the_response_cancels_the_upstream_request() {
    within(LIMIT, async {
        let ended = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let (e, a) = (ended.clone(), arrived.clone());
        // Never answers `/stuck`: only the proxy giving up ends the origin's handler.
        let origin = Origin::start(move |req: Request<Incoming>| {
            let guard = DropCount(e.clone());
            let arrived = a.clone();
            async move {
                let _guard = guard;
                if req.uri().path() == "/stuck" {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                Response::new(full("ok"))
            }
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http2).yaml());
        let mut c = Client::h2(listen).await;
        let mut stuck = c.clone_h2();
        // Dropping the request future before its head resets the stream (CANCEL).
        let pending = tokio::spawn(async move { stuck.get("/stuck").await });
        let deadline = Instant::now() + Duration::from_secs(5);
        while arrived.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "request never reached the origin");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pending.abort();
        let before = ended.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ended.load(Ordering::SeqCst) == before {
            assert!(
                Instant::now() < deadline,
                "the origin's request was never cancelled; logs: {}",
                log_tail(&proxy, 20)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(c.get("/after").await.status, 200);
    })
    .await;
}

/// A client with a 1 KiB stream and connection window gets a 300 KB response whole: the
/// body's last chunk, handed to h2 without waiting for capacity, still goes out only as the
/// client opens its window. The `date` field is there (sent as a never-indexed literal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_client_window_gets_a_large_response_whole() {
    const LEN: usize = 300_000;
    /// Byte `i` of the response body.
    fn letter(i: usize) -> u8 {
        b'a' + (i % 26) as u8
    }
    within(LIMIT, async {
        let origin = Origin::start(|_req: Request<Incoming>| async move {
            Response::new(full((0..LEN).map(letter).collect::<Vec<u8>>()))
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
        let (client, conn) = h2::client::Builder::new()
            .initial_window_size(1024)
            .initial_connection_window_size(1024)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = Request::get(format!("http://{listen}/big")).body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200, "logs: {}", log_tail(&proxy, 10));
        assert!(resp.headers().contains_key(http::header::DATE));
        let mut body = resp.into_body();
        let mut got = Vec::with_capacity(LEN);
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            // Opening the window only by what was read keeps the proxy waiting on it.
            body.flow_control().release_capacity(chunk.len()).unwrap();
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), LEN, "logs: {}", log_tail(&proxy, 10));
        assert!(got.iter().enumerate().all(|(i, b)| *b == letter(i)), "body bytes differ");
    })
    .await;
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The HTTP/2 upstream client (`h2` used directly) against an h2c origin, through the real
//! `trellis` binary: a request body still streaming while the response streams back (full
//! duplex), request and response trailers, a request body held in memory, and a request
//! abandoned before its response head (route timeout) resetting the upstream stream even
//! though the client's upload is still open.

use trellis_testkit::config::{self, ClusterProtocol, Yaml};
use trellis_testkit::*;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(30);

/// A body of frames (data or trailers) fed through a channel; it ends when the sender is dropped.
fn frame_body() -> (mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(16);
    let s = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (Ok(f), rx)) });
    (tx, StreamBody::new(s).boxed())
}

/// An origin answering at once with a streamed body: `echo:` + each request chunk as it
/// arrives, then trailers `x-chunks` (how many chunks came) and `x-got-trailer` (the request
/// trailer `x-sum`, or `none`).
async fn duplex_origin() -> Origin {
    Origin::start(|req: Request<Incoming>| async move {
        let (tx, body) = frame_body();
        tokio::spawn(async move {
            let mut incoming = req.into_body();
            let mut chunks = 0;
            let mut sum = HeaderValue::from_static("none");
            while let Some(Ok(frame)) = incoming.frame().await {
                match frame.into_data() {
                    Ok(d) => {
                        chunks += 1;
                        let echo = [b"echo:".as_slice(), &d].concat();
                        if tx.send(Frame::data(Bytes::from(echo))).await.is_err() {
                            return;
                        }
                    }
                    Err(f) => {
                        if let Some(v) = f.into_trailers().ok().and_then(|t| t.get("x-sum").cloned()) {
                            sum = v;
                        }
                    }
                }
            }
            let mut t = HeaderMap::new();
            t.insert("x-chunks", HeaderValue::from(chunks));
            t.insert("x-got-trailer", sum);
            let _ = tx.send(Frame::trailers(t)).await;
        });
        Response::new(body)
    })
    .await
}

/// The next data frame of `body`, within 5 s (trailers are skipped: there are none before
/// the end).
async fn next_data(body: &mut Incoming) -> Bytes {
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("no frame within 5 s")
        .expect("body ended early")
        .expect("body failed");
    frame.into_data().expect("a data frame")
}

/// Each request chunk is echoed back before the next one is sent: the upload and the
/// download run at the same time over the `http2` cluster. The request's trailers reach the
/// origin and the response's trailers reach the client.
#[tokio::test]
async fn upload_and_download_stream_at_once_with_trailers() {
    within(LIMIT, async {
        let origin = duplex_origin().await;
        let listen = listen_addr();
        let proxy = Proxy::start(&config::simple(listen, origin.addr, ClusterProtocol::Http2).yaml());
        let mut c = Client::h2(listen).await;
        let (tx, body) = frame_body();
        let req = Request::post("/duplex").header("content-type", "application/octet-stream").body(body).unwrap();
        tx.send(Frame::data(Bytes::from_static(b"0"))).await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), c.send(req))
            .await
            .unwrap_or_else(|_| panic!("no response head while uploading; logs: {}", log_tail(&proxy, 10)))
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut down = resp.into_body();
        assert_eq!(next_data(&mut down).await, "echo:0");
        for i in 1..5 {
            tx.send(Frame::data(Bytes::from(i.to_string()))).await.unwrap();
            assert_eq!(next_data(&mut down).await, format!("echo:{i}"));
        }
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("10"));
        tx.send(Frame::trailers(t)).await.unwrap();
        drop(tx);
        let rest = tokio::time::timeout(Duration::from_secs(5), down.collect()).await.expect("end").unwrap();
        let trailers = rest.trailers().cloned().expect("response trailers");
        assert_eq!(trailers["x-chunks"], "5", "{trailers:?}");
        assert_eq!(trailers["x-got-trailer"], "10", "{trailers:?}");
        assert!(rest.to_bytes().is_empty());
    })
    .await;
}

/// A request body the proxy holds in memory (announced length, so replayable) goes to the
/// h2 upstream whole, with its `content-length`.
#[tokio::test]
async fn whole_request_body_reaches_the_h2_upstream() {
    within(LIMIT, async {
        let origin = Origin::echo("o").await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, ClusterProtocol::Http2).yaml());
        for (h2, len) in [(false, 10), (true, 10), (false, 100_000), (true, 100_000)] {
            let mut c = if h2 { Client::h2(listen).await } else { Client::h1(listen).await };
            let got = c.fetch(Request::post("/").body(full(vec![b'x'; len])).unwrap()).await;
            assert_eq!(got.status, 200, "{}", got.text());
            let echo = got.json();
            assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
            assert_eq!(echo["body_len"], len, "{echo}");
            assert_eq!(echo["headers"]["content-length"], len.to_string(), "{echo}");
        }
    })
    .await;
}

/// A request dropped before its response head (the route's timeout) resets its upstream
/// stream at once, although the client is still uploading: the origin sees its stream end.
#[tokio::test]
async fn abandoned_request_resets_the_upstream_stream_while_uploading() {
    within(LIMIT, async {
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let ended = Arc::new(AtomicUsize::new(0));
        let e = ended.clone();
        // Reads the whole request before answering: never, while the client uploads.
        let origin = Origin::start(move |req: Request<Incoming>| {
            let guard = Guard(e.clone());
            async move {
                let _guard = guard;
                let _ = req.into_body().collect().await;
                Response::new(full("late"))
            }
        })
        .await;
        let listen = listen_addr();
        let mut b = config::simple(listen, origin.addr, ClusterProtocol::Http2);
        b.routes[0].timeout = Some(config::ms(500));
        let proxy = Proxy::start(&b.yaml());
        let mut c = Client::h2(listen).await;
        let (tx, body) = frame_body();
        tx.send(Frame::data(Bytes::from_static(b"first"))).await.unwrap();
        let got = c.fetch(Request::post("/upload").body(body).unwrap()).await;
        assert_eq!(got.status, 504, "{}", got.text());
        // The upload is still open (`tx` is alive): only the proxy can have ended the stream.
        let reset = wait_until(Duration::from_secs(3), || async { ended.load(Ordering::SeqCst) > 0 }).await;
        assert!(reset, "the origin's stream was never reset; logs: {}", log_tail(&proxy, 20));
        drop(tx);
    })
    .await;
}

/// An h2c origin that counts its connections and shuts them all down gracefully (GOAWAY,
/// streams in flight finish) when `goaway` is notified. `/events` streams a chunk every
/// 100 ms until the reader goes away; anything else answers `ok`.
struct GoawayOrigin {
    addr: std::net::SocketAddr,
    conns: Arc<AtomicUsize>,
    goaway: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GoawayOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn goaway_origin() -> GoawayOrigin {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let goaway = Arc::new(tokio::sync::Notify::new());
    let (counted, notified) = (conns.clone(), goaway.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            let notified = notified.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path() != "/events" {
                        return Ok::<_, std::convert::Infallible>(Response::new(full("ok")));
                    }
                    let s = futures_util::stream::unfold(0u32, |i| async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Ok(Frame::data(Bytes::from(format!("tick {i}\n")))), i + 1))
                    });
                    Ok(Response::new(StreamBody::new(s).boxed()))
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = notified.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    GoawayOrigin { addr, conns, goaway, task }
}

/// A connection the upstream sent GOAWAY on is not handed out again, although it stays open
/// for its stream in flight: the next request goes on a new connection and succeeds.
#[tokio::test]
async fn goaway_connection_is_not_reused() {
    within(LIMIT, async {
        let origin = goaway_origin().await;
        let listen = listen_addr();
        let proxy = Proxy::start(&config::simple(listen, origin.addr, ClusterProtocol::Http2).yaml());
        let mut c = Client::h1(listen).await;
        let mut events = c.send(Request::get("/events").body(full("")).unwrap()).await.unwrap().into_body();
        next_data(&mut events).await;
        let mut c2 = Client::h1(listen).await;
        assert_eq!(c2.get("/").await.status, 200);
        assert_eq!(origin.conns.load(Ordering::SeqCst), 1);

        origin.goaway.notify_waiters();
        // Let the GOAWAY arrive; the event stream keeps its connection open meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..3 {
            let got = c2.get("/").await;
            assert_eq!(got.status, 200, "request {i} after GOAWAY: {}; logs: {}", got.text(), log_tail(&proxy, 10));
        }
        assert_eq!(origin.conns.load(Ordering::SeqCst), 2);
        // The stream in flight on the old connection still runs.
        next_data(&mut events).await;
    })
    .await;
}

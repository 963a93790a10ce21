#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The in-task HTTP/1.1 upstream client against a scripted raw-TCP origin: chunked bodies
//! with trailers, read-to-close bodies, interim 1xx responses, truncated bodies, and
//! upstreams that close pooled keep-alive connections.

use trellis_testkit::config::{self, ClusterProtocol};
use trellis_testkit::*;

use http::Request;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

/// A raw origin: reads request heads (no bodies) and answers by path; counts connections,
/// and the connections it has closed.
struct RawOrigin {
    addr: std::net::SocketAddr,
    conns: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_origin() -> RawOrigin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (counted, ended) = (conns.clone(), closed.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            let ended = ended.clone();
            tokio::spawn(async move {
                serve(s).await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    RawOrigin { addr, conns, closed, task }
}

async fn serve(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut served = 0;
    loop {
        let head = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break String::from_utf8_lossy(&buf.drain(..i + 4).collect::<Vec<_>>()).into_owned();
            }
            let mut tmp = [0u8; 4096];
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let answer: &[u8] = match path.as_str() {
            "/chunked" => {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n"
            }
            "/close" => b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nread to close",
            "/continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            "/trunc" => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc",
            "/early" => b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!",
            // Answers the first request of a connection; hangs up on the next one unanswered.
            "/once" if served > 0 => return,
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        };
        if s.write_all(answer).await.is_err() {
            return;
        }
        served += 1;
        match path.as_str() {
            "/close" | "/trunc" => return,
            // Keeps reading (and dropping) the upload until the proxy lets go.
            "/early" => {
                let mut tmp = [0u8; 4096];
                while let Ok(1..) = s.read(&mut tmp).await {}
                return;
            }
            "/idle-close" => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                return;
            }
            _ => {}
        }
    }
}

fn start(origin: &RawOrigin) -> (Proxy, std::net::SocketAddr) {
    let listen = listen_addr();
    (Proxy::start(&config::simple(listen, origin.addr, ClusterProtocol::Http1).yaml()), listen)
}

/// Keep-alive works: sequential requests share one upstream connection.
#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    within(LIMIT, async {
        let origin = raw_origin().await;
        let (_proxy, listen) = start(&origin);
        let mut c = Client::h1(listen).await;
        for _ in 0..5 {
            let got = c.get("/ok").await;
            assert_eq!((got.status.as_u16(), got.text()), (200, "ok".to_owned()));
        }
        assert_eq!(origin.conns.load(Ordering::SeqCst), 1);
    })
    .await;
}

/// A chunked upstream body is decoded (extensions ignored) and its trailers reach an h2 client.
#[tokio::test]
async fn chunked_response_with_trailers() {
    within(LIMIT, async {
        let origin = raw_origin().await;
        let (_proxy, listen) = start(&origin);
        let mut c = Client::h1(listen).await;
        for _ in 0..2 {
            assert_eq!(c.get("/chunked").await.text(), "hello world");
        }
        // The connection was reused after the clean chunked end.
        assert_eq!(origin.conns.load(Ordering::SeqCst), 1);
        let mut c = Client::h2(listen).await;
        let resp = c.send(Request::get("/chunked").body(full("")).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(collected.to_bytes(), "hello world");
        assert_eq!(trailers["x-sum"], "42");
    })
    .await;
}

/// An HTTP/1.0 answer without a length is read until the upstream closes.
#[tokio::test]
async fn read_to_close_response() {
    within(LIMIT, async {
        let origin = raw_origin().await;
        let (_proxy, listen) = start(&origin);
        let mut c = Client::h1(listen).await;
        for _ in 0..2 {
            let got = c.get("/close").await;
            assert_eq!((got.status.as_u16(), got.text()), (200, "read to close".to_owned()));
        }
        assert_eq!(origin.conns.load(Ordering::SeqCst), 2, "a read-to-close connection is not reused");
    })
    .await;
}

/// Interim 1xx responses are skipped; the final one is forwarded.
#[tokio::test]
async fn interim_responses_are_skipped() {
    within(LIMIT, async {
        let origin = raw_origin().await;
        let (_proxy, listen) = start(&origin);
        let mut c = Client::h1(listen).await;
        for _ in 0..2 {
            let got = c.get("/continue").await;
            assert_eq!((got.status.as_u16(), got.text()), (200, "ok".to_owned()));
        }
    })
    .await;
}

/// A pooled connection the upstream closed while idle is not used; one it closes on the
/// next request (a race the liveness check cannot see) is retried on a fresh connection.
#[tokio::test]
async fn upstream_closing_pooled_connections() {
    within(LIMIT, async {
        let origin = raw_origin().await;
        let (_proxy, listen) = start(&origin);
        let mut c = Client::h1(listen).await;
        for n in 1..=3 {
            let got = c.get("/idle-close").await;
            assert_eq!((got.status.as_u16(), got.text()), (200, "ok".to_owned()));
            // The origin closes the connection, now idle in the proxy's pool.
            let closed =
                wait_until(Duration::from_secs(5), || async { origin.closed.load(Ordering::SeqCst) >= n }).await;
            assert!(closed, "the origin never closed connection {n}");
        }
        assert_eq!(origin.conns.load(Ordering::SeqCst), 3);
        for i in 0..3 {
            let got = c.get("/once").await;
            assert_eq!((got.status.as_u16(), got.text()), (200, "ok".to_owned()), "request {i}");
        }
        assert_eq!(origin.conns.load(Ordering::SeqCst), 6);
    })
    .await;
}

/// A content-length body cut short reaches the client as a failed body; the next request
/// works.
#[tokio::test]
async fn truncated_body_then_next_request() {
    within(LIMIT, async {
        let origin = raw_origin().await;
        let (_proxy, listen) = start(&origin);
        let mut c = Client::h1(listen).await;
        let resp = c.send(Request::get("/trunc").body(full("")).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.into_body().collect().await.is_err(), "a truncated body must not end cleanly");
        let mut c = Client::h1(listen).await;
        assert_eq!(c.get("/ok").await.text(), "ok");
    })
    .await;
}

/// An upstream that answers while the request body is still streaming: the answer is
/// forwarded at once (the upload stops), and that connection is not reused.
#[tokio::test]
async fn early_answer_during_a_streamed_upload() {
    within(LIMIT, async {
        let origin = raw_origin().await;
        let (_proxy, listen) = start(&origin);
        let mut c = Client::h1(listen).await;
        let (tx, body) = chan_body();
        tx.send(bytes::Bytes::from_static(b"first part")).await.unwrap();
        let resp = c.send(Request::post("/early").body(body).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 413);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "big!");
        drop(tx);
        let mut c = Client::h1(listen).await;
        assert_eq!(c.get("/ok").await.text(), "ok");
    })
    .await;
}

/// A POST that fails on a pooled connection before any answer is not sent again: the
/// upstream may have acted on it (nginx does the same), so the client gets the 502.
#[tokio::test]
async fn failed_post_on_a_pooled_connection_is_not_resent() {
    within(LIMIT, async {
        let origin = raw_origin().await;
        let (_proxy, listen) = start(&origin);
        let mut c = Client::h1(listen).await;
        assert_eq!(c.get("/ok").await.text(), "ok");
        let resp = c.send(Request::post("/once").body(full("")).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 502);
        assert_eq!(origin.conns.load(Ordering::SeqCst), 1, "no second connection for the POST");
    })
    .await;
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test file uses part of the shared helpers and imports.
#![allow(dead_code, unused_imports)]
//! HTTP/1.1 connections that give their buffers back while they wait (`http::io_bufs`),
//! through the real `trellis` binary on raw client sockets and an HTTP/1.1 upstream: what
//! arrives after a wait (pipelined requests, heads larger than one read, heads in pieces, a
//! request sent while a response streams) is read whole, and streamed events still come as
//! they are sent.

use trellis_testkit::*;

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use trellis_testkit::raw::*;

/// Long enough for a connection to be waiting (buffers given back) when the next bytes come.
const IDLE: Duration = Duration::from_millis(150);

/// An origin: `/big?n=N` answers N bytes (`0123456789` repeated); `/events` streams five
/// chunked events 150 ms apart; anything else is the echo answer.
async fn origin() -> Origin {
    Origin::start(|req: Request<Incoming>| async move {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        match path.as_str() {
            "/big" => {
                let n: usize = query.trim_start_matches("n=").parse().unwrap();
                Response::builder().body(full(pattern(n))).unwrap()
            }
            "/events" => {
                let s = futures_util::stream::unfold(0u32, |i| async move {
                    if i >= 5 {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                    }
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: event {i}\n\n")))), i + 1))
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(StreamBody::new(s).boxed())
                    .unwrap()
            }
            _ => echo_answer("o", req).await,
        }
    })
    .await
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'0' + (i % 10) as u8).collect()
}

async fn setup() -> (SocketAddr, Proxy, Origin) {
    let origin = origin().await;
    let listen = listen_addr();
    let proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
    (listen, proxy, origin)
}

/// Reads one response with a `content-length` body off `s` (the shared `read_response`),
/// keeping what follows in `buf`; returns the head (lowercased) and the body.
async fn read_head_body(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let resp = read_response(s, buf, false).await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("\r\ncontent-length:"), "no content-length: {head}");
    (head.to_ascii_lowercase(), body.as_bytes().to_vec())
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    let n =
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.expect("nothing within 5 s").unwrap();
    assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(buf));
    buf.extend_from_slice(&chunk[..n]);
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// After a wait between requests: two pipelined requests in one write, the second with a
/// 20 KB header (more than one read); then a 12 KB head sent in pieces; then bodies larger
/// than a buffer from the upstream. Everything is answered whole, in order, on one
/// connection.
#[tokio::test]
async fn requests_after_idle_are_read_whole() {
    within(LIMIT, async {
        let (listen, _proxy, _origin) = setup().await;
        let mut s = TcpStream::connect(listen).await.unwrap();
        let mut buf = Vec::new();
        s.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (head, body) = read_head_body(&mut s, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(json(&body)["path"], "/first");

        tokio::time::sleep(IDLE).await;
        let big = "b".repeat(20_000);
        let two = format!("GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        s.write_all(two.as_bytes()).await.unwrap();
        let (_, body) = read_head_body(&mut s, &mut buf).await;
        assert_eq!(json(&body)["path"], "/p1");
        let (_, body) = read_head_body(&mut s, &mut buf).await;
        let j = json(&body);
        assert_eq!(j["path"], "/p2");
        assert_eq!(j["headers"]["x-big"], big.as_str(), "the 20 KB header arrived whole");

        tokio::time::sleep(IDLE).await;
        let late = "l".repeat(12_000);
        let pieces = [
            "GET /pieces HTTP/1.1\r\nHost: x\r\nX-Late: ".to_string(),
            late[..6_000].to_string(),
            late[6_000..].to_string(),
            "\r\n\r\n".to_string(),
        ];
        for piece in &pieces {
            s.write_all(piece.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        let (_, body) = read_head_body(&mut s, &mut buf).await;
        let j = json(&body);
        assert_eq!(j["path"], "/pieces");
        assert_eq!(j["headers"]["x-late"], late.as_str());

        // Upstream bodies of several sizes, with waits between them (the pooled upstream
        // connection gives its buffer back while idle).
        for n in [2usize, 9_000, 100_000, 20_000, 3] {
            tokio::time::sleep(IDLE).await;
            s.write_all(format!("GET /big?n={n} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let (head, body) = read_head_body(&mut s, &mut buf).await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(body, pattern(n), "body of {n} bytes");
        }
        assert!(buf.is_empty());
    })
    .await;
}

/// A chunked stream of events from an HTTP/1.1 upstream reaches a raw HTTP/1.1 client event
/// by event (the connection waits between them with no buffers); a request the client sends
/// while the stream is open is answered after it, and the connection goes on.
#[tokio::test]
async fn sse_streams_and_a_request_sent_meanwhile_is_answered_after() {
    within(LIMIT, async {
        let (listen, _proxy, _origin) = setup().await;
        let mut s = TcpStream::connect(listen).await.unwrap();
        let t0 = Instant::now();
        s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let mut arrivals = Vec::new();
        let mut sent_next = false;
        let end = loop {
            let before = buf.len();
            read_more(&mut s, &mut buf).await;
            let text = String::from_utf8_lossy(&buf[before..]).into_owned();
            for _ in text.matches("data: event ") {
                arrivals.push(t0.elapsed());
            }
            if !sent_next && arrivals.len() >= 2 {
                // While the stream is open (and the connection waits for the next event).
                s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
                sent_next = true;
            }
            if let Some(i) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                break i + 5;
            }
        };
        let stream = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
        assert!(stream.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{stream}");
        for i in 0..5 {
            assert!(stream.contains(&format!("data: event {i}\n\n")), "event {i} missing: {stream}");
        }
        assert_eq!(arrivals.len(), 5, "{stream}");
        let spread = arrivals.windows(2).filter(|w| w[1] - w[0] >= Duration::from_millis(75)).count();
        assert!(spread >= 3, "events were not streamed one by one: {arrivals:?}");
        buf.drain(..end);

        let (head, body) = read_head_body(&mut s, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(json(&body)["path"], "/after");
        tokio::time::sleep(IDLE).await;
        s.write_all(b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (_, body) = read_head_body(&mut s, &mut buf).await;
        assert_eq!(json(&body)["path"], "/last");
    })
    .await;
}

/// Many keep-alive connections on one worker, each idle between its requests: every
/// response goes to the connection that asked (buffers move between connections through
/// the per-thread stock).
#[tokio::test]
async fn many_idle_connections_keep_their_own_requests() {
    within(LIMIT, async {
        let (listen, _proxy, _origin) = setup().await;
        let mut conns = Vec::new();
        for _ in 0..40 {
            conns.push((TcpStream::connect(listen).await.unwrap(), Vec::new()));
        }
        for round in 0..3 {
            for (i, (s, _)) in conns.iter_mut().enumerate() {
                s.write_all(format!("GET /c{i}/r{round} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            }
            for (i, (s, buf)) in conns.iter_mut().enumerate() {
                let (_, body) = read_head_body(s, buf).await;
                assert_eq!(json(&body)["path"], format!("/c{i}/r{round}"));
            }
            tokio::time::sleep(IDLE).await;
        }
    })
    .await;
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test file uses part of the shared helpers and imports.
#![allow(dead_code, unused_imports)]
//! The in-task HTTP/1.1 downstream server, on raw sockets through the real `trellis` binary:
//! pipelining, keep-alive across the hand-over to hyper (bodies, HTTP/1.0), heads split
//! over several writes, HEAD, malformed heads and idle keep-alive connections.

use trellis_testkit::config::{self, Yaml};
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

/// A proxy with `header_timeout: 500ms` in front of an echo origin.
async fn setup() -> (SocketAddr, Proxy, Origin) {
    let origin = echo("o").await;
    let listen = listen_addr();
    let mut b = config::simple(listen, origin.addr, config::ClusterProtocol::Http1);
    b.listeners[0].header_timeout = Some(config::ms(500));
    let proxy = Proxy::start(&b.yaml());
    (listen, proxy, origin)
}

/// Three requests in one write get three responses, in order, on one connection.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    within(LIMIT, async {
        let (listen, _proxy, _origin) = setup().await;
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(
            b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\nGET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        for path in ["/p1", "/p2", "/p3"] {
            let resp = read_response(&mut s, &mut buf, false).await;
            assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
            assert_eq!(body_json(&resp)["path"], path, "{resp}");
        }
        assert_eq!(read_to_end(&mut s).await, "", "the connection closes after `Connection: close`");
    })
    .await;
}

/// A GET, then a POST with a body (served by hyper from then on) on the same keep-alive
/// connection; and the same two pipelined in one write.
#[tokio::test]
async fn get_then_post_with_body_on_one_connection() {
    within(LIMIT, async {
        let (listen, _proxy, _origin) = setup().await;
        let mut s = TcpStream::connect(listen).await.unwrap();
        let mut buf = Vec::new();
        s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let resp = read_response(&mut s, &mut buf, false).await;
        assert_eq!(body_json(&resp)["path"], "/a", "{resp}");
        s.write_all(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
        let resp = read_response(&mut s, &mut buf, false).await;
        let j = body_json(&resp);
        assert_eq!((j["path"].as_str(), j["body_len"].as_u64()), (Some("/b"), Some(5)), "{resp}");
        s.write_all(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(body_json(&read_response(&mut s, &mut buf, false).await)["path"], "/c");

        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await
        .unwrap();
        let text = read_to_end(&mut s).await;
        let (first, second) = text.split_at(text.find("HTTP/1.1 200").and_then(|i| text[i + 1..].find("HTTP/1.1 200").map(|j| i + 1 + j)).expect(&text));
        assert_eq!(body_json(first)["path"], "/a", "{text}");
        assert_eq!(body_json(second)["body_len"], 5, "{text}");
    })
    .await;
}

/// An HTTP/1.1 request, then an HTTP/1.0 one on the same connection: both answered, and the
/// connection closes after the 1.0 response.
#[tokio::test]
async fn http10_after_http11_on_one_connection() {
    within(LIMIT, async {
        let (listen, _proxy, _origin) = setup().await;
        let mut s = TcpStream::connect(listen).await.unwrap();
        let mut buf = Vec::new();
        s.write_all(b"GET /new HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(body_json(&read_response(&mut s, &mut buf, false).await)["path"], "/new");
        s.write_all(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
        let text = read_to_end(&mut s).await;
        assert!(text.contains(" 200 OK\r\n"), "{text}");
        assert_eq!(body_json(&text)["path"], "/old", "{text}");
    })
    .await;
}

/// Garbage instead of a request line: 400, and the connection closes.
#[tokio::test]
async fn garbage_request_line_is_400() {
    within(LIMIT, async {
        let (listen, _proxy, _origin) = setup().await;
        for garbage in [&b"BLAH\r\n\r\n"[..], b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"] {
            let mut s = TcpStream::connect(listen).await.unwrap();
            s.write_all(garbage).await.unwrap();
            let text = read_to_end(&mut s).await;
            assert!(text.starts_with("HTTP/1.1 400"), "{:?}: {text:?}", String::from_utf8_lossy(garbage));
        }
    })
    .await;
}

/// A head arriving in several pieces (within `header_timeout`) is served.
#[tokio::test]
async fn head_split_across_writes() {
    within(LIMIT, async {
        let (listen, _proxy, _origin) = setup().await;
        let mut s = TcpStream::connect(listen).await.unwrap();
        for piece in
            [&b"GE"[..], b"T /split?q=1 HT", b"TP/1.1\r\nHost: x\r", b"\nX-Late: yes\r\n", b"Connection: close\r\n\r\n"]
        {
            s.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        let text = read_to_end(&mut s).await;
        let j = body_json(&text);
        assert_eq!(j["path"], "/split?q=1", "{text}");
        assert_eq!(j["headers"]["x-late"], "yes", "{text}");
    })
    .await;
}

/// HEAD: the head (with the origin's `content-length`) and no body; the connection goes on.
#[tokio::test]
async fn head_has_no_body_and_keeps_the_connection() {
    within(LIMIT, async {
        let (listen, _proxy, _origin) = setup().await;
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let text = read_to_end(&mut s).await;
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(head.to_ascii_lowercase().contains("\r\ncontent-length: "), "{text}");
        assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "HEAD response carried a body: {text}");
        assert_eq!(body_json(rest)["path"], "/g");
    })
    .await;
}

/// A keep-alive connection waiting for its next request is closed after `header_timeout`,
/// as hyper does (its header timer starts when it waits for the next head).
#[tokio::test]
async fn idle_keep_alive_connection_closes_after_header_timeout() {
    within(LIMIT, async {
        let (listen, _proxy, _origin) = setup().await;
        let mut s = TcpStream::connect(listen).await.unwrap();
        let mut buf = Vec::new();
        s.write_all(b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        read_response(&mut s, &mut buf, false).await;
        let t0 = Instant::now();
        let rest = read_to_end(&mut s).await;
        let took = t0.elapsed();
        assert_eq!(rest, "");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "closed after {took:?}");
    })
    .await;
}

/// Heads the fast path does not take answer as hyper does: over 100 header lines, or a head
/// larger than twice `max_header_bytes`, get a bare 431 and the connection closes.
#[tokio::test]
async fn too_many_headers_and_far_oversized_heads_get_431() {
    within(LIMIT, async {
        let (listen, _proxy, _origin) = setup().await;
        let many: String = (0..120).map(|i| format!("x-{i}: y\r\n")).collect();
        let huge = format!("x-big: {}\r\n", "b".repeat(200_000));
        for (what, extra) in [("120 header lines", many), ("a 200 KB head", huge)] {
            let mut s = TcpStream::connect(listen).await.unwrap();
            let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
            // The proxy may answer and close before it has read everything.
            let _ = s.write_all(head.as_bytes()).await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with("HTTP/1.1 431"), "{what}: {text:?}");
            assert!(text.contains("\r\nconnection: close\r\n"), "{what}: {text:?}");
        }
    })
    .await;
}

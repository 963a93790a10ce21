#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test file uses part of the shared helpers and imports.
#![allow(dead_code, unused_imports)]
//! Streaming (SSE, large uploads and downloads with bounded proxy memory) and every error
//! response of the proxy, through the real `trellis` binary.

use trellis_testkit::config;
use trellis_testkit::*;

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use trellis_testkit::raw::*;

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

/// An origin sending `data: event N` every 200 ms, ten events (≈1.8 s).
async fn ticking_sse_origin() -> Origin {
    Origin::start(|_req: Request<Incoming>| async move {
        let s = futures_util::stream::unfold(0u32, |i| async move {
            if i >= 10 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: event {i}\n\n")))), i + 1))
        });
        Response::builder().header("content-type", "text/event-stream").body(StreamBody::new(s).boxed()).unwrap()
    })
    .await
}

/// Server-sent events are forwarded as they come, not buffered until the stream ends.
#[tokio::test]
async fn sse_events_stream_through_without_buffering() {
    within(LIMIT, async {
        let origin = ticking_sse_origin().await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Auto).yaml());
        let run = |h2: bool| async move {
            let mut c = client(listen, h2).await;
            let t0 = Instant::now();
            let resp = c.send(Request::get("/events").body(full("")).unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            let (frames, err) = read_timed(resp, t0).await;
            (h2, frames, err)
        };
        let (a, b) = tokio::join!(run(false), run(true));
        for (h2, frames, err) in [a, b] {
            let ctx = proto_name(h2);
            assert!(err.is_none(), "{ctx}: stream ended with {err:?}");
            let text: String = frames.iter().map(|(_, d)| String::from_utf8_lossy(d)).collect();
            let expected: String = (0..10).map(|i| format!("data: event {i}\n\n")).collect();
            assert_eq!(text, expected, "{ctx}");
            let times: Vec<Duration> = frames.iter().map(|(t, _)| *t).collect();
            assert!(times[0] < Duration::from_secs(1), "{ctx}: first event after {:?}", times[0]);
            let last = *times.last().unwrap();
            assert!(last > Duration::from_millis(1500), "{ctx}: last event at {last:?}");
            // Arrivals are spread out: at least 6 of the 9 gaps are ≥ 100 ms.
            let spread = times.windows(2).filter(|w| w[1] - w[0] >= Duration::from_millis(100)).count();
            assert!(spread >= 6, "{ctx}: arrival times {times:?}");
        }
    })
    .await;
}

/// A 64 MiB upload streamed in 64 KiB chunks reaches the origin whole, while the proxy's
/// peak resident memory grows by far less than the upload (HTTP/1.1 → http1 and h2c → http2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_with_bounded_proxy_memory() {
    within(Duration::from_secs(120), async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => return Response::builder().status(500).body(full(e.to_string())).unwrap(),
                }
            }
            Response::new(full(n.to_string()))
        })
        .await;
        for (h2, proto) in [(false, "http1"), (true, "http2")] {
            let ctx = proto_name(h2);
            let listen = listen_addr();
            let proxy = Proxy::start(&config::simple(listen, origin.addr, config::protocol(proto)).yaml());
            let pid = proxy.child.id();
            let mut c = client(listen, h2).await;
            assert_eq!(c.fetch(Request::post("/up").body(full("warm")).unwrap()).await.text(), "4");
            let (rss0, hwm0) = (proc_status_kib(pid, "VmRSS"), proc_status_kib(pid, "VmHWM"));

            let total = 64 * MIB;
            let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
            let got = c.fetch(Request::post("/up").body(big_body((total / (64 * 1024)) as usize, chunk)).unwrap()).await;
            assert_eq!(got.status, 200, "{ctx}: {}", got.text());
            assert_eq!(got.text(), total.to_string(), "{ctx}: origin byte count");

            let (rss1, hwm1) = (proc_status_kib(pid, "VmRSS"), proc_status_kib(pid, "VmHWM"));
            let grew = hwm1.saturating_sub(hwm0).max(rss1.saturating_sub(rss0));
            eprintln!("{ctx} upload: proxy RSS {rss0}→{rss1} KiB, peak {hwm0}→{hwm1} KiB");
            assert!(
                grew < 32 * 1024,
                "{ctx}: proxy memory grew by {grew} KiB for a 64 MiB upload (RSS {rss0}→{rss1} KiB, peak {hwm0}→{hwm1} KiB)"
            );
        }
    })
    .await;
}

/// A 64 MiB download streams through with bounded proxy memory, over both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_with_bounded_proxy_memory() {
    within(Duration::from_secs(120), async {
        let total = 64 * MIB;
        let origin = Origin::start(move |_req: Request<Incoming>| async move {
            let chunk = Bytes::from(vec![b'd'; 64 * 1024]);
            Response::new(big_body((total / (64 * 1024)) as usize, chunk))
        })
        .await;
        for (h2, proto) in [(false, "http1"), (true, "http2")] {
            let ctx = proto_name(h2);
            let listen = listen_addr();
            let proxy = Proxy::start(&config::simple(listen, origin.addr, config::protocol(proto)).yaml());
            let pid = proxy.child.id();
            let mut c = client(listen, h2).await;
            let (rss0, hwm0) = (proc_status_kib(pid, "VmRSS"), proc_status_kib(pid, "VmHWM"));
            let t0 = Instant::now();
            let resp = c.send(Request::get("/down").body(full("")).unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            let (mut n, mut first) = (0u64, None);
            while let Some(f) = body.frame().await {
                let f = f.unwrap_or_else(|e| panic!("{ctx}: body failed after {n} bytes: {e}"));
                if let Some(d) = f.data_ref() {
                    first.get_or_insert(t0.elapsed());
                    n += d.len() as u64;
                }
            }
            assert_eq!(n, total, "{ctx}");
            let (rss1, hwm1) = (proc_status_kib(pid, "VmRSS"), proc_status_kib(pid, "VmHWM"));
            let grew = hwm1.saturating_sub(hwm0).max(rss1.saturating_sub(rss0));
            eprintln!("{ctx} download: proxy RSS {rss0}→{rss1} KiB, peak {hwm0}→{hwm1} KiB, first bytes at {first:?}");
            assert!(
                grew < 32 * 1024,
                "{ctx}: proxy memory grew by {grew} KiB for a 64 MiB download (RSS {rss0}→{rss1} KiB, peak {hwm0}→{hwm1} KiB)"
            );
            assert!(first.unwrap() < t0.elapsed() / 2, "{ctx}: first bytes only at {first:?} of {:?}", t0.elapsed());
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Nothing listens at the endpoint → 502 `upstream connect failure`, quickly.
#[tokio::test]
async fn upstream_refused_is_502() {
    within(LIMIT, async {
        let env = error_env().await;
        for h2 in [false, true] {
            let mut c = client(env.listen, h2).await;
            for path in ["/refused", "/h2-refused"] {
                let t0 = Instant::now();
                let got = c.get(path).await;
                let ctx = format!("{} {path}", proto_name(h2));
                assert_proxy_error(&got, 502, "upstream connect failure", &ctx);
                assert!(t0.elapsed() < Duration::from_secs(1), "{ctx}: took {:?}", t0.elapsed());
            }
        }
        let m = env.proxy.metrics();
        assert_eq!(
            metric_value(
                &m,
                "trellis_requests_total",
                &[("route", "refused"), ("cluster", "refused"), ("code", "502")]
            ),
            Some(2.0),
            "{m}"
        );
    })
    .await;
}

/// The upstream accepts, reads the request and hangs up without answering → 502
/// `upstream reset` (for an http1 and an http2 cluster).
#[tokio::test]
async fn upstream_reset_mid_request_is_502() {
    within(LIMIT, async {
        let env = error_env().await;
        for h2 in [false, true] {
            let mut c = client(env.listen, h2).await;
            for path in ["/reset1", "/reset2"] {
                let ctx = format!("{} {path}", proto_name(h2));
                let got = c.get(path).await;
                assert_proxy_error(&got, 502, "upstream reset", &ctx);
            }
            // The downstream connection survives the upstream failure.
            assert_eq!(c.get("/fine").await.text(), "ok");
        }
    })
    .await;
}

/// An upstream body cut short (Content-Length 100, 3 bytes, then close) must reach the client
/// as a failed body, never as a clean, shorter one.
#[tokio::test]
async fn truncated_upstream_body_is_not_passed_off_as_complete() {
    within(LIMIT, async {
        let env = error_env().await;
        for h2 in [false, true] {
            let ctx = proto_name(h2);
            let mut c = client(env.listen, h2).await;
            let resp = c.send(Request::get("/trunc").body(full("")).unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200, "{ctx}");
            let (frames, err) = read_timed(resp, Instant::now()).await;
            let n: usize = frames.iter().map(|(_, d)| d.len()).sum();
            assert!(err.is_some(), "{ctx}: a 100-byte body with only {n} bytes ended cleanly");
            assert!(n < 100, "{ctx}");
        }
    })
    .await;
}

/// A cluster with no endpoints → 503 `no healthy endpoint`.
#[tokio::test]
async fn empty_cluster_is_503() {
    within(LIMIT, async {
        let env = error_env().await;
        for h2 in [false, true] {
            let mut c = client(env.listen, h2).await;
            assert_proxy_error(&c.get("/empty").await, 503, "no healthy endpoint", proto_name(h2));
        }
    })
    .await;
}

/// Route `timeout: 300ms` against a 2 s origin → 504 `upstream timeout`, and route
/// `idle_timeout: 300ms` against an origin that never answers → 504 `upstream idle
/// timeout`; both well before 1.5 s.
#[tokio::test]
async fn route_and_idle_timeouts_are_504() {
    within(LIMIT, async {
        let env = error_env().await;
        for (path, error) in [("/slow", "upstream timeout"), ("/silent", "upstream idle timeout")] {
            for h2 in [false, true] {
                let mut c = client(env.listen, h2).await;
                let t0 = Instant::now();
                let got = c.get(path).await;
                let took = t0.elapsed();
                assert_proxy_error(&got, 504, error, proto_name(h2));
                assert!(
                    took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
                    "{path}: took {took:?}"
                );
            }
        }
    })
    .await;
}

/// An event stream whose origin goes silent longer than `idle_timeout` is cut: the client's
/// body fails (not a clean end) shortly after the idle time.
#[tokio::test]
async fn silent_stream_is_cut_after_idle_timeout() {
    within(LIMIT, async {
        let env = error_env().await;
        for h2 in [false, true] {
            let ctx = proto_name(h2);
            let mut c = client(env.listen, h2).await;
            let t0 = Instant::now();
            let resp = c.send(Request::get("/sse-silent").body(full("")).unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200, "{ctx}");
            let (frames, err) = read_timed(resp, t0).await;
            let ended = t0.elapsed();
            assert_eq!(frames.len(), 1, "{ctx}: {frames:?}");
            assert!(err.is_some(), "{ctx}: the silent stream ended cleanly instead of failing");
            let gap = ended - frames[0].0;
            assert!(gap >= Duration::from_millis(250) && gap < Duration::from_millis(1500), "{ctx}: cut after {gap:?}");
        }
    })
    .await;
}

/// Route `timeout` covers the response body too: a never-ending stream is cut at the deadline.
#[tokio::test]
async fn route_timeout_cuts_a_streaming_body() {
    within(LIMIT, async {
        let env = error_env().await;
        for h2 in [false, true] {
            let ctx = proto_name(h2);
            let mut c = client(env.listen, h2).await;
            let t0 = Instant::now();
            let resp = c.send(Request::get("/sse-forever").body(full("")).unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200, "{ctx}");
            let (frames, err) = read_timed(resp, t0).await;
            let ended = t0.elapsed();
            assert!(err.is_some(), "{ctx}: stream ended cleanly");
            assert!(frames.len() >= 2, "{ctx}: events flowed before the deadline: {frames:?}");
            assert!(
                ended >= Duration::from_millis(400) && ended < Duration::from_millis(1500),
                "{ctx}: cut at {ended:?}"
            );
        }
    })
    .await;
}

/// A request header block over the listener's `max_header_bytes` (8192) → 431; one under it
/// passes.
#[tokio::test]
async fn oversized_header_block_is_431() {
    within(LIMIT, async {
        let env = error_env().await;
        let mut c = Client::h1(env.listen).await;
        let got = c.fetch(Request::get("/fine").header("x-pad", "p".repeat(6000)).body(full("")).unwrap()).await;
        assert_eq!(got.status, 200, "a 6 KB header block fits in 8192");

        let mut s = tokio::net::TcpStream::connect(env.listen).await.unwrap();
        let big = format!("GET /fine HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "b".repeat(10_000));
        s.write_all(big.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 431"), "got {text:?}; logs: {}", log_tail(&env.proxy, 10));
    })
    .await;
}

/// The proxy's own 431 should look like its other errors (`x-trellis-error`, text body).
#[tokio::test]
async fn oversized_header_block_431_names_the_reason() {
    within(LIMIT, async {
        let env = error_env().await;
        let mut s = tokio::net::TcpStream::connect(env.listen).await.unwrap();
        let big = format!("GET /fine HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "b".repeat(10_000));
        s.write_all(big.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 431"), "got {text:?}");
        assert!(text.contains("\r\nx-trellis-error:"), "431 without x-trellis-error: {text:?}");
    })
    .await;
}

/// Clients that never finish their header block are disconnected after the listener's
/// `header_timeout` (500ms): half a header block (told so with a 408 first, as HAProxy
/// does), nothing at all and half an h2 preface (just closed), and a slow trickle of header
/// bytes.
#[tokio::test]
async fn incomplete_header_block_is_disconnected_after_header_timeout() {
    within(LIMIT, async {
        let env = error_env().await;
        let cases: [(&str, &[u8], bool); 3] = [
            ("half a header block", b"GET /fine HTTP/1.1\r\nHost: x\r\nX-Partial: y", true),
            ("nothing", b"", false),
            ("half an h2 preface", b"PRI * HTTP/2", false),
        ];
        for (what, bytes, told) in cases {
            let mut s = tokio::net::TcpStream::connect(env.listen).await.unwrap();
            s.write_all(bytes).await.unwrap();
            let (took, text) = wait_closed(&mut s, Duration::from_secs(3))
                .await
                .unwrap_or_else(|| panic!("{what}: connection still open after 3 s"));
            if told {
                assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{what}: got {text:?}");
                assert!(text.contains("\r\nx-trellis-error: request timeout\r\n"), "{what}: got {text:?}");
                assert!(text.contains("\r\nconnection: close\r\n"), "{what}: got {text:?}");
            } else {
                assert!(text.is_empty(), "{what}: got {text:?}");
            }
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_secs(2),
                "{what}: closed after {took:?}"
            );
        }

        // Slowloris: one header byte every 100 ms keeps the socket busy but not the deadline.
        let mut s = tokio::net::TcpStream::connect(env.listen).await.unwrap();
        let (mut rd, mut wr) = s.split();
        let trickle = async {
            let head = b"GET /fine HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for b in head {
                if wr.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            std::future::pending::<()>().await;
        };
        let t0 = Instant::now();
        let closed = async {
            let mut buf = [0u8; 256];
            let mut got = Vec::new();
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return (t0.elapsed(), String::from_utf8_lossy(&got).into_owned()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        let (took, text) = tokio::select! {
            closed = closed => closed,
            () = trickle => unreachable!(),
            () = tokio::time::sleep(Duration::from_secs(4)) => panic!("trickling client still connected after 4 s"),
        };
        assert!(took < Duration::from_secs(2), "trickling client closed after {took:?}");
        assert!(text.starts_with("HTTP/1.1 408 "), "trickling client got {text:?}");
    })
    .await;
}

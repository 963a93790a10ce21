#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test file uses part of the shared helpers and imports.
#![allow(dead_code, unused_imports)]
//! Hostile input from both sides, through the real `trellis` binary on raw sockets (issue
//! #14): client-side garbage and aborted uploads never eject a healthy endpoint; a second
//! `Host` (or an `:authority` it disagrees with) is refused; an upstream that sends both
//! `Content-Length` and chunked has its chunked body passed on; a trailer section ended by a
//! bare LF ends the response at once; bytes that start like the HTTP/2 preface but are not
//! it get GOAWAY; and after an early complete HTTP/2 response, the client's frames on that
//! stream still get the errors RFC 9113 asks for.

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

/// Sends `bytes` on a fresh connection and reads until the proxy closes it.
async fn exchange_raw(listen: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_to_end(&mut s).await
}

const CHUNKED_POST: &str = "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Malformed chunked bodies, bodies cut short by a client that leaves, and HTTP/2 bodies that
/// break their `content-length`, all sent to a cluster of two healthy endpoints with outlier
/// detection that ejects after two gateway errors: each is the client's fault (a 400, or
/// nothing when the client has gone), no endpoint is ejected, and both keep taking traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_garbage_and_aborted_uploads_never_eject_an_endpoint() {
    within(LIMIT, async {
        let (a, seen_a) = counting_origin(|_, _| Response::new(full("a"))).await;
        let (b, seen_b) = counting_origin(|_, _| Response::new(full("b"))).await;
        let listen = listen_addr();
        let od = serde_json::json!({ "consecutive_5xx": 2, "consecutive_gateway_errors": 2, "base_ejection": "30s", "max_ejection_percent": 100 });
        let c = config::Cluster {
            lb: config::LbPolicy::RoundRobin,
            outlier_detection: Some(config::part(od)),
            ..config::cluster("c", config::ClusterProtocol::default(), &[a.addr, b.addr])
        };
        let yaml = config::serving(listen, vec![config::route("all", "/", "c")], vec![c]).yaml();
        let proxy = blocking(|| Proxy::start(&yaml));

        for round in 0..4 {
            for body in [
                // A good chunk first, so the request is on its way upstream when the bad one comes.
                "5\r\nhello\r\n00000000000000000005\r\nworld\r\n0\r\n\r\n",
                "5 junk\r\nhello\r\n0\r\n\r\n",
                "5;e\rx\r\nhello\r\n0\r\n\r\n",
                "5\r\nhelloXX\r\n0\r\n\r\n",
            ] {
                let text = exchange_raw(listen, format!("{CHUNKED_POST}{body}").as_bytes()).await;
                let ctx = format!("round {round}, body {body:?}");
                assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{ctx}: {text:?}");
                assert!(text.contains("\r\nx-trellis-error: bad request body\r\n"), "{ctx}: {text:?}");
                assert!(text.contains("\r\nconnection: close\r\n"), "{ctx}: {text:?}");
            }
            // Announces 100 bytes, sends 10, and leaves (closes, or half-closes and waits).
            for half in [false, true] {
                let mut s = TcpStream::connect(listen).await.unwrap();
                s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789").await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                if half {
                    s.shutdown().await.unwrap();
                    let text = read_to_end(&mut s).await;
                    assert!(text.is_empty() || text.starts_with("HTTP/1.1 400 "), "round {round}: {text:?}");
                }
            }
            // HTTP/2: DATA that breaks the announced length is a stream error, not an upstream one.
            let mut h2 = RawH2::connect(listen).await;
            let head = h2raw::block(&[(":method", "POST"), (":scheme", "http"), (":path", "/up"), (":authority", "x"), ("content-length", "10")]);
            h2.send(h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, &head)).await;
            h2.send(h2raw::frame(h2raw::DATA, h2raw::END_STREAM, 1, b"abc")).await;
            let reset = h2.until(|f| f.kind == h2raw::RST_STREAM || f.kind == h2raw::GOAWAY).await;
            assert_eq!(reset.map(|f| f.error_code()), Some(0x1), "round {round}: PROTOCOL_ERROR");
        }

        // Both endpoints are still in, and take their turns.
        let mut c = Client::h1(listen).await;
        let before = (seen_a.count(), seen_b.count());
        for _ in 0..10 {
            assert_eq!(c.get("/").await.status, 200);
        }
        assert!(seen_a.count() > before.0 && seen_b.count() > before.1, "{before:?} -> {}, {}", seen_a.count(), seen_b.count());
        for ep in [a.addr, b.addr] {
            let view = blocking(|| endpoint_json(&proxy, "c", ep));
            assert_eq!((view["health"].as_str(), view["times_ejected"].as_u64()), (Some("healthy"), Some(0)), "{view}");
        }
        let ejections = metric_value(&blocking(|| proxy.metrics()), "trellis_outlier_ejections_total", &[("cluster", "c")]);
        assert!(ejections.unwrap_or(0.0) == 0.0, "{ejections:?}");
    })
    .await;
}

/// RFC 9112 §3.2 and RFC 9113 §8.3.1: a request must name one host. Two `Host` fields, none
/// in an HTTP/1.1 request, an invalid one, and an h2 `Host` that disagrees with `:authority`
/// are 400s; an absolute-form target's host wins over `Host` for routing and upstream alike.
#[tokio::test]
async fn requests_must_name_one_host() {
    within(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        for (what, head) in [
            ("two Host fields", "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"),
            ("no Host", "GET / HTTP/1.1\r\nConnection: close\r\n\r\n"),
            ("userinfo in Host", "GET / HTTP/1.1\r\nHost: u@a.test\r\n\r\n"),
            ("invalid Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ] {
            let text = exchange_raw(listen, head.as_bytes()).await;
            assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{what}: {text:?}");
            assert!(text.contains("\r\nx-trellis-error: bad host\r\n"), "{what}: {text:?}");
        }
        let text =
            exchange_raw(listen, b"GET http://b.test/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
        assert_eq!(body_json(&text)["host"], "b.test", "{text}");
        // HTTP/1.0 may leave Host out.
        let text = exchange_raw(listen, b"GET /old HTTP/1.0\r\n\r\n").await;
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text:?}");

        let mut c = Client::h2(listen).await;
        let req = |host: &str| Request::get("http://a.test/").header("host", host).body(full("")).unwrap();
        let got = c.fetch(req("b.test")).await;
        assert_proxy_error(&got, 400, "bad host", "h2 :authority a.test, Host b.test");
        assert_eq!(c.fetch(req("A.TEST")).await.status, 200);
    })
    .await;
}

/// RFC 9112 §6.3: an upstream response with both `Content-Length` and chunked framing is
/// read as chunked, passed on without the length, and its connection is not reused.
#[tokio::test]
async fn upstream_length_and_chunked_passes_the_chunked_body() {
    within(LIMIT, async {
        let origin = scripted_origin(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        for h2 in [false, true] {
            let mut c = client(listen, h2).await;
            for _ in 0..2 {
                let got = c.get("/").await;
                assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "hello"), "{}", proto_name(h2));
                assert_ne!(got.header("content-length"), Some("3"), "{}", proto_name(h2));
            }
        }
        // Four answers, four upstream connections: none carried a second request.
        assert_eq!(origin.conns.load(std::sync::atomic::Ordering::SeqCst), 4);
    })
    .await;
}

/// A trailer section that ends in a bare LF (as a head's field lines may) ends the response
/// at once, with its trailers, and the upstream connection is reused.
#[tokio::test]
async fn upstream_trailers_ended_by_a_bare_lf_end_the_response() {
    within(LIMIT, async {
        let origin =
            scripted_origin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-sum: 7\n\n").await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        let mut c = Client::h1(listen).await;
        for i in 0..3 {
            let resp = within(
                Duration::from_secs(5),
                c.send(Request::get("/").header("te", "trailers").body(full("")).unwrap()),
            )
            .await
            .unwrap();
            let body = within(Duration::from_secs(5), resp.into_body().collect()).await.unwrap();
            assert_eq!(
                body.trailers().and_then(|t| t.get("x-sum")).map(|v| v.as_bytes()),
                Some(&b"7"[..]),
                "request {i}"
            );
            assert_eq!(body.to_bytes(), "ok");
        }
        assert_eq!(origin.conns.load(std::sync::atomic::Ordering::SeqCst), 1, "the upstream connection is reused");
    })
    .await;
}

/// More than 100 header fields is a 431 over HTTP/2 as over HTTP/1.1, however large
/// `max_header_bytes` is: h2 takes up to a header map's limit (24,576 fields), and a request
/// that filled the map made the proxy panic adding its own fields (its connection dropped).
#[tokio::test]
async fn more_than_100_fields_get_431_over_h2_too() {
    within(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let mut cfg = config::simple(listen, origin.addr, config::ClusterProtocol::Http1);
        cfg.listeners[0].max_header_bytes = Some(1 << 20);
        let _proxy = Proxy::start(&cfg.yaml());
        let mut c = client(listen, true).await;
        let with_fields = |n: usize| {
            let mut req = get("/", "x", true).body(full("")).unwrap();
            for i in 0..n {
                req.headers_mut().insert(
                    http::HeaderName::try_from(format!("x{i:x}")).unwrap(),
                    http::HeaderValue::from_static("1"),
                );
            }
            req
        };
        for (fields, status) in [(24_576, 431), (101, 431), (90, 200)] {
            let got = c.fetch(with_fields(fields)).await;
            if status == 431 {
                assert_proxy_error(&got, 431, "header block too large", &format!("{fields} fields"));
            } else {
                assert_eq!(got.status, 200, "{fields} fields; the connection keeps serving: {}", got.text());
            }
        }
    })
    .await;
}

/// Bytes that start like the HTTP/2 preface but are not it: HTTP/2's answer (SETTINGS, then
/// GOAWAY with PROTOCOL_ERROR, then close), not an HTTP/1.1 400.
#[tokio::test]
async fn invalid_h2_preface_gets_goaway() {
    within(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        for bad in [&b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r"] {
            let mut s = TcpStream::connect(listen).await.unwrap();
            s.write_all(bad).await.unwrap();
            let mut raw = RawH2 { s, buf: Vec::new() };
            let goaway = raw.until(|f| f.kind == h2raw::GOAWAY).await.expect("a GOAWAY");
            assert_eq!(goaway.error_code(), 0x1, "PROTOCOL_ERROR");
            assert!(raw.next().await.is_none(), "closed after the GOAWAY");
        }
    })
    .await;
}

/// An origin that answers `early` at once, without reading the request body.
async fn early_origin() -> Origin {
    Origin::start(|req: Request<Incoming>| async move {
        drop(req);
        Response::new(full("early"))
    })
    .await
}

/// Opens stream 1 with a POST whose body has not ended (`content-length: 10` when
/// `length`), and reads the complete (early) response; the stream must still be open.
async fn answered_early(listen: SocketAddr, length: bool) -> RawH2 {
    let mut h2 = RawH2::connect(listen).await;
    let mut fields = vec![(":method", "POST"), (":scheme", "http"), (":path", "/up"), (":authority", "x")];
    if length {
        fields.push(("content-length", "10"));
    }
    h2.send(h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, &h2raw::block(&fields))).await;
    h2.send(h2raw::frame(h2raw::DATA, 0, 1, b"ab")).await;
    let end = h2
        .until(|f| f.stream == 1 && (f.flags & h2raw::END_STREAM != 0 || f.kind == h2raw::RST_STREAM))
        .await
        .expect("the response");
    assert_ne!(end.kind, h2raw::RST_STREAM, "stream reset instead of answered: {end:?}");
    h2
}

/// The first error the connection reports after `frames`: (frame type, stream, code).
async fn error_after(h2: &mut RawH2, frames: Vec<Vec<u8>>) -> Option<(u8, u32, u32)> {
    for f in frames {
        h2.send(f).await;
    }
    let e = h2.until(|f| f.kind == h2raw::RST_STREAM || f.kind == h2raw::GOAWAY).await?;
    Some((e.kind, e.stream, e.error_code()))
}

/// RFC 9113 after a complete response to a request whose body is still coming: the stream
/// is half-closed, not reset (no RST_STREAM(NO_ERROR) that would make the client's frames
/// ignored), so each frame that breaks the rules gets its error, every time.
#[tokio::test]
async fn early_h2_response_keeps_checking_the_clients_frames() {
    within(LIMIT, async {
        let origin = early_origin().await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        let stream_error = |code| move |e: Option<(u8, u32, u32)>| matches!(e, Some((h2raw::RST_STREAM, 1, c)) | Some((h2raw::GOAWAY, _, c)) if c == code);
        let protocol_error = stream_error(0x1);
        for round in 0..3 {
            // A second HEADERS without END_STREAM (trailers must end the stream).
            let mut h2 = answered_early(listen, false).await;
            let e = error_after(&mut h2, vec![h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, &h2raw::block(&[("x-t", "1")]))]).await;
            assert!(protocol_error(e), "round {round}, second HEADERS: {e:?}");
            // DATA that ends the stream short of its content-length.
            let mut h2 = answered_early(listen, true).await;
            let e = error_after(&mut h2, vec![h2raw::frame(h2raw::DATA, h2raw::END_STREAM, 1, b"cde")]).await;
            assert!(protocol_error(e), "round {round}, short content-length: {e:?}");
            // DATA past its content-length.
            let mut h2 = answered_early(listen, true).await;
            let e = error_after(&mut h2, vec![h2raw::frame(h2raw::DATA, 0, 1, b"0123456789")]).await;
            assert!(protocol_error(e), "round {round}, long content-length: {e:?}");
            // DATA after the client ended the stream.
            let mut h2 = answered_early(listen, false).await;
            let e = error_after(
                &mut h2,
                vec![h2raw::frame(h2raw::DATA, h2raw::END_STREAM, 1, b"c"), h2raw::frame(h2raw::DATA, 0, 1, b"d")],
            )
            .await;
            assert!(stream_error(0x5)(e), "round {round}, DATA on a closed stream: STREAM_CLOSED: {e:?}");
        }
    })
    .await;
}

/// A window pushed over 2^31−1 on a stream the proxy is still to answer is a stream error
/// of type FLOW_CONTROL_ERROR (RFC 9113 §6.9.1). (Once the response has ended, see
/// `patched_h2_checks_trailers_and_windows_after_the_response`.)
#[tokio::test]
async fn h2_window_overflow_is_a_flow_control_error() {
    within(LIMIT, async {
        let origin = Origin::start(|_req: Request<Incoming>| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::new(full("late"))
        })
        .await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        let mut h2 = RawH2::connect(listen).await;
        let head = h2raw::block(&[(":method", "POST"), (":scheme", "http"), (":path", "/up"), (":authority", "x")]);
        let window = h2raw::frame(h2raw::WINDOW_UPDATE, 0, 1, &0x7fff_ffffu32.to_be_bytes());
        let e = error_after(
            &mut h2,
            vec![h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, &head), window.clone(), window],
        )
        .await;
        assert_eq!(e, Some((h2raw::RST_STREAM, 1, 0x3)), "FLOW_CONTROL_ERROR");
    })
    .await;
}

/// The patched `check_headers` of vendor/h2 (one pass over the names): a HEADERS frame with
/// a connection-specific field (RFC 9113 §8.2.2) is refused before it is sent, `te:
/// trailers` is not, and the connection keeps working. Client and server are h2 itself, so
/// the patched code runs on both sides of a real loopback connection.
#[tokio::test]
async fn patched_h2_still_refuses_connection_specific_fields_it_would_send() {
    within(LIMIT, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut h2 = h2::server::handshake(tcp).await.expect("server handshake");
            while let Some(Ok((_, mut respond))) = h2.accept().await {
                // The server's side of the check: a forbidden field in a response is refused.
                let mut bad = Response::new(());
                bad.headers_mut().insert("keep-alive", http::HeaderValue::from_static("5"));
                let refused = respond.send_response(bad, true).is_err();
                let status = if refused { 200 } else { 500 };
                let ok = Response::builder().status(status).body(()).expect("response");
                let _ = respond.send_response(ok, true);
            }
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("client handshake");
        tokio::spawn(connection);
        let mut client = client.ready().await.expect("ready");
        for (name, value, allowed) in [
            ("connection", "close", false),
            ("transfer-encoding", "chunked", false),
            ("upgrade", "websocket", false),
            ("keep-alive", "5", false),
            ("proxy-connection", "close", false),
            ("te", "gzip", false),
            ("te", "trailers", true),
            ("x-ordinary", "1", true),
        ] {
            let request =
                Request::builder().uri(format!("http://{addr}/")).header(name, value).body(()).expect("request");
            match client.send_request(request, true) {
                Ok((response, _)) => {
                    assert!(allowed, "{name}: {value} was sent");
                    let response = response.await.expect("response");
                    assert_eq!(response.status(), 200, "the server sent a keep-alive field");
                }
                Err(e) => {
                    assert!(!allowed, "{name}: {value} was refused: {e}");
                    assert!(e.to_string().contains("malformed headers"), "{name}: {e}");
                }
            }
            client = client.ready().await.expect("the connection still works");
        }
    })
    .await;
}

/// The patched `convert_poll_message` of vendor/h2 (a request head built in place, not
/// with `Request::builder()`): a request arrives upstream as sent, and each malformed head
/// still gets its stream error of type PROTOCOL_ERROR (RFC 9113 §8.3.1), the one whose URI
/// parts do not make a URI (no `:path`) included.
#[tokio::test]
async fn patched_h2_builds_request_heads_and_refuses_malformed_ones() {
    within(LIMIT, async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
            let host = req.headers().get("host").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            Response::new(full(format!("{} {} {host}", req.method(), req.uri())))
        })
        .await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        let base = [(":method", "GET"), (":scheme", "http"), (":path", "/a?b=1"), (":authority", "x")];

        let mut h2 = RawH2::request(listen, &base).await;
        let data = h2.until(|f| f.stream == 1 && f.kind == h2raw::DATA).await.expect("the response body");
        assert_eq!(String::from_utf8_lossy(&data.payload), "GET /a?b=1 x");

        let without = |name: &str| base.iter().copied().filter(|(n, _)| *n != name).collect::<Vec<_>>();
        let with = |field: (&'static str, &'static str)| {
            let mut f = base.to_vec();
            f.push(field);
            f
        };
        let mut bad_authority = without(":authority");
        bad_authority.push((":authority", "a b"));
        for (case, fields) in [
            ("no :method", without(":method")),
            ("no :scheme", without(":scheme")),
            ("no :path", without(":path")),
            (":protocol on a GET", with((":protocol", "websocket"))),
            (":status in a request", with((":status", "200"))),
            ("a malformed :authority", bad_authority),
        ] {
            let mut h2 = RawH2::request(listen, &fields).await;
            let e = h2.until(|f| f.kind == h2raw::RST_STREAM || f.kind == h2raw::GOAWAY || f.stream == 1).await;
            let e = e.map(|f| (f.kind, if f.stream == 1 && f.kind != h2raw::RST_STREAM { 0 } else { f.error_code() }));
            assert!(matches!(e, Some((h2raw::RST_STREAM | h2raw::GOAWAY, 0x1))), "{case}: a PROTOCOL_ERROR, not {e:?}");
        }
    })
    .await;
}

/// Never-indexed values (a response's `date`, a request id) go out as plain string literals,
/// not Huffman-coded (vendor/README.md: made per message, coding them cost more than the
/// bytes it saved); clients decode them as any literal.
#[tokio::test]
async fn patched_h2_sends_never_indexed_values_without_huffman_coding() {
    within(LIMIT, async {
        let origin = Origin::start(|_req: Request<Incoming>| async move { Response::new(full("ok")) }).await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        let fields = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "x")];
        let mut h2 = RawH2::request(listen, &fields).await;
        let head = h2.until(|f| f.stream == 1 && f.kind == h2raw::HEADERS).await.expect("the response head");
        // Literal never indexed, name `date` (static index 33): 0x1f 0x12, then the value's
        // length with the Huffman bit clear, then its 29 bytes as they are.
        let at = head.payload.windows(2).position(|w| w == [0x1f, 0x12]).expect("date as a never-indexed literal");
        assert_eq!(head.payload.get(at + 2), Some(&29), "length 29, H bit clear: {:02x?}", head.payload);
        let date = head.payload.get(at + 3..at + 32).expect("the value");
        assert!(date.ends_with(b" GMT"), "{}", String::from_utf8_lossy(date));

        // A real client reads the response as before.
        let got = Client::h2(listen).await.get("/").await;
        assert!(got.header("date").is_some_and(|d| d.ends_with(" GMT")), "{:?}", got.headers);
        assert_eq!(got.text(), "ok");
    })
    .await;
}

/// The same on the way to an HTTP/2 upstream: `x-request-id` and `traceparent` (new in each
/// request) go as never-indexed literals whose names and values are plain, not Huffman-coded;
/// and their names go as literals even once a client's own `x-request-id` (not marked
/// never-indexed) has put the name in the connection's dynamic table (the patched encoder
/// does not look never-indexed fields up there).
#[tokio::test]
async fn patched_h2_sends_never_indexed_names_plain_upstream() {
    within(LIMIT, async {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let listen = listen_addr();
        let config = config::simple(listen, upstream.local_addr().expect("address"), config::ClusterProtocol::Http2);
        let _proxy = Proxy::start(&config.yaml());
        // Never answered: the requests are only read here.
        let first = tokio::spawn(async move {
            Client::h1(listen)
                .await
                .fetch(Request::get("/").header("x-request-id", "client-id").body(full("")).unwrap())
                .await
        });
        let (mut s, _) = upstream.accept().await.expect("the proxy connects");
        let mut preface = [0u8; 24];
        s.read_exact(&mut preface).await.expect("the connection preface");
        let mut h2 = RawH2 { s, buf: Vec::new() };
        let head = h2.until(|f| f.kind == h2raw::HEADERS).await.expect("the first request head");
        // Entered in the dynamic table: a literal with incremental indexing (0x40), its name
        // Huffman-coded (9 bytes, H set: 0x89; RFC 7541 Appendix B).
        let entered = [0x40, 0x89, 0xf2, 0xb5, 0x85, 0xed, 0x69, 0x50, 0x95, 0x8d, 0x27];
        assert!(head.payload.windows(entered.len()).any(|w| w == entered), "{:02x?}", head.payload);
        let second = tokio::spawn(async move { Client::h1(listen).await.get("/").await });
        let head = h2.until(|f| f.kind == h2raw::HEADERS).await.expect("the second request head");
        for (name, len) in [("x-request-id", 36), ("traceparent", 55)] {
            // Literal never indexed with a literal name (0x10), the name's length (H clear),
            // the name, then the value's length (H clear).
            let mut literal = vec![0x10, name.len() as u8];
            literal.extend_from_slice(name.as_bytes());
            literal.push(len);
            assert!(head.payload.windows(literal.len()).any(|w| w == literal), "{name}: {:02x?}", head.payload);
        }
        first.abort();
        second.abort();
    })
    .await;
}

/// Checks the published `h2` crate lacks and our patched copy adds (vendor/README.md), on a
/// stream whose response has ended: pseudo-header fields in trailers (RFC 9113 §8.1:
/// PROTOCOL_ERROR; h2 dropped them and delivered the rest), trailers short of the
/// content-length (h2 closed the stream, then could not reset it), and a WINDOW_UPDATE that
/// overflows the stream's window (§6.9.1: FLOW_CONTROL_ERROR; h2 skipped the update).
#[tokio::test]
async fn patched_h2_checks_trailers_and_windows_after_the_response() {
    within(LIMIT, async {
        let origin = early_origin().await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());
        // (content-length sent, trailers, what): the second case h2 found too, but it closed
        // the stream before resetting it, so the reset was never sent.
        for (length, fields, what) in [
            (false, [(":path", "/x")], "pseudo-header trailers"),
            (true, [("x-t", "1")], "trailers short of content-length"),
        ] {
            let mut h2 = answered_early(listen, length).await;
            let trailers =
                h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS | h2raw::END_STREAM, 1, &h2raw::block(&fields));
            let e = error_after(&mut h2, vec![trailers]).await;
            assert!(matches!(e, Some((_, _, 0x1))), "{what}: {e:?}");
        }
        let mut h2 = answered_early(listen, false).await;
        let window = h2raw::frame(h2raw::WINDOW_UPDATE, 0, 1, &0x7fff_ffffu32.to_be_bytes());
        let e = error_after(&mut h2, vec![window.clone(), window]).await;
        assert!(matches!(e, Some((_, _, 0x3))), "window overflow after the response: {e:?}");
    })
    .await;
}

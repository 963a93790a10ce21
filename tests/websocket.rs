//! WebSocket through HTTP/1.1 listeners (DESIGN §11 "Upgrades") against the real binary:
//! a Python `websockets` echo server behind the proxy, the `websockets` client and
//! `websocat` in front (`tests/ws_peer.py`); text and binary echo, a 1 MiB message, an idle
//! stream that outlives the listener's header timeout, the close handshake, the access log
//! line and the metric. Raw sockets for what no well-behaved peer does: an upgrade the
//! upstream does not take (an ordinary response, the connection kept), and a peer that
//! never answers a close (the route's idle timeout ends the stream).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{self, Bootstrap, ClusterProtocol, Route, Yaml};
use trellis_testkit::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 listener `in` (header timeout 1 s) with routes `/ws` (idle 3 s) to `ws`,
/// `/short` (idle 1 s) to `short`, and anything else to `plain`.
fn config(listen: SocketAddr, ws: SocketAddr, short: SocketAddr, plain: SocketAddr, log: &std::path::Path) -> String {
    let mut b = logged(log);
    let mut l = config::listener("in", listen, &["ws", "short", "plain"]);
    l.header_timeout = Some(config::ms(1000));
    b.listeners.push(l);
    b.routes.push(Route { idle_timeout: Some(config::ms(3000)), ..config::route("ws", "/ws", "ws") });
    b.routes.push(Route { idle_timeout: Some(config::ms(1000)), ..config::route("short", "/short", "short") });
    b.routes.push(config::route("plain", "/", "plain"));
    for (name, addr) in [("ws", ws), ("short", short), ("plain", plain)] {
        b.clusters.push(config::cluster(name, ClusterProtocol::default(), &[addr]));
    }
    b.yaml()
}

/// A bootstrap with an access log at `log`.
fn logged(log: &std::path::Path) -> Bootstrap {
    Bootstrap { access_log: Some(config::AccessLog { path: log.display().to_string() }), ..config::bootstrap() }
}

/// An upgrade request head for `path`.
fn upgrade_head(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: test\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
}

/// Reads a response head (to the blank line) off `s`.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed in the head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// An upstream that answers every upgrade with 101 and then reads and drops what comes,
/// never answering (nor a close).
async fn silent_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                    .await;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        // Holds its side open: only the proxy's idle timeout ends this.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_idle_and_close_through_an_http1_listener() {
    if !ws_peers_available("websocket_echo_idle_and_close_through_an_http1_listener") {
        return;
    }
    within(LIMIT, async {
        let echo = WsEcho::start();
        let plain = Origin::echo("plain").await;
        let (silent, _silent) = silent_upstream().await;
        let listen = listen_addr();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let proxy = Proxy::start(&config(listen, echo.addr, silent, plain.addr, &log));

        // Text, binary, 1 MiB, then 2 s of silence (twice the listener's header timeout,
        // within the route's 3 s idle timeout), then the close handshake.
        let plan = serde_json::json!({
            "url": format!("ws://{listen}/ws"),
            "steps": [
                {"text": "hello through trellis"},
                {"binary": 1000},
                {"binary": 1024 * 1024},
                {"sleep": 2.0},
                {"text": "still here"},
                {"close": true},
            ],
        });
        let started = Instant::now();
        let answer = ws_client(plan, 40).await;
        assert_eq!(answer["ok"], true, "{answer}\n{}", proxy.logs());
        let echoes = answer["echoes"].as_array().unwrap();
        assert_eq!(echoes.len(), 4, "{answer}");
        assert!(echoes.iter().all(|e| e["same"] == true), "every message comes back as sent: {answer}");
        assert_eq!(echoes[0]["kind"], "text");
        assert_eq!(echoes[1]["kind"], "binary");
        assert_eq!(echoes[2]["len"], 1024 * 1024);
        assert_eq!(answer["close_code"], 1000, "the server's close frame came through: {answer}");
        let life = started.elapsed();

        // websocat, as a user would try it.
        let (ok, out) = websocat_once(format!("ws://{listen}/ws"), "hi from websocat\n").await;
        assert!(ok, "websocat failed: {out}");
        assert_eq!(out.trim(), "hi from websocat");

        // One line per stream, written when it ended: status 101, the stream's life.
        let lines = access_log_lines(&log, 2).await;
        let first = &lines[0];
        assert_eq!(first["status"], 101, "{first}");
        assert_eq!(first["route"], "ws", "{first}");
        let ms = first["duration_ms"].as_f64().unwrap();
        assert!(ms >= 2000.0 && ms <= life.as_millis() as f64 + 1000.0, "duration is the stream's life: {first}");
        assert!(first["bytes_sent"].as_u64().unwrap() > 1024 * 1024, "{first}");
        let upgrades = wait_metric(
            &proxy,
            "trellis_upgrades_total",
            &[("listener", "in"), ("protocol", "websocket")],
            |v| v >= 2.0,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(upgrades, Some(2.0));
        let requests =
            metric_value(&blocking(|| proxy.metrics()), "trellis_requests_total", &[("route", "ws"), ("code", "101")]);
        assert_eq!(requests, Some(2.0), "101s count as requests of their route");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_upstream_declines_is_an_ordinary_response_and_a_silent_peer_is_cut_by_idle_timeout() {
    within(LIMIT, async {
        let plain = Origin::echo("plain").await;
        let (silent, _silent) = silent_upstream().await;
        let listen = listen_addr();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let proxy = Proxy::start(&config(listen, silent, silent, plain.addr, &log));

        // The plain origin ignores the upgrade: its 200 comes back as is, and the
        // connection carries the next request. It saw the Upgrade and Connection fields.
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(upgrade_head("/plain").as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("a length");
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echoed["headers"]["upgrade"], "websocket", "{echoed}");
        assert_eq!(echoed["headers"]["connection"], "upgrade", "{echoed}");
        // An upgrade to another protocol (h2c) is not carried: the request goes on as an
        // ordinary one, without Upgrade, on the same connection.
        s.write_all(b"GET /again HTTP/1.1\r\nhost: test\r\nupgrade: h2c\r\nconnection: upgrade, http2-settings\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n").await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "keep-alive after a declined upgrade: {head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("a length");
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(echoed["headers"].get("upgrade").is_none(), "h2c is not forwarded: {echoed}");
        assert!(echoed["headers"].get("http2-settings").is_none(), "{echoed}");
        drop(s);

        // A peer that never answers a close: the route's 1 s idle timeout ends the stream.
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(upgrade_head("/short").as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
        assert!(head.to_ascii_lowercase().contains("connection: upgrade"), "{head}");
        // A masked close frame (code 1000), which the upstream never answers.
        s.write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2]).await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the stream is ended by the idle timeout");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(900), "not before the idle timeout: {waited:?}");
        assert!(rest.is_empty(), "the upstream sent nothing: {rest:?}");

        let lines = access_log_lines(&log, 3).await;
        let cut = lines.iter().find(|l| l["route"] == "short").expect("a line for the stream");
        assert_eq!(cut["status"], 101, "{cut}");
        assert_eq!(cut["error"], "idle timeout", "{cut}");

        // The proxy keeps serving.
        let got = Client::h1(listen).await.get("/after").await;
        assert_eq!(got.status, 200);
        drop(proxy);
    })
    .await;
}

/// One HTTP/1.1 listener `in` with one route `chat` (`/chat`, no `idle_timeout`: the
/// defaults) to `upstream`; access log at `log`.
fn default_route_config(listen: SocketAddr, upstream: SocketAddr, log: &std::path::Path) -> String {
    let mut b = logged(log);
    b.listeners.push(config::listener("in", listen, &["chat"]));
    b.routes.push(config::route("chat", "/chat", "chat"));
    b.clusters.push(config::cluster("chat", ClusterProtocol::default(), &[upstream]));
    b.yaml()
}

/// websocat at both ends, as docs/websocket.md has a user try it: `websocat ws-l:… mirror:`
/// as the WebSocket server behind an HTTP/1.1 listener, `websocat -1` as the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocat_client_and_server_through_an_http1_listener() {
    if !ws_peers_available("websocat_client_and_server_through_an_http1_listener") {
        return;
    }
    within(LIMIT, async {
        let server = WebsocatEcho::start().await;
        let listen = listen_addr();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let proxy = Proxy::start(&default_route_config(listen, server.addr, &log));

        for msg in ["hello websocat server\n", "and again\n"] {
            let (ok, out) = websocat_once(format!("ws://{listen}/chat/room"), msg).await;
            assert!(ok, "websocat failed: {out}\n{}", proxy.logs());
            assert_eq!(out.trim(), msg.trim());
        }

        let lines = access_log_lines(&log, 2).await;
        for line in &lines {
            assert_eq!(line["status"], 101, "{line}");
            assert_eq!(line["route"], "chat", "{line}");
            assert_eq!(line["path"], "/chat/room", "{line}");
            assert!(line["bytes_sent"].as_u64().unwrap() > 0, "the echo came back: {line}");
        }
        let upgrades = wait_metric(
            &proxy,
            "trellis_upgrades_total",
            &[("listener", "in"), ("protocol", "websocket")],
            |v| v >= 2.0,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(upgrades, Some(2.0));
    })
    .await;
}

/// A quiet WebSocket stays open on the default route settings (no `idle_timeout`): 61 s
/// without a byte either way from the moment it opens — past the 60 s default that bounds
/// a response — and then a message still echoes. (A stream's default idle timeout is 300 s,
/// as Envoy's stream idle timeout; with 60 s the proxy would have cut it at 60 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_outlives_a_minute_on_default_route_settings() {
    if !ws_peers_available("an_idle_websocket_outlives_a_minute_on_default_route_settings") {
        return;
    }
    within(Duration::from_secs(100), async {
        let server = WebsocatEcho::start().await;
        let listen = listen_addr();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let proxy = Proxy::start(&default_route_config(listen, server.addr, &log));

        let plan = serde_json::json!({
            "url": format!("ws://{listen}/chat"),
            "steps": [
                {"sleep": 61.0},
                {"text": "after a quiet minute"},
                {"close": true},
            ],
        });
        let answer = ws_client(plan, 90).await;
        assert_eq!(answer["ok"], true, "{answer}\n{}", proxy.logs());
        assert_eq!(answer["echoes"][0]["same"], true, "{answer}");
        // websocat answers a close with a close frame without a code (1005), which came
        // through: not an abnormal end (1006).
        assert_eq!(answer["close_code"], 1005, "{answer}");

        let lines = access_log_lines(&log, 1).await;
        assert_eq!(lines[0]["status"], 101, "{}", lines[0]);
        assert!(lines[0]["duration_ms"].as_f64().unwrap() >= 61_000.0, "{}", lines[0]);
        assert!(lines[0].get("error").is_none_or(serde_json::Value::is_null), "not cut: {}", lines[0]);
    })
    .await;
}

/// A client WebSocket frame (FIN, masked as RFC 6455 §5.3 requires of clients).
fn client_frame(opcode: u8, payload: &[u8]) -> bytes::Bytes {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    bytes::Bytes::from(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect_reaches_an_http1_websocket_server() {
    if !ws_peers_available("websocket_over_http2_extended_connect_reaches_an_http1_websocket_server") {
        return;
    }
    within(LIMIT, async {
        let echo = WsEcho::start();
        let plain = Origin::echo("plain").await;
        let listen = listen_addr();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let proxy = Proxy::start(&config(listen, echo.addr, echo.addr, plain.addr, &log));

        let tcp = TcpStream::connect(listen).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.unwrap();
        // The server's SETTINGS announce extended CONNECT (RFC 8441 §3).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !client.is_extended_connect_protocol_enabled() {
            assert!(Instant::now() < deadline, "no SETTINGS_ENABLE_CONNECT_PROTOCOL");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut req = http::Request::builder()
            .method("CONNECT")
            .uri(format!("http://{listen}/ws"))
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        req.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
        let (resp, mut send) = client.send_request(req, false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200, "{resp:?}\n{}", proxy.logs());
        let mut recv = resp.into_body();

        // Reads server frames off the stream until `n` bytes came.
        async fn read_n(recv: &mut h2::RecvStream, n: usize) -> Vec<u8> {
            let mut got = Vec::new();
            while got.len() < n {
                let chunk = recv.data().await.expect("stream open").unwrap();
                let _ = recv.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
            got
        }
        send.send_data(client_frame(0x1, b"hello over h2"), false).unwrap();
        let mut expect = vec![0x81, 13];
        expect.extend_from_slice(b"hello over h2");
        assert_eq!(read_n(&mut recv, expect.len()).await, expect, "the echo server's unmasked text frame");

        // The close handshake: the server answers 1000 and closes, which ends the stream.
        send.send_data(client_frame(0x8, &[0x03, 0xe8]), false).unwrap();
        assert_eq!(read_n(&mut recv, 4).await, [0x88, 2, 0x03, 0xe8]);
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            // END_STREAM may come on an empty DATA frame.
            loop {
                match recv.data().await {
                    Some(Ok(b)) if b.is_empty() => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the stream ends");
        assert!(end.is_none(), "END_STREAM after the close: {end:?}");
        // The client ends its side too, which ends the tunnel (and writes its log line).
        send.send_data(bytes::Bytes::new(), true).unwrap();

        let lines = access_log_lines(&log, 1).await;
        assert_eq!(lines[0]["status"], 101, "{}", lines[0]);
        assert_eq!(lines[0]["protocol"], "HTTP/2", "{}", lines[0]);
        let upgrades = wait_metric(
            &proxy,
            "trellis_upgrades_total",
            &[("listener", "in"), ("protocol", "websocket")],
            |v| v >= 1.0,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(upgrades, Some(1.0));
    })
    .await;
}

/// A TCP echo server (what a CONNECT tunnel reaches).
async fn tcp_echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

/// Two listeners on one route to `echo` by host `db.internal`: `tunnels` carries CONNECT to
/// ports 443 and 8443, `plain` has no `connect`; access log at `log`.
fn connect_config(tunnels: SocketAddr, plain: SocketAddr, echo: SocketAddr, log: &std::path::Path) -> String {
    let mut b = logged(log);
    let mut l = config::listener("tunnels", tunnels, &["db"]);
    (l.connect, l.connect_ports) = (true, Some(vec![443, 8443]));
    b.listeners.push(l);
    b.listeners.push(config::listener("plain", plain, &["db"]));
    b.routes.push(Route { idle_timeout: Some(config::ms(2000)), ..config::host_route("db", "db.internal", "db") });
    b.clusters.push(config::cluster("db", ClusterProtocol::default(), &[echo]));
    b.yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_only_on_connect_listeners_and_only_to_allowed_ports() {
    within(LIMIT, async {
        let (echo, _echo) = tcp_echo_server().await;
        let (tunnels, plain) = (listen_addr(), listen_addr());
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let proxy = Proxy::start(&connect_config(tunnels, plain, echo, &log));
        let connect = |port: u16| format!("CONNECT db.internal:{port} HTTP/1.1\r\nhost: db.internal:{port}\r\n\r\n");

        // An allowed port: 200, then bytes both ways, the client's first bytes sent with
        // the request included.
        let mut s = TcpStream::connect(tunnels).await.unwrap();
        s.write_all(format!("{}early ", connect(443)).as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", proxy.logs());
        assert!(!head.to_ascii_lowercase().contains("content-length"), "no framing on a CONNECT 2xx: {head}");
        s.write_all(b"bytes through the tunnel").await.unwrap();
        let mut got = vec![0u8; "early bytes through the tunnel".len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"early bytes through the tunnel");
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty());

        // A port not allowed: 403 with the reason; a listener without `connect`: 405.
        for (addr, port, status, reason) in
            [(tunnels, 22, "403", "connect port not allowed"), (plain, 443, "405", "connect not allowed")]
        {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(connect(port).as_bytes()).await.unwrap();
            let head = read_head(&mut s).await;
            assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
            assert!(head.contains(&format!("x-trellis-error: {reason}")), "{head}");
        }

        let lines = access_log_lines(&log, 3).await;
        let ok = lines.iter().find(|l| l["status"] == 200).expect("the tunnel's line");
        assert_eq!(ok["method"], "CONNECT", "{ok}");
        assert_eq!(ok["bytes_sent"], 30, "{ok}");
        let upgrades = metric_value(
            &blocking(|| proxy.metrics()),
            "trellis_upgrades_total",
            &[("listener", "tunnels"), ("protocol", "connect")],
        );
        assert_eq!(upgrades, Some(1.0));
        // Still serving.
        let mut s = TcpStream::connect(tunnels).await.unwrap();
        s.write_all(connect(8443).as_bytes()).await.unwrap();
        assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    })
    .await;
}

/// An h2 client connection to `addr` (its driver spawned).
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.ready().await.unwrap()
}

/// A classic CONNECT over HTTP/2 (RFC 9113 §8.5: `:method CONNECT` and `:authority` only).
fn h2_connect(authority: &str) -> http::Request<()> {
    // The h2 crate sends an authority-form URI as `:authority` alone, no `:scheme`/`:path`.
    http::Request::builder().method("CONNECT").uri(authority).body(()).unwrap()
}

/// Reads DATA off `recv` until `n` bytes came.
async fn read_h2_n(recv: &mut h2::RecvStream, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let chunk = recv.data().await.expect("stream open").unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_over_http2_tunnels_with_the_same_port_rules() {
    within(LIMIT, async {
        let (echo, _echo) = tcp_echo_server().await;
        let (tunnels, plain) = (listen_addr(), listen_addr());
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let proxy = Proxy::start(&connect_config(tunnels, plain, echo, &log));

        // Two tunnels at once on one h2 connection, each its own stream of bytes.
        let mut client = h2_client(tunnels).await;
        let mut streams = Vec::new();
        for port in [443, 8443] {
            let (resp, send) = client.send_request(h2_connect(&format!("db.internal:{port}")), false).unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200, "{resp:?}\n{}", proxy.logs());
            assert!(resp.headers().get("content-length").is_none(), "no framing on a CONNECT 2xx: {resp:?}");
            streams.push((send, resp.into_body()));
            client = client.ready().await.unwrap();
        }
        for (i, (send, recv)) in streams.iter_mut().enumerate() {
            let msg = format!("bytes through tunnel {i}");
            send.send_data(bytes::Bytes::from(msg.clone()), false).unwrap();
            assert_eq!(read_h2_n(recv, msg.len()).await, msg.as_bytes());
        }
        // 1 MiB through one tunnel and back: flow control both ways.
        let (send, recv) = &mut streams[0];
        let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        let write = async {
            for chunk in big.chunks(16 * 1024) {
                send.reserve_capacity(chunk.len());
                while std::future::poll_fn(|cx| send.poll_capacity(cx)).await.expect("stream open").unwrap()
                    < chunk.len()
                {}
                send.send_data(bytes::Bytes::copy_from_slice(chunk), false).unwrap();
            }
        };
        let (_, echoed) = tokio::join!(write, read_h2_n(recv, big.len()));
        assert!(echoed == big, "1 MiB echoed whole and in order");
        // The client ends its side: the echo server closes, the stream ends.
        for (mut send, mut recv) in streams {
            send.send_data(bytes::Bytes::new(), true).unwrap();
            let end = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match recv.data().await {
                        Some(Ok(b)) if b.is_empty() => continue,
                        other => return other,
                    }
                }
            })
            .await
            .expect("the tunnel ends");
            assert!(end.is_none(), "END_STREAM after the client's: {end:?}");
        }

        // A port not allowed: 403 with the reason; a listener without `connect`: 405.
        for (addr, port, status, reason) in
            [(tunnels, 22, 403, "connect port not allowed"), (plain, 443, 405, "connect not allowed")]
        {
            let mut client = h2_client(addr).await;
            let (resp, _send) = client.send_request(h2_connect(&format!("db.internal:{port}")), false).unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), status, "{resp:?}");
            assert_eq!(resp.headers()["x-trellis-error"], reason, "{resp:?}");
        }

        let lines = access_log_lines(&log, 4).await;
        let ok: Vec<_> = lines.iter().filter(|l| l["status"] == 200).collect();
        assert_eq!(ok.len(), 2, "{lines:?}");
        assert!(ok.iter().all(|l| l["method"] == "CONNECT" && l["protocol"] == "HTTP/2"), "{ok:?}");
        let upgrades = metric_value(
            &blocking(|| proxy.metrics()),
            "trellis_upgrades_total",
            &[("listener", "tunnels"), ("protocol", "connect")],
        );
        assert_eq!(upgrades, Some(2.0));
    })
    .await;
}

/// Reads until the peer closes (EOF or reset); returns when that happened.
async fn closed_at(s: &mut TcpStream) -> Instant {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

/// Drain with tunnels open: a WebSocket (HTTP/1.1 upgrade) and a CONNECT over HTTP/2 to
/// peers that never close and a route idle timeout far longer than the drain. The tunnels
/// are opaque byte streams (no close frame is sent): they keep carrying bytes while the
/// proxy drains and are cut at the drain deadline, and the process exits then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_cuts_upgraded_streams_at_the_deadline() {
    within(LIMIT, async {
        let (silent, _silent) = silent_upstream().await;
        let (echo, _echo) = tcp_echo_server().await;
        let listen = listen_addr();
        let mut b = Bootstrap { drain_timeout: Some(config::ms(2000)), ..config::bootstrap() };
        b.listeners.push(config::Listener { connect: true, ..config::listener("in", listen, &["db", "ws"]) });
        let idle = Some(config::ms(60_000));
        b.routes.push(Route { idle_timeout: idle, ..config::host_route("db", "db.internal", "db") });
        b.routes.push(Route { idle_timeout: idle, ..config::route("ws", "/ws", "ws") });
        b.clusters.push(config::cluster("db", ClusterProtocol::default(), &[echo]));
        b.clusters.push(config::cluster("ws", ClusterProtocol::default(), &[silent]));
        let yaml = b.yaml();
        let mut proxy = Proxy::start(&yaml);

        let mut ws = TcpStream::connect(listen).await.unwrap();
        ws.write_all(upgrade_head("/ws").as_bytes()).await.unwrap();
        assert!(read_head(&mut ws).await.starts_with("HTTP/1.1 101"));
        let mut client = h2_client(listen).await;
        let (resp, mut send) = client.send_request(h2_connect("db.internal:443"), false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200, "{resp:?}");
        let mut recv = resp.into_body();

        proxy.signal("TERM");
        let asked = Instant::now();
        // While draining (the listener no longer accepts), the tunnel still carries bytes.
        assert!(wait_refused(listen, Duration::from_secs(5)).await.is_some(), "still accepting after TERM");
        send.send_data(bytes::Bytes::from_static(b"still open"), false).unwrap();
        assert_eq!(read_h2_n(&mut recv, 10).await, b"still open");
        ws.write_all(b"\x81\x80\0\0\0\0").await.unwrap();

        let ws_closed = closed_at(&mut ws).await;
        let tunnel_closed = async {
            loop {
                match recv.data().await {
                    Some(Ok(b)) => {
                        let _ = recv.flow_control().release_capacity(b.len());
                    }
                    _ => return Instant::now(),
                }
            }
        }
        .await;
        for (what, at) in [("websocket", ws_closed), ("h2 CONNECT", tunnel_closed)] {
            let after = at - asked;
            assert!(after >= Duration::from_millis(1500), "{what} closed {after:?} after TERM: before the deadline");
            assert!(after <= Duration::from_secs(6), "{what} closed {after:?} after TERM: held past the deadline");
        }
        let status = blocking(|| proxy.wait_exit(Duration::from_secs(5)));
        assert!(status.is_some(), "the proxy exits after its drain: {}", proxy.logs());
    })
    .await;
}

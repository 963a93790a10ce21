//! Bad input on an HTTP/3 listener, against the real binary: garbage UDP datagrams, a
//! client that opens 10,000 streams (politely, then past the server's limit), and streams
//! whose request head never completes. Each gets QUIC's or HTTP/3's answer, the proxy's
//! memory stays bounded, and it keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::Yaml;
use trellis_testkit::*;

use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const EDGE: &str = "spiffe://trellis.local/ns/edge/sa/edge";

fn edge_yaml(listen: SocketAddr, cert: &(std::path::PathBuf, std::path::PathBuf), app: SocketAddr) -> String {
    let mut b = h3_edge(listen, std::slice::from_ref(cert), app);
    b.listeners[0].header_timeout = Some(trellis_testkit::config::ms(1000));
    b.yaml()
}

/// One GET on a fresh connection: its status.
async fn get_status(edge: SocketAddr, pki: &Pki) -> serde_json::Value {
    let got =
        h3_client(h3_plan(edge, "edge.test", Some(&pki.bundle()), json!([{ "requests": [{ "path": "/ok" }] }]))).await;
    got["connections"][0]["responses"][0]["status"].clone()
}

fn rss_kib(proxy: &Proxy) -> u64 {
    proc_status_kib(proxy.child.id(), "VmRSS")
}

/// A QUIC long-header packet (RFC 9000 §17.2) with `version`, random connection IDs and
/// `len` bytes in all.
fn long_header(version: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0xc0];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(8);
    p.extend((0..8).map(|_| fastrand::u8(..)));
    p.push(8);
    p.extend((0..8).map(|_| fastrand::u8(..)));
    while p.len() < len {
        p.push(fastrand::u8(..));
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_are_dropped_or_answered_by_the_protocol() {
    with_h3_client("garbage_datagrams_are_dropped_or_answered_by_the_protocol", Duration::from_secs(60), async {
        let pki = Pki::new();
        let cert = pki.issue("edge", EDGE, &["edge.test"]);
        let app = Origin::echo("app").await;
        let edge = listen_addr();
        let proxy = Proxy::start(&edge_yaml(edge, &cert, app.addr));
        assert_eq!(get_status(edge, &pki).await, 200);
        let before = rss_kib(&proxy);

        // An unknown version gets Version Negotiation (RFC 9000 §6): version 0, listing 1.
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.send_to(&long_header(0x1a2a_3a4a, 1200), edge).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = sock.recv_from(&mut buf).expect("a Version Negotiation packet");
        assert!(n >= 7 && buf[0] & 0x80 != 0, "{:?}", &buf[..n]);
        assert_eq!(&buf[1..5], &[0, 0, 0, 0], "version 0: Version Negotiation");
        let versions: Vec<&[u8]> = buf[..n].rchunks(4).collect();
        assert!(versions.contains(&&[0u8, 0, 0, 1][..]), "QUIC v1 offered: {:?}", &buf[..n]);

        // A short-header packet with a made-up connection ID is dropped unanswered (quinn's
        // IDs carry a keyed hash: only one it could have issued would get a stateless reset).
        let mut p = vec![0x40 | fastrand::u8(..0x3f)];
        p.extend((1..100).map(|_| fastrand::u8(..)));
        sock.send_to(&p, edge).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        assert!(sock.recv_from(&mut buf).is_err(), "answered a made-up connection ID");

        // 20,000 datagrams of noise: random bytes, Initials that do not decrypt, short
        // headers for connections that do not exist, tiny and oversized ones.
        blocking(|| {
            let socks: Vec<UdpSocket> = (0..8).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
            for i in 0..20_000usize {
                let len = [1, 20, 64, 600, 1200, 1350, 1452][i % 7];
                let p: Vec<u8> = match i % 4 {
                    0 => (0..len).map(|_| fastrand::u8(..)).collect(),
                    1 => long_header(1, len.max(1200)),
                    2 => std::iter::once(0x40).chain((1..len).map(|_| fastrand::u8(..))).collect(),
                    _ => long_header(0xff00_001d, len),
                };
                let _ = socks[i % socks.len()].send_to(&p, edge);
                if i % 500 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        // Still serving, and the noise left nothing behind.
        assert_eq!(get_status(edge, &pki).await, 200, "{}", log_tail(&proxy, 20));
        let after = rss_kib(&proxy);
        assert!(after < before + 16 * 1024, "RSS grew from {before} KiB to {after} KiB");
        let open = wait_metric(
            &proxy,
            "trellis_http3_connections",
            &[("listener", "edge")],
            |v| v == 0.0,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(open, Some(0.0), "no connection was made of the noise");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_are_held_to_the_stream_limit() {
    with_h3_client("ten_thousand_streams_are_held_to_the_stream_limit", Duration::from_secs(90), async {
        let pki = Pki::new();
        let cert = pki.issue("edge", EDGE, &["edge.test"]);
        let app = Origin::echo("app").await;
        let edge = listen_addr();
        let proxy = Proxy::start(&edge_yaml(edge, &cert, app.addr));
        assert_eq!(get_status(edge, &pki).await, 200);
        let before = rss_kib(&proxy);

        // A client that respects MAX_STREAMS: 10,000 requests on one connection, each
        // stream opened as soon as the server's limit lets it (100 at a time), all answered.
        let mut plan =
            h3_plan(edge, "edge.test", Some(&pki.bundle()), json!([{ "flood": 10_000, "flood_path": "/f" }]));
        plan["timeout"] = json!(60);
        let got = h3_client(plan).await;
        let flood = &got["connections"][0]["flood"];
        assert_eq!(flood["statuses"]["200"], 10_000, "{got}");
        assert_eq!(flood["unanswered"], 0, "{got}");
        let polite = rss_kib(&proxy);

        // One that ignores it and opens all 10,000 at once (a frame on stream 39,996 opens
        // every lower one): a connection error, STREAM_LIMIT_ERROR (RFC 9000 §4.6), and
        // nothing of it is kept.
        let plan = h3_plan(
            edge,
            "edge.test",
            Some(&pki.bundle()),
            json!([{ "flood": 10_000, "flood_path": "/f", "ignore_stream_limit": true }]),
        );
        let got = h3_client(plan).await;
        let conn = &got["connections"][0];
        assert_eq!(conn["closed"]["error_code"], 0x4, "{got}");
        assert_eq!(get_status(edge, &pki).await, 200, "{}", log_tail(&proxy, 20));
        let after = rss_kib(&proxy);
        // The bound: 100 streams at a time, whatever the client asks for. 10,000 held
        // requests would take far more.
        assert!(polite < before + 24 * 1024, "10,000 polite streams: RSS {before} -> {polite} KiB");
        assert!(after < before + 24 * 1024, "abusive streams: RSS {before} -> {after} KiB");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_that_never_complete_are_ended_after_the_header_timeout() {
    with_h3_client(
        "request_heads_that_never_complete_are_ended_after_the_header_timeout",
        Duration::from_secs(60),
        async {
            let pki = Pki::new();
            let cert = pki.issue("edge", EDGE, &["edge.test"]);
            let app = Origin::echo("app").await;
            let edge = listen_addr();
            let _proxy = Proxy::start(&edge_yaml(edge, &cert, app.addr));

            // 100 streams (the whole allowance) stuck in a HEADERS frame: after the listener's
            // 1 s header_timeout each is ended, freeing its slot, and a request on the same
            // connection is served.
            let got = h3_client(h3_plan(
                edge,
                "edge.test",
                Some(&pki.bundle()),
                json!([{ "partial_heads": 100, "requests": [{ "path": "/after" }] }]),
            ))
            .await;
            let conn = &got["connections"][0];
            assert!(conn["partial"].get("None").is_none(), "streams left open: {got}");
            assert_eq!(conn["responses"][0]["status"], 200, "{got}");
        },
    )
    .await;
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test file uses part of the shared helpers and imports.
#![allow(dead_code, unused_imports)]
//! The HTTP request path end to end, through the real `trellis` binary over real sockets:
//! protocol translation, routing, weighted splits, header rules and proxy header semantics.

use trellis_testkit::config::{self, Bootstrap, ClusterProtocol, LbPolicy, Route, RouteMatch, Yaml};
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
// Protocols
// ---------------------------------------------------------------------------------------------

/// Every downstream protocol (HTTP/1.1, h2c) to every cluster protocol (http1, http2, auto):
/// the origin sees the version the cluster asks for (`auto`: HTTP/1.1, as nothing says the
/// origin speaks h2, DESIGN §11), the client gets its own version back,
/// the host survives the translation (Host ↔ :authority), and request bodies arrive whole.
#[tokio::test]
async fn protocol_matrix_h1_h2c_to_http1_http2_auto() {
    within(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&versions_config(listen, origin.addr));
        for h2 in [false, true] {
            let mut c = client(listen, h2).await;
            for (prefix, upstream) in [("/h1", "HTTP/1.1"), ("/h2", "HTTP/2.0"), ("/auto", "HTTP/1.1")] {
                let ctx = format!("{} → {prefix}", proto_name(h2));
                let resp = c.send(get(&format!("{prefix}/x?q=1"), "svc.test:8080", h2).body(full("")).unwrap()).await;
                let resp = resp.unwrap_or_else(|e| panic!("{ctx}: {e}; logs: {}", log_tail(&proxy, 20)));
                assert_eq!(resp.version(), if h2 { Version::HTTP_2 } else { Version::HTTP_11 }, "{ctx}");
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(j["version"], upstream, "{ctx}: {j}");
                assert_eq!(j["path"], format!("{prefix}/x?q=1"), "{ctx}");
                // Host preserved: HTTP/1.1 upstreams get it as Host, h2 upstreams as :authority.
                let seen_host = j["authority"].as_str().or(j["host"].as_str());
                assert_eq!(seen_host, Some("svc.test:8080"), "{ctx}: {j}");
                if upstream == "HTTP/1.1" {
                    assert_eq!(j["host"], "svc.test:8080", "{ctx}: {j}");
                }

                // A request body crosses the version change intact.
                let payload = vec![b'z'; 100_000];
                let got = c
                    .fetch(
                        req(Method::POST, &format!("{prefix}/upload"), "svc.test:8080", h2)
                            .header("content-type", "application/octet-stream")
                            .body(full(payload))
                            .unwrap(),
                    )
                    .await;
                assert_eq!(got.status, 200, "{ctx} POST");
                let j = got.json();
                assert_eq!(j["method"], "POST", "{ctx}");
                assert_eq!(j["body_len"], 100_000, "{ctx}: {j}");
                assert_eq!(j["version"], upstream, "{ctx}");
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

fn routing_config(listen: SocketAddr, origins: &HashMap<&'static str, Origin>) -> String {
    let matching = |name: &str, m: RouteMatch| Route { matches: m, ..config::route(name, "/", name) };
    let host = |h: &str| RouteMatch { host: Some(h.into()), ..Default::default() };
    let routes = vec![
        matching("exact-host", host("api.example.com")),
        matching("suffix-host", host("*.example.com")),
        matching("canary", RouteMatch { headers: [("X-Canary".into(), "1".into())].into(), ..Default::default() }),
        matching("path-exact", RouteMatch { path: Some("/exact".into()), ..Default::default() }),
        matching(
            "methods",
            RouteMatch {
                path_prefix: Some("/m".into()),
                methods: vec!["post".into(), "PUT".into()],
                ..Default::default()
            },
        ),
        matching("prefix", RouteMatch { path_prefix: Some("/api".into()), ..Default::default() }),
        matching("any-host", RouteMatch { path_prefix: Some("/any".into()), ..host("*") }),
    ];
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    Bootstrap {
        listeners: vec![config::listener("in", listen, &names)],
        clusters: origins
            .iter()
            .map(|(name, o)| config::cluster(name, ClusterProtocol::default(), &[o.addr]))
            .collect(),
        routes,
        ..config::bootstrap()
    }
    .yaml()
}

/// (method, host, path, extra header, expected origin or `None` for a 404).
type RouteCase = (&'static str, &'static str, &'static str, Option<(&'static str, &'static str)>, Option<&'static str>);

/// Host exact / `*.suffix` / `*`, path exact / prefix, header and method matches, first
/// match wins, and no match → 404 `x-trellis-error: no route` — over HTTP/1.1 and h2c.
#[tokio::test]
async fn routing_matrix() {
    within(LIMIT, async {
        let mut origins = HashMap::new();
        for name in ["exact-host", "suffix-host", "canary", "path-exact", "methods", "prefix", "any-host"] {
            origins.insert(name, echo(name).await);
        }
        let listen = listen_addr();
        let proxy = Proxy::start(&routing_config(listen, &origins));

        let cases: &[RouteCase] = &[
            ("GET", "api.example.com", "/zzz", None, Some("exact-host")),
            // Case-insensitive, port ignored, and first match wins over path-exact.
            ("GET", "API.Example.COM:8080", "/exact", None, Some("exact-host")),
            ("GET", "foo.example.com", "/zzz", None, Some("suffix-host")),
            ("GET", "a.b.example.com", "/api/x", None, Some("suffix-host")),
            ("GET", "example.com", "/zzz", None, None),
            ("GET", "notexample.com", "/zzz", None, None),
            ("GET", "other.test", "/zzz", Some(("x-canary", "1")), Some("canary")),
            ("GET", "other.test", "/zzz", Some(("x-canary", "2")), None),
            ("GET", "foo.example.com", "/zzz", Some(("x-canary", "1")), Some("suffix-host")),
            ("GET", "other.test", "/exact", Some(("x-canary", "1")), Some("canary")),
            ("GET", "other.test", "/exact", None, Some("path-exact")),
            ("GET", "other.test", "/exact?q=1", None, Some("path-exact")),
            ("GET", "other.test", "/exact/sub", None, None),
            ("GET", "other.test", "/exactly", None, None),
            ("POST", "other.test", "/m/x", None, Some("methods")),
            ("PUT", "other.test", "/m", None, Some("methods")),
            ("GET", "other.test", "/m", None, None),
            ("DELETE", "other.test", "/m", None, None),
            ("GET", "other.test", "/api", None, Some("prefix")),
            ("GET", "other.test", "/api/v1/x", None, Some("prefix")),
            ("GET", "other.test", "/apix", None, Some("prefix")),
            ("POST", "other.test", "/api/m", None, Some("prefix")),
            ("GET", "other.test", "/ap", None, None),
            ("GET", "anything.else", "/any/thing", None, Some("any-host")),
            ("GET", "127.0.0.1", "/", None, None),
        ];
        let mut misses = 0;
        for h2 in [false, true] {
            let mut c = client(listen, h2).await;
            for (method, host, path, header, want) in cases {
                let ctx = format!("{} {method} {host}{path} {header:?}", proto_name(h2));
                let mut b = req(Method::from_bytes(method.as_bytes()).unwrap(), path, host, h2);
                if let Some((k, v)) = header {
                    b = b.header(*k, *v);
                }
                let got = c.fetch(b.body(full("")).unwrap()).await;
                match want {
                    Some(origin) => {
                        assert_eq!(got.status, 200, "{ctx}: {}", got.text());
                        assert_eq!(got.header("x-origin"), Some(*origin), "{ctx}");
                        assert_eq!(got.json()["path"], *path, "{ctx}");
                    }
                    None => {
                        assert_proxy_error(&got, 404, "no route", &ctx);
                        misses += 1;
                    }
                }
            }
        }
        // Unmatched requests are counted on the listener with empty route/cluster labels.
        let m = proxy.metrics();
        let no_route = metric_value(
            &m,
            "trellis_requests_total",
            &[("listener", "in"), ("route", ""), ("cluster", ""), ("code", "404")],
        );
        assert_eq!(no_route, Some(f64::from(misses)), "{m}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Load balancing
// ---------------------------------------------------------------------------------------------

/// A route split 80/20 between two clusters lands within 80% ± 5% over 1000 requests, and
/// the per-cluster request counters agree with what the origins saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_backend_split() {
    within(LIMIT, async {
        let a = echo("a").await;
        let b = echo("b").await;
        let listen = listen_addr();
        let mut split = config::bootstrap();
        split.listeners.push(config::listener("in", listen, &["split"]));
        let mut r = config::route("split", "/", "a");
        r.matches = config::RouteMatch::default();
        r.backends = vec![
            config::Backend { cluster: "a".into(), weight: 80 },
            config::Backend { cluster: "b".into(), weight: 20 },
        ];
        split.routes.push(r);
        split.clusters.push(config::cluster("a", config::ClusterProtocol::Auto, &[a.addr]));
        split.clusters.push(config::cluster("b", config::ClusterProtocol::Auto, &[b.addr]));
        let proxy = Proxy::start(&split.yaml());
        const N: usize = 1000;
        let mut tasks = Vec::new();
        for w in 0..4 {
            tasks.push(tokio::spawn(async move {
                let mut c = client(listen, w % 2 == 1).await;
                let mut counts = HashMap::<String, usize>::new();
                for _ in 0..N / 4 {
                    let got = c.get("/split").await;
                    assert_eq!(got.status, 200);
                    *counts.entry(got.header("x-origin").unwrap().to_owned()).or_default() += 1;
                }
                counts
            }));
        }
        let mut counts = HashMap::<String, usize>::new();
        for t in tasks {
            for (k, v) in t.await.unwrap() {
                *counts.entry(k).or_default() += v;
            }
        }
        let na = counts.get("a").copied().unwrap_or(0);
        let nb = counts.get("b").copied().unwrap_or(0);
        assert_eq!(na + nb, N, "{counts:?}");
        let share = na as f64 / N as f64;
        assert!((0.75..=0.85).contains(&share), "cluster a got {share:.3} of requests, want 0.80 ± 0.05: {counts:?}");

        let m = proxy.metrics();
        let count = |cluster: &str| {
            metric_value(
                &m,
                "trellis_requests_total",
                &[("listener", "in"), ("route", "split"), ("cluster", cluster), ("code", "200")],
            )
        };
        assert_eq!(count("a"), Some(na as f64), "{m}");
        assert_eq!(count("b"), Some(nb as f64), "{m}");
    })
    .await;
}

/// Endpoint weights 3:1:2 under `lb: round_robin` are exact over every cycle of 6 requests.
#[tokio::test]
async fn round_robin_endpoint_weights_are_exact() {
    within(LIMIT, async {
        let e1 = echo("e1").await;
        let e2 = echo("e2").await;
        let e3 = echo("e3").await;
        let listen = listen_addr();
        let mut rr = config::cluster("rr", ClusterProtocol::default(), &[]);
        rr.lb = LbPolicy::RoundRobin;
        rr.endpoints = [(e1.addr, 3), (e2.addr, 1), (e3.addr, 2)]
            .into_iter()
            .map(|(a, weight)| config::Endpoint { weight, ..config::endpoint(a) })
            .collect();
        let b = Bootstrap {
            listeners: vec![config::listener("in", listen, &["all"])],
            routes: vec![Route { matches: RouteMatch::default(), ..config::route("all", "/", "rr") }],
            clusters: vec![rr],
            ..config::bootstrap()
        };
        let _proxy = Proxy::start(&b.yaml());
        let mut c = Client::h1(listen).await;
        let mut seq = Vec::new();
        for _ in 0..60 {
            let got = c.get("/").await;
            assert_eq!(got.status, 200);
            seq.push(got.header("x-origin").unwrap().to_owned());
        }
        for (i, window) in seq.windows(6).enumerate() {
            let n = |name: &str| window.iter().filter(|s| *s == name).count();
            assert_eq!((n("e1"), n("e2"), n("e3")), (3, 1, 2), "window at {i}: {window:?} (whole sequence {seq:?})");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

/// An origin that answers with the request's fields as JSON, each name's lines joined with
/// ", " (so a field sent twice shows), and a few response fields for rules to act on.
async fn joined_fields_origin() -> Origin {
    Origin::start(|req: Request<Incoming>| async move {
        let seen: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .keys()
            .map(|k| {
                let all: Vec<&str> = req.headers().get_all(k).iter().map(|v| v.to_str().unwrap()).collect();
                (k.to_string(), all.join(", ").into())
            })
            .collect();
        Response::builder()
            .header("x-origin-secret", "s3cr3t")
            .header("x-origin-kept", "yes")
            .header("x-served-by", "origin")
            .body(full(serde_json::Value::Object(seen).to_string()))
            .unwrap()
    })
    .await
}

/// Route `headers` rules shape what the upstream sees; `response_headers` what the client sees.
#[tokio::test]
async fn route_header_rules() {
    within(LIMIT, async {
        let origin = joined_fields_origin().await;
        let listen = listen_addr();
        let mut rules = Route { matches: RouteMatch::default(), ..config::route("rules", "/", "origin") };
        rules.headers.add = [("x-mesh".into(), "trellis".into()), ("X-Override".into(), "new".into())].into();
        rules.headers.remove = vec!["X-Internal".into()];
        rules.response_headers.add = [("x-served-by".into(), "trellis".into())].into();
        rules.response_headers.remove = vec!["x-origin-secret".into()];
        let b = Bootstrap {
            listeners: vec![config::listener("in", listen, &["rules"])],
            routes: vec![rules],
            clusters: vec![config::cluster("origin", ClusterProtocol::default(), &[origin.addr])],
            ..config::bootstrap()
        };
        let _proxy = Proxy::start(&b.yaml());
        for h2 in [false, true] {
            let mut c = client(listen, h2).await;
            let got = c
                .fetch(
                    get("/", "svc.test", h2)
                        .header("x-internal", "one")
                        .header("x-internal", "two")
                        .header("x-override", "old")
                        .header("x-untouched", "same")
                        .body(full(""))
                        .unwrap(),
                )
                .await;
            let ctx = proto_name(h2);
            assert_eq!(got.status, 200, "{ctx}");
            let seen = got.json();
            assert_eq!(seen["x-mesh"], "trellis", "{ctx}: {seen}");
            assert_eq!(seen["x-override"], "new", "{ctx}: add replaces: {seen}");
            assert!(seen.get("x-internal").is_none(), "{ctx}: every x-internal removed: {seen}");
            assert_eq!(seen["x-untouched"], "same", "{ctx}");
            assert_eq!(got.header("x-served-by"), Some("trellis"), "{ctx}");
            assert_eq!(got.headers.get_all("x-served-by").iter().count(), 1, "{ctx}");
            assert!(got.header("x-origin-secret").is_none(), "{ctx}");
            assert_eq!(got.header("x-origin-kept"), Some("yes"), "{ctx}");
        }
    })
    .await;
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) stop at the proxy in both directions; `TE: trailers`
/// is kept.
#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    within(LIMIT, async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
            let seen: serde_json::Map<String, serde_json::Value> =
                req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").into())).collect();
            Response::builder()
                .header("connection", "x-resp-hop")
                .header("x-resp-hop", "1")
                .header("keep-alive", "timeout=9")
                .header("proxy-connection", "keep-alive")
                .header("upgrade", "foo")
                .header("x-resp-e2e", "1")
                .body(full(serde_json::Value::Object(seen).to_string()))
                .unwrap()
        })
        .await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Http1).yaml());

        let mut c = Client::h1(listen).await;
        let got = c
            .fetch(
                Request::get("/")
                    .header("connection", "keep-alive, x-secret-hop")
                    .header("x-secret-hop", "1")
                    .header("keep-alive", "timeout=5")
                    .header("proxy-connection", "keep-alive")
                    .header("upgrade", "websocket")
                    .header("te", "gzip")
                    .header("x-end-to-end", "yes")
                    .body(full(""))
                    .unwrap(),
            )
            .await;
        assert_eq!(got.status, 200, "{}", got.text());
        let seen = got.json();
        for h in ["connection", "keep-alive", "proxy-connection", "upgrade", "x-secret-hop", "te"] {
            assert!(seen.get(h).is_none(), "upstream saw hop-by-hop {h}: {seen}");
        }
        assert_eq!(seen["x-end-to-end"], "yes");
        for h in ["x-resp-hop", "keep-alive", "proxy-connection", "upgrade"] {
            assert!(got.header(h).is_none(), "client saw hop-by-hop response header {h}: {:?}", got.headers);
        }
        assert_eq!(got.header("x-resp-e2e"), Some("1"));

        // TE: trailers is end to end in practice (gRPC) and passes.
        let mut c = Client::h1(listen).await;
        let got = c.fetch(Request::get("/").header("te", "trailers").body(full("")).unwrap()).await;
        assert_eq!(got.json()["te"], "trailers");
    })
    .await;
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `x-forwarded-for` (set, or appended to), `x-forwarded-proto`, `x-request-id` and
/// `traceparent` (added when absent, kept when present), and `Host` preserved.
#[tokio::test]
async fn forwarding_headers() {
    within(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Auto).yaml());
        for h2 in [false, true] {
            let ctx = proto_name(h2);
            let mut c = client(listen, h2).await;

            let a = c.get_json(get("/", "svc.example:1234", h2)).await;
            let h = &a["headers"];
            assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{ctx}: {a}");
            assert_eq!(h["x-forwarded-proto"], "http", "{ctx}");
            let id = h["x-request-id"].as_str().expect("x-request-id added");
            assert_eq!(id.len(), 36, "{ctx}: uuid-shaped request id {id}");
            assert_eq!(id.split('-').map(str::len).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12], "{ctx}: {id}");
            let tp = h["traceparent"].as_str().expect("traceparent added");
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{ctx}: {tp}");
            assert_eq!(parts[0], "00", "{ctx}: {tp}");
            assert!(is_lower_hex(parts[1], 32) && parts[1] != "0".repeat(32), "{ctx}: trace id {tp}");
            assert!(is_lower_hex(parts[2], 16) && parts[2] != "0".repeat(16), "{ctx}: span id {tp}");
            assert!(is_lower_hex(parts[3], 2), "{ctx}: flags {tp}");
            assert_eq!(a["authority"].as_str().or(a["host"].as_str()), Some("svc.example:1234"), "{ctx}: host kept");
            if !h2 {
                assert_eq!(a["host"], "svc.example:1234", "{ctx}");
            }

            // A second request gets fresh ids.
            let b = c.get_json(get("/", "svc.example:1234", h2)).await;
            assert_ne!(b["headers"]["x-request-id"], a["headers"]["x-request-id"], "{ctx}");
            assert_ne!(b["headers"]["traceparent"], a["headers"]["traceparent"], "{ctx}");

            // Present values are kept; x-forwarded-for is appended to.
            let given_tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let k = c
                .get_json(
                    get("/", "svc.example:1234", h2)
                        .header("x-forwarded-for", "10.0.0.1")
                        .header("x-request-id", "my-id-123")
                        .header("traceparent", given_tp),
                )
                .await;
            assert_eq!(k["headers"]["x-forwarded-for"], "10.0.0.1, 127.0.0.1", "{ctx}: {k}");
            assert_eq!(k["headers"]["x-request-id"], "my-id-123", "{ctx}");
            assert_eq!(k["headers"]["traceparent"], given_tp, "{ctx}");
            // A client cannot claim https.
            let p = c.get_json(get("/", "svc.example", h2).header("x-forwarded-proto", "https")).await;
            assert_eq!(p["headers"]["x-forwarded-proto"], "http", "{ctx}: {p}");
        }
    })
    .await;
}

/// The fields the proxy adds go out once each, over HTTP/1.1 (written beside the request's
/// own fields) and HTTP/2 (entered in its map), including when a route's rules name them
/// and when the client listed one in `Connection`.
#[tokio::test]
async fn forwarding_fields_go_out_once_each() {
    within(LIMIT, async {
        let origin = joined_fields_origin().await;
        let listen = listen_addr();
        let plain = config::route("plain", "/plain", "h1");
        let mut ruled = config::route("ruled", "/ruled", "h2");
        ruled.headers.add = [("x-request-id".into(), "from-rule".into())].into();
        ruled.headers.remove = vec!["x-forwarded-proto".into()];
        let b = Bootstrap {
            listeners: vec![config::listener("in", listen, &["plain", "ruled"])],
            routes: vec![plain, ruled],
            clusters: vec![
                config::cluster("h1", ClusterProtocol::Http1, &[origin.addr]),
                config::cluster("h2", ClusterProtocol::Http2, &[origin.addr]),
            ],
            ..config::bootstrap()
        };
        let _proxy = Proxy::start(&b.yaml());
        for h2 in [false, true] {
            let ctx = proto_name(h2);
            let mut c = client(listen, h2).await;
            for path in ["/plain", "/ruled"] {
                let seen = c.fetch(get(path, "svc", h2).body(full("")).unwrap()).await.json();
                let once = |name: &str| seen[name].as_str().filter(|v| !v.contains(", ")).map(str::len);
                assert_eq!(once("x-trellis-hops"), Some(1), "{ctx} {path}: {seen}");
                assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{ctx} {path}: {seen}");
                assert_eq!(once("traceparent"), Some(55), "{ctx} {path}: {seen}");
                if path == "/plain" {
                    assert_eq!(once("x-request-id"), Some(36), "{ctx} {path}: {seen}");
                    assert_eq!(seen["x-forwarded-proto"], "http", "{ctx} {path}: {seen}");
                } else {
                    assert_eq!(seen["x-request-id"], "from-rule", "{ctx} {path}: the rule's value only: {seen}");
                    assert!(seen.get("x-forwarded-proto").is_none(), "{ctx} {path}: removed by the rule: {seen}");
                }
            }
            // Listed in `Connection`, the client's id is dropped and the proxy's own sent.
            let seen = c
                .fetch(
                    get("/plain", "svc", h2)
                        .header("x-request-id", "listed")
                        .header("x-trellis-hops", "1")
                        .body(full(""))
                        .map(|mut r| {
                            if !h2 {
                                r.headers_mut().insert("connection", "x-request-id".parse().unwrap());
                            }
                            r
                        })
                        .unwrap(),
                )
                .await
                .json();
            assert_eq!(seen["x-trellis-hops"], "2", "{ctx}: counted up in place: {seen}");
            if !h2 {
                let id = seen["x-request-id"].as_str().unwrap_or("");
                assert!(id.len() == 36 && !id.contains(", "), "{ctx}: the proxy's id, once: {seen}");
            }
        }
    })
    .await;
}

/// Several `x-forwarded-for` lines are one list (RFC 9110 §5.3); the proxy must append the
/// client's address to the whole chain, not to its first line only.
#[tokio::test]
async fn forwarded_for_with_several_lines_keeps_the_whole_chain() {
    within(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&config::simple(listen, origin.addr, config::ClusterProtocol::Auto).yaml());
        for h2 in [false, true] {
            let mut c = client(listen, h2).await;
            let j = c
                .get_json(
                    get("/", "svc", h2).header("x-forwarded-for", "10.0.0.1").header("x-forwarded-for", "10.0.0.2"),
                )
                .await;
            assert_eq!(
                j["headers"]["x-forwarded-for"],
                "10.0.0.1, 10.0.0.2, 127.0.0.1",
                "{}: {j}; logs: {}",
                proto_name(h2),
                log_tail(&proxy, 5)
            );
        }
    })
    .await;
}

trait GetJson {
    async fn get_json(&mut self, b: http::request::Builder) -> serde_json::Value;
}

impl GetJson for Client {
    async fn get_json(&mut self, b: http::request::Builder) -> serde_json::Value {
        let got = self.fetch(b.body(full("")).unwrap()).await;
        assert_eq!(got.status, 200, "{}", got.text());
        got.json()
    }
}

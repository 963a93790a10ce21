#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The HTTP request path end to end, through the real `trellis` binary over real sockets:
//! protocol translation, routing, weighted splits, header rules, proxy header semantics,
//! streaming (SSE, large uploads and downloads with bounded proxy memory), error responses,
//! listener limits, and the admin/metrics view of it all.

mod common;
use common::*;

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Origins and small helpers
// ---------------------------------------------------------------------------------------------

/// An echo origin that also reports the request's `:authority` and `Host`, joins repeated
/// header lines with ", ", and tags its response with `x-origin: NAME`.
async fn echo(name: &'static str) -> Origin {
    Origin::start(move |req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let mut headers = serde_json::Map::new();
        for k in parts.headers.keys() {
            let joined: Vec<&str> = parts.headers.get_all(k).iter().map(|v| v.to_str().unwrap_or("?")).collect();
            headers.insert(k.to_string(), joined.join(", ").into());
        }
        let json = serde_json::json!({
            "origin": name,
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            "version": format!("{:?}", parts.version),
            "authority": parts.uri.authority().map(|a| a.to_string()),
            "host": parts.headers.get("host").and_then(|v| v.to_str().ok()),
            "headers": headers,
            "body_len": body.len(),
        });
        Response::builder()
            .header("content-type", "application/json")
            .header("x-origin", name)
            .body(full(json.to_string()))
            .unwrap()
    })
    .await
}

/// A raw TCP "origin": reads until the end of a request head (or the h2 preface), writes
/// `reply` (possibly nothing) and closes the socket.
struct RawOrigin {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_origin(reply: &'static [u8]) -> RawOrigin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                if got.starts_with(b"PRI * HTTP/2.0") {
                    // h2: let the client's SETTINGS/HEADERS arrive, then hang up on it.
                    let _ = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await;
                }
                let _ = s.write_all(reply).await;
                let _ = s.flush().await;
                drop(s);
            });
        }
    });
    RawOrigin { addr, task }
}

fn get(path: &str, host: &str, h2: bool) -> http::request::Builder {
    req(Method::GET, path, host, h2)
}

/// A request to `host` + `path`: `Host` header for HTTP/1.1, absolute URI (`:authority`) for h2.
fn req(method: Method, path: &str, host: &str, h2: bool) -> http::request::Builder {
    if h2 {
        Request::builder().method(method).uri(format!("http://{host}{path}"))
    } else {
        Request::builder().method(method).uri(path).header("host", host)
    }
}

async fn client(addr: SocketAddr, h2: bool) -> Client {
    if h2 { Client::h2(addr).await } else { Client::h1(addr).await }
}

fn proto_name(h2: bool) -> &'static str {
    if h2 { "h2c" } else { "HTTP/1.1" }
}

/// Asserts a proxy-generated error: status, `x-trellis-error`, plain-text body naming it.
fn assert_proxy_error(got: &Got, status: u16, reason: &str, ctx: &str) {
    assert_eq!(got.status, status, "{ctx}: status; body: {}", got.text());
    assert_eq!(got.header("x-trellis-error"), Some(reason), "{ctx}: x-trellis-error; body: {}", got.text());
    let ct = got.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain"), "{ctx}: content-type {ct:?}");
    assert!(got.text().starts_with(reason), "{ctx}: body {:?} should name {reason:?}", got.text());
}

/// Reads a response body frame by frame, noting when each data frame arrived.
async fn read_timed(resp: Response<Incoming>, t0: Instant) -> (Vec<(Duration, Bytes)>, Option<String>) {
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    loop {
        match body.frame().await {
            None => return (frames, None),
            Some(Err(e)) => return (frames, Some(e.to_string())),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    frames.push((t0.elapsed(), d));
                }
            }
        }
    }
}

/// A body of `chunks` × `chunk` bytes, produced lazily (no allocation per chunk).
fn big_body(chunks: usize, chunk: Bytes) -> Body {
    let s = futures_util::stream::iter((0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))));
    StreamBody::new(s).boxed()
}

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Protocols
// ---------------------------------------------------------------------------------------------

fn versions_config(listen: SocketAddr, origin: SocketAddr) -> String {
    format!(
        r#"admin: {{ address: "{{admin}}" }}
listeners:
  - name: in
    address: "{listen}"
    routes: [to-h1, to-h2, to-auto]
routes:
  - name: to-h1
    match: {{ path_prefix: /h1 }}
    backends: [{{ cluster: c-h1 }}]
  - name: to-h2
    match: {{ path_prefix: /h2 }}
    backends: [{{ cluster: c-h2 }}]
  - name: to-auto
    match: {{ path_prefix: /auto }}
    backends: [{{ cluster: c-auto }}]
clusters:
  - name: c-h1
    protocol: http1
    endpoints: [{{ address: "{origin}" }}]
  - name: c-h2
    protocol: http2
    endpoints: [{{ address: "{origin}" }}]
  - name: c-auto
    protocol: auto
    endpoints: [{{ address: "{origin}" }}]
"#
    )
}

/// Every downstream protocol (HTTP/1.1, h2c) to every cluster protocol (http1, http2, auto):
/// the origin sees the version the cluster asks for, the client gets its own version back,
/// the host survives the translation (Host ↔ :authority), and request bodies arrive whole.
#[tokio::test]
async fn protocol_matrix_h1_h2c_to_http1_http2_auto() {
    bounded(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&versions_config(listen, origin.addr));
        for h2 in [false, true] {
            let mut c = client(listen, h2).await;
            for (prefix, upstream) in
                [("/h1", "HTTP/1.1"), ("/h2", "HTTP/2.0"), ("/auto", if h2 { "HTTP/2.0" } else { "HTTP/1.1" })]
            {
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
    let mut clusters = String::new();
    for (name, o) in origins {
        clusters.push_str(&format!("  - name: {name}\n    endpoints: [{{ address: \"{}\" }}]\n", o.addr));
    }
    format!(
        r#"admin: {{ address: "{{admin}}" }}
listeners:
  - name: in
    address: "{listen}"
    routes: [exact-host, suffix-host, canary, path-exact, methods, prefix, any-host]
routes:
  - name: exact-host
    match: {{ host: api.example.com }}
    backends: [{{ cluster: exact-host }}]
  - name: suffix-host
    match: {{ host: "*.example.com" }}
    backends: [{{ cluster: suffix-host }}]
  - name: canary
    match: {{ headers: {{ X-Canary: "1" }} }}
    backends: [{{ cluster: canary }}]
  - name: path-exact
    match: {{ path: /exact }}
    backends: [{{ cluster: path-exact }}]
  - name: methods
    match: {{ path_prefix: /m, methods: [post, PUT] }}
    backends: [{{ cluster: methods }}]
  - name: prefix
    match: {{ path_prefix: /api }}
    backends: [{{ cluster: prefix }}]
  - name: any-host
    match: {{ host: "*", path_prefix: /any }}
    backends: [{{ cluster: any-host }}]
clusters:
{clusters}"#
    )
}

/// (method, host, path, extra header, expected origin or `None` for a 404).
type RouteCase = (&'static str, &'static str, &'static str, Option<(&'static str, &'static str)>, Option<&'static str>);

/// Host exact / `*.suffix` / `*`, path exact / prefix, header and method matches, first
/// match wins, and no match → 404 `x-trellis-error: no route` — over HTTP/1.1 and h2c.
#[tokio::test]
async fn routing_matrix() {
    bounded(LIMIT, async {
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
    bounded(LIMIT, async {
        let a = echo("a").await;
        let b = echo("b").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&format!(
            r#"admin: {{ address: "{{admin}}" }}
listeners:
  - name: in
    address: "{listen}"
    routes: [split]
routes:
  - name: split
    backends: [{{ cluster: a, weight: 80 }}, {{ cluster: b, weight: 20 }}]
clusters:
  - name: a
    endpoints: [{{ address: "{}" }}]
  - name: b
    endpoints: [{{ address: "{}" }}]
"#,
            a.addr, b.addr
        ));
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
    bounded(LIMIT, async {
        let e1 = echo("e1").await;
        let e2 = echo("e2").await;
        let e3 = echo("e3").await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&format!(
            r#"admin: {{ address: "{{admin}}" }}
listeners:
  - name: in
    address: "{listen}"
    routes: [all]
routes:
  - name: all
    backends: [{{ cluster: rr }}]
clusters:
  - name: rr
    lb: round_robin
    endpoints:
      - {{ address: "{}", weight: 3 }}
      - {{ address: "{}", weight: 1 }}
      - {{ address: "{}", weight: 2 }}
"#,
            e1.addr, e2.addr, e3.addr
        ));
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

/// Route `headers` rules shape what the upstream sees; `response_headers` what the client sees.
#[tokio::test]
async fn route_header_rules() {
    bounded(LIMIT, async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
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
        .await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&format!(
            r#"admin: {{ address: "{{admin}}" }}
listeners:
  - name: in
    address: "{listen}"
    routes: [rules]
routes:
  - name: rules
    backends: [{{ cluster: origin }}]
    headers: {{ add: {{ x-mesh: trellis, X-Override: new }}, remove: [X-Internal] }}
    response_headers: {{ add: {{ x-served-by: trellis }}, remove: [x-origin-secret] }}
clusters:
  - name: origin
    endpoints: [{{ address: "{}" }}]
"#,
            origin.addr
        ));
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
    bounded(LIMIT, async {
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
        let _proxy = Proxy::start(&simple_config(listen, origin.addr, "http1"));

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
    bounded(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&simple_config(listen, origin.addr, "auto"));
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

/// Several `x-forwarded-for` lines are one list (RFC 9110 §5.3); the proxy must append the
/// client's address to the whole chain, not to its first line only.
#[tokio::test]
async fn forwarded_for_with_several_lines_keeps_the_whole_chain() {
    bounded(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&simple_config(listen, origin.addr, "auto"));
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
    bounded(LIMIT, async {
        let origin = ticking_sse_origin().await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&simple_config(listen, origin.addr, "auto"));
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
    bounded(Duration::from_secs(120), async {
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
            let proxy = Proxy::start(&simple_config(listen, origin.addr, proto));
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
    bounded(Duration::from_secs(120), async {
        let total = 64 * MIB;
        let origin = Origin::start(move |_req: Request<Incoming>| async move {
            let chunk = Bytes::from(vec![b'd'; 64 * 1024]);
            Response::new(big_body((total / (64 * 1024)) as usize, chunk))
        })
        .await;
        for (h2, proto) in [(false, "http1"), (true, "http2")] {
            let ctx = proto_name(h2);
            let listen = listen_addr();
            let proxy = Proxy::start(&simple_config(listen, origin.addr, proto));
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

/// One origin misbehaving by path: `/slow` answers after 2 s, `/silent` never answers,
/// `/sse-silent` sends one event and then nothing, `/sse-forever` an event every 100 ms.
async fn misbehaving_origin() -> Origin {
    Origin::start(|req: Request<Incoming>| async move {
        let path = req.uri().path().to_owned();
        if path.starts_with("/slow") {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::new(full("late"))
        } else if path.starts_with("/silent") {
            std::future::pending::<()>().await;
            unreachable!()
        } else if path.starts_with("/sse-silent") {
            let s = futures_util::stream::unfold(0u32, |i| async move {
                if i > 0 {
                    std::future::pending::<()>().await;
                }
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data: hello\n\n"))), i + 1))
            });
            Response::builder().header("content-type", "text/event-stream").body(StreamBody::new(s).boxed()).unwrap()
        } else if path.starts_with("/sse-forever") {
            let s = futures_util::stream::unfold(0u32, |i| async move {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {i}\n\n")))), i + 1))
            });
            Response::builder().header("content-type", "text/event-stream").body(StreamBody::new(s).boxed()).unwrap()
        } else {
            Response::new(full("ok"))
        }
    })
    .await
}

struct ErrorEnv {
    listen: SocketAddr,
    proxy: Proxy,
    _origin: Origin,
    _reset: RawOrigin,
    _trunc: RawOrigin,
}

async fn error_env() -> ErrorEnv {
    let origin = misbehaving_origin().await;
    let reset = raw_origin(b"").await;
    let trunc = raw_origin(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc").await;
    let refused = free_port();
    let listen = listen_addr();
    let o = origin.addr;
    let proxy = Proxy::start(&format!(
        r#"admin: {{ address: "{{admin}}" }}
listeners:
  - name: in
    address: "{listen}"
    header_timeout: 500ms
    max_header_bytes: 8192
    routes: [refused, refused2, reset1, reset2, trunc, empty, slow, silent, sse-silent, sse-deadline, ok]
routes:
  - {{ name: refused, match: {{ path_prefix: /refused }}, backends: [{{ cluster: refused }}] }}
  - {{ name: refused2, match: {{ path_prefix: /h2-refused }}, backends: [{{ cluster: refused2 }}] }}
  - {{ name: reset1, match: {{ path_prefix: /reset1 }}, backends: [{{ cluster: reset1 }}] }}
  - {{ name: reset2, match: {{ path_prefix: /reset2 }}, backends: [{{ cluster: reset2 }}] }}
  - {{ name: trunc, match: {{ path_prefix: /trunc }}, backends: [{{ cluster: trunc }}] }}
  - {{ name: empty, match: {{ path_prefix: /empty }}, backends: [{{ cluster: empty }}] }}
  - {{ name: slow, match: {{ path_prefix: /slow }}, backends: [{{ cluster: o }}], timeout: 300ms }}
  - {{ name: silent, match: {{ path_prefix: /silent }}, backends: [{{ cluster: o }}], idle_timeout: 300ms }}
  - {{ name: sse-silent, match: {{ path_prefix: /sse-silent }}, backends: [{{ cluster: o }}], idle_timeout: 300ms }}
  - {{ name: sse-deadline, match: {{ path_prefix: /sse-forever }}, backends: [{{ cluster: o }}], timeout: 500ms }}
  - {{ name: ok, match: {{ path_prefix: / }}, backends: [{{ cluster: o }}] }}
clusters:
  - {{ name: refused, protocol: http1, endpoints: [{{ address: "127.0.0.1:{refused}" }}] }}
  - {{ name: refused2, protocol: http2, endpoints: [{{ address: "127.0.0.1:{refused}" }}] }}
  - {{ name: reset1, protocol: http1, endpoints: [{{ address: "{reset}" }}] }}
  - {{ name: reset2, protocol: http2, endpoints: [{{ address: "{reset}" }}] }}
  - {{ name: trunc, protocol: http1, endpoints: [{{ address: "{trunc}" }}] }}
  - {{ name: empty, endpoints: [] }}
  - {{ name: o, endpoints: [{{ address: "{o}" }}] }}
"#,
        reset = reset.addr,
        trunc = trunc.addr,
    ));
    ErrorEnv { listen, proxy, _origin: origin, _reset: reset, _trunc: trunc }
}

/// Nothing listens at the endpoint → 502 `upstream connect failure`, quickly.
#[tokio::test]
async fn upstream_refused_is_502() {
    bounded(LIMIT, async {
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
    bounded(LIMIT, async {
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
    bounded(LIMIT, async {
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
    bounded(LIMIT, async {
        let env = error_env().await;
        for h2 in [false, true] {
            let mut c = client(env.listen, h2).await;
            assert_proxy_error(&c.get("/empty").await, 503, "no healthy endpoint", proto_name(h2));
        }
    })
    .await;
}

/// Route `timeout: 300ms` against a 2 s origin → 504 `upstream timeout` well before 1.5 s.
#[tokio::test]
async fn route_timeout_is_504() {
    bounded(LIMIT, async {
        let env = error_env().await;
        for h2 in [false, true] {
            let mut c = client(env.listen, h2).await;
            let t0 = Instant::now();
            let got = c.get("/slow").await;
            let took = t0.elapsed();
            assert_proxy_error(&got, 504, "upstream timeout", proto_name(h2));
            assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(1500), "took {took:?}");
        }
    })
    .await;
}

/// Route `idle_timeout: 300ms` against an origin that never answers → 504 `upstream idle timeout`.
#[tokio::test]
async fn idle_timeout_without_response_head_is_504() {
    bounded(LIMIT, async {
        let env = error_env().await;
        for h2 in [false, true] {
            let mut c = client(env.listen, h2).await;
            let t0 = Instant::now();
            let got = c.get("/silent").await;
            let took = t0.elapsed();
            assert_proxy_error(&got, 504, "upstream idle timeout", proto_name(h2));
            assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(1500), "took {took:?}");
        }
    })
    .await;
}

/// An event stream whose origin goes silent longer than `idle_timeout` is cut: the client's
/// body fails (not a clean end) shortly after the idle time.
#[tokio::test]
async fn silent_stream_is_cut_after_idle_timeout() {
    bounded(LIMIT, async {
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
    bounded(LIMIT, async {
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
    bounded(LIMIT, async {
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
    bounded(LIMIT, async {
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

/// Reads from a raw connection until EOF, an error, or a 408; returns what was read and when.
async fn wait_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<(Duration, String)> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((t0.elapsed(), String::from_utf8_lossy(&out).into_owned())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Clients that never finish their header block are disconnected after the listener's
/// `header_timeout` (500ms): half a header block, nothing at all, half an h2 preface, and a
/// slow trickle of header bytes.
#[tokio::test]
async fn incomplete_header_block_is_disconnected_after_header_timeout() {
    bounded(LIMIT, async {
        let env = error_env().await;
        let cases: [(&str, &[u8]); 3] = [
            ("half a header block", b"GET /fine HTTP/1.1\r\nHost: x\r\nX-Partial: y"),
            ("nothing", b""),
            ("half an h2 preface", b"PRI * HTTP/2"),
        ];
        for (what, bytes) in cases {
            let mut s = tokio::net::TcpStream::connect(env.listen).await.unwrap();
            s.write_all(bytes).await.unwrap();
            let (took, text) = wait_closed(&mut s, Duration::from_secs(3))
                .await
                .unwrap_or_else(|| panic!("{what}: connection still open after 3 s"));
            assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{what}: got {text:?}");
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
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return t0.elapsed(),
                    Ok(_) => {}
                }
            }
        };
        let took = tokio::select! {
            took = closed => took,
            () = trickle => unreachable!(),
            () = tokio::time::sleep(Duration::from_secs(4)) => panic!("trickling client still connected after 4 s"),
        };
        assert!(took < Duration::from_secs(2), "trickling client closed after {took:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Admin and metrics
// ---------------------------------------------------------------------------------------------

/// After 7 requests: `/metrics` counts them with the right labels and has the duration
/// histogram; `/config_dump` shows the version and config; `/live`, `/ready` answer;
/// `/clusters` lists the endpoint with its request count.
#[tokio::test]
async fn admin_metrics_config_dump_and_clusters() {
    bounded(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&simple_config(listen, origin.addr, "auto"));
        let mut c = Client::h1(listen).await;
        for i in 0..4 {
            assert_eq!(c.get(&format!("/m/{i}")).await.status, 200);
        }
        let mut c = Client::h2(listen).await;
        for i in 0..3 {
            assert_eq!(c.get(&format!("/m/{i}")).await.status, 200);
        }

        let labels = [("listener", "in"), ("route", "all"), ("cluster", "origin")];
        // The duration is recorded when the response body has been handed over: poll briefly.
        let deadline = Instant::now() + Duration::from_secs(3);
        let m = loop {
            let m = proxy.metrics();
            let count = metric_value(&m, "trellis_request_duration_seconds_count", &labels);
            if count == Some(7.0) || Instant::now() > deadline {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            m.contains(r#"trellis_requests_total{listener="in",route="all",cluster="origin",code="200"} 7"#),
            "{m}"
        );
        assert_eq!(metric_value(&m, "trellis_request_duration_seconds_count", &labels), Some(7.0), "{m}");
        let buckets: Vec<&str> =
            m.lines().filter(|l| l.starts_with("trellis_request_duration_seconds_bucket{")).collect();
        assert!(buckets.len() >= 10, "{m}");
        let inf = [("listener", "in"), ("route", "all"), ("cluster", "origin"), ("le", "+Inf")];
        assert_eq!(metric_value(&m, "trellis_request_duration_seconds_bucket", &inf), Some(7.0), "{m}");
        let sum = metric_value(&m, "trellis_request_duration_seconds_sum", &labels).unwrap();
        assert!(sum > 0.0 && sum < 7.0, "sum {sum}");

        let (s, body) = admin_get(proxy.admin, "/config_dump").unwrap();
        assert_eq!(s, 200);
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(dump["version"], 1, "{dump}");
        assert_eq!(dump["config"]["listeners"][0]["name"], "in", "{dump}");
        assert_eq!(dump["config"]["listeners"][0]["address"], listen.to_string(), "{dump}");
        assert_eq!(dump["config"]["routes"][0]["name"], "all", "{dump}");
        assert_eq!(dump["config"]["clusters"][0]["name"], "origin", "{dump}");
        assert_eq!(dump["config"]["clusters"][0]["endpoints"][0]["address"], origin.addr.to_string(), "{dump}");

        assert_eq!(admin_get(proxy.admin, "/live").unwrap().0, 200);
        assert_eq!(admin_get(proxy.admin, "/ready").unwrap().0, 200);
        assert_eq!(admin_get(proxy.admin, "/no-such-page").unwrap().0, 404);

        let (s, body) = admin_get(proxy.admin, "/clusters").unwrap();
        assert_eq!(s, 200);
        let cl: serde_json::Value = serde_json::from_str(&body).unwrap();
        let list = cl["clusters"].as_array().unwrap_or_else(|| panic!("{cl}"));
        assert_eq!(list.len(), 1, "{cl}");
        assert_eq!(list[0]["name"], "origin");
        let ep = &list[0]["endpoints"][0];
        assert_eq!(ep["address"], origin.addr.to_string(), "{cl}");
        assert_eq!(ep["total_requests"], 7, "{cl}");
        assert_eq!(ep["active_requests"], 0, "{cl}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// More proxy semantics
// ---------------------------------------------------------------------------------------------

/// An upstream's own error statuses and bodies reach the client untouched (no proxy error
/// header), and the downstream connection stays usable.
#[tokio::test]
async fn upstream_error_statuses_pass_through() {
    bounded(LIMIT, async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
            let code: u16 = req.uri().path().trim_start_matches('/').parse().unwrap_or(200);
            Response::builder()
                .status(code)
                .header("x-from", "origin")
                .body(full(format!("origin says {code}")))
                .unwrap()
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&simple_config(listen, origin.addr, "auto"));
        for h2 in [false, true] {
            let mut c = client(listen, h2).await;
            for code in [404u16, 500, 502, 503, 504, 418] {
                let got = c.get(&format!("/{code}")).await;
                let ctx = format!("{} {code}", proto_name(h2));
                assert_eq!(got.status.as_u16(), code, "{ctx}");
                assert_eq!(got.text(), format!("origin says {code}"), "{ctx}");
                assert_eq!(got.header("x-from"), Some("origin"), "{ctx}");
                assert!(got.header("x-trellis-error").is_none(), "{ctx}");
            }
        }
        let m = proxy.metrics();
        let n = metric_value(&m, "trellis_requests_total", &[("route", "all"), ("code", "418")]);
        assert_eq!(n, Some(2.0), "uncommon codes are counted too: {m}");
    })
    .await;
}

/// An HTTP/1.0 client gets its answer and the connection closes after it (1.0 has no
/// keep-alive by default); the upstream still sees an HTTP/1.1 request.
#[tokio::test]
async fn http10_client() {
    bounded(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&simple_config(listen, origin.addr, "auto"));
        let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
        s.write_all(b"GET /old HTTP/1.0\r\nHost: legacy.test\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("HTTP/1.0 connection not closed after the response")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"), "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let j: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(j["path"], "/old");
        assert_eq!(j["host"], "legacy.test");
        assert_eq!(j["version"], "HTTP/1.1");
    })
    .await;
}

/// An upstream that closes every connection after one response (without saying so) must not
/// turn into 502s: closed pooled connections are skipped or retried unsent.
#[tokio::test]
async fn upstream_closing_after_each_response_is_handled() {
    bounded(LIMIT, async {
        let one_shot = raw_origin(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&simple_config(listen, one_shot.addr, "http1"));
        let mut c = Client::h1(listen).await;
        for i in 0..30 {
            let got = c.get(&format!("/{i}")).await;
            assert_eq!(got.status, 200, "request {i}: {} {:?}; logs: {}", got.text(), got.headers, log_tail(&proxy, 5));
            assert_eq!(got.text(), "ok");
            // Half back to back (racing the close), half after the close has landed.
            if i >= 15 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await;
}

/// 250 concurrent h2c streams from one client to an http1 cluster (one upstream connection
/// per request in flight) and to an http2 cluster (multiplexed, over 100 streams per
/// connection) all succeed, and no request stays counted as active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_to_http1_and_http2_clusters() {
    bounded(LIMIT, async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Response::new(full(req.uri().path().to_owned()))
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&versions_config(listen, origin.addr));
        for prefix in ["/h1", "/h2"] {
            // One h2c connection; its SendRequest is cloned per stream.
            let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(listen).await.unwrap());
            let (tx, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            let mut tasks = Vec::new();
            for i in 0..250 {
                let mut tx: hyper::client::conn::http2::SendRequest<Body> = tx.clone();
                let path = format!("{prefix}/{i}");
                tasks.push(tokio::spawn(async move {
                    tx.ready().await.unwrap();
                    let req = Request::get(format!("http://{listen}{path}")).body(full("")).unwrap();
                    let resp = tx.send_request(req).await.unwrap();
                    let status = resp.status();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    (path, status, body)
                }));
            }
            let t0 = Instant::now();
            for t in tasks {
                let (path, status, body) = t.await.unwrap();
                assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
                assert_eq!(body, path.as_bytes());
            }
            // Concurrent, not one after the other (250 × 100 ms would be 25 s).
            assert!(t0.elapsed() < Duration::from_secs(10), "{prefix}: took {:?}", t0.elapsed());
        }
        let (_, body) = admin_get(proxy.admin, "/clusters").unwrap();
        let cl: serde_json::Value = serde_json::from_str(&body).unwrap();
        for c in cl["clusters"].as_array().unwrap() {
            for ep in c["endpoints"].as_array().unwrap() {
                assert_eq!(ep["active_requests"], 0, "{cl}");
            }
        }
    })
    .await;
}

/// Bodiless responses (HEAD, 204, 304) keep their headers, carry no body, and leave the
/// connection usable for the next request.
#[tokio::test]
async fn bodiless_responses_keep_the_connection_usable() {
    bounded(LIMIT, async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
            if req.method() == Method::HEAD {
                // hyper's h2 server would send the body of a HEAD response; a real origin does not.
                return Response::builder()
                    .header("x-k", "page")
                    .header("content-length", "10")
                    .body(full(""))
                    .unwrap();
            }
            match req.uri().path().rsplit('/').next().unwrap_or("") {
                "204" => Response::builder().status(204).header("x-k", "204").body(full("")).unwrap(),
                "304" => Response::builder().status(304).header("etag", "\"v1\"").body(full("")).unwrap(),
                _ => Response::builder().header("x-k", "page").body(full("0123456789")).unwrap(),
            }
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&versions_config(listen, origin.addr));
        for h2 in [false, true] {
            for prefix in ["/h1", "/h2"] {
                let ctx = format!("{} → {prefix}", proto_name(h2));
                let mut c = client(listen, h2).await;
                let head = c
                    .send(req(Method::HEAD, &format!("{prefix}/page"), "svc", h2).body(full("")).unwrap())
                    .await
                    .unwrap_or_else(|e| panic!("{ctx} HEAD: {e:?}; proxy log: {}", log_tail(&proxy, 10)));
                assert_eq!(head.status(), 200, "{ctx} HEAD");
                let len = head.headers().get("content-length").cloned();
                assert_eq!(len.as_ref().map(|v| v.to_str().unwrap()), Some("10"), "{ctx} HEAD keeps the length");
                let body = head.into_body().collect().await.unwrap().to_bytes();
                assert!(body.is_empty(), "{ctx}");
                let nc = c.fetch(get(&format!("{prefix}/204"), "svc", h2).body(full("")).unwrap()).await;
                assert_eq!(nc.status, 204, "{ctx}");
                assert_eq!(nc.header("x-k"), Some("204"), "{ctx}");
                assert!(nc.body.is_empty(), "{ctx}");
                let nm = c
                    .fetch(
                        get(&format!("{prefix}/304"), "svc", h2)
                            .header("if-none-match", "\"v1\"")
                            .body(full(""))
                            .unwrap(),
                    )
                    .await;
                assert_eq!(nm.status, 304, "{ctx}");
                assert_eq!(nm.header("etag"), Some("\"v1\""), "{ctx}");
                let page = c.fetch(get(&format!("{prefix}/page"), "svc", h2).body(full("")).unwrap()).await;
                assert_eq!(page.text(), "0123456789", "{ctx}: the connection still frames responses right");
            }
        }
    })
    .await;
}

/// `Expect: 100-continue`: the client gets its interim 100 and can then send the body.
#[tokio::test]
async fn expect_100_continue() {
    bounded(LIMIT, async {
        let origin = echo("o").await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&simple_config(listen, origin.addr, "http1"));
        let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("no interim response within 2 s of Expect: 100-continue")
            .unwrap();
        let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
        s.write_all(b"hello").await.unwrap();
        let mut out = interim.into_bytes();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&out).contains("\"body_len\"") {
            let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("no final response").unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("HTTP/1.1 200"), "{text}");
        assert!(text.contains("\"body_len\":5"), "{text}");
    })
    .await;
}

/// A request in absolute form (`GET http://host/path`) is routed by the target's host; a
/// proxy forwarding it "MUST generate a new Host field value based on the received
/// request-target rather than forward the received Host" (RFC 9112 §3.2.2), so the upstream
/// sees the host the route was chosen by.
#[tokio::test]
async fn absolute_form_target_host_wins_over_host_header() {
    bounded(LIMIT, async {
        let api = echo("api").await;
        let other = echo("other").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&format!(
            r#"admin: {{ address: "{{admin}}" }}
listeners:
  - name: in
    address: "{listen}"
    routes: [api, rest]
routes:
  - {{ name: api, match: {{ host: api.example.com }}, backends: [{{ cluster: api }}] }}
  - {{ name: rest, backends: [{{ cluster: other }}] }}
clusters:
  - {{ name: api, protocol: http1, endpoints: [{{ address: "{}" }}] }}
  - {{ name: other, protocol: http1, endpoints: [{{ address: "{}" }}] }}
"#,
            api.addr, other.addr
        ));
        let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
        s.write_all(b"GET http://api.example.com/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let j: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(j["origin"], "api", "routed by the request-target's host: {j}");
        assert_eq!(j["path"], "/x", "origin-form upstream: {j}");
        assert_eq!(
            j["host"],
            "api.example.com",
            "upstream Host must match the routed host: {j}; logs: {}",
            log_tail(&proxy, 5)
        );
    })
    .await;
}

/// HTTP/2 may split `cookie` into several fields; towards an HTTP/1.1 upstream they "MUST be
/// concatenated into a single octet string using the two-octet delimiter of `; `"
/// (RFC 9113 §8.2.3). Several `set-cookie` response lines all reach the client.
#[tokio::test]
async fn h2_cookie_crumbs_are_joined_for_http1_upstreams() {
    bounded(LIMIT, async {
        let origin = Origin::start(|req: Request<Incoming>| async move {
            let lines: Vec<String> =
                req.headers().get_all("cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
            Response::builder()
                .header("set-cookie", "a=1; Path=/")
                .header("set-cookie", "b=2; Path=/")
                .body(full(serde_json::json!(lines).to_string()))
                .unwrap()
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&versions_config(listen, origin.addr));
        let mut c = Client::h2(listen).await;
        let got = c
            .fetch(get("/h1/c", "svc", true).header("cookie", "a=1").header("cookie", "b=2").body(full("")).unwrap())
            .await;
        assert_eq!(got.status, 200);
        let set: Vec<&str> = got.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(set, vec!["a=1; Path=/", "b=2; Path=/"]);
        let lines: Vec<String> = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(
            lines,
            vec!["a=1; b=2".to_owned()],
            "cookie lines the HTTP/1.1 upstream got; logs: {}",
            log_tail(&proxy, 3)
        );
    })
    .await;
}

/// Waits (up to 3 s) until `/clusters` shows no request in flight on any endpoint.
async fn assert_no_active_requests(proxy: &Proxy, ctx: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, body) = admin_get(proxy.admin, "/clusters").unwrap();
        let cl: serde_json::Value = serde_json::from_str(&body).unwrap();
        let busy: Vec<String> = cl["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| {
                c["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["active_requests"] != 0)
                    .map(move |e| format!("{}/{}: {}", c["name"], e["address"], e["active_requests"]))
            })
            .collect();
        if busy.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{ctx}: requests still counted active: {busy:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Failed and timed-out exchanges do not leak in-flight counts (which least-request
/// balancing reads).
#[tokio::test]
async fn failed_exchanges_release_their_endpoint() {
    bounded(LIMIT, async {
        let env = error_env().await;
        for h2 in [false, true] {
            let mut c = client(env.listen, h2).await;
            for path in ["/refused", "/h2-refused", "/reset1", "/reset2", "/slow", "/silent"] {
                let got = c.get(path).await;
                assert!(got.status.is_server_error(), "{path}: {}", got.status);
            }
            for path in ["/sse-silent", "/sse-forever", "/trunc"] {
                let resp = c.send(Request::get(path).body(full("")).unwrap()).await.unwrap();
                let _ = read_timed(resp, Instant::now()).await;
                // HTTP/1.1: a cut body ends the connection; start a fresh one.
                c = client(env.listen, h2).await;
            }
        }
        assert_no_active_requests(&env.proxy, "after errors").await;
    })
    .await;
}

/// A client that goes away mid-stream makes the proxy abandon the upstream exchange: the
/// origin's stream is dropped and nothing stays in flight.
#[tokio::test]
async fn client_going_away_cancels_the_upstream_stream() {
    bounded(LIMIT, async {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        let origin = Origin::start(move |_req: Request<Incoming>| {
            let guard = Guard(d.clone());
            async move {
                let s = futures_util::stream::unfold((0u32, guard), |(i, g)| async move {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {i}\n\n")))), (i + 1, g)))
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(StreamBody::new(s).boxed())
                    .unwrap()
            }
        })
        .await;
        let listen = listen_addr();
        let proxy = Proxy::start(&versions_config(listen, origin.addr));
        let mut n = 0;
        for h2 in [false, true] {
            for prefix in ["/h1", "/h2"] {
                let ctx = format!("{} → {prefix}", proto_name(h2));
                let mut c = client(listen, h2).await;
                let resp = c.send(Request::get(format!("{prefix}/events")).body(full("")).unwrap()).await.unwrap();
                let mut body = resp.into_body();
                for _ in 0..3 {
                    body.frame().await.unwrap().unwrap();
                }
                drop(body);
                drop(c);
                n += 1;
                let deadline = Instant::now() + Duration::from_secs(3);
                while dropped.load(Ordering::SeqCst) < n {
                    assert!(Instant::now() < deadline, "{ctx}: the origin's stream was never cancelled");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_no_active_requests(&proxy, &ctx).await;
            }
        }
    })
    .await;
}

/// A slow upload is client progress, not upstream silence: with `idle_timeout: 500ms`, a
/// body sent in chunks every 150 ms for ~1.5 s still reaches the origin and gets its answer.
#[tokio::test(flavor = "multi_thread")]
async fn slow_upload_is_not_cut_by_the_idle_timeout() {
    use http_body_util::BodyExt;
    within(Duration::from_secs(15), async {
        let origin = Origin::start(|req: Request<hyper::body::Incoming>| async move {
            let n = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
            Response::new(full(n.to_string()))
        })
        .await;
        let listen = listen_addr();
        let yaml = simple_config(listen, origin.addr, "http1").replace(
            "    backends: [{ cluster: origin }]",
            "    backends: [{ cluster: origin }]\n    idle_timeout: 500ms",
        );
        let _proxy = Proxy::start(&yaml);
        let mut c = Client::h1(listen).await;
        let (tx, body) = chan_body();
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if tx.send(Bytes::from(vec![b'x'; 100])).await.is_err() {
                    break;
                }
            }
        });
        let got = c.fetch(Request::post("/upload").body(body).unwrap()).await;
        feeder.await.unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.text(), "1000");
    })
    .await;
}

/// Many concurrent requests to an http2 cluster share one upstream connection: streams
/// given back at the end of each response keep it under its stream limit.
#[tokio::test(flavor = "multi_thread")]
async fn http2_cluster_multiplexes_concurrent_requests_on_one_connection() {
    within(Duration::from_secs(20), async {
        let origin = Origin::echo("o").await;
        let listen = listen_addr();
        let proxy = Proxy::start(&simple_config(listen, origin.addr, "http2"));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            tasks.push(tokio::spawn(async move {
                let mut c = Client::h1(listen).await;
                for _ in 0..100 {
                    assert_eq!(c.get("/").await.status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (_, body) = admin_get(proxy.admin, "/clusters").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let ep = &v["clusters"][0]["endpoints"][0];
        assert_eq!(ep["http2_connections"], 1, "{ep}");
        assert_eq!(ep["active_requests"], 0, "{ep}");
    })
    .await;
}

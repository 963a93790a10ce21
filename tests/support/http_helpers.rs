// Helpers shared by the http_*.rs end-to-end tests (included, not a test crate of its own).

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
# A burst of hundreds of simultaneous connects on a loaded CI machine can lose a SYN,
# whose retransmission comes after 1 s: these tests are about protocols, not connect timeouts.
clusters:
  - name: c-h1
    protocol: http1
    connect_timeout: 5s
    endpoints: [{{ address: "{origin}" }}]
  - name: c-h2
    protocol: http2
    connect_timeout: 5s
    endpoints: [{{ address: "{origin}" }}]
  - name: c-auto
    protocol: auto
    connect_timeout: 5s
    endpoints: [{{ address: "{origin}" }}]
"#
    )
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

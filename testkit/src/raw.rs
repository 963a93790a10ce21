//! Raw HTTP for the http_*.rs tests: an echo origin that reports authority and host, raw TCP
//! origins that misbehave on purpose, requests and responses read and written by hand, HTTP/2
//! frames by hand, and the proxy configs those tests share.

use super::*;
use http::Method;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Origins and small helpers
// ---------------------------------------------------------------------------------------------

/// An echo origin that also reports the request's `:authority` and `Host`, joins repeated
/// header lines with ", ", and tags its response with `x-origin: NAME`.
pub async fn echo(name: &'static str) -> Origin {
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
pub struct RawOrigin {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub conns: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw origin on 127.0.0.1 that counts its connections and serves each with `serve`.
async fn counting_origin<F, Fut>(serve: F) -> RawOrigin
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let conns: std::sync::Arc<std::sync::atomic::AtomicUsize> = std::sync::Arc::default();
    let counted = conns.clone();
    let (addr, task) = accept_each(listener, move |s, _| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        serve(s)
    });
    RawOrigin { addr, conns, task }
}

pub async fn raw_origin(reply: &'static [u8]) -> RawOrigin {
    counting_origin(move |mut s| async move {
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
    })
    .await
}

pub fn get(path: &str, host: &str, h2: bool) -> http::request::Builder {
    req(Method::GET, path, host, h2)
}

/// A request to `host` + `path`: `Host` header for HTTP/1.1, absolute URI (`:authority`) for h2.
pub fn req(method: Method, path: &str, host: &str, h2: bool) -> http::request::Builder {
    if h2 {
        Request::builder().method(method).uri(format!("http://{host}{path}"))
    } else {
        Request::builder().method(method).uri(path).header("host", host)
    }
}

pub async fn client(addr: SocketAddr, h2: bool) -> Client {
    if h2 { Client::h2(addr).await } else { Client::h1(addr).await }
}

pub fn proto_name(h2: bool) -> &'static str {
    if h2 { "h2c" } else { "HTTP/1.1" }
}

/// Asserts a proxy-generated error: status, `x-trellis-error`, plain-text body naming it.
pub fn assert_proxy_error(got: &Got, status: u16, reason: &str, ctx: &str) {
    assert_eq!(got.status, status, "{ctx}: status; body: {}", got.text());
    assert_eq!(got.header("x-trellis-error"), Some(reason), "{ctx}: x-trellis-error; body: {}", got.text());
    let ct = got.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain"), "{ctx}: content-type {ct:?}");
    assert!(got.text().starts_with(reason), "{ctx}: body {:?} should name {reason:?}", got.text());
}

/// Reads a response body frame by frame, noting when each data frame arrived.
pub async fn read_timed(resp: Response<Incoming>, t0: Instant) -> (Vec<(Duration, Bytes)>, Option<String>) {
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
pub fn big_body(chunks: usize, chunk: Bytes) -> Body {
    let s = futures_util::stream::iter((0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))));
    StreamBody::new(s).boxed()
}

pub const MIB: u64 = 1024 * 1024;

/// Listener `in` on `listen` with routes `/h1`, `/h2` and `/auto` to clusters of those
/// protocols, all at `origin`.
pub fn versions_config(listen: SocketAddr, origin: SocketAddr) -> String {
    use config::{ClusterProtocol::*, cluster, listener, route};
    let mut b = config::bootstrap();
    b.listeners.push(listener("in", listen, &["to-h1", "to-h2", "to-auto"]));
    for (name, proto) in [("h1", Http1), ("h2", Http2), ("auto", Auto)] {
        b.routes.push(route(&format!("to-{name}"), &format!("/{name}"), &format!("c-{name}")));
        // A burst of hundreds of simultaneous connects on a loaded CI machine can lose a
        // SYN, whose retransmission comes after 1 s: these tests are about protocols, not
        // connect timeouts.
        let mut c = cluster(&format!("c-{name}"), proto, &[origin]);
        c.connect_timeout = Some(trellis_api::Duration::from_secs(5));
        b.clusters.push(c);
    }
    b.yaml()
}

pub struct ErrorEnv {
    pub listen: SocketAddr,
    pub proxy: Proxy,
    pub _origin: Origin,
    pub _reset: RawOrigin,
    pub _trunc: RawOrigin,
}

pub async fn error_env() -> ErrorEnv {
    let origin = misbehaving_origin().await;
    let reset = raw_origin(b"").await;
    let trunc = raw_origin(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc").await;
    let refused = free_port();
    let listen = listen_addr();
    use config::{ClusterProtocol::*, cluster, listener, ms, route};
    let mut b = config::bootstrap();
    let mut l = listener("in", listen, &[]);
    l.header_timeout = Some(ms(500));
    l.max_header_bytes = Some(8192);
    let refused = SocketAddr::from(([127, 0, 0, 1], refused));
    let routes = [
        ("refused", "/refused", "refused", None, None),
        ("refused2", "/h2-refused", "refused2", None, None),
        ("reset1", "/reset1", "reset1", None, None),
        ("reset2", "/reset2", "reset2", None, None),
        ("trunc", "/trunc", "trunc", None, None),
        ("empty", "/empty", "empty", None, None),
        ("slow", "/slow", "o", Some(ms(300)), None),
        ("silent", "/silent", "o", None, Some(ms(300))),
        ("sse-silent", "/sse-silent", "o", None, Some(ms(300))),
        ("sse-deadline", "/sse-forever", "o", Some(ms(500)), None),
        ("ok", "/", "o", None, None),
    ];
    for (name, prefix, to, timeout, idle_timeout) in routes {
        l.routes.push(name.into());
        b.routes.push(config::Route { timeout, idle_timeout, ..route(name, prefix, to) });
    }
    b.listeners.push(l);
    b.clusters = vec![
        cluster("refused", Http1, &[refused]),
        cluster("refused2", Http2, &[refused]),
        cluster("reset1", Http1, &[reset.addr]),
        cluster("reset2", Http2, &[reset.addr]),
        cluster("trunc", Http1, &[trunc.addr]),
        cluster("empty", Auto, &[]),
        cluster("o", Auto, &[origin.addr]),
    ];
    let proxy = Proxy::start(&b.yaml());
    ErrorEnv { listen, proxy, _origin: origin, _reset: reset, _trunc: trunc }
}

/// One origin misbehaving by path: `/slow` answers after 2 s, `/silent` never answers,
/// `/sse-silent` sends one event and then nothing, `/sse-forever` an event every 100 ms.
pub async fn misbehaving_origin() -> Origin {
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

// ---------------------------------------------------------------------------------------------
// Raw sockets: HTTP/1 by hand, HTTP/2 frames by hand, and a scripted raw origin
// ---------------------------------------------------------------------------------------------

/// Reads one response (its `content-length` body unless `head`) off `s`, keeping what
/// follows in `buf`.
pub async fn read_response(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, head: bool) -> String {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                .unwrap_or(0);
            let total = end + 4 + if head { 0 } else { len };
            if buf.len() >= total {
                let resp = String::from_utf8_lossy(&buf[..total]).into_owned();
                buf.drain(..total);
                return resp;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("no response within 5 s")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn body_json(resp: &str) -> serde_json::Value {
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

pub async fn read_to_end(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("connection not closed within 5 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from a raw connection until EOF, an error, or a 408; returns what was read and when.
pub async fn wait_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<(Duration, String)> {
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

/// A raw keep-alive "origin": on each connection, for every request head it reads (the
/// bodies of requests are not read: send none), it writes `reply`. Counts connections.
pub async fn scripted_origin(reply: &'static [u8]) -> RawOrigin {
    counting_origin(move |mut s| async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                got.drain(..end + 4);
                if s.write_all(reply).await.is_err() {
                    return;
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

/// HTTP/2 frame types and flags the raw-frame tests use (RFC 9113 §6).
pub mod h2raw {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// One frame on the wire.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A header block of literal fields without indexing (HPACK §6.2.2, no Huffman).
    pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.push(0);
            for s in [name, value] {
                assert!(s.len() < 127, "short strings only");
                out.push(s.len() as u8);
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }

    /// A frame read off the connection: type, flags, stream, payload.
    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The error code of a RST_STREAM or GOAWAY.
        pub fn error_code(&self) -> u32 {
            let at = if self.kind == GOAWAY { 4 } else { 0 };
            u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
        }
    }
}

/// A raw HTTP/2 client connection: the frames it writes are its own to choose.
pub struct RawH2 {
    pub s: tokio::net::TcpStream,
    pub buf: Vec<u8>,
}

impl RawH2 {
    /// Connects, sends the preface and empty SETTINGS.
    pub async fn connect(addr: SocketAddr) -> RawH2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(h2raw::PREFACE).await.unwrap();
        s.write_all(&h2raw::frame(h2raw::SETTINGS, 0, 0, &[])).await.unwrap();
        RawH2 { s, buf: Vec::new() }
    }

    /// Connects and sends one request head, `fields`, on stream 1, ending the stream.
    pub async fn request(addr: SocketAddr, fields: &[(&str, &str)]) -> RawH2 {
        let mut h2 = RawH2::connect(addr).await;
        h2.send(h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS | h2raw::END_STREAM, 1, &h2raw::block(fields))).await;
        h2
    }

    pub async fn send(&mut self, frame: Vec<u8>) {
        self.s.write_all(&frame).await.unwrap();
    }

    /// The next frame (SETTINGS are acknowledged and skipped), or `None` at EOF or after 5 s.
    pub async fn next(&mut self) -> Option<h2raw::Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16) | (usize::from(self.buf[1]) << 8) | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9).collect();
                    let payload: Vec<u8> = self.buf.drain(..len).collect();
                    let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    let f = h2raw::Frame { kind: head[3], flags: head[4], stream, payload };
                    if f.kind == h2raw::SETTINGS && f.flags & h2raw::ACK == 0 {
                        self.send(h2raw::frame(h2raw::SETTINGS, h2raw::ACK, 0, &[])).await;
                        continue;
                    }
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Frames until one matches `want` (or `None`).
    pub async fn until(&mut self, want: impl Fn(&h2raw::Frame) -> bool) -> Option<h2raw::Frame> {
        while let Some(f) = self.next().await {
            if want(&f) {
                return Some(f);
            }
        }
        None
    }
}

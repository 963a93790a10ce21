//! Test helpers: spawn the real `trellis` binary on a config, real in-process origins on
//! 127.0.0.1, and real clients. Every spawned process is killed by handle on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type Body = BoxBody<Bytes, Infallible>;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// A running `trellis proxy`.
pub struct Proxy {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Proxy {
    /// Writes `yaml` (with `{admin}` replaced by a free admin address) and starts the proxy
    /// with `--threads 2`; waits until `/ready` answers 200.
    pub fn start(yaml: &str) -> Proxy {
        Self::start_with(yaml, &["--threads", "2"])
    }

    pub fn start_with(yaml: &str, args: &[&str]) -> Proxy {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("trellis.yaml");
        let log = dir.path().join("proxy.log");
        std::fs::write(&config, yaml.replace("{admin}", &admin.to_string())).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .arg("proxy")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("TRELLIS_LOG", "info,trellis_proxy=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn trellis");
        let mut p = Proxy { child, dir, config, admin, log };
        p.wait_ready();
        p
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("trellis exited early ({status}): {}", self.logs());
            }
            if admin_get(self.admin, "/ready").map(|(s, _)| s == 200).unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("trellis not ready in 20s: {}", self.logs());
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replaces the config file atomically (the proxy notices within ~0.5 s) and sends SIGHUP.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.path().join("next.yaml");
        std::fs::write(&tmp, yaml.replace("{admin}", &self.admin.to_string())).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    /// Writes a new config, SIGHUPs, and waits until `/config_dump` shows a newer version.
    pub fn reload(&self, yaml: &str) -> u64 {
        let before = self.version();
        self.write_config(yaml);
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let v = self.version();
            if v > before {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("config not reloaded: {}", self.logs());
    }

    pub fn version(&self) -> u64 {
        let (_, body) = admin_get(self.admin, "/config_dump").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["version"].as_u64().unwrap()
    }

    pub fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics").unwrap().1
    }

    /// Waits for the process to exit by itself, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `trellis ARGS…` to completion; returns (exit code, stderr).
pub fn trellis(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A blocking GET over plain TCP for admin checks (no runtime needed).
pub fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

type Handler = Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync>;

/// An in-process origin (HTTP/1.1 and h2c on one port) running `handler` per request.
pub struct Origin {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start<F, Fut>(handler: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler)
    }

    pub async fn start_on<F, Fut>(addr: SocketAddr, handler: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, handler)
    }

    fn serve<F, Fut>(listener: tokio::net::TcpListener, handler: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let h = handler.clone();
                        async move { Ok::<_, Infallible>(h(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin { addr, task }
    }

    /// An origin answering every request with 200 and a JSON echo of what it received:
    /// `{"origin": name, "method", "path", "version", "headers": {..}, "body_len"}`.
    pub async fn echo(name: &'static str) -> Origin {
        Origin::start(move |req: Request<Incoming>| echo_answer(name, req)).await
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response read to the end.
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not json ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A keep-alive HTTP/1.1 or h2c (prior knowledge) client to one address.
pub struct Client {
    h1: Option<hyper::client::conn::http1::SendRequest<Body>>,
    h2: Option<hyper::client::conn::http2::SendRequest<Body>>,
    pub addr: SocketAddr,
}

impl Client {
    pub async fn h1(addr: SocketAddr) -> Client {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        Client { h1: Some(tx), h2: None, addr }
    }

    pub async fn h2(addr: SocketAddr) -> Client {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        Client { h1: None, h2: Some(tx), addr }
    }

    /// Sends `req` (a relative URI gets this client's address as Host/authority).
    pub async fn send(&mut self, mut req: Request<Body>) -> hyper::Result<Response<Incoming>> {
        if let Some(h2) = &mut self.h2 {
            if req.uri().authority().is_none() {
                let uri = format!("http://{}{}", self.addr, req.uri());
                *req.uri_mut() = uri.parse().unwrap();
            }
            h2.ready().await?;
            return h2.send_request(req).await;
        }
        let h1 = self.h1.as_mut().unwrap();
        if !req.headers().contains_key("host") {
            let host = self.addr.to_string();
            req.headers_mut().insert("host", host.parse().unwrap());
        }
        h1.ready().await?;
        h1.send_request(req).await
    }

    /// Sends and reads the whole response.
    pub async fn fetch(&mut self, req: Request<Body>) -> Got {
        let resp = self.send(req).await.expect("response head");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Got { status: parts.status, headers: parts.headers, body }
    }

    pub async fn get(&mut self, path: &str) -> Got {
        self.fetch(Request::get(path).body(full("")).unwrap()).await
    }
}

/// A bootstrap with one HTTP listener on `listen`, one catch-all route `all` to cluster
/// `origin` at `origin` (protocol `proto`: http1 | http2 | auto), and `{admin}`.
pub fn simple_config(listen: SocketAddr, origin: SocketAddr, proto: &str) -> String {
    format!(
        r#"admin: {{ address: "{{admin}}" }}
drain_timeout: 5s
listeners:
  - name: in
    address: "{listen}"
    routes: [all]
routes:
  - name: all
    match: {{ path_prefix: / }}
    backends: [{{ cluster: origin }}]
clusters:
  - name: origin
    protocol: {proto}
    endpoints: [{{ address: "{origin}" }}]
"#
    )
}

/// A fresh listen address for a proxy listener.
pub fn listen_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

// --- lifecycle helpers ---

/// Runs blocking helper code (`Proxy::reload`, `Proxy::wait_exit`, `admin_get`) from a test on
/// the multi-thread runtime without stalling the origins and clients running beside it.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A body fed chunk by chunk through a channel; it ends when the sender is dropped.
pub struct ChanBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// A streaming body (for slow uploads and endless responses) and the sender feeding it.
pub fn chan_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    (tx, ChanBody { rx }.boxed())
}

/// An origin answering every request with an endless server-sent-event stream: one event
/// `data: NAME N` every `every`, until the reader goes away.
pub async fn sse_origin(name: &'static str, every: Duration) -> Origin {
    Origin::start(move |_req: Request<Incoming>| async move {
        let (tx, body) = chan_body();
        tokio::spawn(async move {
            for n in 0u64.. {
                if tx.send(Bytes::from(format!("id: {n}\ndata: {name} {n}\n\n"))).await.is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(body)
            .unwrap()
    })
    .await
}

/// An in-process origin whose handler also sees the peer address of the connection the
/// request came on (for a proxy: which upstream connection it used).
pub async fn origin_with_peer<F, Fut>(handler: F) -> Origin
where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler.as_ref()(peer, req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Origin { addr, task }
}

/// How an event stream read by [`EventReader`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The body ended cleanly.
    Eof,
    /// The body failed (reset, connection closed mid-body, …).
    Error(String),
}

/// Reads a server-sent-event response body in the background, noting when each event arrived.
pub struct EventReader {
    pub events: Arc<std::sync::Mutex<Vec<Instant>>>,
    pub task: tokio::task::JoinHandle<(StreamEnd, Instant)>,
}

impl EventReader {
    pub fn spawn(resp: Response<Incoming>) -> EventReader {
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = events.clone();
        let task = tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut buf = String::new();
            loop {
                match body.frame().await {
                    None => return (StreamEnd::Eof, Instant::now()),
                    Some(Err(e)) => return (StreamEnd::Error(e.to_string()), Instant::now()),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            buf.push_str(&String::from_utf8_lossy(&data));
                            while let Some(end) = buf.find("\n\n") {
                                buf.drain(..end + 2);
                                seen.lock().unwrap().push(Instant::now());
                            }
                        }
                    }
                }
            }
        });
        EventReader { events, task }
    }

    /// Sends `GET path` on `c`, expects a 200 event stream, and reads it in the background
    /// once its first 3 events came through.
    pub async fn open(c: &mut Client, path: &str) -> EventReader {
        let resp = tokio::time::timeout(Duration::from_secs(5), c.send(Request::get(path).body(full("")).unwrap()))
            .await
            .expect("stream head in 5s")
            .expect("stream head");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let reader = EventReader::spawn(resp);
        assert!(reader.wait_for(3, Duration::from_secs(3)).await, "no events through the proxy");
        reader
    }

    /// Events received so far.
    pub fn count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Events received at or after `since`.
    pub fn count_since(&self, since: Instant) -> usize {
        self.events.lock().unwrap().iter().filter(|t| **t >= since).count()
    }

    /// The longest silence between `from` and now: between events, or since the last one.
    pub fn longest_gap_since(&self, from: Instant) -> Duration {
        let events = self.events.lock().unwrap();
        let mut last = from;
        let mut worst = Duration::ZERO;
        for t in events.iter().filter(|t| **t >= from) {
            worst = worst.max(t.duration_since(last));
            last = *t;
        }
        worst.max(last.elapsed())
    }

    /// Waits until at least `n` events have arrived, up to `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.count() >= n
    }
}

/// Polls `addr` until a TCP connect is refused (nobody listens any more), up to `limit`.
/// Returns how long that took, or `None` if connections were still accepted at the end.
pub async fn wait_refused(addr: SocketAddr, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        match tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Some(start.elapsed()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    None
}

/// The last `n` lines of the proxy's log, for failure messages.
pub fn log_tail(proxy: &Proxy, n: usize) -> String {
    let logs = proxy.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a whole test body under a time limit, so a hang fails (and drops its proxy) instead
/// of stalling the suite.
pub async fn within<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, body).await.unwrap_or_else(|_| panic!("test did not finish within {limit:?}"))
}

// --- http_path helpers ---

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, …).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The value of the first Prometheus sample named `name` whose labels include every pair of
/// `labels` (exposition text format, as served by admin `/metrics`).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.trim().rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, r)) => (n, r.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let have = prometheus_labels(rest);
        if labels.iter().all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v)) {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// `a="x",b="y"` → pairs (handles `\"`, `\\` and `\n` escapes).
pub fn prometheus_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut v = String::new();
        let mut end = after.len();
        let mut chars = after.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        v.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => v.push(c),
            }
        }
        out.push((k.trim_start_matches(',').trim().to_owned(), v));
        rest = &after[end..];
    }
    out
}

/// Runs `f` under a hard time bound so a hung proxy fails the test instead of the suite.
pub async fn bounded<F: Future<Output = ()>>(limit: Duration, f: F) {
    tokio::time::timeout(limit, f).await.expect("test exceeded its time bound");
}

// --- resilience helpers ---

/// A bootstrap with listener `in` on `listen` taking the routes named in `route_names`, and
/// the given `routes:` and `clusters:` list items (YAML, indented by two spaces).
pub fn bootstrap(listen: SocketAddr, route_names: &[&str], routes: &str, clusters: &str) -> String {
    format!(
        "admin: {{ address: \"{{admin}}\" }}\ndrain_timeout: 1s\nlisteners:\n  - name: in\n    address: \"{listen}\"\n    routes: [{}]\nroutes:\n{routes}clusters:\n{clusters}",
        route_names.join(", ")
    )
}

/// A flow-style endpoint list: `[{ address: "A", weight: W }, …]`.
pub fn endpoints_yaml(eps: &[(SocketAddr, u32)]) -> String {
    let items: Vec<String> = eps.iter().map(|(a, w)| format!("{{ address: \"{a}\", weight: {w} }}")).collect();
    format!("[{}]", items.join(", "))
}

/// Like [`Origin::echo`], but every answer waits `delay` first.
pub async fn echo_after(name: &'static str, delay: Duration) -> Origin {
    Origin::start(move |req: Request<Incoming>| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let _ = req.into_body().collect().await;
        let json = serde_json::json!({ "origin": name });
        Response::builder().header("content-type", "application/json").body(full(json.to_string())).unwrap()
    })
    .await
}

/// The `origin` field of an echo answer ("" when the body is not an echo).
pub fn origin_name(got: &Got) -> String {
    serde_json::from_slice::<serde_json::Value>(&got.body)
        .ok()
        .and_then(|j| j["origin"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// What a [`counting_origin`] saw: every request's head and body, in arrival order.
#[derive(Default)]
pub struct Seen {
    pub requests: std::sync::Mutex<Vec<(http::request::Parts, Bytes, Instant)>>,
}

impl Seen {
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
    /// Requests whose path is not `except`.
    pub fn count_except(&self, except: &str) -> usize {
        self.requests.lock().unwrap().iter().filter(|(p, _, _)| p.uri.path() != except).count()
    }
    pub fn bodies(&self) -> Vec<Bytes> {
        self.requests.lock().unwrap().iter().map(|(_, b, _)| b.clone()).collect()
    }
    pub fn times(&self) -> Vec<Instant> {
        self.requests.lock().unwrap().iter().map(|(_, _, t)| *t).collect()
    }
}

/// An origin that records every request (head, whole body, arrival time) and answers with
/// `respond(n, parts)`, `n` being the request's 1-based arrival number.
pub async fn counting_origin<F>(respond: F) -> (Origin, Arc<Seen>)
where
    F: Fn(usize, &http::request::Parts) -> Response<Body> + Send + Sync + 'static,
{
    let seen = Arc::new(Seen::default());
    let log = seen.clone();
    let respond = Arc::new(respond);
    let origin = Origin::start(move |req: Request<Incoming>| {
        let (log, respond) = (log.clone(), respond.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let n = {
                let mut all = log.requests.lock().unwrap();
                all.push((parts.clone(), body, Instant::now()));
                all.len()
            };
            respond(n, &parts)
        }
    })
    .await;
    (origin, seen)
}

/// A response with `status` and a short body.
pub fn status_response(status: u16) -> Response<Body> {
    Response::builder().status(status).body(full(format!("status {status}\n"))).unwrap()
}

/// Runs `clients` concurrent HTTP/1.1 clients (one connection each) sending `per_client`
/// sequential GETs of `path` with an optional header; returns each answer and its latency.
pub async fn load(
    addr: SocketAddr,
    clients: usize,
    per_client: usize,
    path: &str,
    header: Option<(&'static str, String)>,
) -> Vec<(Got, Duration)> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (path, header) = (path.to_owned(), header.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::h1(addr).await;
            let mut out = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let mut req = Request::get(path.as_str());
                if let Some((k, v)) = &header {
                    req = req.header(*k, v.as_str());
                }
                let t = Instant::now();
                let got = c.fetch(req.body(full("")).unwrap()).await;
                out.push((got, t.elapsed()));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Admin `/clusters` as JSON.
pub fn clusters_json(proxy: &Proxy) -> serde_json::Value {
    let (status, body) = admin_get(proxy.admin, "/clusters").unwrap();
    assert_eq!(status, 200, "/clusters: {body}");
    serde_json::from_str(&body).unwrap()
}

/// One endpoint's entry in `/clusters` (panics when absent).
pub fn endpoint_json(proxy: &Proxy, cluster: &str, addr: SocketAddr) -> serde_json::Value {
    let all = clusters_json(proxy);
    let c = all["clusters"].as_array().unwrap().iter().find(|c| c["name"] == cluster).cloned();
    let c = c.unwrap_or_else(|| panic!("no cluster {cluster} in /clusters: {all}"));
    let e = c["endpoints"].as_array().unwrap().iter().find(|e| e["address"] == addr.to_string()).cloned();
    e.unwrap_or_else(|| panic!("no endpoint {addr} in cluster {cluster}: {c}"))
}

/// Polls `/clusters` until the endpoint's `health` is `want`, up to `limit`; true if it got there.
pub async fn wait_health(proxy: &Proxy, cluster: &str, addr: SocketAddr, want: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if endpoint_json(proxy, cluster, addr)["health"] == want {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An echo origin that can be killed for real: its listener closes (new connections are
/// refused) and every open connection is cut, in-flight requests included.
pub struct KillableOrigin {
    pub addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    killed: Arc<std::sync::atomic::AtomicBool>,
}

impl KillableOrigin {
    pub async fn echo(name: &'static str) -> KillableOrigin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let killed: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (tracked, dead) = (conns.clone(), killed.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let json = serde_json::json!({ "origin": name });
                    Ok::<_, Infallible>(Response::new(full(json.to_string())))
                });
                let conn = tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                let mut open = tracked.lock().unwrap();
                // A connection accepted while `kill` ran is cut too.
                if dead.load(std::sync::atomic::Ordering::SeqCst) {
                    conn.abort();
                }
                open.push(conn.abort_handle());
            }
        });
        KillableOrigin { addr, accept, conns, killed }
    }

    /// Closes the listener and cuts every connection.
    pub fn kill(&self) {
        self.killed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for KillableOrigin {
    fn drop(&mut self) {
        self.kill();
    }
}

// --- identity helpers ---

/// Installs the ring crypto provider as the process default (idempotent).
pub fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `spiffe://trellis.local/ns/default/sa/SA`.
pub fn spiffe(sa: &str) -> trellis_certs::SpiffeId {
    trellis_certs::SpiffeId::workload("trellis.local", "default", sa).unwrap()
}

/// Issues a leaf for `id` (extra SANs `dns`, valid 1 h) and writes `PREFIX.pem` and `PREFIX.key`.
pub fn issue_to(ca: &trellis_certs::Ca, id: &str, dns: &[&str], prefix: &std::path::Path) -> trellis_certs::Issued {
    let id = trellis_certs::SpiffeId::parse(id).unwrap();
    let dns: Vec<String> = dns.iter().map(|s| (*s).to_owned()).collect();
    let issued = ca.issue(&id, Duration::from_secs(3600), &dns).unwrap();
    issued.write(prefix).unwrap();
    issued
}

/// `PREFIX.pem` and `PREFIX.key`.
pub fn pem_key(prefix: &std::path::Path) -> (PathBuf, PathBuf) {
    (PathBuf::from(format!("{}.pem", prefix.display())), PathBuf::from(format!("{}.key", prefix.display())))
}

/// Replaces `path` atomically: writes a sibling temp file, then renames it over `path`.
pub fn replace_file(path: &std::path::Path, contents: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", fastrand::u32(..)));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Accepts any server certificate (the tests that use it check the server themselves, or
/// test the server's verification of the client); handshake signatures are still checked.
#[derive(Debug)]
pub struct AnyServerCert(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How a test TLS client is set up.
#[derive(Clone, Default)]
pub struct TlsClientOpts {
    /// Client certificate chain and key files (PEM), presented when asked.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Verify the server against these roots (PEM) and the server name; `None`: accept any.
    pub roots: Option<PathBuf>,
    /// Offer only TLS 1.2.
    pub tls12_only: bool,
    /// ALPN protocols to offer (e.g. `h2`, `http/1.1`).
    pub alpn: Vec<Vec<u8>>,
}

/// A rustls client config (ring provider) from `opts`.
pub fn tls_client_config(opts: &TlsClientOpts) -> Arc<rustls::ClientConfig> {
    let provider = ring_provider();
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        if opts.tls12_only { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13, &rustls::version::TLS12] };
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions).unwrap();
    let builder = match &opts.roots {
        Some(bundle) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in trellis_certs::load_certs(bundle).unwrap() {
                roots.add(c).unwrap();
            }
            builder.with_root_certificates(roots)
        }
        None => builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyServerCert(provider))),
    };
    let mut config = match &opts.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(trellis_certs::load_certs(cert).unwrap(), trellis_certs::load_key(key).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = opts.alpn.clone();
    Arc::new(config)
}

/// What a finished TLS handshake showed the client.
#[derive(Debug, Clone)]
pub struct TlsSeen {
    /// The server's leaf certificate.
    pub leaf: trellis_certs::CertInfo,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
}

enum TlsSender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

/// One keep-alive HTTP connection over TLS (HTTP/2 when ALPN picked h2, else HTTP/1.1).
pub struct TlsConn {
    sender: TlsSender,
    pub seen: TlsSeen,
}

impl TlsConn {
    /// TCP connect, TLS handshake (SNI `server_name`: a DNS name, or an IP for no SNI) and
    /// HTTP handshake, all within 5 s. Errors are strings for assertions.
    pub async fn open(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<TlsConn, String> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
        let work = async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls handshake: {e}"))?;
            let (_, conn) = tls.get_ref();
            let leaf = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| trellis_certs::inspect_der(c).unwrap())
                .ok_or("no server certificate")?;
            let seen =
                TlsSeen { leaf, alpn: conn.alpn_protocol().map(<[u8]>::to_vec), version: conn.protocol_version() };
            let sender = if seen.alpn.as_deref() == Some(b"h2") {
                let (tx, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
                tokio::spawn(c);
                TlsSender::H2(tx)
            } else {
                let (tx, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("h1 handshake: {e}"))?;
                tokio::spawn(c);
                TlsSender::H1(tx)
            };
            Ok(TlsConn { sender, seen })
        };
        tokio::time::timeout(Duration::from_secs(5), work).await.map_err(|_| "timed out".to_owned())?
    }

    /// Sends `method path` and reads the whole answer, within 5 s.
    pub async fn request(&mut self, method: &str, path: &str) -> Result<Got, String> {
        let work = async {
            let resp = match &mut self.sender {
                TlsSender::H1(tx) => {
                    let req =
                        Request::builder().method(method).uri(path).header("host", "test").body(full("")).unwrap();
                    tx.ready().await.map_err(|e| format!("not ready: {e}"))?;
                    tx.send_request(req).await
                }
                TlsSender::H2(tx) => {
                    let req =
                        Request::builder().method(method).uri(format!("https://test{path}")).body(full("")).unwrap();
                    tx.ready().await.map_err(|e| format!("not ready: {e}"))?;
                    tx.send_request(req).await
                }
            }
            .map_err(|e| format!("no response: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok(Got { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(Duration::from_secs(5), work).await.map_err(|_| "timed out".to_owned())?
    }

    pub async fn get(&mut self, path: &str) -> Result<Got, String> {
        self.request("GET", path).await
    }
}

/// One request on a fresh TLS connection.
pub async fn tls_fetch(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    method: &str,
    path: &str,
) -> Result<(Got, TlsSeen), String> {
    let mut c = TlsConn::open(addr, config, server_name).await?;
    let got = c.request(method, path).await?;
    Ok((got, c.seen))
}

/// `text` without ANSI escape sequences (the proxy colours its log even into a file).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params… final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The proxy's log as plain text (no colours).
pub fn plain_logs(proxy: &Proxy) -> String {
    strip_ansi(&proxy.logs())
}

/// Waits until the proxy's plain-text log contains `needle`, up to `limit`.
pub async fn wait_log(proxy: &Proxy, needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if plain_logs(proxy).contains(needle) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the proxy's config version is above `before`, up to `limit`.
pub async fn wait_version_above(proxy: &Proxy, before: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if blocking(|| proxy.version()) > before {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS echo origin (HTTP/1.1 and HTTP/2 by ALPN) with the given server certificate; the
/// returned list records the SNI of every accepted handshake.
pub async fn tls_echo_origin(
    name: &'static str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (Origin, Arc<std::sync::Mutex<Vec<Option<String>>>>) {
    let mut config = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(trellis_certs::load_certs(cert).unwrap(), trellis_certs::load_key(key).unwrap())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let snis: Arc<std::sync::Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = snis.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await else {
                    return;
                };
                seen.lock().unwrap().push(tls.get_ref().1.server_name().map(str::to_owned));
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(echo_answer(name, req).await)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (Origin { addr, task }, snis)
}

/// The answer of [`Origin::echo`] for one request.
pub async fn echo_answer(name: &'static str, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> =
        parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into())).collect();
    let json = serde_json::json!({
        "origin": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    Response::builder().header("content-type", "application/json").body(full(json.to_string())).unwrap()
}

/// Polls `/metrics` until the sample `name{labels}` satisfies `ok`, up to `limit`; returns the
/// last value seen (`None`: never present).
pub async fn wait_metric(
    proxy: &Proxy,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
    limit: Duration,
) -> Option<f64> {
    let deadline = Instant::now() + limit;
    loop {
        let v = metric_value(&blocking(|| proxy.metrics()), name, labels);
        if v.is_some_and(&ok) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

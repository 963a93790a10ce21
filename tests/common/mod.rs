//! Test helpers: spawn the real `trellis` binary on a config, real in-process origins on
//! 127.0.0.1, and real clients. Every spawned process is killed by handle on drop.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

mod control_plane;
mod etcd;
mod h3;
mod identity;
mod lifecycle;
mod mcp;
mod netns;
mod observe;
mod resilience;
mod workload;
mod ws;
pub use control_plane::*;
pub use etcd::*;
pub use h3::*;
pub use identity::*;
pub use lifecycle::*;
pub use mcp::*;
pub use netns::*;
pub use observe::*;
pub use resilience::*;
pub use workload::*;
pub use ws::*;

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

#[path = "../support/ports.rs"]
mod ports;
pub use ports::free_port;

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
        let mut p = Self::spawn(yaml, args);
        p.wait_ready();
        p
    }

    /// Starts the proxy and waits only for its admin server (`/live`), not for `/ready`:
    /// for proxies that are expected never to get a config.
    pub fn spawn_live(yaml: &str, args: &[&str]) -> Proxy {
        let mut p = Self::spawn(yaml, args);
        let deadline = Instant::now() + Duration::from_secs(20);
        while admin_get(p.admin, "/live").map(|(s, _)| s != 200).unwrap_or(true) {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("trellis exited early ({status}): {}", p.logs());
            }
            assert!(Instant::now() < deadline, "trellis not live in 20s: {}", p.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// Starts the proxy without waiting for anything (e.g. for one expected to exit).
    pub fn spawn(yaml: &str, args: &[&str]) -> Proxy {
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
        Proxy { child, dir, config, admin, log }
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
        Self::serve_with(listener, handler, false)
    }

    /// Like `serve`; `h1_only`: HTTP/1.1 only (an h2 preface gets hyper's 400).
    pub fn serve_with<F, Fut>(listener: tokio::net::TcpListener, handler: F, h1_only: bool) -> Origin
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
                    let io = TokioIo::new(stream);
                    if h1_only {
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                    } else {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        Origin { addr, task }
    }

    /// Like [`Origin::echo`], speaking HTTP/1.1 only.
    pub async fn echo_h1_only(name: &'static str) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Origin::serve_with(listener, move |req: Request<Incoming>| echo_answer(name, req), true)
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
        Client::over(s, addr, true).await
    }

    /// HTTP/1.1 (or h2c, `h2`) on a connection already made to `addr`.
    pub async fn over(s: tokio::net::TcpStream, addr: SocketAddr, h2: bool) -> Client {
        if h2 {
            let (tx, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await.unwrap();
            tokio::spawn(conn);
            return Client { h1: None, h2: Some(tx), addr };
        }
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        Client { h1: Some(tx), h2: None, addr }
    }

    /// Another handle on this h2c client's connection (streams sent on it run concurrently).
    pub fn clone_h2(&self) -> Client {
        Client { h1: None, h2: self.h2.clone(), addr: self.addr }
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

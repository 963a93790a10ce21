//! Helpers for balancing and resilience tests: counting, slow and killable origins, load,
//! the admin view of clusters.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::*;

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

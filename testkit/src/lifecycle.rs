//! Helpers for reload, drain and long-stream tests: timed test bodies, SSE readers, logs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::*;

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
    let handler = Arc::new(handler);
    let (addr, task) = accept_each(listener, move |stream, peer| {
        let handler = handler.clone();
        async move {
            let svc = hyper::service::service_fn(move |req| {
                let fut = handler.as_ref()(peer, req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
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

//! The two demo agent services. `tools` answers tool calls, one of them as a stream of
//! server-sent events; `planner` handles a "plan" by calling `tools` twice through its
//! sidecar (a search, then a streamed tool run it reads to the end).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

pub type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

/// Serves `handler` on `listener` (HTTP/1.1 and h2c) until the task is aborted.
pub async fn serve<F, Fut>(listener: tokio::net::TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let h = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The tools service: `/search` (JSON) and `/run` (5 SSE events, 50 ms apart).
pub async fn tools(req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/search" => Response::builder()
            .header("content-type", "application/json")
            .body(full(r#"{"results":["trellis.dev","linkerd.io","envoyproxy.io"]}"#))
            .unwrap_or_default(),
        "/run" => Response::builder()
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(events(5, Duration::from_millis(50))))
            .unwrap_or_default(),
        _ => status(StatusCode::NOT_FOUND),
    }
}

/// A body fed by a channel: each message is one frame; it ends when the sender is dropped.
struct Events(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

fn events(n: u32, every: Duration) -> Events {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for i in 0..n {
            tokio::time::sleep(every).await;
            if tx.send(Bytes::from(format!("event: step\ndata: {{\"step\":{i}}}\n\n"))).await.is_err() {
                return;
            }
        }
    });
    Events(rx)
}

fn status(s: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(""));
    *r.status_mut() = s;
    r
}

/// The planner service: each `/plan` calls tools through the sidecar at `sidecar`.
pub async fn planner(req: Request<Incoming>, sidecar: SocketAddr) -> Response<Body> {
    if req.uri().path() != "/plan" {
        return status(StatusCode::NOT_FOUND);
    }
    match plan(sidecar).await {
        Ok(events) => Response::builder()
            .header("content-type", "application/json")
            .body(full(format!(r#"{{"searched":true,"steps":{events}}}"#)))
            .unwrap_or_default(),
        Err(e) => {
            let mut r = Response::new(full(format!("tools call failed: {e}\n")));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    }
}

async fn plan(sidecar: SocketAddr) -> Result<usize, String> {
    let stream = tokio::net::TcpStream::connect(sidecar).await.map_err(|e| e.to_string())?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let get = |path: &str| Request::get(path).header("host", "tools").body(full("")).map_err(|e| e.to_string());
    let search = tx.send_request(get("/search")?).await.map_err(|e| e.to_string())?;
    if !search.status().is_success() {
        return Err(format!("search: {}", search.status()));
    }
    search.into_body().collect().await.map_err(|e| e.to_string())?;
    tx.ready().await.map_err(|e| e.to_string())?;
    let run = tx.send_request(get("/run")?).await.map_err(|e| e.to_string())?;
    if !run.status().is_success() {
        return Err(format!("run: {}", run.status()));
    }
    let body = run.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(body.windows(6).filter(|w| w == b"event:").count())
}

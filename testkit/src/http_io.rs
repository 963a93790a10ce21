//! In-process HTTP origins (HTTP/1.1 and h2c on one port) and keep-alive clients, on hyper.

use super::*;

/// Accepts connections on `listener` until the task is aborted, running `serve(stream, peer)`
/// for each on a task of its own; the listener's address and the accept task.
pub fn accept_each<F, Fut>(listener: tokio::net::TcpListener, serve: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            tokio::spawn(serve(stream, peer));
        }
    });
    (addr, task)
}

/// The request and response body of the kit's origins and clients.
pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

type Handler = Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync>;

/// An in-process origin (HTTP/1.1 and h2c on one port) running `handler` per request.
pub struct Origin {
    pub addr: SocketAddr,
    pub(crate) task: tokio::task::JoinHandle<()>,
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
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let (addr, task) = accept_each(listener, move |stream, _| {
            let handler = handler.clone();
            async move {
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

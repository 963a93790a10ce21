//! A real OTLP collector for tracing tests: one port that takes OTLP/HTTP (`POST
//! /v1/traces`, protobuf) and OTLP/gRPC (`TraceService/Export`, answered by the
//! generated tonic service), in plaintext (HTTP/1.1 and h2c) or over TLS with a certificate
//! from our `certs` crate (ALPN h2 and http/1.1). Every span it is sent is kept.

use super::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::sync::Mutex;

/// The spans a collector received, in arrival order.
#[derive(Clone, Default)]
pub struct Spans(Arc<Mutex<Vec<Span>>>);

impl Spans {
    fn take(&self, req: ExportTraceServiceRequest) {
        let spans = req.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
    }

    /// How many spans arrived so far.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Every span so far.
    pub fn all(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }

    /// The spans of `trace`, once there are at least `n` of them (5 s at most).
    pub async fn trace(&self, trace: u128, n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let spans: Vec<Span> =
                self.0.lock().unwrap().iter().filter(|s| s.trace_id == trace.to_be_bytes()).cloned().collect();
            if spans.len() >= n || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until at least `n` spans arrived (up to `limit`); the count then.
    pub async fn wait_count(&self, n: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        while self.count() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.count()
    }
}

#[tonic::async_trait]
impl TraceService for Spans {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running collector.
pub struct Collector {
    pub origin: Origin,
    pub spans: Spans,
}

impl Collector {
    /// A plaintext collector: `http://ADDR`.
    pub async fn plain() -> Collector {
        let spans = Spans::default();
        let keep = spans.clone();
        let origin = Origin::start(move |req| answer(keep.clone(), req)).await;
        Collector { origin, spans }
    }

    /// A TLS collector presenting `cert`/`key` (PEM files): `https://NAME:PORT` where the
    /// certificate names NAME.
    pub async fn tls(cert: &Path, key: &Path) -> Collector {
        let spans = Spans::default();
        let keep = spans.clone();
        let (origin, _snis) = tls_origin(cert, key, move |req| answer(keep.clone(), req)).await;
        Collector { origin, spans }
    }

    pub fn addr(&self) -> SocketAddr {
        self.origin.addr
    }
}

/// One export request, by path: OTLP/HTTP or OTLP/gRPC; anything else 404.
async fn answer(spans: Spans, req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/v1/traces" => {
            let protobuf = req.method() == http::Method::POST
                && req.headers().get("content-type").is_some_and(|v| v == "application/x-protobuf");
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            match ExportTraceServiceRequest::decode(body) {
                Ok(r) if protobuf => {
                    spans.take(r);
                    Response::builder()
                        .header("content-type", "application/x-protobuf")
                        .body(full(ExportTraceServiceResponse::default().encode_to_vec()))
                        .unwrap()
                }
                _ => Response::builder().status(400).body(full("bad export")).unwrap(),
            }
        }
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => grpc(spans, req).await,
        _ => Response::builder().status(404).body(full("not an OTLP path")).unwrap(),
    }
}

/// The generated gRPC service answers; its body (data, then the grpc-status trailers) is
/// passed on frame by frame.
async fn grpc(spans: Spans, req: Request<Incoming>) -> Response<Body> {
    use tonic::codegen::Service;
    let resp = match TraceServiceServer::new(spans).call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    let Ok(collected) = body.collect().await else {
        return Response::builder().status(500).body(full("grpc body")).unwrap();
    };
    let trailers = collected.trailers().cloned();
    let mut frames = vec![hyper::body::Frame::data(collected.to_bytes())];
    frames.extend(trailers.map(hyper::body::Frame::trailers));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames.into_iter().map(Ok)));
    Response::from_parts(parts, BodyExt::boxed(body))
}

/// A collector that takes connections and never answers, not even a byte: every export to
/// it waits for the exporter's time limit (for tests of a full export queue).
pub struct Stalled {
    pub addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Stalled {
    pub async fn start() -> Stalled {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                held.push(s);
            }
        });
        Stalled { addr, accepted, task }
    }

    /// Waits until at least `n` connections were taken (up to `limit`); the count then.
    pub async fn wait_accepted(&self, n: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let count = || self.accepted.load(std::sync::atomic::Ordering::Relaxed);
        while count() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        count()
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.task.abort();
    }
}

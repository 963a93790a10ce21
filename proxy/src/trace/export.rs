//! The span exporter: a bounded queue the workers push finished spans into (never
//! waiting: a full queue drops and counts), and one thread of its own that sends them in
//! batches of up to [`BATCH`] spans, at least every [`FLUSH_EVERY`], as an OTLP
//! `ExportTraceServiceRequest` over gRPC or HTTP/protobuf. A batch the collector does not
//! take is dropped and counted: spans are never retried into an unbounded backlog.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics::Counter;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::sync::mpsc;
use trellis_api::{Otlp, OtlpProtocol};

use crate::telemetry;

/// Spans per export request at most.
const BATCH: usize = 512;
/// A batch goes out at least this often while spans wait.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// One export's time limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans dropped because the queue was full or the collector refused them.
pub fn spans_dropped(reason: &'static str) -> Counter {
    metrics::counter!(telemetry::TRACE_SPANS_DROPPED_TOTAL, "reason" => reason)
}

/// Spans the collector accepted.
pub fn spans_exported() -> Counter {
    metrics::counter!(telemetry::TRACE_SPANS_EXPORTED_TOTAL)
}

/// Where workers put finished spans.
#[derive(Debug)]
pub struct Queue {
    tx: mpsc::Sender<Span>,
    full: Counter,
}

/// Every exporter started in this process, by collector, protocol and queue size.
fn registry() -> &'static Mutex<HashMap<String, Arc<Queue>>> {
    static QUEUES: OnceLock<Mutex<HashMap<String, Arc<Queue>>>> = OnceLock::new();
    QUEUES.get_or_init(Default::default)
}

impl Queue {
    /// The queue of the exporter for `otlp`, started on first use.
    pub fn shared(otlp: &Otlp, max_queue: u32, service: &str) -> Arc<Queue> {
        let key = format!("{:?} {} {max_queue} {service}", otlp.protocol, otlp.endpoint);
        let mut all = registry().lock().unwrap_or_else(|p| p.into_inner());
        all.entry(key)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(max_queue.max(1) as usize);
                let exporter = Exporter { otlp: otlp.clone(), resource: resource(service), rx };
                if let Err(e) = std::thread::Builder::new().name("trellis-otlp".into()).spawn(move || exporter.run()) {
                    tracing::error!(error = %e, "cannot start the span exporter; spans will be dropped");
                }
                Arc::new(Queue { tx, full: spans_dropped("queue_full") })
            })
            .clone()
    }

    /// Hands a finished span to the exporter, or drops it (counted) when the queue is full.
    pub fn push(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.full.increment(1);
        }
    }
}

struct Exporter {
    otlp: Otlp,
    resource: Resource,
    rx: mpsc::Receiver<Span>,
}

/// How batches reach the collector.
enum Sender {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http { client: Box<Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>>, uri: http::Uri },
}

impl Exporter {
    fn run(self) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the span exporter's runtime; spans will be dropped");
                return;
            }
        };
        rt.block_on(self.serve());
    }

    async fn serve(mut self) {
        let Some(mut sender) = self.sender() else { return };
        let exported = spans_exported();
        let failed = spans_dropped("export_failed");
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            // Wait for a first span, then gather more for up to FLUSH_EVERY.
            match self.rx.recv().await {
                Some(s) => batch.push(s),
                None => return,
            }
            let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) | Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(self.resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "trellis".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        spans: std::mem::replace(&mut batch, Vec::with_capacity(BATCH)),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, send(&mut sender, request)).await {
                Ok(Ok(())) => exported.increment(n),
                Ok(Err(e)) => {
                    failed.increment(n);
                    tracing::warn!(collector = %self.otlp.endpoint, error = %e, spans = n, "span export failed");
                }
                Err(_) => {
                    failed.increment(n);
                    tracing::warn!(collector = %self.otlp.endpoint, spans = n, "span export timed out");
                }
            }
        }
    }

    fn sender(&self) -> Option<Sender> {
        let endpoint = self.otlp.endpoint.trim_end_matches('/');
        match self.otlp.protocol {
            OtlpProtocol::Grpc => match tonic::transport::Endpoint::from_shared(endpoint.to_owned()) {
                Ok(e) => Some(Sender::Grpc(TraceServiceClient::new(e.connect_lazy()))),
                Err(e) => {
                    tracing::error!(collector = %endpoint, error = %e, "bad OTLP endpoint; spans will be dropped");
                    None
                }
            },
            OtlpProtocol::Http => match format!("{endpoint}/v1/traces").parse() {
                Ok(uri) => {
                    Some(Sender::Http { client: Box::new(Client::builder(TokioExecutor::new()).build_http()), uri })
                }
                Err(e) => {
                    tracing::error!(collector = %endpoint, error = %e, "bad OTLP endpoint; spans will be dropped");
                    None
                }
            },
        }
    }
}

async fn send(sender: &mut Sender, request: ExportTraceServiceRequest) -> Result<(), String> {
    match sender {
        Sender::Grpc(client) => client.export(request).await.map(drop).map_err(|s| s.to_string()),
        Sender::Http { client, uri } => {
            let req = http::Request::post(uri.clone())
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .body(Full::new(Bytes::from(request.encode_to_vec())))
                .map_err(|e| e.to_string())?;
            let resp = client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // Read the (small) answer so the connection can be reused.
            let _ = resp.into_body().collect().await;
            if status.is_success() { Ok(()) } else { Err(format!("collector answered {status}")) }
        }
    }
}

/// The resource every span of this proxy belongs to.
fn resource(service: &str) -> Resource {
    let kv = super::kv;
    Resource {
        attributes: vec![
            kv("service.name", service),
            kv("telemetry.sdk.name", "trellis"),
            kv("telemetry.sdk.language", "rust"),
            kv("service.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    }
}

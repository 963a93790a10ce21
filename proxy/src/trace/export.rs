//! The span exporter: a bounded queue the workers push finished spans into (never
//! waiting: a full queue drops and counts), and one thread of its own that sends them in
//! batches of up to [`BATCH`] spans, at least every [`FLUSH_EVERY`], as an OTLP
//! `ExportTraceServiceRequest` over gRPC or HTTP/protobuf. A batch the collector does not
//! take is dropped and counted: spans are never retried into an unbounded backlog.
//!
//! Exporters are shared by collector: configs (reloads, control-plane updates) with the same
//! collector, TLS roots, queue size and service share one queue, so a reload loses no queued
//! span. When no config uses an exporter any more, its queue closes; the thread sends what
//! is still queued and ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
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

use super::collector::TlsConnector;
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

/// Every exporter running in this process, by collector, TLS roots, queue size and service.
fn registry() -> &'static Mutex<HashMap<String, Weak<Queue>>> {
    static QUEUES: OnceLock<Mutex<HashMap<String, Weak<Queue>>>> = OnceLock::new();
    QUEUES.get_or_init(Default::default)
}

impl Queue {
    /// The queue of the exporter for `otlp`, started on first use. `tls` (an `https://`
    /// collector) is the client config, `roots` names what it trusts (a digest of the CA
    /// file, so that a changed file starts a new exporter).
    pub fn shared(
        otlp: &Otlp,
        max_queue: u32,
        service: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        roots: u64,
    ) -> Arc<Queue> {
        let key = format!("{:?} {} {roots:x} {max_queue} {service}", otlp.protocol, otlp.endpoint);
        let mut all = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = all.get(&key).and_then(Weak::upgrade) {
            return q;
        }
        all.retain(|_, q| q.strong_count() > 0);
        let (tx, rx) = mpsc::channel(max_queue.max(1) as usize);
        let exporter = Exporter { otlp: otlp.clone(), tls, resource: resource(service), rx };
        if let Err(e) = std::thread::Builder::new().name("trellis-otlp".into()).spawn(move || exporter.run()) {
            tracing::error!(error = %e, "cannot start the span exporter; spans will be dropped");
        }
        let q = Arc::new(Queue { tx, full: spans_dropped("queue_full") });
        all.insert(key, Arc::downgrade(&q));
        q
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
    /// `https://` collectors.
    tls: Option<Arc<rustls::ClientConfig>>,
    resource: Resource,
    rx: mpsc::Receiver<Span>,
}

/// How batches reach the collector.
enum Sender {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http { client: Box<Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>>, uri: http::Uri },
    Https { client: Box<Client<TlsConnector, Full<Bytes>>>, uri: http::Uri },
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
        let bad = |e: &dyn std::fmt::Display| {
            tracing::error!(collector = %endpoint, error = %e, "bad OTLP endpoint; spans will be dropped");
        };
        match self.otlp.protocol {
            OtlpProtocol::Grpc => match tonic::transport::Endpoint::from_shared(endpoint.to_owned()) {
                Ok(e) => {
                    let channel = match &self.tls {
                        Some(tls) => e.connect_with_connector_lazy(TlsConnector(tls.clone())),
                        None => e.connect_lazy(),
                    };
                    Some(Sender::Grpc(TraceServiceClient::new(channel)))
                }
                Err(e) => {
                    bad(&e);
                    None
                }
            },
            OtlpProtocol::Http => match format!("{endpoint}/v1/traces").parse() {
                Ok(uri) => Some(match &self.tls {
                    Some(tls) => Sender::Https {
                        client: Box::new(Client::builder(TokioExecutor::new()).build(TlsConnector(tls.clone()))),
                        uri,
                    },
                    None => Sender::Http { client: Box::new(Client::builder(TokioExecutor::new()).build_http()), uri },
                }),
                Err(e) => {
                    bad(&e);
                    None
                }
            },
        }
    }
}

async fn send(sender: &mut Sender, request: ExportTraceServiceRequest) -> Result<(), String> {
    match sender {
        Sender::Grpc(client) => client.export(request).await.map(drop).map_err(|s| grpc_error(&s)),
        Sender::Http { client, uri } => post(client, uri, request).await,
        Sender::Https { client, uri } => post(client, uri, request).await,
    }
}

/// tonic's status hides a transport failure's cause (a refused certificate) a few levels down.
fn grpc_error(s: &tonic::Status) -> String {
    let mut text = s.to_string();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        text = format!("{text}: {e}");
        source = e.source();
    }
    text
}

async fn post<C>(
    client: &Client<C, Full<Bytes>>,
    uri: &http::Uri,
    request: ExportTraceServiceRequest,
) -> Result<(), String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let req = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(request.encode_to_vec())))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| {
        // The client's error says "client error (Connect)"; the cause is below it.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    })?;
    let status = resp.status();
    // Read the (small) answer so the connection can be reused.
    let _ = resp.into_body().collect().await;
    if status.is_success() { Ok(()) } else { Err(format!("collector answered {status}")) }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Configs with the same collector share one exporter while any of them lives; once
    /// none does, the exporter is released (its thread drains the queue and ends) and the
    /// next config starts a new one.
    #[test]
    fn an_exporter_is_shared_while_used_and_released_after() {
        let otlp = Otlp { endpoint: "http://127.0.0.1:9".into(), protocol: OtlpProtocol::Http, ca_file: None };
        let service = "export-share-test";
        let a = Queue::shared(&otlp, 8, service, None, 0);
        let b = Queue::shared(&otlp, 8, service, None, 0);
        assert!(Arc::ptr_eq(&a, &b), "same collector: one exporter");
        let bigger = Queue::shared(&otlp, 16, service, None, 0);
        assert!(!Arc::ptr_eq(&a, &bigger), "another queue size: another exporter");
        let other_roots = Queue::shared(&otlp, 8, service, None, 7);
        assert!(!Arc::ptr_eq(&a, &other_roots), "other TLS roots: another exporter");

        let released = Arc::downgrade(&a);
        drop((a, b));
        assert!(released.upgrade().is_none(), "the registry does not keep an unused exporter");
        let again = Queue::shared(&otlp, 8, service, None, 0);
        assert!(!again.tx.is_closed());
        let live = registry().lock().unwrap().values().filter(|q| q.strong_count() > 0).count();
        assert!(live >= 3, "again, bigger and other_roots are registered");
    }
}

//! The demo's tracing (DESIGN §14): a small OTLP/HTTP collector in this process, which the
//! control plane's `Telemetry` resource points both sidecars at (sampling only requests whose
//! `traceparent` asks for it), and one traced request through the mesh whose spans the demo
//! prints as a tree: the planner sidecar's server span, its client span per try, and the
//! tools sidecar's server span under that try.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Spans kept at most (the demo only looks for one trace).
const KEEP: usize = 1000;

/// Spans received, with the `service.name` of the proxy that sent each.
#[derive(Clone, Default)]
pub struct Collector(Arc<Mutex<Vec<(String, Span)>>>);

impl Collector {
    /// Serves OTLP/HTTP (`POST /v1/traces`, protobuf) on `listener`.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        crate::agents::serve(listener, move |req| self.clone().export(req)).await;
    }

    async fn export(self, req: Request<Incoming>) -> Response<crate::agents::Body> {
        let ok = req.method() == http::Method::POST && req.uri().path() == "/v1/traces";
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let status = match ExportTraceServiceRequest::decode(body) {
            Ok(export) if ok => {
                let mut spans = self.0.lock().unwrap_or_else(|e| e.into_inner());
                for rs in export.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                            AnyValue::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        if spans.len() < KEEP {
                            spans.push((service.clone(), span));
                        }
                    }
                }
                StatusCode::OK
            }
            _ => StatusCode::BAD_REQUEST,
        };
        Response::builder().status(status).body(Full::new(Bytes::new()).boxed()).unwrap_or_default()
    }

    fn trace(&self, id: u128) -> Vec<(String, Span)> {
        let spans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        spans.iter().filter(|(_, s)| s.trace_id == id.to_be_bytes()).cloned().collect()
    }
}

/// Sends one sampled request through the planner's sidecar and prints its trace: the spans
/// the two sidecars exported for it, as a tree.
pub async fn show(outbound: SocketAddr, collector: &Collector) -> Result<(), String> {
    let trace = new_trace_id();
    let status = get(outbound, "/search?q=tracing", &format!("00-{trace:032x}-{:016x}-01", 0x1d3au64)).await?;
    // The sidecars export in batches at least every 500 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut spans = collector.trace(trace);
    while spans.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        spans = collector.trace(trace);
    }
    println!("A traced request (GET /search through both sidecars, answered {status}); its spans, exported over OTLP:");
    println!("  trace {trace:032x}");
    print_tree(&spans, &0x1d3au64.to_be_bytes(), 2);
    if spans.len() < 3 {
        return Err(format!("{} spans arrived, 3 expected", spans.len()));
    }
    Ok(())
}

fn print_tree(spans: &[(String, Span)], parent: &[u8], depth: usize) {
    for (service, s) in spans.iter().filter(|(_, s)| s.parent_span_id == parent) {
        let kind = if s.kind == SpanKind::Server as i32 { "server" } else { "client" };
        let micros = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) / 1000;
        let status = s
            .attributes
            .iter()
            .find(|a| a.key == "http.response.status_code")
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                AnyValue::IntValue(i) => Some(*i),
                _ => None,
            })
            .map_or_else(String::new, |c| format!(" {c}"));
        println!("{:depth$}{kind} span  {} {service}{status}  {micros} µs", "", s.name);
        print_tree(spans, &s.span_id, depth + 2);
    }
}

fn new_trace_id() -> u128 {
    // A trace id needs only to be unlikely to repeat: the clock's nanoseconds mixed with the
    // process id.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (u128::from(std::process::id()) << 96) ^ now.as_nanos() ^ 0x5eed_0000_0000_0000_0000_0000_0000_0001
}

async fn get(addr: SocketAddr, path: &str, traceparent: &str) -> Result<u16, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "tools")
        .header("traceparent", traceparent)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

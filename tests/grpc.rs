#![allow(clippy::unwrap_used, clippy::expect_used)]
//! gRPC through the real proxy: a tonic server (the standard `grpc.health.v1.Health`
//! service from tonic-health) behind `trellis proxy`, called with tonic's generated client.
//! Covers unary calls, error statuses in trailers(-only) responses, server streaming with
//! updates pushed mid-stream, many concurrent calls on one connection, and the raw wire
//! (trailers carrying `grpc-status`).

use trellis_testkit::config::{self, ClusterProtocol, ListenerProtocol, Yaml};
use trellis_testkit::*;

use http::Request;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as PbStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthReporter;

const LIMIT: Duration = Duration::from_secs(60);
const SERVICE: &str = "trellis.test.Echo";

/// A tonic server with the health service on 127.0.0.1; aborted on drop.
struct GrpcServer {
    addr: SocketAddr,
    reporter: HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn grpc_server() -> GrpcServer {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status(SERVICE, ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await.unwrap();
    });
    GrpcServer { addr, reporter, task }
}

/// The proxy in front of `upstream` (listener `auto`, cluster `protocol`).
fn grpc_config(listen: SocketAddr, upstream: SocketAddr, protocol: ClusterProtocol) -> String {
    let mut b = config::bootstrap();
    b.listeners
        .push(config::Listener { protocol: ListenerProtocol::Auto, ..config::listener("in", listen, &["grpc"]) });
    b.routes.push(config::route("grpc", "/grpc.health.v1.Health/", "health"));
    b.clusters.push(config::cluster("health", protocol, &[upstream]));
    b.yaml()
}

async fn channel(listen: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

fn check_req(service: &str) -> tonic::Request<HealthCheckRequest> {
    tonic::Request::new(HealthCheckRequest { service: service.into() })
}

/// Unary `Check` through the proxy returns SERVING (a successful call needs `grpc-status: 0`
/// in the trailers, which the proxy must carry), for an `http2` and an `auto` cluster.
#[tokio::test]
async fn unary_check_returns_serving() {
    within(LIMIT, async {
        let server = grpc_server().await;
        for protocol in ["http2", "auto"] {
            let listen = listen_addr();
            let proxy = Proxy::start(&grpc_config(listen, server.addr, config::protocol(protocol)));
            let mut client = HealthClient::new(channel(listen).await);
            for service in ["", SERVICE] {
                let resp = client
                    .check(check_req(service))
                    .await
                    .unwrap_or_else(|s| panic!("{protocol} check({service:?}): {s:?}; logs: {}", log_tail(&proxy, 10)));
                assert_eq!(resp.get_ref().status(), PbStatus::Serving, "{protocol} {service:?}");
            }
            let m = proxy.metrics();
            assert_eq!(
                metric_value(
                    &m,
                    "trellis_requests_total",
                    &[("route", "grpc"), ("cluster", "health"), ("code", "200")]
                ),
                Some(2.0),
                "{m}"
            );
        }
    })
    .await;
}

/// `Check` for an unknown service fails with NOT_FOUND: the status the server put in its
/// trailers(-only) response reaches the client unchanged, and the proxy adds no error of its own.
#[tokio::test]
async fn unknown_service_status_passes_through() {
    within(LIMIT, async {
        let server = grpc_server().await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&grpc_config(listen, server.addr, ClusterProtocol::Http2));
        let mut client = HealthClient::new(channel(listen).await);
        let status = client.check(check_req("no.such.Service")).await.expect_err("unknown service must fail");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.metadata().get("x-trellis-error").is_none(), "{status:?}");
        // The connection is still good afterwards.
        let ok = client.check(check_req("")).await.unwrap();
        assert_eq!(ok.get_ref().status(), PbStatus::Serving);
    })
    .await;
}

/// Server-streaming `Watch`: the initial status arrives, then each status change the server
/// makes while the stream is open is pushed through the proxy as it happens.
#[tokio::test]
async fn watch_streams_status_updates() {
    within(LIMIT, async {
        let server = grpc_server().await;
        let listen = listen_addr();
        let proxy = Proxy::start(&grpc_config(listen, server.addr, ClusterProtocol::Http2));
        let mut client = HealthClient::new(channel(listen).await);
        let mut stream = client.watch(check_req(SERVICE)).await.unwrap().into_inner();

        let first = next(&mut stream).await.unwrap().expect("stream ended");
        assert_eq!(first.status(), PbStatus::Serving);

        server.reporter.set_service_status(SERVICE, ServingStatus::NotServing).await;
        let second = next(&mut stream).await.unwrap().expect("stream ended");
        assert_eq!(second.status(), PbStatus::NotServing, "logs: {}", log_tail(&proxy, 10));

        server.reporter.set_service_status(SERVICE, ServingStatus::Serving).await;
        let third = next(&mut stream).await.unwrap().expect("stream ended");
        assert_eq!(third.status(), PbStatus::Serving);

        // Unary calls share the connection with the open stream.
        let ok = client.check(check_req(SERVICE)).await.unwrap();
        assert_eq!(ok.get_ref().status(), PbStatus::Serving);
    })
    .await;
}

/// The next message of a stream, or a panic after 5 s.
async fn next(s: &mut tonic::Streaming<HealthCheckResponse>) -> Result<Option<HealthCheckResponse>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(5), s.message()).await.expect("no update within 5 s")
}

/// 100 concurrent calls multiplexed on one client connection all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unary_calls_on_one_connection() {
    within(LIMIT, async {
        let server = grpc_server().await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&grpc_config(listen, server.addr, ClusterProtocol::Http2));
        let ch = channel(listen).await;
        let mut tasks = Vec::new();
        for i in 0..100 {
            let mut client = HealthClient::new(ch.clone());
            tasks.push(tokio::spawn(async move {
                let service = if i % 5 == 0 { "missing" } else { SERVICE };
                (i, client.check(check_req(service)).await)
            }));
        }
        for t in tasks {
            let (i, r) = t.await.unwrap();
            if i % 5 == 0 {
                assert_eq!(r.unwrap_err().code(), Code::NotFound, "call {i}");
            } else {
                assert_eq!(r.unwrap().get_ref().status(), PbStatus::Serving, "call {i}");
            }
        }
    })
    .await;
}

/// The raw wire: a hand-framed unary call over h2c through the proxy gets the message in the
/// body and `grpc-status: 0` in real HTTP/2 trailers; an error comes back with `grpc-status: 5`.
#[tokio::test]
async fn raw_h2_trailers_carry_grpc_status() {
    within(LIMIT, async {
        let server = grpc_server().await;
        let listen = listen_addr();
        let _proxy = Proxy::start(&grpc_config(listen, server.addr, ClusterProtocol::Http2));
        let mut c = Client::h2(listen).await;
        let call = |msg: Vec<u8>| {
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            framed.extend_from_slice(&msg);
            Request::post("/grpc.health.v1.Health/Check")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(full(framed))
                .unwrap()
        };

        // HealthCheckRequest { service: "" } is the empty message.
        let resp = c.send(call(vec![])).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("response trailers");
        assert_eq!(trailers.get("grpc-status").map(|v| v.to_str().unwrap()), Some("0"), "{trailers:?}");
        // HealthCheckResponse { status: SERVING (1) } = field 1 varint 1.
        assert_eq!(collected.to_bytes().as_ref(), &[0, 0, 0, 0, 2, 0x08, 0x01]);

        // HealthCheckRequest { service: "nope" }: field 1, length 4.
        let mut msg = vec![0x0a, 4];
        msg.extend_from_slice(b"nope");
        let resp = c.send(call(msg)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let head_status = resp.headers().get("grpc-status").cloned();
        let collected = resp.into_body().collect().await.unwrap();
        let status = head_status.or_else(|| collected.trailers().and_then(|t| t.get("grpc-status").cloned()));
        assert_eq!(status.as_ref().map(|v| v.to_str().unwrap()), Some("5"), "NOT_FOUND in trailers(-only)");
        assert!(collected.to_bytes().is_empty());
    })
    .await;
}

/// Runs grpcurl's `Check` against `addr`; `None` when grpcurl is absent here (skipped with a
/// message, unless `TRELLIS_REQUIRE_GRPCURL` is set, as in CI).
fn grpcurl_check(addr: SocketAddr) -> Option<String> {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpc");
    let out = std::process::Command::new("timeout")
        .args(["20", "grpcurl", "-plaintext", "-max-time", "10", "-import-path", fixtures, "-proto", "health.proto"])
        .args(["-d", "{}", &addr.to_string(), "grpc.health.v1.Health/Check"])
        .output();
    match out {
        Ok(o) if o.status.code() != Some(127) => {
            Some(format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        }
        _ => {
            assert!(
                std::env::var_os("TRELLIS_REQUIRE_GRPCURL").is_none(),
                "grpcurl is required here (pip install -r .ci/requirements.txt)"
            );
            eprintln!("SKIPPED grpcurl part: grpcurl not found (pip install -r .ci/requirements.txt)");
            None
        }
    }
}

/// Errors the proxy makes for a gRPC call are gRPC errors (DESIGN §11): a refused upstream
/// is UNAVAILABLE, a route timeout DEADLINE_EXCEEDED, each with the proxy's reason as the
/// message, as tonic and grpcurl see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_for_grpc_calls_are_grpc_statuses() {
    within(LIMIT, async {
        let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        // Takes connections and never answers (not even the HTTP/2 settings).
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let (dead, slow) = (listen_addr(), listen_addr());
        let mut b = config::bootstrap();
        b.listeners.push(config::listener("dead", dead, &["dead"]));
        b.listeners.push(config::listener("slow", slow, &["slow"]));
        b.routes.push(config::route("dead", "/", "dead"));
        b.routes.push(config::Route { timeout: Some(config::ms(500)), ..config::route("slow", "/", "slow") });
        b.clusters.push(config::cluster("dead", ClusterProtocol::Http2, &[refused]));
        b.clusters.push(config::cluster("slow", ClusterProtocol::Http2, &[silent_addr]));
        let yaml = b.yaml();
        let proxy = Proxy::start(&yaml);

        let status = HealthClient::new(channel(dead).await).check(check_req("")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().starts_with("upstream connect failure"), "{status:?}");
        assert_eq!(
            status.metadata().get("x-trellis-error").and_then(|v| v.to_str().ok()),
            Some("upstream connect failure")
        );
        let status = HealthClient::new(channel(slow).await).check(check_req("")).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().starts_with("upstream timeout"), "{status:?}");

        // The route metrics keep the error's HTTP status.
        let m = proxy.metrics();
        assert_eq!(metric_value(&m, "trellis_requests_total", &[("route", "dead"), ("code", "502")]), Some(1.0), "{m}");
        assert_eq!(metric_value(&m, "trellis_requests_total", &[("route", "slow"), ("code", "504")]), Some(1.0), "{m}");

        // grpcurl prints the status, not a transport error about a text/plain 502.
        if let Some(out) = blocking(|| grpcurl_check(dead)) {
            assert!(out.contains("Code: Unavailable"), "{out}");
            assert!(out.contains("Message: upstream connect failure"), "{out}");
        }
        if let Some(out) = blocking(|| grpcurl_check(slow)) {
            assert!(out.contains("Code: DeadlineExceeded"), "{out}");
            assert!(out.contains("Message: upstream timeout"), "{out}");
        }
    })
    .await;
}

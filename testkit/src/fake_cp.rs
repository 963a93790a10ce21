//! A scripted discovery server: a stand-in control plane for what the real one never sends
//! (malformed or inconsistent resources). It plays its responses in order on the first
//! stream, one after each answer of the proxy, and hands every answer to the test.

use super::*;
use trellis_api::discovery::discovery_server::{Discovery, DiscoveryServer};
use trellis_api::discovery::{DiscoveryRequest, DiscoveryResponse, Resource, ResourceType};

type ResponseStream = Pin<Box<dyn futures_util::Stream<Item = Result<DiscoveryResponse, tonic::Status>> + Send>>;

struct Script {
    responses: std::sync::Mutex<Vec<DiscoveryResponse>>,
    answers: tokio::sync::mpsc::UnboundedSender<DiscoveryRequest>,
}

#[tonic::async_trait]
impl Discovery for Script {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let script = std::mem::take(&mut *self.responses.lock().unwrap());
        let answers = self.answers.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _first = inbound.message().await;
            for r in script {
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
                match inbound.message().await {
                    Ok(Some(answer)) => drop(answers.send(answer)),
                    _ => return,
                }
            }
            // Hold the stream open so the proxy does not reconnect.
            while let Ok(Some(_)) = inbound.message().await {}
        });
        let out = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

/// A running scripted discovery server on 127.0.0.1; stopped on drop.
pub struct FakeControlPlane {
    pub xds: SocketAddr,
    answers: tokio::sync::mpsc::UnboundedReceiver<DiscoveryRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeControlPlane {
    /// Serves `responses` (in order, one per answer) to the first proxy that connects.
    pub async fn start(responses: Vec<DiscoveryResponse>) -> FakeControlPlane {
        let (tx, answers) = tokio::sync::mpsc::unbounded_channel();
        let script = Script { responses: std::sync::Mutex::new(responses), answers: tx };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let xds = listener.local_addr().unwrap();
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        });
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(DiscoveryServer::new(script))
                .serve_with_incoming(incoming)
                .await;
        });
        FakeControlPlane { xds, answers, task }
    }

    /// The proxy's next answer (ACK: empty `error`; NACK: the reason), within 5 s.
    pub async fn next_answer(&mut self) -> DiscoveryRequest {
        tokio::time::timeout(Duration::from_secs(5), self.answers.recv())
            .await
            .expect("an answer from the proxy within 5 s")
            .expect("the discovery server is running")
    }

    /// The bootstrap of a proxy `id` of `service` taking everything from this server.
    pub fn bootstrap(&self, id: &str, service: &str) -> String {
        config::discovery_bootstrap(self.xds, id, service).yaml()
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A resource of a discovery response (`body`: its JSON).
pub fn resource(kind: ResourceType, name: &str, version: &str, body: String) -> Resource {
    Resource { r#type: kind as i32, name: name.into(), version: version.into(), body }
}

/// A discovery response of version and nonce `version`.
pub fn response(version: &str, resources: Vec<Resource>) -> DiscoveryResponse {
    DiscoveryResponse { system_version: version.into(), nonce: version.into(), resources, ..Default::default() }
}

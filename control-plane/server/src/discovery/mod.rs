//! The discovery server (DESIGN §5): `trellis.discovery.v1.Discovery/Stream`.
//!
//! Per stream: check the bearer token, read the first request (it carries the node), then
//! a [`session`] task sends the proxy's whole view and, after every store or endpoint change
//! (debounced), only the delta. [`registry`] keeps per-proxy status and sidecar endpoints;
//! [`view`] is the pure "what does this proxy get" function; [`cache`] shares views and
//! deltas between the streams of a service; [`budget`] bounds the responses in flight.

mod budget;
mod cache;
mod registry;
mod session;
mod view;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use trellis_api::discovery::discovery_server::Discovery;
use trellis_api::discovery::{DiscoveryRequest, DiscoveryResponse};

use crate::auth::Token;
use crate::store::Store;

pub use registry::{
    EndpointSet, Endpoints, Nack, NodeInfo, ProxyStatus, Push, Registered, RegistrationOp, RegistrationOps,
    RegistrationValue, Registry, SharedChange,
};
pub use view::ClusterParts;

/// Bytes of responses in flight across every stream (see [`budget`]): a few large
/// responses at a time, while small deltas pass at once.
const RESPONSE_BUDGET: usize = 16 << 20;

/// How long a new stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The gRPC service. One per server; cheap to clone into tonic.
pub struct Server {
    store: Arc<Store>,
    views: Arc<cache::Views>,
    budget: Arc<budget::Budget>,
    registry: Arc<Registry>,
    token: Option<Arc<Token>>,
    /// Turns true when the control plane stops: every session ends its stream.
    shutdown: watch::Receiver<bool>,
    /// A verified client certificate stands in for the bearer token (workload identity:
    /// the certificate was signed on the strength of the pod's service-account token).
    certificate_suffices: bool,
}

impl Server {
    pub fn new(
        store: Arc<Store>,
        registry: Arc<Registry>,
        token: Option<Arc<Token>>,
        shutdown: watch::Receiver<bool>,
    ) -> Server {
        let views = Arc::new(cache::Views::new(store.clone(), registry.subscribe()));
        let budget = Arc::new(budget::Budget::new(RESPONSE_BUDGET));
        Server { store, views, budget, registry, token, shutdown, certificate_suffices: false }
    }

    /// Lets an mTLS stream whose client certificate verified in without the bearer token.
    pub fn certificate_suffices(mut self, on: bool) -> Server {
        self.certificate_suffices = on;
        self
    }
}

#[tonic::async_trait]
impl Discovery for Server {
    type StreamStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        authenticate(self.token.as_deref(), self.certificate_suffices, &request)?;
        let peer = request.extensions().get::<crate::server_tls::Peer>().cloned();
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no first request")),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::cancelled("the stream ended before its first request")),
            Ok(Ok(Some(req))) => req,
        };
        let mut node = node_info(&first)?;
        if let Some(peer) = &peer {
            held_to_identity(peer, &node)?;
            node.identity = peer.spiffe_id.as_ref().map(|i| i.as_str().to_owned());
        }
        tracing::info!(id = %node.id, service = ?node.service, identity = ?peer.and_then(|p| p.spiffe_id).map(|i| i.into_string()), "proxy connected");
        let (tx, rx) = mpsc::channel(4);
        let session = session::Session::new(
            &self.store,
            self.views.clone(),
            self.budget.clone(),
            self.registry.clone(),
            node,
            &first,
            self.shutdown.clone(),
        );
        tokio::spawn(session.run(inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Checks the bearer token of a discovery-port call (the stream, a stats report), unless a
/// verified client certificate suffices.
pub(crate) fn authenticate<T>(
    token: Option<&Token>,
    certificate_suffices: bool,
    request: &Request<T>,
) -> Result<(), Status> {
    let certified = certificate_suffices
        && request.extensions().get::<crate::server_tls::Peer>().is_some_and(|p| p.spiffe_id.is_some());
    if let Some(token) = token.filter(|_| !certified) {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if !token.accepts(header) {
            return Err(Status::unauthenticated("missing or wrong bearer token in `authorization`"));
        }
    }
    Ok(())
}

/// Over mTLS a proxy may only speak for the service its identity names: a node with a
/// `service` must hold `spiffe://…/sa/<service>`, so a stolen certificate of one workload
/// cannot register endpoints of (and draw the traffic of) another.
fn held_to_identity(peer: &crate::server_tls::Peer, node: &NodeInfo) -> Result<(), Status> {
    let Some(id) = &peer.spiffe_id else {
        return Err(Status::unauthenticated("the client certificate has no SPIFFE ID"));
    };
    match node.service.as_deref() {
        Some(service) if id.service_account() != Some(service) => Err(Status::permission_denied(format!(
            "node.service \"{service}\" is not the service of this proxy's identity {}",
            id.as_str()
        ))),
        _ => Ok(()),
    }
}

/// The node of a first request, checked.
fn node_info(first: &DiscoveryRequest) -> Result<NodeInfo, Status> {
    let node = first.node.as_ref().ok_or_else(|| Status::invalid_argument("the first request must carry `node`"))?;
    if node.id.is_empty() {
        return Err(Status::invalid_argument("node.id is empty"));
    }
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let info = NodeInfo {
        id: node.id.clone(),
        service: some(&node.service),
        zone: some(&node.zone),
        inbound_address: some(&node.inbound_address),
        identity: None,
        transparent: node.transparent,
    };
    if let Some(addr) = &info.inbound_address {
        if info.service.is_none() {
            return Err(Status::invalid_argument("node.inbound_address needs node.service"));
        }
        // No `/`: the address is part of an ENDPOINTS resource name (`SERVICE/ADDRESS`).
        let valid = !addr.contains(trellis_api::endpoints::SEPARATOR)
            && addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(Status::invalid_argument(format!("node.inbound_address \"{addr}\" is not HOST:PORT")));
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::discovery::Node;

    fn first(service: &str, inbound: &str) -> DiscoveryRequest {
        let node =
            Node { id: "p".into(), service: service.into(), inbound_address: inbound.into(), ..Default::default() };
        DiscoveryRequest { node: Some(node), ..Default::default() }
    }

    #[test]
    fn inbound_addresses_are_host_port_without_a_slash() {
        assert!(node_info(&first("web", "10.0.0.1:4143")).is_ok());
        for bad in ["10.0.0.1", ":4143", "a/b:4143"] {
            let err = node_info(&first("web", bad)).expect_err(bad);
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        assert!(node_info(&first("", "10.0.0.1:4143")).is_err(), "needs a service");
    }
}

//! The control-plane client (DESIGN §5): one gRPC stream, subscribed to everything meant for
//! this node. Each response is a delta; it is applied to a copy of the dynamic resources,
//! merged with the static file, validated and built off the hot path, swapped in, and ACKed
//! — or NACKed with the error, the previous config left serving. The stream reconnects with
//! jittered exponential backoff, and the last good config serves while the control plane is
//! away.

use crate::reload::Reloader;
use crate::telemetry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use trellis_api::discovery::{
    DiscoveryRequest, DiscoveryResponse, Node, ResourceType, discovery_client::DiscoveryClient,
};
use trellis_api::{self as api, Bootstrap};

/// Resources delivered by the control plane, by name.
#[derive(Debug, Clone, Default)]
pub struct Dynamic {
    pub listeners: BTreeMap<String, api::Listener>,
    pub routes: BTreeMap<String, api::Route>,
    pub clusters: BTreeMap<String, api::Cluster>,
    pub policies: BTreeMap<String, api::Policy>,
    /// Extra endpoints per cluster (sidecar registrations).
    pub endpoints: BTreeMap<String, Vec<api::Endpoint>>,
    pub system_version: String,
}

impl Dynamic {
    /// The static bootstrap plus these resources. Static resources win a name clash.
    pub fn merge_into(&self, file: &Bootstrap) -> Bootstrap {
        let mut b = file.clone();
        fn add<T: Clone>(into: &mut Vec<T>, from: &BTreeMap<String, T>, name: impl Fn(&T) -> &str) {
            for (n, r) in from {
                if !into.iter().any(|x| name(x) == n) {
                    into.push(r.clone());
                }
            }
        }
        add(&mut b.listeners, &self.listeners, |l| &l.name);
        add(&mut b.routes, &self.routes, |r| &r.name);
        add(&mut b.clusters, &self.clusters, |c| &c.name);
        add(&mut b.policies, &self.policies, |p| &p.name);
        for c in &mut b.clusters {
            if let Some(extra) = self.endpoints.get(&c.name) {
                for e in extra {
                    if !c.endpoints.iter().any(|have| have.address == e.address) {
                        c.endpoints.push(e.clone());
                    }
                }
            }
        }
        b
    }

    /// This plus one response's changes.
    fn with(&self, resp: &DiscoveryResponse) -> Result<Dynamic, String> {
        let mut next = self.clone();
        for r in &resp.resources {
            let kind = ResourceType::try_from(r.r#type).unwrap_or(ResourceType::Unspecified);
            let at = |e: api::ParseError| format!("{}[{}]: {e}", kind.as_str_name().to_ascii_lowercase(), r.name);
            match kind {
                ResourceType::Listener => {
                    next.listeners.insert(r.name.clone(), api::parse::parse(&r.body).map_err(at)?);
                }
                ResourceType::Route => {
                    next.routes.insert(r.name.clone(), api::parse::parse(&r.body).map_err(at)?);
                }
                ResourceType::Cluster => {
                    next.clusters.insert(r.name.clone(), api::parse::parse(&r.body).map_err(at)?);
                }
                ResourceType::Policy => {
                    next.policies.insert(r.name.clone(), api::parse::parse(&r.body).map_err(at)?);
                }
                ResourceType::Endpoints => {
                    next.endpoints.insert(r.name.clone(), api::parse::parse(&r.body).map_err(at)?);
                }
                ResourceType::Unspecified => return Err(format!("resource {} has no type", r.name)),
            }
        }
        for gone in &resp.removed {
            match ResourceType::try_from(gone.r#type).unwrap_or(ResourceType::Unspecified) {
                ResourceType::Listener => next.listeners.remove(&gone.name).map(drop),
                ResourceType::Route => next.routes.remove(&gone.name).map(drop),
                ResourceType::Cluster => next.clusters.remove(&gone.name).map(drop),
                ResourceType::Policy => next.policies.remove(&gone.name).map(drop),
                ResourceType::Endpoints => next.endpoints.remove(&gone.name).map(drop),
                ResourceType::Unspecified => None,
            };
        }
        next.system_version = resp.system_version.clone();
        Ok(next)
    }
}

/// What the admin server shows about discovery.
#[derive(Debug, Default)]
pub struct Status {
    pub connected: std::sync::atomic::AtomicBool,
    /// At least one response applied: the proxy is ready.
    pub applied: std::sync::atomic::AtomicBool,
    pub system_version: std::sync::Mutex<String>,
    pub last_error: std::sync::Mutex<Option<String>>,
}

/// Runs the client until the process ends.
pub async fn run(cp: api::ControlPlane, node: api::Node, reloader: Arc<Reloader>, status: Arc<Status>) {
    let token = cp.token_file.as_deref().and_then(|f| match std::fs::read_to_string(f) {
        Ok(t) => Some(t.trim().to_owned()),
        Err(e) => {
            tracing::error!(file = f, error = %e, "cannot read the control-plane token file");
            None
        }
    });
    let node = Node {
        id: node.id,
        service: node.service.unwrap_or_default(),
        zone: node.zone.unwrap_or_default(),
        inbound_address: cp.inbound_address.clone().unwrap_or_default(),
    };
    let mut dynamic = Dynamic::default();
    let mut backoff = Duration::from_millis(250);
    loop {
        match session(&cp.address, token.as_deref(), &node, &mut dynamic, &reloader, &status).await {
            Ok(()) => tracing::warn!(address = %cp.address, "control-plane stream closed"),
            Err(e) => tracing::warn!(address = %cp.address, error = %e, "control-plane stream failed"),
        }
        status.connected.store(false, std::sync::atomic::Ordering::Release);
        if status.applied.load(std::sync::atomic::Ordering::Acquire) {
            // A stream that got far enough to apply something resets the backoff.
            backoff = backoff.min(Duration::from_secs(1));
        }
        // Full jitter: anywhere up to the current cap, so a fleet does not reconnect in step.
        let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn session(
    address: &str,
    token: Option<&str>,
    node: &Node,
    dynamic: &mut Dynamic,
    reloader: &Reloader,
    status: &Status,
) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(address.to_owned())
        .map_err(|e| format!("bad control-plane address: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let bearer: Option<tonic::metadata::MetadataValue<_>> = token
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .map_err(|_| "the token is not a valid header value")?;
    let mut client = DiscoveryClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(b) = &bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    })
    // The first response carries the proxy's whole view; large meshes exceed tonic's 4 MiB.
    .max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let first =
        DiscoveryRequest { node: Some(node.clone()), r#type: ResourceType::Unspecified as i32, ..Default::default() };
    tx.send(first).await.map_err(|_| "request channel closed")?;
    let requests = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut responses = client.stream(requests).await.map_err(|e| format!("open stream: {e}"))?.into_inner();
    status.connected.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(address, node = %node.id, "connected to the control plane");
    // Resubscribing after a reconnect starts from nothing: the server sends the full view.
    *dynamic = Dynamic::default();
    while let Some(resp) = responses.message().await.map_err(|e| format!("stream: {e}"))? {
        let result = dynamic.with(&resp).and_then(|next| match reloader.apply_dynamic(next.clone()) {
            Ok(v) => Ok((next, v)),
            Err(e) => Err(e.to_string()),
        });
        let error = match result {
            Ok((next, version)) => {
                *dynamic = next;
                status.applied.store(true, std::sync::atomic::Ordering::Release);
                *status.system_version.lock().unwrap_or_else(|p| p.into_inner()) = resp.system_version.clone();
                let v = resp.system_version.parse::<f64>().unwrap_or(0.0);
                for t in ["listener", "cluster", "route", "policy", "endpoints"] {
                    metrics::gauge!(telemetry::CONFIG_VERSION, "type" => t).set(v);
                }
                tracing::info!(system_version = %resp.system_version, version, "applied control-plane update");
                String::new()
            }
            Err(e) => {
                tracing::error!(system_version = %resp.system_version, error = %e, "control-plane update refused (NACK); the previous config stays");
                *status.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                e
            }
        };
        let ack = DiscoveryRequest {
            node: Some(node.clone()),
            r#type: resp.r#type,
            response_nonce: resp.nonce.clone(),
            error,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|_| "request channel closed")?;
    }
    Ok(())
}

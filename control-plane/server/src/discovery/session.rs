//! One proxy's stream: the whole view first, then debounced deltas; ACKs and NACKs are
//! matched to responses by nonce and recorded in the registry.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Status, Streaming};
use trellis_api::discovery::{DiscoveryRequest, DiscoveryResponse, ResourceType};

use super::registry::{Endpoints, NodeInfo, Registry, StreamId};
use super::view::{self, Key, Subscriptions};
use crate::store::Store;

/// A push waits until changes have been quiet this long…
const QUIET: Duration = Duration::from_millis(50);
/// …but no longer than this after the first change it carries.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// Responses remembered for matching ACK/NACK nonces.
const NONCES: usize = 16;

/// The response stream went away (the proxy disconnected).
struct Closed;

/// A response awaiting its ACK or NACK.
struct Pending {
    nonce: String,
    version: u64,
    /// What it added/updated and removed, to undo in `sent` if it is refused.
    updated: Vec<Key>,
    removed: Vec<Key>,
}

pub struct Session {
    store: Arc<Store>,
    registry: Arc<Registry>,
    stream: StreamId,
    node: NodeInfo,
    subs: Subscriptions,
    /// What the proxy was sent: key → version.
    sent: BTreeMap<Key, String>,
    /// Recent responses, oldest first.
    pending: VecDeque<Pending>,
    store_rx: watch::Receiver<u64>,
    endpoints_rx: watch::Receiver<Arc<Endpoints>>,
    shutdown: watch::Receiver<bool>,
}

impl Session {
    /// Registers the proxy and takes the first request's subscriptions.
    pub fn new(
        store: Arc<Store>,
        registry: Arc<Registry>,
        node: NodeInfo,
        first: &DiscoveryRequest,
        shutdown: watch::Receiver<bool>,
    ) -> Session {
        let store_rx = store.subscribe();
        let endpoints_rx = registry.subscribe();
        let stream = registry.connect(node.clone());
        let mut subs = Subscriptions::default();
        subs.update(first);
        Session {
            store,
            registry,
            stream,
            node,
            subs,
            sent: BTreeMap::new(),
            pending: VecDeque::new(),
            store_rx,
            endpoints_rx,
            shutdown,
        }
    }

    /// Serves the stream until the proxy leaves or the control plane stops.
    pub async fn run(
        mut self,
        mut inbound: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        if self.push(&tx, true).await.is_ok() {
            self.serve(&mut inbound, &tx).await;
        }
        tracing::info!(id = %self.node.id, "proxy disconnected");
        self.registry.disconnect(self.stream);
    }

    async fn serve(
        &mut self,
        inbound: &mut Streaming<DiscoveryRequest>,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        // (deadline, first change) of the pending push.
        let mut due: Option<(Instant, Instant)> = None;
        let mut shutdown = self.shutdown.clone();
        loop {
            let deadline = due.map(|(d, _)| d);
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if self.on_request(&req) {
                            due = Some((Instant::now(), Instant::now()));
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(id = %self.node.id, %status, "discovery stream failed");
                        return;
                    }
                },
                changed = self.store_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    due = Some(debounce(due));
                }
                changed = self.endpoints_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    due = Some(debounce(due));
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    due = None;
                    if self.push(tx, false).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Records an ACK or NACK and applies subscription changes; `true` when the proxy's
    /// view may have changed.
    fn on_request(&mut self, req: &DiscoveryRequest) -> bool {
        if !req.response_nonce.is_empty() {
            match self.pending.iter().find(|p| p.nonce == req.response_nonce) {
                Some(p) if req.error.is_empty() => self.registry.acked(self.stream, p.version),
                Some(p) => {
                    tracing::warn!(id = %self.node.id, version = p.version, error = %req.error, "proxy refused an update");
                    self.registry.nacked(self.stream, p.version, req.error.clone());
                    // The proxy kept its previous config: forget that it got these, so the
                    // next push (after the next change, not at once: the same content would
                    // fail again) carries them again.
                    for key in &p.updated {
                        self.sent.remove(key);
                    }
                    for key in &p.removed {
                        self.sent.insert(key.clone(), String::new());
                    }
                }
                None => tracing::debug!(id = %self.node.id, nonce = %req.response_nonce, "unknown nonce"),
            }
        }
        self.subs.update(req)
    }

    /// Sends what changed in the proxy's view since the last response (everything, the
    /// first time — even nothing, so the proxy knows it is in sync).
    async fn push(&mut self, tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>, first: bool) -> Result<(), Closed> {
        let snap = self.store.snapshot();
        self.store_rx.borrow_and_update();
        let endpoints = self.endpoints_rx.borrow_and_update().clone();
        let mut view = view::compute(&snap, &endpoints, self.node.service.as_deref());
        self.subs.filter(&mut view);
        let (resources, removed) = match view::delta(&mut self.sent, &view) {
            Some(delta) => delta,
            None if first => (Vec::new(), Vec::new()),
            None => return Ok(()),
        };
        let version = snap.revision();
        let nonce = format!("{:016x}", fastrand::u64(..));
        if self.pending.len() == NONCES {
            self.pending.pop_front();
        }
        let key = |t: i32, name: &str| (ResourceType::try_from(t).unwrap_or_default(), name.to_string());
        self.pending.push_back(Pending {
            nonce: nonce.clone(),
            version,
            updated: resources.iter().map(|r| key(r.r#type, &r.name)).collect(),
            removed: removed.iter().map(|r| key(r.r#type, &r.name)).collect(),
        });
        tracing::debug!(id = %self.node.id, version, updated = resources.len(), removed = removed.len(), "push");
        let response = DiscoveryResponse {
            r#type: ResourceType::Unspecified as i32,
            system_version: version.to_string(),
            nonce,
            resources,
            removed,
        };
        tx.send(Ok(response)).await.map_err(|_| Closed)?;
        self.registry.sent(self.stream, version);
        Ok(())
    }
}

/// The new deadline of a pending push after one more change.
fn debounce(due: Option<(Instant, Instant)>) -> (Instant, Instant) {
    let now = Instant::now();
    let first = due.map_or(now, |(_, first)| first);
    ((now + QUIET).min(first + MAX_DELAY), first)
}

/// Completes when the control plane stops (or is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here.
    let _ = shutdown.wait_for(|stop| *stop).await.is_ok();
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

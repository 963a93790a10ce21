//! One proxy's stream: the whole view first, then debounced deltas; ACKs and NACKs are
//! matched to responses by nonce and recorded in the registry. What the proxy was sent is
//! the shared view it was last brought to (plus the keys a NACK left unknown), not a copy.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Status, Streaming};
use trellis_api::discovery::{
    DiscoveryRequest, DiscoveryResponse, HeldResource, RemovedResource, Resource, ResourceType,
};

use super::budget::{Budget, Held};
use super::cache::Views;
use super::registry::{Endpoints, NodeInfo, Push, Registry, StreamId};
use super::view::{self, Delta, Key, Subscriptions, View};
use crate::store::Store;

/// A push waits until changes have been quiet this long…
const QUIET: Duration = Duration::from_millis(50);
/// …but no longer than this after the first change it carries.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// Unanswered responses remembered for matching ACK/NACK nonces.
const NONCES: usize = 16;
/// A response larger than this goes as several messages (`more`): tonic keeps, per stream,
/// an encode buffer the size of the largest message sent on it.
const PART_BYTES: usize = 32 << 10;

/// The response stream went away (the proxy disconnected).
struct Closed;

/// A response awaiting its ACK or NACK.
struct Pending {
    nonce: String,
    version: u64,
    /// What it carried (shared with the other streams it went to), to forget if refused.
    delta: Arc<Delta>,
    /// Its share of the in-flight budget, given back when it is answered.
    held: Option<Held>,
    /// When it went out, for the push → ACK latency.
    sent_at: Instant,
}

pub struct Session {
    views: Arc<Views>,
    budget: Arc<Budget>,
    registry: Arc<Registry>,
    stream: StreamId,
    node: NodeInfo,
    subs: Subscriptions,
    /// The view the proxy was last brought to…
    sent: Arc<View>,
    /// …except these keys, whose copy on the proxy is unknown after a NACK.
    dirty: BTreeSet<Key>,
    /// Unanswered responses, oldest first.
    pending: VecDeque<Pending>,
    /// What the proxy says it holds from an earlier stream (its first request): the first
    /// push is a delta against it.
    held: Vec<HeldResource>,
    store_rx: watch::Receiver<u64>,
    endpoints_rx: watch::Receiver<Arc<Endpoints>>,
    shutdown: watch::Receiver<bool>,
}

impl Session {
    /// Registers the proxy and takes the first request's subscriptions.
    pub fn new(
        store: &Store,
        views: Arc<Views>,
        budget: Arc<Budget>,
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
            views,
            budget,
            registry,
            stream,
            node,
            subs,
            sent: Arc::default(),
            dirty: BTreeSet::new(),
            pending: VecDeque::new(),
            held: first.initial_resources.clone(),
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
            match self.pending.iter().position(|p| p.nonce == req.response_nonce) {
                Some(i) => {
                    // The proxy answers in order: older unanswered responses never will be.
                    let mut answered = self.pending.drain(..=i);
                    let p = answered.next_back().expect("drained up to i");
                    drop(answered);
                    self.registry.metrics().push_duration.record(p.sent_at.elapsed().as_secs_f64());
                    if req.error.is_empty() {
                        self.registry.acked(self.stream, p.version);
                    } else {
                        tracing::warn!(id = %self.node.id, version = p.version, error = %req.error, "proxy refused an update");
                        self.registry.nacked(self.stream, p.version, req.error.clone());
                        // The proxy kept its previous config: what this response carried is
                        // unknown there now, so the next push (after the next change, not at
                        // once: the same content would fail again) sends or removes it again.
                        self.dirty.extend(p.delta.keys());
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
        // Mark the changes seen before reading the view, so none is missed.
        self.store_rx.borrow_and_update();
        self.endpoints_rx.borrow_and_update();
        let service = self.node.service.as_deref();
        let transparent = self.node.transparent;
        let shared = self.views.current(service, transparent);
        // A proxy resuming from an earlier stream holds what it says it holds.
        let resumed = first && !self.held.is_empty();
        let resume = |sent: &mut Arc<View>, held: &mut Vec<HeldResource>, view: &View| {
            if resumed {
                *sent = Arc::new(view::held(std::mem::take(held), view));
            }
        };
        let (view, delta) = if !self.subs.is_all() {
            // A narrowed proxy holds its own copy of its part of the view.
            let mut view = self.subs.filter(&shared);
            view.id = self.views.fresh_id();
            resume(&mut self.sent, &mut self.held, &view);
            let delta = Arc::new(view::delta(&self.sent, &self.dirty, &view));
            (Arc::new(view), delta)
        } else if resumed {
            resume(&mut self.sent, &mut self.held, &shared);
            let delta = Arc::new(view::delta(&self.sent, &self.dirty, &shared));
            tracing::info!(id = %self.node.id, held = self.sent.entries.len(), updated = delta.resources.len(), removed = delta.removed.len(), "proxy resumed");
            (shared, delta)
        } else if self.dirty.is_empty() {
            let delta = self.views.delta(service, transparent, &self.sent, &shared);
            (shared, delta)
        } else {
            let delta = Arc::new(view::delta(&self.sent, &self.dirty, &shared));
            (shared, delta)
        };
        self.sent = view.clone();
        self.dirty.clear();
        if delta.is_empty() && !first {
            return Ok(());
        }
        let version = view.revision;
        let nonce = format!("{:016x}", fastrand::u64(..));
        if self.pending.len() == NONCES {
            self.pending.pop_front();
        }
        // Give back what earlier responses hold first: this stream cannot read their
        // answers while it waits, and must not wait on itself.
        for p in &mut self.pending {
            p.held = None;
        }
        let held = self.budget.take(delta.size).await;
        self.pending.push_back(Pending {
            nonce: nonce.clone(),
            version,
            delta: delta.clone(),
            held: Some(held),
            sent_at: Instant::now(),
        });
        let mut push = Push { version, resources: delta.resources.len(), removed: delta.removed.len(), bytes: 0 };
        // Parts are made one at a time as the channel takes them, so a stream never holds
        // more than a few parts of a large response.
        let mut parts = parts(&delta, PART_BYTES).peekable();
        while let Some((resources, removed)) = parts.next() {
            let response = DiscoveryResponse {
                r#type: ResourceType::Unspecified as i32,
                system_version: version.to_string(),
                nonce: nonce.clone(),
                resources: resources.to_vec(),
                removed: removed.to_vec(),
                more: parts.peek().is_some(),
                resumed,
            };
            push.bytes += prost::Message::encoded_len(&response);
            tx.send(Ok(response)).await.map_err(|_| Closed)?;
        }
        tracing::debug!(id = %self.node.id, version, updated = push.resources, removed = push.removed, bytes = push.bytes, "push");
        self.registry.sent(self.stream, push);
        Ok(())
    }
}

/// `delta` cut into parts of about `max` encoded bytes (at least one part, maybe empty):
/// resources first, then removed names.
fn parts(delta: &Delta, max: usize) -> impl Iterator<Item = (&[Resource], &[RemovedResource])> {
    let mut cuts = Vec::new();
    let (mut start, mut size) = (0, 0);
    let sizes = delta
        .resources
        .iter()
        .map(prost::Message::encoded_len)
        .chain(delta.removed.iter().map(prost::Message::encoded_len));
    for (i, s) in sizes.enumerate() {
        if size > 0 && size + s > max {
            cuts.push(start..i);
            (start, size) = (i, 0);
        }
        size += s + 4;
    }
    cuts.push(start..delta.resources.len() + delta.removed.len());
    let n = delta.resources.len();
    cuts.into_iter().map(move |r| {
        let resources = &delta.resources[r.start.min(n)..r.end.min(n)];
        let removed = &delta.removed[r.start.max(n) - n..r.end.max(n) - n];
        (resources, removed)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_deltas_are_cut_into_parts_in_order() {
        let res = |i: usize| Resource { name: format!("c/10.0.0.{i}:80"), body: "x".repeat(100), ..Default::default() };
        let gone = |i: usize| RemovedResource { name: format!("c/10.1.0.{i}:80"), ..Default::default() };
        let delta = Delta { resources: (0..100).map(res).collect(), removed: (0..50).map(gone).collect(), size: 0 };
        let parts: Vec<_> = parts(&delta, 2_000).collect();
        assert!(parts.len() > 5, "{}", parts.len());
        let all: Vec<&Resource> = parts.iter().flat_map(|(r, _)| r.iter()).collect();
        let removed: Vec<&RemovedResource> = parts.iter().flat_map(|(_, r)| r.iter()).collect();
        assert_eq!((all.len(), removed.len()), (100, 50));
        assert!(all.iter().zip(&delta.resources).all(|(a, b)| *a == b));
        for (r, g) in &parts {
            let size: usize = r.iter().map(prost::Message::encoded_len).sum::<usize>()
                + g.iter().map(prost::Message::encoded_len).sum::<usize>();
            assert!(size <= 2_000, "{size}");
        }
        assert_eq!(super::parts(&Delta::default(), 2_000).count(), 1, "an empty delta is one (empty) part");
    }
}

//! Views and deltas shared by every stream. A proxy's view depends only on its service, so
//! it is computed once per (service, store revision, endpoint generation); the delta between
//! two shared views is computed once, however many proxies need it. Streams hold `Arc`s of
//! these, never copies, so the control plane's memory grows with services × resources, not
//! with proxies × resources (10,000 endpoints × 1,000 proxies would otherwise be ten million
//! entries).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::registry::Endpoints;
use super::view::{self, Delta, View};
use crate::store::Store;

/// The current view of one service and the deltas into it.
struct Shared {
    view: Arc<View>,
    generation: u64,
    /// Deltas into `view`, by the id of the view they start from (0: a new stream). Few:
    /// the streams of a service are mostly one push behind.
    deltas: HashMap<u64, Arc<Delta>>,
}

#[derive(Default)]
struct Inner {
    /// The id of the last view made (0 is the empty view).
    last_id: u64,
    /// By (service, transparent): a transparent proxy's view also holds every sidecar.
    services: HashMap<(Option<String>, bool), Shared>,
}

/// The cache. One per discovery server.
pub struct Views {
    store: Arc<Store>,
    endpoints: watch::Receiver<Arc<Endpoints>>,
    inner: Mutex<Inner>,
}

impl Views {
    pub fn new(store: Arc<Store>, endpoints: watch::Receiver<Arc<Endpoints>>) -> Views {
        Views { store, endpoints, inner: Mutex::new(Inner::default()) }
    }

    /// The current view of a proxy of `service` (`transparent`: see `view::compute`).
    pub fn current(&self, service: Option<&str>, transparent: bool) -> Arc<View> {
        let mut inner = self.lock();
        // Read under the lock, so a view is never replaced by an older one.
        let snap = self.store.snapshot();
        let endpoints = self.endpoints.borrow().clone();
        let key = (service.map(str::to_string), transparent);
        if let Some(s) = inner.services.get(&key)
            && s.view.revision == snap.revision()
            && s.generation == endpoints.generation
        {
            return s.view.clone();
        }
        inner.last_id += 1;
        let mut view = view::compute(&snap, &endpoints, service, transparent);
        view.id = inner.last_id;
        let view = Arc::new(view);
        let shared = Shared { view: view.clone(), generation: endpoints.generation, deltas: HashMap::new() };
        inner.services.insert(key, shared);
        view
    }

    /// A new id for a view that is not shared (a narrowed proxy's).
    pub fn fresh_id(&self) -> u64 {
        let mut inner = self.lock();
        inner.last_id += 1;
        inner.last_id
    }

    /// What a proxy holding `from` (and nothing else) needs to hold `to`, a view
    /// [`Views::current`] returned for `service` and `transparent`. Shared while `to` is current.
    pub fn delta(&self, service: Option<&str>, transparent: bool, from: &View, to: &Arc<View>) -> Arc<Delta> {
        let clean = Default::default();
        let mut inner = self.lock();
        let key = (service.map(str::to_string), transparent);
        let Some(s) = inner.services.get_mut(&key).filter(|s| s.view.id == to.id) else {
            // `to` was replaced meanwhile: this stream pushes again soon anyway.
            return Arc::new(view::delta(from, &clean, to));
        };
        s.deltas.entry(from.id).or_insert_with(|| Arc::new(view::delta(from, &clean, to))).clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent; ignore poison.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

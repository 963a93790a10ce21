//! Following etcd: list the prefix, watch it from the revision listed, apply every change
//! to the snapshot (resources) or the registry (sidecar registrations). A lost watch is
//! resumed from the revision after the last one applied; a compacted one (that revision is
//! gone from etcd's history) lists again, so no change is ever missed.
//!
//! Values are checked again here: each must parse as its kind and name it, and the set with
//! it must pass validation (without DNS: the writing replica resolved names already, and two
//! resolvers must not disagree). A value that fails — written around the REST API, say with
//! etcdctl — is logged, skipped, counted and listed in the store status, and the last good
//! value stays: it never reaches a proxy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::Invalid;
use crate::discovery::{Registry, SharedChange};
use crate::etcd::keys::{Key, Keys};
use crate::etcd::{Client, EtcdError, pb};
use crate::store::{Item, Published, Snapshot, lock};
use crate::stored::{Kind, Resource};
use crate::write_validation;

/// Rounds of "take back the changes a problem blames, check again" before a whole batch is
/// refused.
const BLAME_ROUNDS: usize = 3;

/// The mod revisions a write is guarded on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Guard {
    pub marker: u64,
    /// The resource key's (0: not in etcd).
    pub key: u64,
}

/// What the watch keeps besides the snapshot.
#[derive(Default)]
struct State {
    /// The mod revision of every resource key in etcd, refused values included.
    mods: HashMap<(Kind, String), u64>,
    /// The write marker's mod revision (0: none).
    marker: u64,
    invalid: Invalid,
    /// Values refused because of the set they joined (not because of themselves), tried
    /// again with every change: key → value (`None`: a refused deletion).
    parked: BTreeMap<(Kind, String), Value>,
    /// A resource changed without the write marker (around the REST API) since the last
    /// revision validated here: the next REST write may have been validated by its replica
    /// against a set without that change, so it is validated again here too.
    unvouched: bool,
}

/// A resource key's value: `(mod revision, bytes)`; `None`: deleted.
type Value = Option<(u64, Vec<u8>)>;

/// One change to a resource key.
struct Change {
    kind: Kind,
    name: String,
    value: Value,
}

/// The state the watch maintains, shared with the writer.
pub(super) struct Follower {
    keys: Keys,
    state: Mutex<State>,
    pub(super) published: Arc<Published>,
    registry: Arc<Registry>,
    /// The newest revision applied (events, or progress).
    seen: watch::Sender<u64>,
    connected: AtomicBool,
    pub(super) invalid_values: AtomicU64,
    /// Listings after the first (each after a compaction).
    pub(super) relists: AtomicU64,
}

impl Follower {
    pub(super) fn new(
        keys: Keys,
        published: Arc<Published>,
        registry: Arc<Registry>,
    ) -> (Follower, watch::Receiver<u64>) {
        let (seen, seen_rx) = watch::channel(0);
        let follower = Follower {
            keys,
            state: Mutex::new(State::default()),
            published,
            registry,
            seen,
            connected: AtomicBool::new(false),
            invalid_values: AtomicU64::new(0),
            relists: AtomicU64::new(0),
        };
        (follower, seen_rx)
    }

    pub(super) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(super) fn set_connected(&self, up: bool) {
        if self.connected.swap(up, Ordering::Relaxed) != up {
            match up {
                true => tracing::info!("etcd watch established"),
                false => tracing::warn!("etcd watch lost: serving the last view, refusing writes until it is back"),
            }
        }
    }

    pub(super) fn invalid(&self) -> Invalid {
        lock(&self.state).invalid.clone()
    }

    /// The snapshot a write validates against, and what its transaction is guarded on.
    pub(super) fn read(&self, kind: Kind, name: &str) -> (Arc<Snapshot>, Guard) {
        let state = lock(&self.state);
        let key = state.mods.get(&(kind, name.to_string())).copied().unwrap_or(0);
        (self.published.snapshot(), Guard { marker: state.marker, key })
    }

    /// Applies a listing of the whole prefix: what differs from what this replica holds.
    /// Returns the revision to watch from.
    pub(super) fn apply_listing(&self, listing: pb::RangeResponse) -> i64 {
        let revision = listing.header.as_ref().map_or(0, |h| h.revision);
        let mut state = lock(&self.state);
        let mut listed = BTreeSet::new();
        let mut changes = Vec::new();
        let mut registrations = Vec::new();
        let mut marker = 0;
        for kv in listing.kvs {
            let version = kv.mod_revision.max(0) as u64;
            match self.keys.parse(&kv.key) {
                Key::Resource(kind, name) => {
                    listed.insert((kind, name.clone()));
                    if state.mods.get(&(kind, name.clone())) != Some(&version) {
                        changes.push(Change { kind, name, value: Some((version, kv.value)) });
                    }
                }
                Key::Marker => marker = version,
                Key::Registration(service, address) => {
                    registrations.push(SharedChange::Put { service, address, version, value: kv.value });
                }
                Key::Other => {}
            }
        }
        // Deleted while nobody watched: held here, not listed.
        let before = self.published.snapshot();
        let held =
            state.mods.keys().cloned().chain(
                Kind::ALL.into_iter().flat_map(|k| before.list(k).map(move |i| (k, i.resource.name().to_string()))),
            );
        let gone: BTreeSet<(Kind, String)> = held.filter(|k| !listed.contains(k)).collect();
        changes.extend(gone.into_iter().map(|(kind, name)| Change { kind, name, value: None }));
        state.marker = marker;
        // The revision of a listed set: its newest write (the same on every replica).
        let newest = changes.iter().filter_map(|c| c.value.as_ref().map(|(v, _)| *v)).max().unwrap_or(0).max(marker);
        let mut working = Snapshot::clone(&before);
        if self.apply(&mut state, &mut working, newest, changes, false) {
            self.published.publish(working);
        }
        drop(state);
        let refused = self.registry.apply_shared(true, registrations);
        self.refused_registrations(refused);
        self.seen.send_replace(revision.max(0) as u64);
        revision + 1
    }

    /// Applies one watch response's events (every event of a revision is in one response,
    /// as etcd sends them without `fragment`). Returns the last revision.
    pub(super) fn apply_events(&self, mut events: Vec<pb::Event>) -> i64 {
        let mut state = lock(&self.state);
        let mut working: Option<Snapshot> = None;
        let mut registrations = Vec::new();
        let mut last = 0;
        let mut i = 0;
        while i < events.len() {
            let revision = events[i].kv.as_ref().map_or(0, |kv| kv.mod_revision);
            let mut changes = Vec::new();
            let mut stamped = false;
            while i < events.len() && events[i].kv.as_ref().map_or(0, |kv| kv.mod_revision) == revision {
                let put = events[i].r#type == pb::event::EventType::Put as i32;
                let kv = events[i].kv.take().unwrap_or_default();
                let version = kv.mod_revision.max(0) as u64;
                match self.keys.parse(&kv.key) {
                    Key::Resource(kind, name) => {
                        changes.push(Change { kind, name, value: put.then_some((version, kv.value)) });
                    }
                    Key::Marker => {
                        state.marker = if put { version } else { 0 };
                        stamped = put;
                    }
                    Key::Registration(service, address) => registrations.push(match put {
                        true => SharedChange::Put { service, address, version, value: kv.value },
                        false => SharedChange::Delete { service, address },
                    }),
                    Key::Other => {}
                }
                i += 1;
            }
            last = revision;
            if !changes.is_empty() {
                let snapshot = working.get_or_insert_with(|| Snapshot::clone(&self.published.snapshot()));
                self.apply(&mut state, snapshot, revision.max(0) as u64, changes, stamped);
            }
        }
        if let Some(after) = working
            && after.revision != self.published.snapshot().revision
        {
            self.published.publish(after);
        }
        drop(state);
        if !registrations.is_empty() {
            let refused = self.registry.apply_shared(false, registrations);
            self.refused_registrations(refused);
        }
        self.seen.send_modify(|s| *s = (*s).max(last.max(0) as u64));
        last
    }

    /// A progress notification: nothing in the prefix changed up to `revision`.
    pub(super) fn progress(&self, revision: i64) {
        self.seen.send_modify(|s| *s = (*s).max(revision.max(0) as u64));
    }

    /// Applies the changes of one revision to `snapshot`; `true` when it changed. Values
    /// refused earlier because of other values (a listener written before its route) are
    /// tried again with every change, so replicas that saw values in different orders end
    /// up holding the same set.
    ///
    /// A REST write (`stamped`: it rewrote the write marker) was validated by its replica
    /// against this very set — the marker guard saw to that — so the set is validated again
    /// only when something changed around the REST API since ([`State::unvouched`]) or a
    /// parked value is tried again. The values are parsed either way.
    fn apply(
        &self,
        state: &mut State,
        snapshot: &mut Snapshot,
        revision: u64,
        changes: Vec<Change>,
        stamped: bool,
    ) -> bool {
        let vouched = stamped && !state.unvouched && state.parked.is_empty();
        if !stamped {
            state.unvouched = true;
        }
        let before = snapshot.clone();
        let mut all: Vec<(Change, bool)> = Vec::new();
        for c in changes {
            // A new value of a parked key replaces the parked one.
            state.parked.remove(&(c.kind, c.name.clone()));
            all.push((c, false));
        }
        for ((kind, name), value) in std::mem::take(&mut state.parked) {
            all.push((Change { kind, name, value }, true));
        }
        // What was applied, with its value (to park if taken back) and whether it is a retry.
        let mut applied: Vec<((Kind, String), Value, bool)> = Vec::new();
        for (c, retry) in all {
            let shown = shown(c.kind, &c.name);
            let at = (c.kind, c.name.clone());
            match c.value {
                Some((version, value)) => {
                    if !retry {
                        state.mods.insert(at.clone(), version);
                    }
                    match parse(c.kind, &c.name, &value) {
                        Ok(resource) => {
                            snapshot.kinds[c.kind.index()].insert(c.name, Arc::new(Item::new(version, resource)));
                            applied.push((at, Some((version, value)), retry));
                        }
                        // The value itself is wrong: nothing else can make it right.
                        Err(reason) => self.refuse(state, shown, reason),
                    }
                }
                None => {
                    if !retry {
                        state.mods.remove(&at);
                    }
                    if snapshot.kinds[c.kind.index()].remove(&c.name).is_some() {
                        applied.push((at, None, retry));
                    } else {
                        state.invalid.remove(&shown);
                    }
                }
            }
        }
        // The set with them must be valid; take back what a problem blames (or, when no
        // problem names a change, all of them), park it, and check again.
        for round in 0..=BLAME_ROUNDS {
            if applied.is_empty() || vouched {
                break;
            }
            let problems = write_validation::new_problems_offline(&before.bootstrap(), &snapshot.bootstrap());
            if problems.is_empty() {
                break;
            }
            let blamed = |(k, n): &(Kind, String)| problems.iter().any(|p| blames(&p.field, *k, n));
            let any_blamed = applied.iter().any(|(at, ..)| blamed(at));
            let (undo, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut applied)
                .into_iter()
                .partition(|(at, ..)| !any_blamed || round == BLAME_ROUNDS || blamed(at));
            applied = keep;
            for ((kind, name), value, retry) in undo {
                let problem = problems
                    .iter()
                    .find(|p| blames(&p.field, kind, &name))
                    .or(problems.first())
                    .map_or_else(|| "invalid".to_string(), ToString::to_string);
                match before.get(kind, &name) {
                    Some(item) => snapshot.kinds[kind.index()].insert(name.clone(), item.clone()),
                    None => snapshot.kinds[kind.index()].remove(&name),
                };
                if !retry {
                    self.refuse(state, shown(kind, &name), problem);
                }
                state.parked.insert((kind, name), value);
            }
        }
        if stamped {
            // Validated here against what the next REST write is validated against.
            state.unvouched = false;
        }
        for ((kind, name), _, retry) in &applied {
            if state.invalid.remove(&shown(*kind, name)).is_some() && *retry {
                tracing::info!(key = %format!("{}{}", self.keys.prefix(), shown(*kind, name)), "accepted a value refused earlier: what it needed is there now");
            }
        }
        if applied.is_empty() {
            *snapshot = before;
            return false;
        }
        snapshot.revision = snapshot.revision.max(revision);
        true
    }

    fn refuse(&self, state: &mut State, key: String, reason: String) {
        tracing::warn!(key = %format!("{}{key}", self.keys.prefix()), %reason, "skipped an invalid value in etcd; the last good one stays");
        self.invalid_values.fetch_add(1, Ordering::Relaxed);
        state.invalid.insert(key, reason);
    }

    fn refused_registrations(&self, refused: Vec<(String, String)>) {
        if refused.is_empty() {
            return;
        }
        self.invalid_values.fetch_add(refused.len() as u64, Ordering::Relaxed);
        lock(&self.state).invalid.extend(refused);
    }
}

/// How a resource key shows in the store status: `resources/KIND/NAME`.
fn shown(kind: Kind, name: &str) -> String {
    format!("resources/{}/{name}", kind.plural())
}

/// A value read from etcd as the resource `kind/name`.
fn parse(kind: Kind, name: &str, value: &[u8]) -> Result<Resource, String> {
    let text = std::str::from_utf8(value).map_err(|_| "not UTF-8 text".to_string())?;
    let resource = Resource::parse(kind, text).map_err(|e| e.to_string())?;
    if resource.name() != name {
        return Err(format!("stored under \"{name}\" but named \"{}\"", resource.name()));
    }
    Ok(resource)
}

/// Whether a validation problem at `field` is about `kind/name` (`clusters[web].…`).
fn blames(field: &str, kind: Kind, name: &str) -> bool {
    field
        .strip_prefix(kind.plural())
        .and_then(|r| r.strip_prefix('['))
        .and_then(|r| r.strip_prefix(name))
        .is_some_and(|r| r.starts_with(']'))
}

/// How a watch ended.
enum End {
    /// The revision to resume from was compacted: list again.
    Compacted(i64),
    Lost(EtcdError),
}

/// Follows etcd until the engine is dropped (the task is aborted).
pub(super) async fn run(client: Client, follower: Arc<Follower>, mut from: i64) {
    let mut backoff = Backoff::default();
    loop {
        if from == 0 {
            let (start, end) = follower.keys.all();
            match client.range(&start, &end).await {
                Ok(listing) => {
                    from = follower.apply_listing(listing);
                    follower.relists.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(revision = from - 1, "listed etcd again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list etcd");
                    follower.set_connected(false);
                    backoff.wait().await;
                    continue;
                }
            }
        }
        match follow(&client, &follower, &mut from, &mut backoff).await {
            End::Compacted(at) => {
                tracing::warn!(
                    from,
                    compacted = at,
                    "etcd compacted the history this replica was watching from; listing again"
                );
                from = 0;
            }
            End::Lost(e) => {
                tracing::warn!(error = %e, from, "etcd watch lost; resuming");
                follower.set_connected(false);
                backoff.wait().await;
            }
        }
    }
}

/// One watch stream, from `from` on, until it ends.
async fn follow(client: &Client, follower: &Follower, from: &mut i64, backoff: &mut Backoff) -> End {
    let (key, range_end) = follower.keys.all();
    let create =
        pb::WatchCreateRequest { key, range_end, start_revision: *from, progress_notify: true, ..Default::default() };
    let mut watch = match client.watch(create).await {
        Ok(w) => w,
        Err(e) => return End::Lost(e),
    };
    loop {
        let response = match watch.next().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return End::Lost(EtcdError::Unavailable {
                    at: client.at().into(),
                    reason: "etcd ended the watch".into(),
                });
            }
            Err(e) => return End::Lost(e),
        };
        if response.canceled {
            if response.compact_revision > 0 {
                return End::Compacted(response.compact_revision);
            }
            let reason = format!("etcd canceled the watch: {}", response.cancel_reason);
            return End::Lost(EtcdError::Unavailable { at: client.at().into(), reason });
        }
        if response.created {
            follower.set_connected(true);
            backoff.reset();
            continue;
        }
        if response.events.is_empty() {
            // A progress notification: every change up to its revision was sent.
            let revision = response.header.map_or(0, |h| h.revision);
            if revision >= *from {
                follower.progress(revision);
                *from = revision + 1;
            }
            continue;
        }
        let last = follower.apply_events(response.events);
        *from = (*from).max(last + 1);
    }
}

/// Jittered exponential backoff, 100 ms to 2 s.
#[derive(Default)]
pub(super) struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    pub(super) async fn wait(&mut self) {
        let cap = self.next.unwrap_or(Duration::from_millis(100));
        tokio::time::sleep(cap.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
        self.next = Some((cap * 2).min(Duration::from_secs(2)));
    }

    pub(super) fn reset(&mut self) {
        self.next = None;
    }
}

/// Registrations by key, for the lease writer: the newest op per key wins.
pub(super) type Pending = BTreeMap<(String, String), crate::discovery::RegistrationOp>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_blame_by_kind_and_exact_name() {
        assert!(blames("routes[r].backends[0].cluster", Kind::Route, "r"));
        assert!(blames("clusters[web]", Kind::Cluster, "web"));
        assert!(!blames("routes[r2].backends[0].cluster", Kind::Route, "r"));
        assert!(!blames("routes[r].backends[0].cluster", Kind::Cluster, "r"));
    }
}

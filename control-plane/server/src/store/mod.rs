//! The resource store: every resource at one revision as an immutable [`Snapshot`] in
//! memory, kept in one of two engines:
//!
//! - embedded (default, [`embedded`]): one redb file (`DATA_DIR/trellis.redb`), every write
//!   fsync'd before it is answered; one control plane.
//! - etcd ([`etcd`]): every resource a key in etcd; several control-plane replicas share it,
//!   each following etcd's watch. A write is one etcd transaction.
//!
//! Either way a write is validated against the whole resource set first ([`check_put`],
//! [`check_delete`]), a resource's `version` is the revision of its last write, readers take
//! an `Arc` of the current snapshot, and every change of it is announced on a `watch`
//! channel ([`Store::subscribe`]).

mod embedded;
pub mod etcd;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use serde::Serialize;
use tokio::sync::watch;
use trellis_api::{Bootstrap, ValidationError};

use crate::discovery::ClusterParts;
use crate::error::Error;
use crate::stored::{Kind, Resource};
use crate::write_validation;

pub use embedded::DB_FILE;

/// One stored resource.
#[derive(Debug)]
pub struct Item {
    /// The store revision of this resource's last write.
    pub version: u64,
    pub resource: Resource,
    /// The canonical JSON text (what REST and discovery serve).
    pub json: Arc<str>,
    /// Clusters: the pieces discovery sends (the body without endpoints, one resource per
    /// endpoint), made on first use and shared by every proxy's view.
    pub(crate) discovery: OnceLock<ClusterParts>,
}

impl Item {
    fn new(version: u64, resource: Resource) -> Item {
        let json = resource.to_value().to_string().into();
        Item { version, resource, json, discovery: OnceLock::new() }
    }
}

/// Every stored resource at one revision. Immutable; cheap to share.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    revision: u64,
    kinds: [BTreeMap<String, Arc<Item>>; Kind::ALL.len()],
}

impl Snapshot {
    /// The revision of the last write (0 for an empty store).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The resource `kind/name`, if stored.
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Arc<Item>> {
        self.kinds[kind.index()].get(name)
    }

    /// Every resource of `kind`, by name.
    pub fn list(&self, kind: Kind) -> impl Iterator<Item = &Arc<Item>> {
        self.kinds[kind.index()].values()
    }

    /// A snapshot holding `resources`, each at version `revision` (for tests).
    #[cfg(test)]
    pub(crate) fn from_resources(revision: u64, resources: Vec<Resource>) -> Snapshot {
        let mut snap = Snapshot { revision, ..Default::default() };
        for r in resources {
            snap.kinds[r.kind().index()].insert(r.name().to_string(), Arc::new(Item::new(revision, r)));
        }
        snap
    }

    /// The whole set as a config, for validation.
    pub fn bootstrap(&self) -> Bootstrap {
        self.bootstrap_ending_with(None)
    }

    /// The whole set as a config with `last` at the end of its section, so that a clash
    /// between two resources (say, one address) is blamed on `last`.
    fn bootstrap_ending_with(&self, last: Option<(Kind, &str)>) -> Bootstrap {
        let mut b = Bootstrap::default();
        for kind in Kind::ALL {
            for item in self.list(kind) {
                if last != Some((kind, item.resource.name())) {
                    item.resource.add_to(&mut b);
                }
            }
            if let Some((k, name)) = last
                && k == kind
                && let Some(item) = self.get(kind, name)
            {
                item.resource.add_to(&mut b);
            }
        }
        b
    }
}

/// What a `PUT`'s or `DELETE`'s `If-Match` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: the resource must exist.
    Any,
    /// One of these versions must be the current one.
    Versions(Vec<u64>),
}

impl IfMatch {
    fn allows(&self, current: Option<u64>) -> bool {
        match (self, current) {
            (_, None) => false,
            (IfMatch::Any, Some(_)) => true,
            (IfMatch::Versions(v), Some(c)) => v.contains(&c),
        }
    }
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    /// The same resource was already stored: nothing written, version kept.
    Unchanged,
    Deleted,
}

/// The result of an accepted write.
#[derive(Clone, Debug)]
pub struct Written {
    pub outcome: Outcome,
    /// The resource's version now (for a delete: the revision of the delete).
    pub version: u64,
    /// The resource as stored now (`None` after a delete).
    pub item: Option<Arc<Item>>,
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The resource set would be invalid: the problems this write brings.
    #[error("{}", first(.0))]
    Invalid(Vec<ValidationError>),
    /// Deleting would leave references dangling: the referencing fields.
    #[error("still referenced: {}", first(.0))]
    Referenced(Vec<ValidationError>),
    /// `If-Match` does not hold; `current` is the stored version, if any.
    #[error("If-Match does not match the current version")]
    Precondition { current: Option<u64> },
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Storage(#[from] Error),
    /// The store cannot take writes now (etcd unreachable); the message names it.
    #[error("{0}")]
    Unavailable(String),
    /// Writes through other replicas kept changing the store under this one.
    #[error("{0}")]
    Contended(String),
    /// The store refused the write as too large (etcd's `--max-request-bytes`).
    #[error("{0}")]
    TooLarge(String),
    /// The store refused the write for another reason; the message says which.
    #[error("{0}")]
    Refused(String),
}

fn first(errs: &[ValidationError]) -> String {
    match errs {
        [] => "invalid".into(),
        [one] => one.to_string(),
        [one, rest @ ..] => format!("{one} (and {} more)", rest.len()),
    }
}

/// Validates `resource` as the next write on `before`: `If-Match`, then "nothing to do",
/// then the whole set with it. The snapshot it returns has the resource at revision
/// `before.revision + 1` (the embedded engine's next revision; etcd's comes from etcd).
pub(crate) fn check_put(
    before: &Snapshot,
    resource: Resource,
    if_match: Option<&IfMatch>,
) -> Result<Check, WriteError> {
    let kind = resource.kind();
    let current = before.get(kind, resource.name());
    if let Some(cond) = if_match
        && !cond.allows(current.map(|i| i.version))
    {
        return Err(WriteError::Precondition { current: current.map(|i| i.version) });
    }
    if let Some(item) = current
        && item.resource == resource
    {
        return Ok(Check::Unchanged(item.clone()));
    }
    let outcome = if current.is_some() { Outcome::Updated } else { Outcome::Created };
    let revision = before.revision + 1;
    let mut after = before.clone();
    after.revision = revision;
    let item = Arc::new(Item::new(revision, resource));
    after.kinds[kind.index()].insert(item.resource.name().to_string(), item.clone());
    let changed = Some((kind, item.resource.name()));
    let broken = write_validation::new_problems(&before.bootstrap(), &after.bootstrap_ending_with(changed));
    if !broken.is_empty() {
        return Err(WriteError::Invalid(broken));
    }
    Ok(Check::Write { outcome, after })
}

/// Checks deleting `kind/name` from `before`; the snapshot without it, at the next revision.
pub(crate) fn check_delete(
    before: &Snapshot,
    kind: Kind,
    name: &str,
    if_match: Option<&IfMatch>,
) -> Result<Snapshot, WriteError> {
    let current = before.get(kind, name).map(|i| i.version);
    if let Some(cond) = if_match
        && !cond.allows(current)
    {
        return Err(WriteError::Precondition { current });
    }
    if current.is_none() {
        return Err(WriteError::NotFound);
    }
    let mut after = before.clone();
    after.revision = before.revision + 1;
    after.kinds[kind.index()].remove(name);
    let broken = write_validation::new_problems(&before.bootstrap(), &after.bootstrap());
    if !broken.is_empty() {
        return Err(WriteError::Referenced(broken));
    }
    Ok(after)
}

/// What [`check_put`] found.
pub(crate) enum Check {
    /// The same resource is stored already.
    Unchanged(Arc<Item>),
    Write {
        outcome: Outcome,
        after: Snapshot,
    },
}

/// The current snapshot and the channel announcing its revision: what an engine publishes
/// to and everything else reads from.
pub(crate) struct Published {
    current: Mutex<Arc<Snapshot>>,
    changes: watch::Sender<u64>,
}

impl Published {
    fn new(snapshot: Snapshot) -> Published {
        let (changes, _) = watch::channel(snapshot.revision);
        Published { current: Mutex::new(Arc::new(snapshot)), changes }
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        lock(&self.current).clone()
    }

    pub(crate) fn publish(&self, after: Snapshot) {
        let revision = after.revision;
        *lock(&self.current) = Arc::new(after);
        self.changes.send_replace(revision);
    }
}

/// The store's state, for `GET /healthz`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// `embedded` or `etcd`.
    pub engine: &'static str,
    /// The database file, or the etcd members and prefix.
    pub at: String,
    /// Whether the engine is reachable now (etcd: the watch is established). While it is
    /// not, reads and discovery serve the last view and writes get 503.
    pub connected: bool,
    /// The revision of the current snapshot.
    pub revision: u64,
    /// etcd: how often the watch had to list the prefix again because etcd had compacted
    /// the history it was to resume from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relists: Option<u64>,
    /// Values found in the store that failed validation (written around the REST API, e.g.
    /// by hand with etcdctl) since the start: logged, skipped, never sent to proxies.
    pub invalid_values: u64,
    /// The keys whose current value is such a refused value, with why.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub invalid: BTreeMap<String, String>,
}

enum Engine {
    Embedded(Arc<embedded::Embedded>),
    Etcd(etcd::EtcdStore),
}

/// The store. Share it in an `Arc`.
pub struct Store {
    published: Arc<Published>,
    engine: Engine,
}

impl Store {
    /// Opens (or creates) the embedded store `DIR/trellis.redb` and loads every resource.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        let (engine, snapshot) = embedded::Embedded::open(dir)?;
        Ok(Store { published: Arc::new(Published::new(snapshot)), engine: Engine::Embedded(Arc::new(engine)) })
    }

    /// Opens the etcd store (see [`etcd`]): lists the prefix, then follows it.
    pub async fn open_etcd(
        config: etcd::Config,
        registry: Arc<crate::discovery::Registry>,
        registrations: crate::discovery::RegistrationOps,
    ) -> Result<Store, Error> {
        let published = Arc::new(Published::new(Snapshot::default()));
        let engine = etcd::EtcdStore::open(config, published.clone(), registry, registrations).await?;
        Ok(Store { published, engine: Engine::Etcd(engine) })
    }

    /// The current resource set.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.snapshot()
    }

    /// A receiver of the revision, changed after every change of the resource set.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.changes.subscribe()
    }

    /// The etcd client, when the store is etcd (the CA is kept there too).
    pub fn etcd(&self) -> Option<&etcd::EtcdStore> {
        match &self.engine {
            Engine::Etcd(e) => Some(e),
            Engine::Embedded(_) => None,
        }
    }

    /// Validates and stores `resource`. Storing an identical resource again changes nothing
    /// and answers [`Outcome::Unchanged`].
    pub async fn put(&self, resource: Resource, if_match: Option<IfMatch>) -> Result<Written, WriteError> {
        match &self.engine {
            Engine::Embedded(e) => {
                let (e, published) = (e.clone(), self.published.clone());
                blocking(move || e.put(&published, resource, if_match.as_ref())).await
            }
            Engine::Etcd(e) => e.put(resource, if_match).await,
        }
    }

    /// Deletes `kind/name`, unless other resources still reference it.
    pub async fn delete(&self, kind: Kind, name: &str, if_match: Option<IfMatch>) -> Result<Written, WriteError> {
        match &self.engine {
            Engine::Embedded(e) => {
                let (e, published, name) = (e.clone(), self.published.clone(), name.to_string());
                blocking(move || e.delete(&published, kind, &name, if_match.as_ref())).await
            }
            Engine::Etcd(e) => e.delete(kind, name, if_match).await,
        }
    }

    /// What the store is and whether it is reachable.
    pub fn status(&self) -> Status {
        let revision = self.snapshot().revision;
        match &self.engine {
            Engine::Embedded(e) => Status {
                engine: "embedded",
                at: e.path().display().to_string(),
                connected: true,
                revision,
                relists: None,
                invalid_values: 0,
                invalid: BTreeMap::new(),
            },
            Engine::Etcd(e) => e.status(revision),
        }
    }
}

/// Runs a blocking write off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WriteError> + Send + 'static,
) -> Result<T, WriteError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(WriteError::Unavailable(format!("the store write task failed: {e}"))),
    }
}

/// Locks ignoring poison: every critical section here leaves the data consistent (the
/// snapshot is replaced whole), so a panic elsewhere must not wedge the store.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;

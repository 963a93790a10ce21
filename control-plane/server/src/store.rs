//! The durable store: one redb file (`DATA_DIR/trellis.redb`) with a table per kind, each
//! mapping a name to `(version, canonical JSON)`, and a global revision counter.
//!
//! Every write is validated against the whole resource set and committed in one redb write
//! transaction with immediate durability (fsync) before it returns, so an answered write
//! survives kill -9. A resource's `version` is the revision of its last write. The whole
//! set is also kept in memory as an immutable [`Snapshot`]; readers take an `Arc` of it and
//! writers publish a new one, then announce the revision on a `watch` channel.
//!
//! The write methods block (validation may resolve host names; commit fsyncs): call them
//! from `spawn_blocking`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;
use trellis_api::{Bootstrap, ValidationError};

use crate::discovery::ClusterParts;
use crate::error::Error;
use crate::resource::{Kind, Resource};
use crate::validation;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "trellis.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";

fn table(kind: Kind) -> TableDefinition<'static, &'static str, (u64, &'static str)> {
    TableDefinition::new(kind.plural())
}

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
    kinds: [BTreeMap<String, Arc<Item>>; 4],
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
}

fn first(errs: &[ValidationError]) -> String {
    match errs {
        [] => "invalid".into(),
        [one] => one.to_string(),
        [one, rest @ ..] => format!("{one} (and {} more)", rest.len()),
    }
}

/// The store. Share it in an `Arc`.
pub struct Store {
    db: Database,
    path: PathBuf,
    current: Mutex<Arc<Snapshot>>,
    /// Held across validate → commit → publish, so writes apply one at a time to the
    /// snapshot they were validated against.
    writer: Mutex<()>,
    changes: watch::Sender<u64>,
}

impl Store {
    /// Opens (or creates) `DIR/trellis.redb` and loads every resource.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).at(&path)?;
        // Create the tables once so readers never meet a missing one.
        let mut tx = db.begin_write().at(&path)?;
        tx.set_durability(Durability::Immediate).at(&path)?;
        tx.open_table(META).at(&path)?;
        for kind in Kind::ALL {
            tx.open_table(table(kind)).at(&path)?;
        }
        tx.commit().at(&path)?;

        let snapshot = load(&db, &path)?;
        let (changes, _) = watch::channel(snapshot.revision);
        Ok(Store { db, path, current: Mutex::new(Arc::new(snapshot)), writer: Mutex::new(()), changes })
    }

    /// The current resource set.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        lock(&self.current).clone()
    }

    /// A receiver of the revision, changed after every accepted write.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Validates and stores `resource` (blocking). Storing an identical resource again
    /// changes nothing and answers [`Outcome::Unchanged`].
    pub fn put(&self, resource: Resource, if_match: Option<&IfMatch>) -> Result<Written, WriteError> {
        let _writing = lock(&self.writer);
        let before = self.snapshot();
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
            return Ok(Written { outcome: Outcome::Unchanged, version: item.version, item: Some(item.clone()) });
        }
        let outcome = if current.is_some() { Outcome::Updated } else { Outcome::Created };

        let revision = before.revision + 1;
        let mut after = (*before).clone();
        after.revision = revision;
        let item = Arc::new(Item::new(revision, resource));
        after.kinds[kind.index()].insert(item.resource.name().to_string(), item.clone());

        let changed = Some((kind, item.resource.name()));
        let broken = validation::new_problems(&before.bootstrap(), &after.bootstrap_ending_with(changed));
        if !broken.is_empty() {
            return Err(WriteError::Invalid(broken));
        }
        self.commit(revision, kind, item.resource.name(), Some(&item))?;
        self.publish(after);
        Ok(Written { outcome, version: revision, item: Some(item) })
    }

    /// Deletes `kind/name` (blocking), unless other resources still reference it.
    pub fn delete(&self, kind: Kind, name: &str, if_match: Option<&IfMatch>) -> Result<Written, WriteError> {
        let _writing = lock(&self.writer);
        let before = self.snapshot();
        let current = before.get(kind, name).map(|i| i.version);
        if let Some(cond) = if_match
            && !cond.allows(current)
        {
            return Err(WriteError::Precondition { current });
        }
        if current.is_none() {
            return Err(WriteError::NotFound);
        }
        let revision = before.revision + 1;
        let mut after = (*before).clone();
        after.revision = revision;
        after.kinds[kind.index()].remove(name);

        let broken = validation::new_problems(&before.bootstrap(), &after.bootstrap());
        if !broken.is_empty() {
            return Err(WriteError::Referenced(broken));
        }
        self.commit(revision, kind, name, None)?;
        self.publish(after);
        Ok(Written { outcome: Outcome::Deleted, version: revision, item: None })
    }

    /// One durable transaction: the resource (or its removal) and the new revision.
    fn commit(&self, revision: u64, kind: Kind, name: &str, item: Option<&Item>) -> Result<(), Error> {
        let path = &self.path;
        let mut tx = self.db.begin_write().at(path)?;
        tx.set_durability(Durability::Immediate).at(path)?;
        {
            let mut t = tx.open_table(table(kind)).at(path)?;
            match item {
                Some(item) => t.insert(name, (item.version, &*item.json)).at(path)?,
                None => t.remove(name).at(path)?,
            };
            tx.open_table(META).at(path)?.insert(REVISION_KEY, revision).at(path)?;
        }
        tx.commit().at(path)
    }

    fn publish(&self, after: Snapshot) {
        let revision = after.revision;
        *lock(&self.current) = Arc::new(after);
        self.changes.send_replace(revision);
    }
}

fn load(db: &Database, path: &Path) -> Result<Snapshot, Error> {
    let tx = db.begin_read().at(path)?;
    let revision = tx.open_table(META).at(path)?.get(REVISION_KEY).at(path)?.map_or(0, |v| v.value());
    let mut snap = Snapshot { revision, ..Default::default() };
    for kind in Kind::ALL {
        let t = tx.open_table(table(kind)).at(path)?;
        for row in t.iter().at(path)? {
            let (name, value) = row.at(path)?;
            let name = name.value().to_string();
            let (version, json) = value.value();
            let corrupt =
                |reason: String| Error::Corrupt { path: path.to_path_buf(), kind, name: name.clone(), reason };
            let resource = Resource::parse(kind, json).map_err(|e| corrupt(e.to_string()))?;
            if resource.name() != name {
                return Err(corrupt(format!("stored under \"{name}\" but named \"{}\"", resource.name())));
            }
            snap.kinds[kind.index()].insert(name, Arc::new(Item::new(version, resource)));
        }
    }
    Ok(snap)
}

/// Maps any redb error to [`Error::Storage`] naming the database file.
trait At<T> {
    fn at(self, path: &Path) -> Result<T, Error>;
}

impl<T, E: Into<redb::Error>> At<T> for Result<T, E> {
    fn at(self, path: &Path) -> Result<T, Error> {
        self.map_err(|e| Error::Storage { path: path.to_path_buf(), source: Box::new(e.into()) })
    }
}

/// Locks ignoring poison: every critical section here leaves the data consistent (the
/// snapshot is replaced whole), so a panic elsewhere must not wedge the store.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;

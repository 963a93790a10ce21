//! The embedded engine: one redb file (`DATA_DIR/trellis.redb`) with a table per kind, each
//! mapping a name to `(version, canonical JSON)`, and a global revision counter.
//!
//! Every write is committed in one redb write transaction with immediate durability (fsync)
//! before it returns, so an answered write survives kill -9. The methods block (validation
//! may resolve host names; commit fsyncs): [`super::Store`] calls them from
//! `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Check, IfMatch, Item, Outcome, Published, Snapshot, WriteError, Written, check_delete, check_put, lock};
use crate::error::Error;
use crate::stored::{Kind, Resource};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "trellis.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";

fn table(kind: Kind) -> TableDefinition<'static, &'static str, (u64, &'static str)> {
    TableDefinition::new(kind.plural())
}

pub(super) struct Embedded {
    db: Database,
    path: PathBuf,
    /// Held across validate → commit → publish, so writes apply one at a time to the
    /// snapshot they were validated against.
    writer: Mutex<()>,
}

impl Embedded {
    /// Opens (or creates) `DIR/trellis.redb` and loads every resource.
    pub(super) fn open(dir: &Path) -> Result<(Embedded, Snapshot), Error> {
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
        Ok((Embedded { db, path, writer: Mutex::new(()) }, snapshot))
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Validates and stores `resource`.
    pub(super) fn put(
        &self,
        published: &Published,
        resource: Resource,
        if_match: Option<&IfMatch>,
    ) -> Result<Written, WriteError> {
        let _writing = lock(&self.writer);
        let before = published.snapshot();
        let (kind, name) = (resource.kind(), resource.name().to_string());
        let (outcome, after) = match check_put(&before, resource, if_match)? {
            Check::Unchanged(item) => {
                return Ok(Written { outcome: Outcome::Unchanged, version: item.version, item: Some(item) });
            }
            Check::Write { outcome, after } => (outcome, after),
        };
        let item = after.get(kind, &name).cloned();
        self.commit(after.revision, kind, &name, item.as_deref())?;
        let version = after.revision;
        published.publish(after);
        Ok(Written { outcome, version, item })
    }

    /// Deletes `kind/name`, unless other resources still reference it.
    pub(super) fn delete(
        &self,
        published: &Published,
        kind: Kind,
        name: &str,
        if_match: Option<&IfMatch>,
    ) -> Result<Written, WriteError> {
        let _writing = lock(&self.writer);
        let before = published.snapshot();
        let after = check_delete(&before, kind, name, if_match)?;
        self.commit(after.revision, kind, name, None)?;
        let version = after.revision;
        published.publish(after);
        Ok(Written { outcome: Outcome::Deleted, version, item: None })
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

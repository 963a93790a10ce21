//! The etcd engine: every resource a key in etcd (layout in [`crate::etcd::keys`]), shared
//! by every control-plane replica pointed at the same etcd and prefix.
//!
//! Reads never go to etcd: [`sync`] lists the prefix once, then follows etcd's watch from
//! the revision it listed (re-listing after a compaction), and publishes each change as a
//! new snapshot — the same on every replica, whichever replica wrote it. A resource's
//! version is its key's mod revision.
//!
//! A write is validated against this replica's snapshot, then committed as one etcd
//! transaction guarded on two mod revisions: the resource's key (what `If-Match` checked)
//! and the write marker, which every write rewrites — so a write validated against a set
//! that another replica has changed since fails, and is validated again on the newer set
//! once the watch has brought it. The answer waits until the watch has brought the write
//! back, so a read on this replica after a write sees it. While etcd is unreachable, writes
//! get [`WriteError::Unavailable`] (503) and everything else serves the last snapshot.
//!
//! [`lease`] keeps this replica's sidecar registrations under its own lease.

mod lease;
mod sync;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Check, IfMatch, Outcome, Published, Status, WriteError, Written, check_delete, check_put};
use crate::discovery::{RegistrationOps, Registry};
use crate::error::Error;
use crate::etcd::keys::Keys;
use crate::etcd::pb::{compare, request_op, response_op};
use crate::etcd::{Client, EtcdError, pb};
use crate::stored::{Kind, Resource};

/// How long a write keeps trying when other replicas' writes keep overtaking it.
const WRITE_BUDGET: Duration = Duration::from_secs(10);
/// How long a write's answer waits for the watch to bring it back.
const READ_YOUR_WRITE: Duration = Duration::from_secs(5);

/// Where the store is.
#[derive(Clone, Debug)]
pub struct Config {
    /// etcd members, `HOST:PORT`.
    pub members: Vec<String>,
    /// Key prefix (`/trellis`).
    pub prefix: String,
    /// TLS to etcd, if any.
    pub tls: Option<crate::etcd::Tls>,
    /// The TTL of this replica's lease on its sidecar registrations: how long they outlive
    /// the replica if it dies.
    pub registration_ttl: Duration,
}

/// The engine. Dropping it stops following etcd.
pub struct EtcdStore {
    client: Client,
    keys: Keys,
    follower: Arc<sync::Follower>,
    seen: watch::Receiver<u64>,
    /// One local write at a time (replicas race through the marker).
    writer: tokio::sync::Mutex<()>,
    tasks: Vec<JoinHandle<()>>,
    tls: bool,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl EtcdStore {
    /// Lists the prefix (an unreachable etcd is an error naming it), then follows it.
    pub(super) async fn open(
        config: Config,
        published: Arc<Published>,
        registry: Arc<Registry>,
        registrations: RegistrationOps,
    ) -> Result<EtcdStore, Error> {
        let keys = Keys::new(&config.prefix).map_err(|reason| Error::Config(format!("--etcd-prefix: {reason}")))?;
        let client = Client::with_tls(&config.members, config.tls.as_ref()).map_err(Error::Etcd)?;
        let (start, end) = keys.all();
        let listing = client.range(&start, &end).await.map_err(Error::Etcd)?;
        let (follower, seen) = sync::Follower::new(keys.clone(), published, registry.clone());
        let follower = Arc::new(follower);
        let from = follower.apply_listing(listing);
        follower.set_connected(true);
        tracing::info!(etcd = client.at(), prefix = keys.prefix(), revision = from - 1, "following etcd");
        let tasks = vec![
            tokio::spawn(sync::run(client.clone(), follower.clone(), from)),
            tokio::spawn(lease::run(client.clone(), keys.clone(), config.registration_ttl, registry, registrations)),
        ];
        let tls = config.tls.is_some();
        Ok(EtcdStore { client, keys, follower, seen, writer: tokio::sync::Mutex::new(()), tasks, tls })
    }

    /// The etcd client (the CA lives in etcd too).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(super) fn status(&self, revision: u64) -> Status {
        let tls = if self.tls { " (TLS)" } else { "" };
        Status {
            engine: "etcd",
            at: format!("etcd://{}{}{tls}", self.client.at(), self.keys.prefix().trim_end_matches('/')),
            connected: self.follower.connected(),
            revision,
            relists: Some(self.follower.relists.load(Ordering::Relaxed)),
            invalid_values: self.follower.invalid_values.load(Ordering::Relaxed),
            invalid: self.follower.invalid(),
        }
    }

    /// Validates and writes `resource` (see the module docs).
    pub(super) async fn put(&self, resource: Resource, if_match: Option<IfMatch>) -> Result<Written, WriteError> {
        let _one = self.writer.lock().await;
        let (kind, name) = (resource.kind(), resource.name().to_string());
        let key = self.keys.resource(kind, &name);
        let value = resource.to_value().to_string().into_bytes();
        let mut tries = Tries::new();
        loop {
            let (before, guard) = self.follower.read(kind, &name);
            let (r, cond) = (resource.clone(), if_match.clone());
            let outcome = match super::blocking(move || check_put(&before, r, cond.as_ref())).await? {
                Check::Unchanged(item) => {
                    return Ok(Written { outcome: Outcome::Unchanged, version: item.version, item: Some(item) });
                }
                Check::Write { outcome, .. } => outcome,
            };
            let op = request_op::Request::RequestPut(pb::PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            });
            match self.commit(&key, guard, op, kind, &name).await? {
                Committed::At(version) => {
                    let item =
                        self.follower.published.snapshot().get(kind, &name).filter(|i| i.version == version).cloned();
                    let item = item.unwrap_or_else(|| Arc::new(super::Item::new(version, resource)));
                    return Ok(Written { outcome, version, item: Some(item) });
                }
                Committed::Overtaken => tries.again().await?,
            }
        }
    }

    /// Deletes `kind/name` (see the module docs).
    pub(super) async fn delete(
        &self,
        kind: Kind,
        name: &str,
        if_match: Option<IfMatch>,
    ) -> Result<Written, WriteError> {
        let _one = self.writer.lock().await;
        let key = self.keys.resource(kind, name);
        let mut tries = Tries::new();
        loop {
            let (before, guard) = self.follower.read(kind, name);
            let (n, cond) = (name.to_string(), if_match.clone());
            super::blocking(move || check_delete(&before, kind, &n, cond.as_ref())).await?;
            let op = request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            });
            match self.commit(&key, guard, op, kind, name).await? {
                Committed::At(version) => return Ok(Written { outcome: Outcome::Deleted, version, item: None }),
                Committed::Overtaken => tries.again().await?,
            }
        }
    }

    /// One guarded transaction: `op` and a new write marker, if the marker and the key are
    /// still at the mod revisions in `guard`. Answers once the watch has brought the result
    /// (the write, or what overtook it) to this replica.
    async fn commit(
        &self,
        key: &[u8],
        guard: sync::Guard,
        op: request_op::Request,
        kind: Kind,
        name: &str,
    ) -> Result<Committed, WriteError> {
        let marker = self.keys.marker();
        let mod_is = |key: &[u8], revision: u64| pb::Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.to_vec(),
            // A key that does not exist compares as mod revision 0.
            target_union: Some(compare::TargetUnion::ModRevision(revision as i64)),
            range_end: Vec::new(),
        };
        let range = |key: &[u8]| pb::RequestOp {
            request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                key: key.to_vec(),
                keys_only: true,
                ..Default::default()
            })),
        };
        let mark = pb::PutRequest {
            key: marker.clone(),
            value: format!("{}/{name}", kind.plural()).into_bytes(),
            ..Default::default()
        };
        let txn = pb::TxnRequest {
            compare: vec![mod_is(&marker, guard.marker), mod_is(key, guard.key)],
            success: vec![
                pb::RequestOp { request: Some(op) },
                pb::RequestOp { request: Some(request_op::Request::RequestPut(mark)) },
            ],
            failure: vec![range(&marker), range(key)],
        };
        let answer = self.client.txn(txn).await.map_err(unavailable)?;
        if answer.succeeded {
            let revision = answer.header.map_or(0, |h| h.revision.max(0) as u64);
            self.wait_seen(revision).await;
            return Ok(Committed::At(revision));
        }
        // Overtaken: wait until the watch has brought whatever moved the marker or the key.
        let newest = answer
            .responses
            .iter()
            .filter_map(|r| match &r.response {
                Some(response_op::Response::ResponseRange(range)) => range.kvs.first().map(|kv| kv.mod_revision),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        tracing::debug!(%kind, name, newest, "write overtaken by another; validating again");
        self.wait_seen(newest.max(0) as u64).await;
        Ok(Committed::Overtaken)
    }

    /// Waits (a while at most) until the watch has brought `revision`.
    async fn wait_seen(&self, revision: u64) {
        let mut seen = self.seen.clone();
        let reached = tokio::time::timeout(READ_YOUR_WRITE, seen.wait_for(|s| *s >= revision)).await;
        if !matches!(reached, Ok(Ok(_))) {
            tracing::warn!(revision, "the etcd watch has not brought a write back yet; answering anyway");
        }
    }
}

enum Committed {
    At(u64),
    Overtaken,
}

fn unavailable(e: EtcdError) -> WriteError {
    match e {
        EtcdError::Refused { ref reason, .. } if reason.contains("too large") => WriteError::TooLarge(format!(
            "cannot write: {e} (the resource's canonical JSON is over etcd's --max-request-bytes, 1.5 MiB by default)"
        )),
        EtcdError::Refused { .. } => WriteError::Refused(format!("cannot write: {e}")),
        other => WriteError::Unavailable(format!("cannot write: {other}")),
    }
}

/// The tries of one write that other replicas' writes overtake: a jittered pause that
/// doubles each time (so that racing replicas spread out), within [`WRITE_BUDGET`].
struct Tries {
    deadline: tokio::time::Instant,
    pause: Duration,
}

impl Tries {
    fn new() -> Tries {
        Tries { deadline: tokio::time::Instant::now() + WRITE_BUDGET, pause: Duration::from_millis(2) }
    }

    async fn again(&mut self) -> Result<(), WriteError> {
        if tokio::time::Instant::now() >= self.deadline {
            return Err(WriteError::Contended(format!(
                "writes through other control-plane replicas kept changing the store for {WRITE_BUDGET:?}; try again"
            )));
        }
        tokio::time::sleep(self.pause.mul_f64(fastrand::f64())).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(200));
        Ok(())
    }
}

/// The keys whose current value was refused, with why (for [`Status`]).
type Invalid = BTreeMap<String, String>;

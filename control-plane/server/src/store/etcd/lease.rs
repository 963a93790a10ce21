//! This replica's sidecar registrations in etcd, under a lease of its own: written as the
//! registry asks ([`RegistrationOp`]), batched, kept alive every third of the TTL. If the
//! replica dies, the lease expires and etcd deletes its registrations; every other replica
//! sees that on its watch. A proxy that fails over to another replica is registered again
//! there (a put under that replica's lease takes the key over), and a replica deletes a
//! registration only while it is still under its own lease, so it never removes one that
//! another replica took over.
//!
//! While etcd is unreachable, ops wait (the newest per key). If the lease expired meanwhile,
//! a new one is granted and every registration of this replica's streams written again.

use std::sync::Arc;
use std::time::Duration;

use super::sync::{Backoff, Pending};
use crate::discovery::{RegistrationOp, RegistrationOps, Registry};
use crate::etcd::keys::Keys;
use crate::etcd::pb::{compare, request_op};
use crate::etcd::{Client, EtcdError, KeepAlive, pb};

/// Puts per transaction (etcd's default `--max-txn-ops` is 128).
const BATCH: usize = 100;

/// Runs until the engine is dropped (the task is aborted).
pub(super) async fn run(client: Client, keys: Keys, ttl: Duration, registry: Arc<Registry>, mut ops: RegistrationOps) {
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
    let mut lease: Option<(i64, Option<KeepAlive>)> = None;
    let mut pending = Pending::new();
    let mut backoff = Backoff::default();
    let mut renew = tokio::time::interval((ttl / 3).max(Duration::from_millis(200)));
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if lease.is_none() {
            match client.grant(ttl_secs).await {
                Ok((id, granted)) => {
                    tracing::info!(lease = format!("{id:x}"), ttl = granted, "registration lease granted");
                    lease = Some((id, None));
                    // Everything this replica's streams registered goes (again) under it.
                    pending.clear();
                    for op in registry.local_registrations() {
                        pending.insert(key_of(&op), op);
                    }
                    backoff.reset();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get a registration lease");
                    collect_while(&mut ops, &mut pending, &mut backoff).await;
                    continue;
                }
            }
        }
        let Some((id, keep_alive)) = &mut lease else { continue };
        if !pending.is_empty() {
            if let Err(e) = flush(&client, &keys, *id, &mut pending).await {
                tracing::warn!(error = %e, waiting = pending.len(), "cannot write registrations to etcd");
                // Puts under a lease etcd no longer has fail for good (a replica cut off
                // for longer than the TTL): ask about the lease before trying again.
                if let Ok(false) = renewed(&client, *id, keep_alive).await {
                    tracing::warn!(
                        lease = format!("{id:x}"),
                        "the registration lease expired; registering again under a new one"
                    );
                    lease = None;
                    continue;
                }
                collect_while(&mut ops, &mut pending, &mut backoff).await;
                continue;
            }
            backoff.reset();
        }
        tokio::select! {
            op = ops.recv() => match op {
                Some(op) => {
                    pending.insert(key_of(&op), op);
                    while let Ok(op) = ops.try_recv() {
                        pending.insert(key_of(&op), op);
                    }
                }
                None => return,
            },
            _ = renew.tick() => match renewed(&client, *id, keep_alive).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(lease = format!("{id:x}"), "the registration lease expired; registering again under a new one");
                    lease = None;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the registration lease"),
            },
        }
    }
}

/// Renews the lease on its keep-alive stream (opened again if it broke); `false` when etcd
/// says the lease is gone.
async fn renewed(client: &Client, id: i64, stream: &mut Option<KeepAlive>) -> Result<bool, EtcdError> {
    let fresh = stream.is_none();
    if fresh {
        *stream = Some(client.keep_alive(id).await?);
    }
    let Some(s) = stream.as_mut() else { return Ok(true) };
    // A new stream carries its first renewal already.
    match s.renew(!fresh).await {
        Ok(ttl) => Ok(ttl > 0),
        Err(e) => {
            *stream = None;
            Err(e)
        }
    }
}

/// Waits one backoff step, taking ops meanwhile.
async fn collect_while(ops: &mut RegistrationOps, pending: &mut Pending, backoff: &mut Backoff) {
    let wait = backoff.wait();
    tokio::pin!(wait);
    loop {
        tokio::select! {
            () = &mut wait => return,
            op = ops.recv() => match op {
                Some(op) => { pending.insert(key_of(&op), op); }
                None => return,
            },
        }
    }
}

/// Writes every pending op: puts in batches (one transaction each), deletes one by one
/// (each only if the key is still under this lease). What fails stays pending.
async fn flush(client: &Client, keys: &Keys, lease: i64, pending: &mut Pending) -> Result<(), EtcdError> {
    let puts: Vec<(String, String)> =
        pending.iter().filter(|(_, op)| matches!(op, RegistrationOp::Put { .. })).map(|(k, _)| k.clone()).collect();
    for batch in puts.chunks(BATCH) {
        let success = batch
            .iter()
            .filter_map(|k| match pending.get(k) {
                Some(RegistrationOp::Put { service, address, value }) => Some(pb::RequestOp {
                    request: Some(request_op::Request::RequestPut(pb::PutRequest {
                        key: keys.registration(service, address),
                        // Plain data: serializing cannot fail.
                        value: serde_json::to_vec(value).unwrap_or_default(),
                        lease,
                        prev_kv: false,
                    })),
                }),
                _ => None,
            })
            .collect();
        client.txn(pb::TxnRequest { compare: Vec::new(), success, failure: Vec::new() }).await?;
        for k in batch {
            pending.remove(k);
        }
    }
    let deletes: Vec<(String, String)> = pending.keys().cloned().collect();
    for (service, address) in deletes {
        let key = keys.registration(&service, &address);
        let ours = pb::Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Lease as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::Lease(lease)),
            range_end: Vec::new(),
        };
        let delete = pb::RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key,
                ..Default::default()
            })),
        };
        let answer =
            client.txn(pb::TxnRequest { compare: vec![ours], success: vec![delete], failure: Vec::new() }).await?;
        if !answer.succeeded {
            tracing::debug!(%service, %address, "registration now under another replica's lease: left alone");
        }
        pending.remove(&(service, address));
    }
    Ok(())
}

fn key_of(op: &RegistrationOp) -> (String, String) {
    match op {
        RegistrationOp::Put { service, address, .. } | RegistrationOp::Delete { service, address } => {
            (service.clone(), address.clone())
        }
    }
}

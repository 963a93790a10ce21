//! The mesh CA the control plane signs with (and issues its own serving certificate from).
//!
//! Embedded store: `DATA_DIR/ca`, made on first start. etcd: one CA for every replica,
//! kept in etcd (`PREFIX/ca/cert`, `PREFIX/ca/key`) and written there once, create-only —
//! the first replica to start stores `DATA_DIR/ca` if an operator put a CA there (CA given
//! as files), else a new one; a replica that loses the race takes the winner's. Each
//! replica keeps a copy in its `DATA_DIR/ca` (for `trellis certs issue --dir`), and refuses
//! to start if that directory holds another CA than etcd's: two CAs in one mesh would split
//! it in two.

use std::path::Path;

use trellis_certs::Ca;

use crate::error::Error;
use crate::etcd::pb::{compare, request_op, response_op};
use crate::etcd::{EtcdError, pb};
use crate::store::etcd::EtcdStore;

/// The CA in `dir`, made on first start.
pub(crate) fn from_dir(dir: &Path) -> Result<Ca, Error> {
    if Ca::cert_path(dir).exists() || Ca::key_path(dir).exists() {
        Ok(Ca::load(dir)?)
    } else {
        tracing::info!(dir = %dir.display(), "creating the mesh CA");
        Ok(Ca::init(dir, false)?)
    }
}

/// The CA every replica on this etcd shares (see the module docs).
pub(crate) async fn from_etcd(etcd: &EtcdStore, dir: &Path) -> Result<Ca, Error> {
    let local = match Ca::cert_path(dir).exists() || Ca::key_path(dir).exists() {
        true => Some(Ca::load(dir)?),
        false => None,
    };
    let (cert_key, key_key) = (etcd.keys().ca_cert(), etcd.keys().ca_key());
    let offered = match &local {
        Some(ca) => Ca::from_pem(ca.cert_pem(), &ca.key_pem())?,
        None => Ca::generate()?,
    };
    let put = |key: &[u8], value: &str| pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    };
    let get = |key: &[u8]| pb::RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest { key: key.to_vec(), ..Default::default() })),
    };
    let absent = pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: cert_key.clone(),
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
        range_end: Vec::new(),
    };
    let txn = pb::TxnRequest {
        compare: vec![absent],
        success: vec![put(&cert_key, offered.cert_pem()), put(&key_key, &offered.key_pem())],
        failure: vec![get(&cert_key), get(&key_key)],
    };
    let at = || format!("etcd://{}{}ca", etcd.client().at(), etcd.keys().prefix());
    let answer = etcd.client().txn(txn).await.map_err(Error::Etcd)?;
    let ca = if answer.succeeded {
        tracing::info!(
            at = %at(),
            from = if local.is_some() { "DATA_DIR/ca" } else { "a new CA" },
            "stored the mesh CA in etcd for every replica"
        );
        offered
    } else {
        let value = |i: usize| -> Option<String> {
            match answer.responses.get(i).and_then(|r| r.response.as_ref()) {
                Some(response_op::Response::ResponseRange(r)) => {
                    r.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                }
                _ => None,
            }
        };
        let (Some(cert), Some(key)) = (value(0), value(1)) else {
            return Err(Error::Etcd(EtcdError::Refused {
                at: at(),
                reason: "the CA certificate is there but not its key".into(),
            }));
        };
        Ca::from_pem(&cert, &key)?
    };
    match local {
        Some(mine) if mine.cert_pem() != ca.cert_pem() => {
            return Err(Error::CaMismatch { dir: dir.to_path_buf(), at: at() });
        }
        Some(_) => {}
        None => ca.save(dir)?,
    }
    Ok(ca)
}

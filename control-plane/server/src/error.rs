//! The crate's error: what can stop the control plane from starting or serving. Request
//! errors are answered, not returned: see `api::error` (REST) and the discovery module.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::stored::Kind;

/// Why the control plane could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or created.
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The database failed (open, read or commit).
    #[error("store {}: {source}", .path.display())]
    Storage { path: PathBuf, source: Box<redb::Error> },
    /// A stored resource no longer parses (written by another version?).
    #[error("store {}: {kind}/{name}: {reason}", .path.display())]
    Corrupt { path: PathBuf, kind: Kind, name: String, reason: String },
    /// The CA in `DATA_DIR/ca` could not be made or loaded.
    #[error("certificate authority: {0}")]
    Ca(#[from] trellis_certs::CertError),
    /// The token file is unusable.
    #[error("token file {}: {reason}", .path.display())]
    Token { path: PathBuf, reason: String },
    /// The workload keys (`--workload-jwks`) are unusable.
    #[error("{0}")]
    Workload(String),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    /// etcd (the store) is unreachable or refused what the control plane needs.
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    /// An option is unusable.
    #[error("{0}")]
    Config(String),
    /// `DATA_DIR/ca` holds another CA than the one the replicas share in etcd.
    #[error(
        "{} holds another CA than the one the control-plane replicas share in {at}: remove it (each replica then copies the shared one) or start over with an empty prefix",
        .dir.display()
    )]
    CaMismatch { dir: PathBuf, at: String },
    /// A server stopped with an error.
    #[error("{what} server: {reason}")]
    Serve { what: &'static str, reason: String },
}

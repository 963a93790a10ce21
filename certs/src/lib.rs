//! `trellis-certs`: the Trellis certificate authority and workload identities.
//!
//! - [`SpiffeId`]: parse and validate `spiffe://<trust-domain>/<path>` identities
//!   (Trellis workloads are `spiffe://<td>/ns/<namespace>/sa/<service-account>`).
//! - [`Ca`]: an ECDSA P-256 root CA kept as `DIR/ca.pem` + `DIR/ca.key` (0600)
//!   ([`Ca::init`], [`Ca::load`]), issuing X.509-SVIDs ([`Ca::issue`], [`Ca::sign_csr`]).
//! - [`inspect`] / [`leaf_spiffe_id`]: read a certificate back, for people and for the
//!   proxy's TLS peer verification.
//! - [`load_certs`] / [`load_key`]: PEM files as rustls-pki-types values.
//!
//! All fallible functions return [`CertError`], whose messages name the file or the ID.
//! Cryptography is `ring` only (through rcgen and rustls's ring provider).
//!
//! ```
//! use std::time::Duration;
//! use trellis_certs::{Ca, SpiffeId, inspect};
//!
//! let ca = Ca::generate()?;
//! let id = SpiffeId::workload("trellis.local", "default", "checkout")?;
//! let issued = ca.issue(&id, Duration::from_secs(3600), &[])?;
//! assert_eq!(inspect(issued.cert_pem.as_bytes())?.spiffe_id, Some(id));
//! # Ok::<(), trellis_certs::CertError>(())
//! ```

mod ca;
mod crypto;
mod error;
mod inspect;
mod issue;
mod pem;
mod spiffe;
pub mod verify;

pub use ca::{CA_CERT_FILE, CA_COMMON_NAME, CA_KEY_FILE, CA_VALIDITY, Ca};
pub use error::{CertError, Result};
pub use inspect::{CertInfo, format_unix_time, inspect, inspect_chain, inspect_der, inspect_file, leaf_spiffe_id};
pub use issue::{Csr, Issued, IssuedFiles, SignedCsr, csr_spiffe_id, new_csr};
pub use pem::{Access, certs_from_pem, encode_cert_pem, key_from_pem, load_certs, load_key, write_atomically};
pub use spiffe::{DEFAULT_TRUST_DOMAIN, SpiffeId};

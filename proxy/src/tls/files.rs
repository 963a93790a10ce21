//! Reading PEM files into rustls types, with errors that name the file.

use crate::tls::TlsError;
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

/// A chain and its key, checked to belong together.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = trellis_certs::load_certs(cert)?;
    let key_der = trellis_certs::load_key(key)?;
    let signer = crate::tls::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::Rustls { what: format!("key {}", key.display()), source })?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|source| TlsError::Rustls {
        what: format!("{} and {} do not belong together", cert.display(), key.display()),
        source,
    })?;
    Ok(Arc::new(ck))
}

/// Every certificate of a PEM bundle as a trust anchor.
pub fn roots(bundle: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    Ok(trellis_certs::verify::load_roots(bundle)?)
}

/// The leaf's expiry (unix seconds) and SPIFFE ID, if any.
pub fn leaf_info(ck: &CertifiedKey) -> (Option<i64>, Option<String>) {
    match ck.cert.first().map(|c| trellis_certs::inspect_der(c)) {
        Some(Ok(info)) => (Some(info.not_after), info.spiffe_id.map(|id| id.to_string())),
        _ => (None, None),
    }
}

//! Mesh mTLS: TLS 1.3 only, both sides present certificates chained to the trust bundle,
//! and identities are SPIFFE IDs (the leaf's URI SAN), never DNS names. The server side
//! hands the peer's ID to authorization; the client side checks the server's ID against the
//! cluster's expected identity.

use crate::tls::{ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE, TlsError, files};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;
use trellis_api as api;
use trellis_certs::verify::client_builder;
pub use trellis_certs::verify::{IdentityMismatch, identity_mismatch};

/// This proxy's mesh identity and the server config built from it.
#[derive(Debug)]
pub struct Mesh {
    pub id: String,
    pub key: Arc<CertifiedKey>,
    pub roots: Arc<RootCertStore>,
    pub server: Arc<ServerConfig>,
    /// Leaf expiry, unix seconds.
    pub not_after: Option<i64>,
}

/// Loads the identity files and builds the mesh server config. Refuses a key that does not
/// match its certificate, or a leaf without a SPIFFE ID.
pub fn load(identity: &api::Identity) -> Result<Mesh, TlsError> {
    let key = files::certified_key(Path::new(&identity.cert), Path::new(&identity.key))?;
    let roots = files::roots(Path::new(&identity.trust_bundle))?;
    let (not_after, id) = files::leaf_info(&key);
    let id = id.ok_or_else(|| TlsError::Invalid(format!("{}: the leaf has no SPIFFE ID (URI SAN)", identity.cert)))?;
    let provider = crate::tls::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Invalid(format!("trust bundle {}: {e}", identity.trust_bundle)))?;
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls { what: "mesh server config".into(), source })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key.clone())));
    server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_OPAQUE.to_vec()];
    Ok(Mesh { id, key, roots, server: Arc::new(server), not_after })
}

/// A client config that presents this proxy's identity and accepts only a server whose
/// SPIFFE ID is `expected`. `alpn` selects the HTTP version.
pub fn client_config(mesh: &Mesh, expected: &str, alpn: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    let versions = [&rustls::version::TLS13];
    let mut c = client_builder(mesh.roots.clone(), expected.to_owned(), crate::tls::provider(), &versions)
        .map_err(|source| TlsError::Rustls { what: "mesh client config".into(), source })?
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(mesh.key.clone())));
    c.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(c))
}

/// The SPIFFE ID of a verified peer certificate chain.
pub fn peer_id(certs: Option<&[CertificateDer<'_>]>) -> Option<Arc<str>> {
    certs?.first().and_then(|c| trellis_certs::leaf_spiffe_id(c)).map(|id| Arc::from(id.as_str()))
}

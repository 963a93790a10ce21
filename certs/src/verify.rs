//! Verifying a TLS server by its SPIFFE ID: the chain must lead to the trust bundle, and
//! the leaf's URI SAN must be the ID expected; the DNS name is not checked. Used between
//! mesh proxies and by the clients of the control plane.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// The server presented a valid certificate for another identity.
#[derive(Debug, thiserror::Error)]
#[error("upstream identity mismatch: expected {expected}, got {}", got.as_deref().unwrap_or("no SPIFFE ID"))]
pub struct IdentityMismatch {
    pub expected: String,
    pub got: Option<String>,
}

/// Chain verification against the trust bundle, then an exact SPIFFE ID check in place of
/// the usual server-name check.
#[derive(Debug)]
pub struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            Error::InvalidCertificate(match e {
                webpki::Error::CertExpired { .. } => CertificateError::Expired,
                webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
                webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
                _ => CertificateError::BadSignature,
            })
        })?;
        let got = crate::leaf_spiffe_id(end_entity).map(|id| id.to_string());
        if got.as_deref() != Some(self.expected.as_str()) {
            let err = IdentityMismatch { expected: self.expected.clone(), got };
            return Err(Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err)))));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config builder that accepts only a server presenting `expected` under `roots`,
/// over `versions`; the caller chooses whether to present a certificate.
pub fn client_builder(
    roots: Arc<RootCertStore>,
    expected: String,
    provider: Arc<CryptoProvider>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, Error> {
    let verifier = Arc::new(SpiffeVerifier::new(roots, expected, provider.clone()));
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

/// Every certificate of a PEM trust bundle as a trust anchor (several roots: rotation).
pub fn load_roots(bundle: &std::path::Path) -> crate::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in crate::load_certs(bundle)? {
        roots
            .add(cert)
            .map_err(|e| crate::CertError::BadCertificate { path: bundle.to_owned(), reason: e.to_string() })?;
    }
    Ok(Arc::new(roots))
}

/// The TLS server name for `HOST[:PORT]` (brackets of an IPv6 address dropped). With a
/// [`SpiffeVerifier`] it only fills SNI: the SPIFFE ID is checked, not this name.
pub fn sni_name(authority: &str) -> Result<ServerName<'static>, rustls_pki_types::InvalidDnsNameError> {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => authority,
    };
    ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
}

impl SpiffeVerifier {
    /// Accepts a server whose chain leads to `roots` and whose SPIFFE ID is `expected`.
    pub fn new(roots: Arc<RootCertStore>, expected: String, provider: Arc<CryptoProvider>) -> SpiffeVerifier {
        SpiffeVerifier { roots, expected, provider }
    }
}

/// The identity mismatch inside a failed handshake, if that is what failed it.
pub fn identity_mismatch(e: &std::io::Error) -> Option<&IdentityMismatch> {
    match e.get_ref()?.downcast_ref::<Error>()? {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => inner.downcast_ref(),
        _ => None,
    }
}

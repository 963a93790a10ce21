//! TLS: loading certificates (`files`), the mesh's mTLS configs with SPIFFE verification
//! (`mesh`), an identity obtained from and renewed with the control plane's CA (`issuer`), edge termination with SNI and ordinary TLS upstreams (`edge`), and a stream
//! type that is plain or TLS (`io`). Configs are compiled into the config snapshot, so a
//! rotation is a reload: new handshakes use the new files, open connections keep theirs.

pub mod control;
pub mod edge;
pub mod files;
pub mod io;
pub mod issuer;
pub mod mesh;

use std::sync::Arc;
use thiserror::Error;

/// Why TLS material could not be loaded or a config built.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{0}")]
    Cert(#[from] trellis_certs::CertError),
    #[error("{what}: {source}")]
    Rustls { what: String, source: rustls::Error },
    #[error("{0}")]
    Invalid(String),
}

/// The crypto provider of the whole tree (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN ids.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
pub const ALPN_H3: &[u8] = b"h3";
/// Opaque TCP between proxies (a transparent inbound proxy forwards the bytes as they are).
pub const ALPN_OPAQUE: &[u8] = b"trellis/tcp";

/// A short label for a handshake failure, for `trellis_tls_handshake_errors_total{reason}`.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(E::NoCertificatesPresented) => "no_client_certificate",
        Some(E::InvalidCertificate(C::UnknownIssuer)) => "unknown_issuer",
        Some(E::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => "expired_certificate",
        Some(E::InvalidCertificate(_)) => "bad_certificate",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::InvalidMessage(_)) => "not_tls",
        Some(E::AlertReceived(_)) => "alert_received",
        Some(_) => "tls_error",
        None if e.kind() == std::io::ErrorKind::TimedOut => "timeout",
        None if e.kind() == std::io::ErrorKind::InvalidData => "not_tls",
        None => "io_error",
    }
}

/// A server-side TLS handshake under `timeout`; failures are counted by reason and end
/// the connection (a plaintext client on a TLS port gets no response).
pub async fn accept(
    stream: tokio::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    timeout: std::time::Duration,
    listener: &str,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let result = tokio::time::timeout(timeout, tokio_rustls::TlsAcceptor::from(config).accept(stream)).await;
    let err = match result {
        Ok(Ok(s)) => return Some(s),
        Ok(Err(e)) => e,
        Err(_) => std::io::Error::from(std::io::ErrorKind::TimedOut),
    };
    let reason = failure_reason(&err);
    metrics::counter!(crate::telemetry::TLS_HANDSHAKE_ERRORS_TOTAL, "listener" => listener.to_owned(), "reason" => reason)
        .increment(1);
    tracing::debug!(listener, reason, error = %err, "TLS handshake failed");
    None
}

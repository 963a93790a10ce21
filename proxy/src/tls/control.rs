//! The connection to the control plane. An `https://` discovery address is reached over
//! mTLS: the proxy presents its mesh identity and the control plane must present the
//! expected SPIFFE ID (`control_plane.identity`, by default the control plane's ID in the
//! proxy's own trust domain). `http://` stays plaintext, for local use.

use crate::tls::mesh::{self, Mesh};
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use trellis_api as api;

/// What a control plane presents unless the bootstrap says otherwise: `spiffe://TD/ns/trellis-system/sa/control-plane`.
pub fn default_identity(own: &str) -> String {
    let domain = own.strip_prefix("spiffe://").and_then(|r| r.split('/').next()).unwrap_or("trellis.local");
    format!("spiffe://{domain}/ns/trellis-system/sa/control-plane")
}

/// Opens a channel to `address` (one of `cp`'s), over mTLS with `identity` when it is
/// `https://`.
pub async fn connect(cp: &api::ControlPlane, address: &str, identity: Option<&Mesh>) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|e| format!("bad control-plane address: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(20));
    if !address.starts_with("https://") {
        return endpoint.connect().await.map_err(|e| format!("connect: {e}"));
    }
    let identity = identity.ok_or("an https:// control plane needs the bootstrap's `identity`")?;
    let expected = cp.identity.clone().unwrap_or_else(|| default_identity(&identity.id));
    let config = mesh::client_config(identity, &expected, crate::tls::ALPN_H2).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let connect = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        async move {
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            // The mesh verifier checks the SPIFFE ID; the name only fills SNI.
            let name = ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint.connect_with_connector(connect).await.map_err(|e| {
        // tonic's error hides the TLS cause a few levels down.
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(m) = s.downcast_ref::<std::io::Error>().and_then(mesh::identity_mismatch) {
                return format!(
                    "the control plane's identity mismatch: expected {expected}, got {}",
                    m.got.as_deref().unwrap_or("no SPIFFE ID")
                );
            }
            source = s.source();
        }
        let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
        format!("connect over mTLS (expecting {expected}): {e}{cause}")
    })
}

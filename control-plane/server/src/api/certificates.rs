//! `POST /v1/certificates`: signs a proxy's CSR with the control plane's CA, so the proxy's
//! private key never leaves it (DESIGN §4).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use trellis_certs::CertError;

use super::{ApiError, Shared, read_body};

/// The namespace of the control plane's own identity (`…/ns/trellis-system/sa/control-plane`).
const RESERVED_NAMESPACE: &str = "trellis-system";

/// Validity when the request names none.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    /// PKCS#10 request, PEM, whose one URI SAN is the SPIFFE ID wanted.
    csr: String,
    /// Validity, e.g. `24h` (default); capped at the CA's own expiry.
    #[serde(default)]
    ttl: Option<trellis_api::Duration>,
}

#[derive(Serialize)]
pub struct Signed {
    /// Leaf then CA certificate, PEM.
    certificate: String,
    spiffe_id: String,
    /// Unix seconds.
    not_after: u64,
}

pub async fn sign(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Result<Json<Signed>, ApiError> {
    let bytes = read_body(&headers, body).await?;
    let req: SignRequest = serde_json::from_slice(&bytes).map_err(|e| {
        let field = if e.to_string().contains("ttl") { "ttl" } else { "csr" };
        ApiError::bad_request(format!("the body must be {{\"csr\": PEM, \"ttl\"?: \"24h\"}}: {e}"), Some(field))
    })?;
    let ttl = req.ttl.map_or(DEFAULT_TTL, |t| t.get());
    // The control plane's own namespace is not for proxies: a certificate there would pass
    // for the control plane with every client that checks its SPIFFE ID.
    let asked =
        trellis_certs::csr_spiffe_id(&req.csr).map_err(|e| ApiError::bad_request(format!("csr: {e}"), Some("csr")))?;
    if asked.namespace() == Some(RESERVED_NAMESPACE) {
        return Err(ApiError::new(
            http::StatusCode::FORBIDDEN,
            format!(
                "csr: {asked} is in the control plane's namespace ({RESERVED_NAMESPACE}), which is not issued to proxies"
            ),
        ));
    }
    let signed = shared.ca.sign_csr(&req.csr, ttl).map_err(|e| match e {
        CertError::Validity(_) => ApiError::bad_request(format!("ttl: {e}"), Some("ttl")),
        CertError::Csr(_) | CertError::InvalidSpiffeId { .. } => {
            ApiError::bad_request(format!("csr: {e}"), Some("csr"))
        }
        other => ApiError::internal(other),
    })?;
    tracing::info!(spiffe_id = %signed.spiffe_id, "signed a CSR");
    Ok(Json(Signed {
        certificate: signed.cert_pem,
        spiffe_id: signed.spiffe_id.to_string(),
        not_after: signed.not_after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    }))
}

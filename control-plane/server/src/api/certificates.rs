//! `POST /v1/certificates`: signs a proxy's CSR with the control plane's CA, so the proxy's
//! private key never leaves it (DESIGN §4). With workload identity on (DESIGN §10), the
//! request is authorized by the pod's service-account JWT instead of the admin token, and
//! only `spiffe://<td>/ns/<NS>/sa/<SA>` of the token's subject is signed.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use trellis_certs::{CertError, DEFAULT_TRUST_DOMAIN, SpiffeId};

use crate::workload::WorkloadAuth;

use super::{ApiError, Shared, read_body};

/// The namespace of the control plane's own identity (`…/ns/trellis-system/sa/control-plane`).
const RESERVED_NAMESPACE: &str = "trellis-system";

/// Validity when the request names none.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The token must be valid, name a workload outside the control plane's namespace, and
/// the CSR must ask for exactly that workload's ID.
async fn authorize_workload(
    shared: &Shared,
    workload: &WorkloadAuth,
    headers: &HeaderMap,
    csr: &str,
) -> Result<(), ApiError> {
    let authorization = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let who = match workload.verify(authorization).await {
        Ok(who) => who,
        Err(refusal) => {
            // The admin token is not a workload's: say so rather than "not a JWT".
            let admin = shared.token.as_ref().is_some_and(|t| t.accepts(authorization));
            let reason = if admin {
                "the admin token does not sign certificates when workload identity is on (--workload-jwks): \
                 present the pod's service-account token"
                    .to_owned()
            } else {
                refusal.reason
            };
            let status = if admin { http::StatusCode::FORBIDDEN } else { refusal.status };
            tracing::warn!(%status, %reason, "certificate refused");
            return Err(ApiError::new(status, reason));
        }
    };
    let forbidden = |reason: String| {
        tracing::warn!(namespace = %who.namespace, service_account = %who.service_account, %reason, "certificate refused");
        ApiError::new(http::StatusCode::FORBIDDEN, reason)
    };
    if who.namespace == RESERVED_NAMESPACE {
        return Err(forbidden(format!(
            "the token is for {RESERVED_NAMESPACE}/{}: the control plane's namespace gets no workload certificates",
            who.service_account
        )));
    }
    let allowed = SpiffeId::workload(DEFAULT_TRUST_DOMAIN, &who.namespace, &who.service_account)
        .map_err(|e| forbidden(format!("the token's service account has no SPIFFE ID: {e}")))?;
    let asked =
        trellis_certs::csr_spiffe_id(csr).map_err(|e| ApiError::bad_request(format!("csr: {e}"), Some("csr")))?;
    if asked != allowed {
        return Err(forbidden(format!(
            "csr: asks for {asked}, but the token is for service account {}/{}, which may only have {allowed}",
            who.namespace, who.service_account
        )));
    }
    Ok(())
}

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
    if let Some(workload) = &shared.workload {
        authorize_workload(&shared, workload, &headers, &req.csr).await?;
    }
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

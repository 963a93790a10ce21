//! Workload identity without a shared secret (DESIGN §10): a proxy asks for its certificate
//! with its pod's projected service-account token, a JWT the cluster signed. The token is
//! checked against the cluster's keys (a JWKS file, re-read when it changes, or the API
//! server's `/openid/v1/jwks`, fetched again every few minutes and when a token names a key
//! not seen yet): RS256 or ES256 as the key says, `aud` must hold `trellis`, `exp` must be
//! in the future. Its `sub`, `system:serviceaccount:NS:SA`, is the only workload it speaks
//! for. Errors name what failed and never repeat the token.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

/// The audience a workload's token must be issued for.
pub const AUDIENCE: &str = "trellis";
/// Clock skew allowed on `exp`.
const LEEWAY_SECONDS: u64 = 30;
/// How often fetched keys are fetched again.
const REFRESH: Duration = Duration::from_secs(300);
/// A token naming an unknown key makes a fetch at most this often.
const MISS_REFETCH: Duration = Duration::from_secs(30);
/// Bound on one fetch of the keys.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest key set read.
const MAX_JWKS: usize = 1 << 20;

/// Where the cluster's service-account signing keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// A JWKS file (e.g. `kubectl get --raw /openid/v1/jwks`), re-read when it changes.
    File(PathBuf),
    /// A JWKS URL over HTTPS (e.g. `https://kubernetes.default.svc/openid/v1/jwks`),
    /// verified against `ca_file`, asked with the bearer token in `token_file` (re-read
    /// at every fetch) when given.
    Url { url: String, ca_file: PathBuf, token_file: Option<PathBuf> },
}

/// Why a token was not accepted: `status` is 401 (not a valid token) or 403 (a valid
/// token that does not allow this).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

fn unauthorized(reason: impl Into<String>) -> Refusal {
    Refusal { status: StatusCode::UNAUTHORIZED, reason: reason.into() }
}

/// The workload a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

struct Cached {
    keys: Arc<JwkSet>,
    /// The file's modification time (file source).
    stamp: Option<SystemTime>,
    /// When the keys were read (URL source).
    fetched: Instant,
}

/// Verifies workload tokens.
pub struct WorkloadAuth {
    source: JwksSource,
    cached: Mutex<Option<Cached>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for WorkloadAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadAuth").field("source", &self.source).finish_non_exhaustive()
    }
}

fn parse_jwks(bytes: &[u8]) -> Result<JwkSet, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    if !set.keys.iter().any(|k| algorithm_of(k).is_some()) {
        return Err("no RS256 or ES256 (P-256) key in it".into());
    }
    Ok(set)
}

/// The algorithm a key verifies: what it says, else what its type implies.
fn algorithm_of(key: &Jwk) -> Option<Algorithm> {
    let implied = match &key.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    match key.common.key_algorithm {
        None => Some(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Some(implied),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Some(implied),
        Some(_) => None,
    }
}

impl WorkloadAuth {
    /// Reads the keys once (a file must load now; a URL is fetched now and, if the API
    /// server cannot be reached yet, at the first request).
    pub async fn new(source: JwksSource) -> Result<WorkloadAuth, String> {
        let auth = WorkloadAuth { source, cached: Mutex::new(None), fetching: tokio::sync::Mutex::new(()) };
        match &auth.source {
            JwksSource::File(path) => {
                auth.file_keys().map_err(|e| format!("--workload-jwks {}: {e}", path.display()))?;
            }
            JwksSource::Url { url, .. } => {
                if let Err(e) = auth.fetch().await {
                    tracing::warn!(%url, error = %e, "workload keys not fetched yet; retrying at the first request");
                }
            }
        }
        Ok(auth)
    }

    fn file_keys(&self) -> Result<Arc<JwkSet>, String> {
        let JwksSource::File(path) = &self.source else { return Err("not a file source".into()) };
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cached.as_ref().filter(|c| c.stamp == stamp && stamp.is_some()) {
            return Ok(c.keys.clone());
        }
        let read = std::fs::read(path).map_err(|e| e.to_string()).and_then(|b| parse_jwks(&b));
        match read {
            Ok(set) => {
                let keys = Arc::new(set);
                *cached = Some(Cached { keys: keys.clone(), stamp, fetched: Instant::now() });
                Ok(keys)
            }
            // A bad edit keeps the keys that worked.
            Err(e) => match cached.as_ref() {
                Some(c) => {
                    tracing::warn!(path = %path.display(), error = %e, "workload JWKS unreadable; keeping the keys read before");
                    Ok(c.keys.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Fetches the keys from the URL source and caches them.
    async fn fetch(&self) -> Result<Arc<JwkSet>, String> {
        let JwksSource::Url { url, ca_file, token_file } = &self.source else {
            return Err("not a URL source".into());
        };
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            None => None,
        };
        let bytes = tokio::time::timeout(FETCH_TIMEOUT, get(url, ca_file, token.as_deref()))
            .await
            .map_err(|_| format!("{url}: timed out"))??;
        let keys = Arc::new(parse_jwks(&bytes).map_err(|e| format!("{url}: {e}"))?);
        let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *cached = Some(Cached { keys: keys.clone(), stamp: None, fetched: Instant::now() });
        tracing::info!(%url, keys = keys.keys.len(), "workload keys fetched");
        Ok(keys)
    }

    /// The keys to check a token with; `kid` not among them may trigger a fetch.
    async fn keys(&self, kid: Option<&str>) -> Result<Arc<JwkSet>, Refusal> {
        let unavailable =
            |e: String| Refusal { status: StatusCode::SERVICE_UNAVAILABLE, reason: format!("workload keys: {e}") };
        if matches!(self.source, JwksSource::File(_)) {
            return self.file_keys().map_err(unavailable);
        }
        let (current, age) = {
            let cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match cached.as_ref() {
                Some(c) => (Some(c.keys.clone()), c.fetched.elapsed()),
                None => (None, Duration::MAX),
            }
        };
        let missing = kid.is_some_and(|k| current.as_ref().is_some_and(|set| set.find(k).is_none()));
        let stale = age >= REFRESH || (missing && age >= MISS_REFETCH);
        match current {
            Some(set) if !stale => Ok(set),
            current => {
                let _one = self.fetching.lock().await;
                match self.fetch().await {
                    Ok(set) => Ok(set),
                    Err(e) => match current {
                        Some(set) => {
                            tracing::warn!(error = %e, "workload keys not refreshed; keeping the keys fetched before");
                            Ok(set)
                        }
                        None => Err(unavailable(e)),
                    },
                }
            }
        }
    }

    /// Checks `Authorization: Bearer <token>` and returns the workload it names.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<Workload, Refusal> {
        let token = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("a service-account token is required (Authorization: Bearer <JWT>)"))?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| unauthorized("the bearer token is not a JWT"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(unauthorized(format!("token algorithm {:?} is not accepted (RS256 or ES256)", header.alg)));
        }
        let keys = self.keys(header.kid.as_deref()).await?;
        let candidates: Vec<&Jwk> = match &header.kid {
            Some(kid) => keys.find(kid).into_iter().collect(),
            None => keys.keys.iter().collect(),
        };
        let candidates: Vec<(&Jwk, Algorithm)> = candidates
            .into_iter()
            .filter_map(|k| algorithm_of(k).map(|a| (k, a)))
            .filter(|(_, a)| *a == header.alg)
            .collect();
        if candidates.is_empty() {
            let named = header.kid.as_deref().map(|k| format!(" (kid {k:?})")).unwrap_or_default();
            return Err(unauthorized(format!(
                "signature: no {:?} key of the cluster{named} signed this token",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        let mut last = unauthorized("signature: does not verify with the cluster's keys");
        for (jwk, _) in candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => return workload(&data.claims.sub),
                Err(e) => {
                    last = unauthorized(match e.kind() {
                        ErrorKind::InvalidSignature => "signature: does not verify with the cluster's keys".into(),
                        ErrorKind::ExpiredSignature => "the token has expired (exp)".into(),
                        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                        ErrorKind::InvalidAudience => format!("audience: the token is not for {AUDIENCE:?} (aud)"),
                        ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c:?} claim"),
                        ErrorKind::InvalidClaimFormat(c) => format!("the token's {c:?} claim is malformed"),
                        _ => "the bearer token is not a valid JWT".into(),
                    });
                    // Only a bad signature may be another key's token; anything else is final.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// `system:serviceaccount:NS:SA`.
fn workload(sub: &str) -> Result<Workload, Refusal> {
    let forbidden = |reason: String| Refusal { status: StatusCode::FORBIDDEN, reason };
    let mut parts = sub.strip_prefix("system:serviceaccount:").map(|rest| rest.split(':'));
    match parts.as_mut().map(|p| (p.next(), p.next(), p.next())) {
        Some((Some(ns), Some(sa), None)) if !ns.is_empty() && !sa.is_empty() => {
            Ok(Workload { namespace: ns.to_owned(), service_account: sa.to_owned() })
        }
        _ => Err(forbidden(format!(
            "the token's subject {sub:?} is not a service account (system:serviceaccount:NS:SA)"
        ))),
    }
}

/// One HTTPS GET; the body of a 200.
async fn get(url: &str, ca_file: &std::path::Path, token: Option<&str>) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url}: must be https://"));
    }
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let roots = trellis_certs::verify::load_roots(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| format!("{url}: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{url}: TLS: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = http::Request::get(path).header(http::header::HOST, uri.authority().map_or("", |a| a.as_str()));
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_JWKS)
        .collect()
        .await
        .map_err(|e| format!("{url}: reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{url}: answered {status}"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_names_one_service_account() {
        assert_eq!(
            workload("system:serviceaccount:shop:web").unwrap(),
            Workload { namespace: "shop".into(), service_account: "web".into() }
        );
        for bad in
            ["system:serviceaccount:shop", "system:serviceaccount:a:b:c", "user:alice", "system:serviceaccount::x"]
        {
            assert_eq!(workload(bad).unwrap_err().status, StatusCode::FORBIDDEN, "{bad}");
        }
    }

    #[test]
    fn a_jwks_without_usable_keys_is_refused() {
        assert!(parse_jwks(b"{\"keys\": []}").unwrap_err().contains("no RS256 or ES256"));
        assert!(parse_jwks(b"[]").unwrap_err().starts_with("not a JWKS"));
    }

    /// A cluster's JWKS may hold keys we do not verify with (another curve, another type):
    /// they are skipped, not a reason to refuse the set.
    #[test]
    fn keys_of_other_kinds_are_skipped() {
        let set = r#"{"keys": [
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AAAA", "y": "AAAA"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "RSA", "kid": "rsa", "alg": "RS256", "use": "sig", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"}
        ]}"#;
        let parsed = parse_jwks(set.as_bytes()).unwrap();
        let usable: Vec<_> = parsed.keys.iter().filter_map(algorithm_of).collect();
        assert_eq!(usable, [Algorithm::RS256]);
    }
}

//! Identity from the control plane's CA (`identity.issuer`). The proxy makes its own key
//! and a CSR for its SPIFFE ID, sends only the CSR to the control plane's
//! `POST /v1/certificates` (over TLS to the control plane's SPIFFE ID for `https://`),
//! checks the answer (the ID asked for, a chain to the trust bundle, a certificate that
//! belongs to the key) and writes `identity.cert` and `identity.key` (mode 0600), then has
//! `run.rs` reload them like any other rotation: new handshakes present the new
//! certificate, open connections keep theirs. The certificate is renewed once less than a
//! third of its lifetime is left; a failed renewal is retried with backoff while the old
//! certificate keeps serving.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use trellis_api as api;
use trellis_certs::Access;
use trellis_certs::SpiffeId;

/// Validity asked for when `identity.issuer.ttl` is not set.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a start waits for a reachable control plane before giving up.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on one request to the control plane (connect, send, answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest backoff between two failed attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The largest answer read from the control plane.
const MAX_ANSWER: usize = 64 * 1024;

/// Why a certificate could not be obtained.
#[derive(Debug, Error)]
pub enum IssueError {
    #[error("identity.issuer.token_file {path}: {source}")]
    Token { path: String, source: std::io::Error },
    #[error("identity.issuer.server {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("identity.issuer.server {server} refused the request ({status}): {message}")]
    Refused { server: String, status: u16, message: String },
    #[error("identity.issuer.server {server} is not the control plane (check trust_bundle): {reason}")]
    Untrusted { server: String, reason: String },
    #[error("identity.issuer.server {server} answered with an unusable certificate: {reason}")]
    BadAnswer { server: String, reason: String },
    #[error("identity.issuer: {0}")]
    Csr(#[from] trellis_certs::CertError),
    #[error("identity.trust_bundle: {0}")]
    TrustBundle(String),
    #[error("{what} {path}: {source}")]
    Write { what: &'static str, path: PathBuf, source: std::io::Error },
}

impl IssueError {
    /// Worth another attempt: the control plane may come back; a refusal will not change.
    fn retryable(&self) -> bool {
        match self {
            IssueError::Unreachable { .. } | IssueError::Write { .. } => true,
            IssueError::Refused { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// What the identity files hold now, for the renewal decision.
enum Held {
    /// Nothing usable: missing, unreadable, another ID, expired, or a key that is not the
    /// certificate's (e.g. a stop between the two renames).
    Nothing,
    /// Good from `not_before` until `not_after` (unix seconds).
    Valid { not_before: i64, not_after: i64 },
}

fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn ttl_of(issuer: &api::Issuer) -> Duration {
    issuer.ttl.map_or(DEFAULT_TTL, |t| t.get())
}

fn held(identity: &api::Identity, issuer: &api::Issuer) -> Held {
    let Ok(pem) = std::fs::read(&identity.cert) else { return Held::Nothing };
    let Ok(info) = trellis_certs::inspect(&pem) else { return Held::Nothing };
    let ours = info.spiffe_id.as_ref().is_some_and(|id| id.to_string() == issuer.id);
    if !ours || info.not_after * 1000 <= now_unix_ms() {
        return Held::Nothing;
    }
    match crate::tls::files::certified_key(Path::new(&identity.cert), Path::new(&identity.key)) {
        Ok(_) => Held::Valid { not_before: info.not_before, not_after: info.not_after },
        Err(_) => Held::Nothing,
    }
}

/// How long until the certificate should be renewed (zero: now): once less than a third of
/// its lifetime is left. The lifetime is the validity asked for, or less when the CA cut
/// it short at its own expiry (the certificate's window starts a minute early, so the
/// window alone would overstate a short `ttl`).
fn renew_in(held: &Held, issuer: &api::Issuer) -> Duration {
    match *held {
        Held::Nothing => Duration::ZERO,
        Held::Valid { not_before, not_after } => {
            let lifetime_ms = (ttl_of(issuer).as_millis() as i64).min((not_after - not_before) * 1000);
            let renew_at_ms = not_after * 1000 - lifetime_ms / 3;
            Duration::from_millis(renew_at_ms.saturating_sub(now_unix_ms()).max(0) as u64)
        }
    }
}

/// The longest wait before another attempt, so that retries go on while the certificate
/// in use is still valid: a quarter of what is left of it, at least 250 ms.
fn retry_cap(held: &Held) -> Duration {
    match *held {
        Held::Valid { not_after, .. } => {
            let left_ms = (not_after * 1000).saturating_sub(now_unix_ms()).max(0) as u64;
            Duration::from_millis(left_ms / 4).clamp(Duration::from_millis(250), MAX_BACKOFF)
        }
        Held::Nothing => MAX_BACKOFF,
    }
}

/// At start: makes sure the identity files hold a certificate for `issuer.id` that is not
/// due for renewal, asking the control plane (retrying for up to 30 s while it is
/// unreachable) when they do not. A certificate that is due but still valid is kept and
/// renewed later if the control plane cannot be reached now.
pub fn ensure_at_start(identity: &api::Identity) -> Result<(), IssueError> {
    let Some(issuer) = &identity.issuer else { return Ok(()) };
    let host = issuer.server.trim_start_matches("http://").rsplit_once(':').map_or("", |(h, _)| h);
    let plain = issuer.server.starts_with("http://");
    let loopback = host == "localhost"
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if plain && !loopback && issuer.token_file.is_some() {
        tracing::warn!(
            server = %issuer.server,
            "identity.issuer.server is not on this host: the control plane's token travels in clear over plain HTTP"
        );
    }
    let now = held(identity, issuer);
    if !renew_in(&now, issuer).is_zero() {
        return Ok(());
    }
    let usable = matches!(now, Held::Valid { .. });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| IssueError::Unreachable { server: issuer.server.clone(), reason: e.to_string() })?;
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        let mut backoff = Duration::from_millis(250);
        loop {
            match obtain(identity, issuer).await {
                Ok(not_after) => {
                    tracing::info!(id = %issuer.id, not_after, "identity certificate obtained from the control plane");
                    return Ok(());
                }
                Err(e) if usable => {
                    tracing::warn!(error = %e, "identity renewal failed; the current certificate stays until renewed");
                    return Ok(());
                }
                Err(e) if e.retryable() && tokio::time::Instant::now() + backoff < deadline => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "no identity certificate yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
    })
}

/// Wakes between the file watch in `run.rs` and the renewal task.
#[derive(Debug, Default)]
pub struct Signals {
    /// New identity files are written: reload now, without waiting for the watch's poll.
    pub renewed: tokio::sync::Notify,
    /// A reload was applied or refused: read the config file's `identity` again.
    pub config_changed: tokio::sync::Notify,
}

/// Keeps the identity renewed for as long as the proxy runs. What to keep is read from
/// the config file (else from the config in force) each time, so a reload that adds an
/// issuer or moves the files gets them: the reload is refused while the new files are
/// missing, and applies once they are written.
pub async fn renew_forever(config: PathBuf, in_force: impl Fn() -> Option<api::Identity>, signals: Arc<Signals>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let wanted = crate::config::load(&config).ok().map_or_else(&in_force, |b| b.identity);
        let Some((identity, issuer)) = wanted.and_then(|i| i.issuer.clone().map(|s| (i, s))) else {
            signals.config_changed.notified().await;
            continue;
        };
        let wait = renew_in(&held(&identity, &issuer), &issuer);
        if !wait.is_zero() {
            // Capped so that a change of the config is seen within a minute even unsignalled.
            tokio::select! {
                () = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
                () = signals.config_changed.notified() => {}
            }
            continue;
        }
        let pause = match obtain(&identity, &issuer).await {
            Ok(not_after) => {
                metrics::counter!(crate::telemetry::IDENTITY_RENEWALS_TOTAL, "result" => "ok").increment(1);
                tracing::info!(id = %issuer.id, not_after, "identity certificate renewed");
                signals.renewed.notify_one();
                if renew_in(&held(&identity, &issuer), &issuer).is_zero() {
                    // Due as soon as issued: the CA's own expiry cut the validity short.
                    tracing::warn!(
                        id = %issuer.id,
                        not_after,
                        "the new identity certificate is already due for renewal: the control plane's CA expires soon"
                    );
                    backoff
                } else {
                    backoff = Duration::from_secs(1);
                    continue;
                }
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::IDENTITY_RENEWALS_TOTAL, "result" => "error").increment(1);
                let pause = backoff.min(retry_cap(&held(&identity, &issuer)));
                tracing::warn!(error = %e, retry_in = ?pause, "identity renewal failed; the current certificate stays");
                pause
            }
        };
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One round: key and CSR, the request, the checks, the files. Returns the new expiry.
async fn obtain(identity: &api::Identity, issuer: &api::Issuer) -> Result<i64, IssueError> {
    let id: SpiffeId = issuer.id.parse()?;
    let csr = trellis_certs::new_csr(&id)?;
    let token = match &issuer.token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|source| IssueError::Token { path: path.clone(), source })?;
            if http::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
                let source = std::io::Error::new(std::io::ErrorKind::InvalidData, "the token is not one line of text");
                return Err(IssueError::Token { path: path.clone(), source });
            }
            Some(token)
        }
        None => None,
    };
    let body = serde_json::json!({ "csr": csr.csr_pem, "ttl": api::Duration::from_secs(ttl_of(issuer).as_secs()) });
    let roots = crate::tls::files::roots(Path::new(&identity.trust_bundle))
        .map_err(|e| IssueError::TrustBundle(e.to_string()))?;
    let tls = tls_to_issuer(&roots, issuer)?;
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, post(&issuer.server, tls, token.as_deref(), body.to_string()))
        .await
        .map_err(|_| IssueError::Unreachable { server: issuer.server.clone(), reason: "timed out".into() })??;
    let bad = |reason: String| IssueError::BadAnswer { server: issuer.server.clone(), reason };
    let chain_pem = answer
        .get("certificate")
        .and_then(|c| c.as_str())
        .ok_or_else(|| bad("no \"certificate\" in the answer".into()))?;
    let (not_after, chain) = check(&roots, &issuer.id, chain_pem, &csr.key_pem).map_err(bad)?;
    // Only the certificates checked reach the file, whatever else the answer held.
    let chain_pem: String = chain.iter().map(|c| trellis_certs::encode_cert_pem(c)).collect();
    write_files(identity, &chain_pem, &csr.key_pem)?;
    Ok(not_after)
}

/// The answer must be for the ID asked, from a CA in our trust bundle, and belong to our
/// key: otherwise peers would refuse it, or it would not be ours.
fn check(
    roots: &Arc<rustls::RootCertStore>,
    id: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<(i64, Vec<rustls_pki_types::CertificateDer<'static>>), String> {
    let chain = trellis_certs::certs_from_pem(chain_pem.as_bytes()).map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("an empty chain")?;
    let info = trellis_certs::inspect_der(leaf).map_err(|e| e.to_string())?;
    let got = info.spiffe_id.as_ref().map(ToString::to_string);
    if got.as_deref() != Some(id) {
        return Err(format!("it is for {}, not {id}", got.as_deref().unwrap_or("no SPIFFE ID")));
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), crate::tls::provider())
        .build()
        .map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(leaf, &chain[1..], rustls_pki_types::UnixTime::now())
        .map_err(|e| format!("it does not chain to the trust bundle: {e}"))?;
    let key = trellis_certs::key_from_pem(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let signer = crate::tls::provider().key_provider.load_private_key(key).map_err(|e| e.to_string())?;
    let certified = rustls::sign::CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| format!("it does not match our key: {e}"))?;
    Ok((info.not_after, certified.cert))
}

/// Writes key then certificate, each through a temporary file and a rename, so the file
/// watch never reads a half-written file.
fn write_files(identity: &api::Identity, chain_pem: &str, key_pem: &str) -> Result<(), IssueError> {
    write_atomically("identity.key", Path::new(&identity.key), key_pem.as_bytes(), Access::Private)?;
    write_atomically("identity.cert", Path::new(&identity.cert), chain_pem.as_bytes(), Access::Public)
}

fn write_atomically(what: &'static str, path: &Path, data: &[u8], access: Access) -> Result<(), IssueError> {
    let err = |source| IssueError::Write { what, path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    trellis_certs::write_atomically(path, data, access).map_err(err)
}

/// For an `https://` issuer: TLS that accepts only the control plane's SPIFFE ID (in the
/// trust domain of the ID asked for) under the trust bundle.
fn tls_to_issuer(
    roots: &Arc<rustls::RootCertStore>,
    issuer: &api::Issuer,
) -> Result<Option<tokio_rustls::TlsConnector>, IssueError> {
    if !issuer.server.starts_with("https://") {
        return Ok(None);
    }
    let expected = crate::tls::control::default_identity(&issuer.id);
    let mut config = trellis_certs::verify::client_builder(
        roots.clone(),
        expected,
        crate::tls::provider(),
        rustls::DEFAULT_VERSIONS,
    )
    .map_err(|e| IssueError::Unreachable { server: issuer.server.clone(), reason: e.to_string() })?
    .with_no_client_auth();
    config.alpn_protocols = vec![crate::tls::ALPN_HTTP1.to_vec()];
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(config))))
}

/// A connection to the control plane, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// `POST /v1/certificates` over HTTP/1.1 (in TLS when `tls` is given); the JSON answer of
/// a 200, else the error.
async fn post(
    server: &str,
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<&str>,
    body: String,
) -> Result<serde_json::Value, IssueError> {
    let unreachable = |reason: String| IssueError::Unreachable { server: server.to_owned(), reason };
    let authority = server.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| unreachable(e.to_string()))?;
    let io: Box<dyn Io> = match tls {
        None => Box::new(stream),
        Some(tls) => {
            let name = trellis_certs::verify::sni_name(authority).map_err(|e| unreachable(e.to_string()))?;
            Box::new(tls.connect(name, stream).await.map_err(|e| {
                let untrusted = |reason: String| IssueError::Untrusted { server: server.to_owned(), reason };
                let rustls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                match (crate::tls::mesh::identity_mismatch(&e), rustls_error) {
                    (Some(m), _) => untrusted(m.to_string()),
                    (None, Some(rustls::Error::InvalidCertificate(c))) => untrusted(format!("{c:?}")),
                    _ => unreachable(format!("TLS: {e}")),
                }
            })?)
        }
    };
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(conn);
    let mut req = http::Request::post("/v1/certificates")
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| unreachable(e.to_string()))?;
    let resp = send.send_request(req).await.map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| unreachable(format!("reading the answer: {e}")))?
        .to_bytes();
    let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    if !status.is_success() {
        let message = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(|e| e.as_str())
            .map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_owned);
        return Err(IssueError::Refused { server: server.to_owned(), status: status.as_u16(), message });
    }
    json.ok_or_else(|| IssueError::BadAnswer { server: server.to_owned(), reason: "the answer is not JSON".into() })
}

/// The renewal task's view of the identity in force.
pub fn from_snapshot(shared: Arc<arc_swap::ArcSwap<crate::config::Snapshot>>) -> impl Fn() -> Option<api::Identity> {
    move || shared.load().source.identity.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dir: &Path) -> api::Identity {
        api::Identity {
            cert: dir.join("id.pem").display().to_string(),
            key: dir.join("id.key").display().to_string(),
            trust_bundle: dir.join("ca.pem").display().to_string(),
            issuer: Some(api::Issuer {
                server: "http://127.0.0.1:1".into(),
                id: "spiffe://trellis.local/ns/default/sa/a".into(),
                token_file: None,
                ttl: Some(api::Duration::from_secs(3600)),
            }),
        }
    }

    #[test]
    fn renewal_is_due_without_a_certificate_and_a_third_before_expiry() {
        let dir = std::env::temp_dir().join(format!("trellis-issuer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = identity(&dir);
        let issuer = id.issuer.clone().unwrap();
        assert!(renew_in(&held(&id, &issuer), &issuer).is_zero(), "no file yet");

        let ca = trellis_certs::Ca::generate().unwrap();
        let sid: SpiffeId = issuer.id.parse().unwrap();
        let now = SystemTime::now();
        let window = |from: u64, to: u64| {
            ca.issue_with_validity(&sid, now - Duration::from_secs(from), now + Duration::from_secs(to), &[])
                .unwrap()
                .write(dir.join("id"))
                .unwrap();
        };
        // A fresh hour: renewal is due in about 40 minutes.
        window(60, 3600);
        let wait = renew_in(&held(&id, &issuer), &issuer).as_secs();
        assert!((2390..=2400).contains(&wait), "renewal in {wait} s");
        // Less than a third of the hour left: due now.
        window(3000, 600);
        assert!(renew_in(&held(&id, &issuer), &issuer).is_zero());
        // The CA cut the validity to 10 minutes: a third of those, not of the hour asked.
        window(60, 600);
        let wait = renew_in(&held(&id, &issuer), &issuer).as_secs();
        assert!((350..=380).contains(&wait), "renewal in {wait} s");
        // A key that is not the certificate's does not count.
        let other_key = trellis_certs::new_csr(&sid).unwrap();
        std::fs::write(dir.join("id.key"), other_key.key_pem).unwrap();
        assert!(renew_in(&held(&id, &issuer), &issuer).is_zero());
        // A certificate for another ID does not count.
        let other: SpiffeId = "spiffe://trellis.local/ns/default/sa/b".parse().unwrap();
        ca.issue(&other, Duration::from_secs(3600), &[]).unwrap().write(dir.join("id")).unwrap();
        assert!(renew_in(&held(&id, &issuer), &issuer).is_zero());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_answer_from_another_ca_or_for_another_id_is_refused() {
        let dir = std::env::temp_dir().join(format!("trellis-issuer-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = identity(&dir);
        let ours = trellis_certs::Ca::generate().unwrap();
        let theirs = trellis_certs::Ca::generate().unwrap();
        std::fs::write(&id.trust_bundle, ours.cert_pem()).unwrap();
        let want = "spiffe://trellis.local/ns/default/sa/a";
        let csr = trellis_certs::new_csr(&want.parse().unwrap()).unwrap();

        let good = ours.sign_csr(&csr.csr_pem, Duration::from_secs(600)).unwrap();
        let roots = crate::tls::files::roots(Path::new(&id.trust_bundle)).unwrap();
        assert!(check(&roots, want, &good.cert_pem, &csr.key_pem).is_ok());

        let foreign = theirs.sign_csr(&csr.csr_pem, Duration::from_secs(600)).unwrap();
        let e = check(&roots, want, &foreign.cert_pem, &csr.key_pem).unwrap_err();
        assert!(e.contains("does not chain to the trust bundle"), "{e}");

        let e = check(&roots, "spiffe://trellis.local/ns/default/sa/b", &good.cert_pem, &csr.key_pem).unwrap_err();
        assert!(e.contains("not spiffe://trellis.local/ns/default/sa/b"), "{e}");

        let other_key = trellis_certs::new_csr(&want.parse().unwrap()).unwrap();
        let e = check(&roots, want, &good.cert_pem, &other_key.key_pem).unwrap_err();
        assert!(e.contains("does not match our key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

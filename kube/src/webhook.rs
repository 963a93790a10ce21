//! `trellis injector`: the mutating admission webhook. HTTPS (HTTP/1.1 and HTTP/2, as
//! the API server speaks either) on `--addr`; `POST /inject` takes an AdmissionReview and
//! answers with [`crate::admission`]; `GET /healthz` is for the kubelet. A body that is not
//! a review gets a 400 with the reason and the server goes on. The serving certificate and
//! the trust bundle are files read again when they change (a Secret update), so rotation
//! needs no restart.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use crate::admission::{self, Verdict};
use crate::pod::Settings;

/// Largest review read (the API server sends the whole pod).
const MAX_BODY: usize = 8 << 20;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent a request head by then is dropped (HTTP/1.1).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate and bundle files are looked at for changes.
const RECHECK: Duration = Duration::from_secs(5);

/// How to run the webhook.
#[derive(Clone, Debug)]
pub struct Options {
    pub addr: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The mesh's trust bundle, put in every injected pod.
    pub trust_bundle: PathBuf,
    /// Everything else an injection needs; its `trust_bundle` is replaced by the file's.
    pub settings: Settings,
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{}: {reason}", .path.display())]
    File { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
}

/// A file's contents, read again when its modification time changes.
struct Watched<T> {
    path: Vec<PathBuf>,
    state: Mutex<(T, Vec<Option<SystemTime>>, Instant)>,
    load: fn(&[PathBuf]) -> Result<T, WebhookError>,
}

fn mtimes(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths.iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
}

impl<T: Clone> Watched<T> {
    fn new(path: Vec<PathBuf>, load: fn(&[PathBuf]) -> Result<T, WebhookError>) -> Result<Self, WebhookError> {
        let value = load(&path)?;
        let stamp = mtimes(&path);
        Ok(Watched { path, state: Mutex::new((value, stamp, Instant::now())), load })
    }

    /// The current value; a change that does not load keeps the last good one.
    fn get(&self) -> T {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.2.elapsed() >= RECHECK {
            state.2 = Instant::now();
            let stamp = mtimes(&self.path);
            if stamp != state.1 {
                match (self.load)(&self.path) {
                    Ok(v) => {
                        tracing::info!(files = ?self.path, "reloaded");
                        *state = (v, stamp, Instant::now());
                    }
                    Err(e) => tracing::warn!(error = %e, "a changed file does not load; keeping the last good one"),
                }
            }
        }
        state.0.clone()
    }
}

fn read_text(paths: &[PathBuf]) -> Result<Arc<str>, WebhookError> {
    let path = &paths[0];
    let text =
        std::fs::read_to_string(path).map_err(|e| WebhookError::File { path: path.clone(), reason: e.to_string() })?;
    if trellis_certs::certs_from_pem(text.as_bytes()).map_or(true, |c| c.is_empty()) {
        return Err(WebhookError::File { path: path.clone(), reason: "no PEM certificate in it".into() });
    }
    Ok(text.into())
}

fn read_pair(paths: &[PathBuf]) -> Result<Arc<CertifiedKey>, WebhookError> {
    let file = |p: &Path, e: &dyn std::fmt::Display| WebhookError::File { path: p.to_owned(), reason: e.to_string() };
    let certs = trellis_certs::load_certs(&paths[0]).map_err(|e| file(&paths[0], &e))?;
    let key = trellis_certs::load_key(&paths[1]).map_err(|e| file(&paths[1], &e))?;
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider.key_provider.load_private_key(key).map_err(|e| file(&paths[1], &e))?;
    let pair = CertifiedKey::new(certs, signer);
    pair.keys_match().map_err(|e| file(&paths[1], &format!("not the certificate's key: {e}")))?;
    Ok(Arc::new(pair))
}

#[derive(Debug)]
struct Certificate(Arc<Watched<Arc<CertifiedKey>>>);

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched").field("path", &self.path).finish()
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

struct State {
    settings: Settings,
    bundle: Watched<Arc<str>>,
}

/// A bound webhook, not yet serving.
pub struct Bound {
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
}

impl Bound {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (tls, state) = (self.tls.clone(), self.state.clone());
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(req, &state).await) }
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
                let served = builder.serve_connection(TokioIo::new(stream), service).await;
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }
}

/// Loads the files and binds `opts.addr`.
pub async fn bind(opts: Options) -> Result<Bound, WebhookError> {
    let pair = Watched::new(vec![opts.tls_cert, opts.tls_key], read_pair)?;
    let bundle = Watched::new(vec![opts.trust_bundle], read_text)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Certificate(Arc::new(pair))));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener =
        TcpListener::bind(opts.addr).await.map_err(|source| WebhookError::Bind { addr: opts.addr, source })?;
    let state = Arc::new(State { settings: opts.settings, bundle });
    Ok(Bound { listener, tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)), state })
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type).unwrap_or(http::HeaderValue::from_static("application/octet-stream")),
    );
    resp
}

fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, "application/json", serde_json::json!({ "error": message }).to_string())
}

async fn handle(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::POST, "/inject") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                    return json_error(StatusCode::PAYLOAD_TOO_LARGE, &format!("a review over {MAX_BODY} bytes"));
                }
                Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}")),
            };
            let mut settings = state.settings.clone();
            settings.trust_bundle = state.bundle.get().to_string();
            match admission::decide(&body, &settings) {
                Err(e) => {
                    tracing::warn!(error = %e, "refused a request that is not an AdmissionReview");
                    json_error(StatusCode::BAD_REQUEST, &e.to_string())
                }
                Ok((uid, verdict)) => {
                    match &verdict {
                        Verdict::Unchanged(why) => tracing::info!(%uid, "allowed without a patch: {why}"),
                        Verdict::Patched { warnings, .. } => tracing::info!(%uid, ?warnings, "injected"),
                        Verdict::Refused(why) => tracing::warn!(%uid, "refused: {why}"),
                    }
                    reply(StatusCode::OK, "application/json", admission::response(&uid, &verdict).to_string())
                }
            }
        }
        (_, "/inject" | "/healthz") => json_error(StatusCode::METHOD_NOT_ALLOWED, "POST /inject, GET /healthz"),
        _ => json_error(StatusCode::NOT_FOUND, "no such path: POST /inject, GET /healthz"),
    }
}

//! Helpers for TLS tests: the ring provider, certificates from `trellis-certs`, TLS clients and origins, log scraping.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Installs the ring crypto provider as the process default (idempotent).
pub fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `spiffe://trellis.local/ns/default/sa/SA`.
pub fn spiffe(sa: &str) -> trellis_certs::SpiffeId {
    trellis_certs::SpiffeId::workload("trellis.local", "default", sa).unwrap()
}

/// Issues a leaf for `id` (extra SANs `dns`, valid 1 h) and writes `PREFIX.pem` and `PREFIX.key`.
pub fn issue_to(ca: &trellis_certs::Ca, id: &str, dns: &[&str], prefix: &std::path::Path) -> trellis_certs::Issued {
    let id = trellis_certs::SpiffeId::parse(id).unwrap();
    let dns: Vec<String> = dns.iter().map(|s| (*s).to_owned()).collect();
    let issued = ca.issue(&id, Duration::from_secs(3600), &dns).unwrap();
    issued.write(prefix).unwrap();
    issued
}

/// `PREFIX.pem` and `PREFIX.key`.
pub fn pem_key(prefix: &std::path::Path) -> (PathBuf, PathBuf) {
    (PathBuf::from(format!("{}.pem", prefix.display())), PathBuf::from(format!("{}.key", prefix.display())))
}

/// Replaces `path` atomically: writes a sibling temp file, then renames it over `path`.
pub fn replace_file(path: &std::path::Path, contents: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", fastrand::u32(..)));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Accepts any server certificate (the tests that use it check the server themselves, or
/// test the server's verification of the client); handshake signatures are still checked.
#[derive(Debug)]
pub struct AnyServerCert(pub Arc<rustls::crypto::CryptoProvider>);

type Signed = Result<HandshakeSignatureValid, rustls::Error>;

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Signed {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Signed {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How a test TLS client is set up.
#[derive(Clone, Default)]
pub struct TlsClientOpts {
    /// Client certificate chain and key files (PEM), presented when asked.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Verify the server against these roots (PEM) and the server name; `None`: accept any.
    pub roots: Option<PathBuf>,
    /// Offer only TLS 1.2.
    pub tls12_only: bool,
    /// ALPN protocols to offer (e.g. `h2`, `http/1.1`).
    pub alpn: Vec<Vec<u8>>,
}

/// A rustls client config (ring provider) from `opts`.
pub fn tls_client_config(opts: &TlsClientOpts) -> Arc<rustls::ClientConfig> {
    let provider = ring_provider();
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        if opts.tls12_only { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13, &rustls::version::TLS12] };
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions).unwrap();
    let builder = match &opts.roots {
        Some(bundle) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in trellis_certs::load_certs(bundle).unwrap() {
                roots.add(c).unwrap();
            }
            builder.with_root_certificates(roots)
        }
        None => builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyServerCert(provider))),
    };
    let mut config = match &opts.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(trellis_certs::load_certs(cert).unwrap(), trellis_certs::load_key(key).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = opts.alpn.clone();
    Arc::new(config)
}

/// What a finished TLS handshake showed the client.
#[derive(Debug, Clone)]
pub struct TlsSeen {
    /// The server's leaf certificate.
    pub leaf: trellis_certs::CertInfo,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
}

enum TlsSender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

/// One keep-alive HTTP connection over TLS (HTTP/2 when ALPN picked h2, else HTTP/1.1).
pub struct TlsConn {
    sender: TlsSender,
    pub seen: TlsSeen,
}

impl TlsConn {
    /// TCP connect, TLS handshake (SNI `server_name`: a DNS name, or an IP for no SNI) and
    /// HTTP handshake, all within 5 s. Errors are strings for assertions.
    pub async fn open(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<TlsConn, String> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
        let work = async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls handshake: {e}"))?;
            let (_, conn) = tls.get_ref();
            let leaf = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| trellis_certs::inspect_der(c).unwrap())
                .ok_or("no server certificate")?;
            let seen =
                TlsSeen { leaf, alpn: conn.alpn_protocol().map(<[u8]>::to_vec), version: conn.protocol_version() };
            let sender = if seen.alpn.as_deref() == Some(b"h2") {
                let (tx, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
                tokio::spawn(c);
                TlsSender::H2(tx)
            } else {
                let (tx, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("h1 handshake: {e}"))?;
                tokio::spawn(c);
                TlsSender::H1(tx)
            };
            Ok(TlsConn { sender, seen })
        };
        tokio::time::timeout(Duration::from_secs(5), work).await.map_err(|_| "timed out".to_owned())?
    }

    /// Sends `method path` and reads the whole answer, within 5 s.
    pub async fn request(&mut self, method: &str, path: &str) -> Result<Got, String> {
        self.send(method, path, "").await
    }

    /// Sends `method path` with `body` (JSON) and reads the whole answer, within 5 s.
    pub async fn send(&mut self, method: &str, path: &str, body: impl Into<Bytes>) -> Result<Got, String> {
        let body: Bytes = body.into();
        let mut req = Request::builder().method(method);
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let body = full(body);
        let work = async {
            let resp = match &mut self.sender {
                TlsSender::H1(tx) => {
                    let req = req.uri(path).header("host", "test").body(body).unwrap();
                    tx.ready().await.map_err(|e| format!("not ready: {e}"))?;
                    tx.send_request(req).await
                }
                TlsSender::H2(tx) => {
                    let req = req.uri(format!("https://test{path}")).body(body).unwrap();
                    tx.ready().await.map_err(|e| format!("not ready: {e}"))?;
                    tx.send_request(req).await
                }
            }
            .map_err(|e| format!("no response: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok(Got { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(Duration::from_secs(5), work).await.map_err(|_| "timed out".to_owned())?
    }

    pub async fn get(&mut self, path: &str) -> Result<Got, String> {
        self.request("GET", path).await
    }
}

/// One request on a fresh TLS connection.
pub async fn tls_fetch(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    method: &str,
    path: &str,
) -> Result<(Got, TlsSeen), String> {
    let mut c = TlsConn::open(addr, config, server_name).await?;
    let got = c.request(method, path).await?;
    Ok((got, c.seen))
}

/// `text` without ANSI escape sequences (the proxy colours its log even into a file).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params… final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The proxy's log as plain text (no colours).
pub fn plain_logs(proxy: &Proxy) -> String {
    strip_ansi(&proxy.logs())
}

/// Waits until the proxy's plain-text log contains `needle`, up to `limit`.
pub async fn wait_log(proxy: &Proxy, needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if plain_logs(proxy).contains(needle) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the proxy's config version is above `before`, up to `limit`.
pub async fn wait_version_above(proxy: &Proxy, before: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if blocking(|| proxy.version()) > before {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS echo origin (HTTP/1.1 and HTTP/2 by ALPN) with the given server certificate; the
/// returned list records the SNI of every accepted handshake.
pub async fn tls_echo_origin(
    name: &'static str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (Origin, Arc<std::sync::Mutex<Vec<Option<String>>>>) {
    tls_origin(cert, key, move |req| echo_answer(name, req)).await
}

/// A TLS server config (ring, no client certificates) presenting `cert`/`key` (PEM files)
/// and offering `alpn`.
pub fn server_tls(cert: &std::path::Path, key: &std::path::Path, alpn: &[&[u8]]) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(trellis_certs::load_certs(cert).unwrap(), trellis_certs::load_key(key).unwrap())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS origin (HTTP/1.1 and HTTP/2 by ALPN) answering with `handler`, with the given
/// server certificate; the returned list records the SNI of every accepted handshake.
pub async fn tls_origin<F, Fut>(
    cert: &std::path::Path,
    key: &std::path::Path,
    handler: F,
) -> (Origin, Arc<std::sync::Mutex<Vec<Option<String>>>>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls(cert, key, &[b"h2", b"http/1.1"])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let snis: Arc<std::sync::Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = snis.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (acceptor, seen, handler) = (acceptor.clone(), seen.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await else {
                    return;
                };
                seen.lock().unwrap().push(tls.get_ref().1.server_name().map(str::to_owned));
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (Origin { addr, task }, snis)
}

/// A root CA and its files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: trellis_certs::Ca,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        ring_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = trellis_certs::Ca::init(dir.path().join("ca"), false).unwrap();
        Pki { dir, ca }
    }

    /// `DIR/ca/ca.pem`.
    pub fn bundle(&self) -> PathBuf {
        trellis_certs::Ca::cert_path(self.dir.path().join("ca"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues `id` (plus DNS SANs) to `DIR/NAME.pem` + `DIR/NAME.key`.
    pub fn issue(&self, name: &str, id: &str, dns: &[&str]) -> (PathBuf, PathBuf) {
        let prefix = self.path(name);
        issue_to(&self.ca, id, dns, &prefix);
        pem_key(&prefix)
    }
}

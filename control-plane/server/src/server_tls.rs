//! TLS on the control plane's ports. The control plane serves with a certificate it issues
//! itself from its own CA ([`CONTROL_PLANE_ID`], re-issued well before it expires).
//! Discovery (`--xds-tls`) is mTLS: it accepts only clients whose certificate chains to that
//! CA, over TLS 1.3, and each accepted connection carries the client's verified SPIFFE ID
//! ([`Peer`]) to the discovery service, which holds a proxy to the service its identity
//! names. The REST API (`--api-tls`) is server-authenticated TLS: its clients (`trellis ctl`,
//! a proxy's `identity.issuer`) verify the control plane's SPIFFE ID against the CA and
//! authenticate themselves with the bearer token.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use trellis_certs::{Ca, SpiffeId};

use crate::Error;

/// The identity the control plane presents on its discovery port.
pub const CONTROL_PLANE_ID: &str = "spiffe://trellis.local/ns/trellis-system/sa/control-plane";
/// How long a self-issued serving certificate is valid; it is replaced at half its life.
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a discovery connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The verified SPIFFE ID of the client certificate.
    pub spiffe_id: Option<SpiffeId>,
}

/// One accepted mTLS connection.
pub struct Conn {
    tls: TlsStream<TcpStream>,
    peer: Peer,
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// The control plane's serving certificate, shared by the discovery and REST ports.
pub fn serving(ca: Ca) -> Result<Arc<SelfIssued>, Error> {
    SelfIssued::new(ca, Arc::new(rustls::crypto::ring::default_provider())).map(Arc::new)
}

/// The discovery server config: client certificates required and chained to the CA,
/// TLS 1.3 only, h2.
pub fn server_config(serving: &Arc<SelfIssued>) -> Result<Arc<ServerConfig>, Error> {
    let provider = serving.provider.clone();
    let mut roots = RootCertStore::empty();
    roots.add(serving.ca.cert_der().clone()).map_err(|e| tls_error("the CA certificate", e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls_error("the client verifier", e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("the server config", e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The REST API's server config (`--api-tls`): the same serving certificate, TLS 1.2
/// or 1.3, no client certificate asked (the bearer token authenticates), h2 or HTTP/1.1.
pub fn api_server_config(serving: &Arc<SelfIssued>) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(serving.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("the REST server config", e))?
        .with_no_client_auth()
        .with_cert_resolver(serving.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The REST API's listening socket behind TLS, for `axum::serve`: handshakes run in their
/// own tasks ([`accept_loop`]), so a slow client holds up nobody.
pub struct ApiListener {
    ready: mpsc::Receiver<Result<Conn, io::Error>>,
    local: SocketAddr,
}

impl ApiListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<ApiListener> {
        let local = listener.local_addr()?;
        Ok(ApiListener { ready: accept_loop(listener, config, "REST API"), local })
    }
}

impl axum::serve::Listener for ApiListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            match self.ready.recv().await {
                Some(Ok(conn)) => {
                    let addr = conn.peer.addr;
                    return (conn, addr);
                }
                Some(Err(_)) => continue,
                // The accept loop ends only when this end is dropped.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Serve { what: "TLS", reason: format!("{what}: {e}") }
}

/// Accepts TCP connections, runs each handshake in its own task (a slow client never holds
/// up the others), and yields the connections that completed it.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl futures_util::Stream<Item = Result<Conn, io::Error>> {
    let rx = accept_loop(listener, config, "discovery");
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

/// The accept loop behind [`incoming`] and [`ApiListener`]: connections that finished their
/// handshake, until the receiver is dropped.
fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    port: &'static str,
) -> mpsc::Receiver<Result<Conn, io::Error>> {
    let (tx, rx) = mpsc::channel::<Result<Conn, io::Error>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            // The server dropping its end (shutdown) also closes the listening socket.
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, addr) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(port, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let spiffe_id = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|leaf| trellis_certs::leaf_spiffe_id(leaf.as_ref()));
                        let _ = tx.send(Ok(Conn { tls, peer: Peer { addr, spiffe_id } })).await;
                    }
                    Ok(Err(e)) => tracing::info!(port, peer = %addr, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(port, peer = %addr, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// Serves a certificate for [`CONTROL_PLANE_ID`] issued by the control plane's CA, replacing
/// it once half its validity has passed.
pub struct SelfIssued {
    ca: Ca,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

impl std::fmt::Debug for SelfIssued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfIssued").finish_non_exhaustive()
    }
}

impl SelfIssued {
    fn new(ca: Ca, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<SelfIssued, Error> {
        let first = issue(&ca, &provider)?;
        Ok(SelfIssued { ca, provider, current: Mutex::new(first) })
    }
}

fn issue(ca: &Ca, provider: &rustls::crypto::CryptoProvider) -> Result<(Arc<CertifiedKey>, SystemTime), Error> {
    let id = SpiffeId::parse(CONTROL_PLANE_ID)?;
    let issued = ca.issue(&id, SERVING_TTL, &[])?;
    let certs = trellis_certs::certs_from_pem(issued.cert_pem.as_bytes())?;
    let key = trellis_certs::key_from_pem(issued.key_pem.as_bytes())?;
    let key = CertifiedKey::from_der(certs, key, provider).map_err(|e| tls_error("the serving key", e))?;
    Ok((Arc::new(key), SystemTime::now() + SERVING_TTL / 2))
}

impl ResolvesServerCert for SelfIssued {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if SystemTime::now() >= current.1 {
            match issue(&self.ca, &self.provider) {
                Ok(next) => *current = next,
                Err(e) => tracing::error!(error = %e, "cannot renew the control plane's serving certificate"),
            }
        }
        Some(current.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Options, start};
    use std::net::SocketAddr;

    #[tokio::test]
    async fn stopping_frees_the_discovery_port() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = Options::new(dir.path());
        opts.api_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        opts.xds_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        opts.xds_tls = true;
        let running = start(opts).await.expect("start");
        let xds = running.xds_addr();
        running.stop().await.expect("stop");
        // The accept loop ends with the server: the port can be bound again at once.
        let mut bound = None;
        for _ in 0..50 {
            match tokio::net::TcpListener::bind(xds).await {
                Ok(l) => {
                    bound = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        assert!(bound.is_some(), "{xds} still held after stop");
    }
}

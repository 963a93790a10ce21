//! Reaching an OTLP collector over TLS (`https://` endpoints): the client config (roots from
//! `ca_file`, else the system's; ALPN h2 for gRPC, http/1.1 for HTTP) and the connector that
//! both the gRPC channel and the HTTP client dial through. Built when the config is built,
//! so a bad `ca_file` is a config error (a NACK from the control plane), never a silent
//! exporter failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use trellis_api::{Otlp, OtlpProtocol};

use crate::tls::{ALPN_H2, ALPN_HTTP1};

/// The TLS client config for `otlp` (at `at`, e.g. `tracing` or `telemetry[mesh].tracing`,
/// for errors), or `None` for an `http://` collector.
pub fn client_config(otlp: &Otlp, at: &str) -> Result<Option<Arc<ClientConfig>>, String> {
    if !otlp.endpoint.starts_with("https://") {
        return Ok(None);
    }
    let roots = match &otlp.ca_file {
        Some(file) => {
            let roots =
                crate::tls::files::roots(std::path::Path::new(file)).map_err(|e| format!("{at}.otlp.ca_file: {e}"))?;
            if roots.is_empty() {
                return Err(format!("{at}.otlp.ca_file: no certificate in {file:?}"));
            }
            roots
        }
        None => system_roots().map_err(|e| format!("{at}.otlp.endpoint: {e}"))?,
    };
    let mut config = crate::tls::edge::verifying(roots).map_err(|e| format!("{at}.otlp: {e}"))?;
    config.alpn_protocols = vec![match otlp.protocol {
        OtlpProtocol::Grpc => ALPN_H2.to_vec(),
        OtlpProtocol::Http => ALPN_HTTP1.to_vec(),
    }];
    Ok(Some(Arc::new(config)))
}

/// The system's trust anchors (what `openssl` would use: SSL_CERT_FILE, /etc/ssl/certs…),
/// read once per process: every config update builds the tracer again, and the system's
/// bundle (a hundred-odd files) does not change under a running proxy.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: std::sync::OnceLock<Result<Arc<RootCertStore>, String>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
                return Err(format!(
                    "https:// without ca_file trusts the system's roots, and none were found{why}: give ca_file"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// Dials `https://HOST:PORT` URIs: TCP, then TLS checking the certificate against the
/// config's roots and the URI's host.
#[derive(Clone)]
pub struct TlsConnector(pub Arc<ClientConfig>);

/// A TLS connection to the collector, as hyper's client and tonic's channel take it.
pub struct TlsIo(TokioIo<TlsStream<TcpStream>>);

impl tower::Service<Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.0.clone());
        Box::pin(async move {
            let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
            let host = uri.host().ok_or_else(|| bad(format!("no host in {uri}")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = rustls_pki_types::ServerName::try_from(host).map_err(|e| bad(e.to_string()))?;
            Ok(TlsIo(TokioIo::new(connector.connect(name, tcp).await?)))
        })
    }
}

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otlp(endpoint: &str, ca_file: Option<&str>) -> Otlp {
        Otlp { endpoint: endpoint.into(), protocol: OtlpProtocol::Grpc, ca_file: ca_file.map(Into::into) }
    }

    #[test]
    fn plaintext_collectors_need_no_tls() {
        assert!(client_config(&otlp("http://c:4317", None), "tracing").expect("ok").is_none());
    }

    #[test]
    fn a_bad_ca_file_is_an_error_naming_the_field() {
        let dir = std::env::temp_dir().join(format!("trellis-otlp-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err =
            client_config(&otlp("https://c:4317", missing.to_str()), "telemetry[t].tracing").expect_err("no file");
        assert!(err.starts_with("telemetry[t].tracing.otlp.ca_file: "), "{err}");
        assert!(err.contains("missing.pem"), "{err}");

        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let err = client_config(&otlp("https://c:4317", junk.to_str()), "tracing").expect_err("no certificate");
        assert!(err.starts_with("tracing.otlp.ca_file: "), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

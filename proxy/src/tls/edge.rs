//! Edge TLS: terminating listeners pick a certificate by SNI (exact name, then wildcard,
//! then the first as default) and offer h2 and http/1.1 over TCP, and h3 over QUIC (one
//! resolver for both); `tls` clusters verify an ordinary
//! server name against their own trust bundle.

use crate::tls::{ALPN_H2, ALPN_H3, ALPN_HTTP1, TlsError, files};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use trellis_api as api;

/// Certificates by name.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
            return Some(self.default.clone());
        };
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return Some(k.clone());
        }
        Some(self.default.clone())
    }
}

/// The server configs of a `terminate` listener: TCP (h2 and HTTP/1.1 by ALPN) and, with
/// `http3`, QUIC's, both resolving certificates with one SNI resolver.
#[derive(Debug)]
pub struct EdgeServer {
    pub tcp: Arc<ServerConfig>,
    /// TLS 1.3 only, ALPN `h3`; early data as `early_data` says.
    pub quic: Option<Arc<ServerConfig>>,
    /// The leaf expiries (unix seconds), for metrics.
    pub expiries: Vec<i64>,
}

/// The server configs of a `terminate` listener.
pub fn server_config(tls: &api::ListenerTls) -> Result<EdgeServer, TlsError> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    let mut expiries = Vec::new();
    for pair in &tls.certificates {
        let key = files::certified_key(Path::new(&pair.cert), Path::new(&pair.key))?;
        let info = key
            .cert
            .first()
            .map(|c| trellis_certs::inspect_der(c))
            .transpose()?
            .ok_or_else(|| TlsError::Invalid(format!("{}: no certificate", pair.cert)))?;
        expiries.push(info.not_after);
        for name in &info.dns_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_owned()).or_insert_with(|| key.clone()),
                None => exact.entry(name).or_insert_with(|| key.clone()),
            };
        }
        default.get_or_insert(key);
    }
    let default = default.ok_or_else(|| TlsError::Invalid("terminate needs a certificate".into()))?;
    let resolver: Arc<SniResolver> = Arc::new(SniResolver { exact, wildcard, default });
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version.as_deref() {
        Some("1.3") => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let config = |versions: &[&'static rustls::SupportedProtocolVersion], alpn: &[&[u8]]| {
        let mut c = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(versions)
            .map_err(|source| TlsError::Rustls { what: "edge server config".into(), source })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok::<_, TlsError>(c)
    };
    let tcp = Arc::new(config(versions, &[ALPN_H2, ALPN_HTTP1])?);
    let quic = if tls.http3 {
        let mut c = config(&[&rustls::version::TLS13], &[ALPN_H3])?;
        // QUIC allows only 0 or u32::MAX (RFC 9001 §4.6.1); rustls then takes each ticket
        // out of its session cache on use, so one ticket opens one 0-RTT flight only.
        c.max_early_data_size = if tls.early_data { u32::MAX } else { 0 };
        Some(Arc::new(c))
    } else {
        None
    };
    Ok(EdgeServer { tcp, quic, expiries })
}

/// A client config (our provider, TLS 1.2+, no client certificate) that verifies servers
/// against `roots`.
pub fn verifying(roots: Arc<rustls::RootCertStore>) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { what: "tls client config".into(), source })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The client configs of a `tls` cluster, one per ALPN offer in `alpns` (the trust bundle
/// read once; each config with its own session cache).
pub fn client_configs(trust_bundle: &str, alpns: &[&[&[u8]]]) -> Result<Vec<Arc<ClientConfig>>, TlsError> {
    let base = verifying(files::roots(Path::new(trust_bundle))?)?;
    Ok(alpns
        .iter()
        .map(|offer| {
            let mut c = base.clone();
            c.resumption = rustls::client::Resumption::default();
            c.alpn_protocols = offer.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        })
        .collect())
}

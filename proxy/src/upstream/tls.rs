//! TLS to upstreams: a cluster's (`tls: mesh | tls`), and the mesh client TLS of one
//! expected SPIFFE ID, made once per identity and config for endpoints that carry an
//! `identity` (auto-mTLS, DESIGN §9).

use crate::tls::mesh::{Mesh, client_config};
use crate::tls::{ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE, TlsError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use trellis_api as api;

/// How to wrap an endpoint's connections in TLS: one client config per use (ALPN).
#[derive(Debug)]
pub struct UpstreamTls {
    pub h1: Arc<rustls::ClientConfig>,
    pub h2: Arc<rustls::ClientConfig>,
    /// L4 (opaque TCP) connections: mesh ones say so by ALPN, so a transparent inbound
    /// proxy forwards them as bytes.
    pub l4: Arc<rustls::ClientConfig>,
    /// `tls` clusters: offers `h2` and `http/1.1`, for an endpoint that learns its version
    /// from the upstream's choice (`upstream::alpn`). Mesh peers are known to speak h2.
    pub learn: Option<Arc<rustls::ClientConfig>>,
    /// `tls` clusters: the SNI (and verified name); else the endpoint's host.
    pub sni: Option<String>,
}

impl UpstreamTls {
    /// Mesh mTLS to a server that must present `id`.
    pub fn mesh(mesh: &Mesh, id: &str) -> Result<UpstreamTls, TlsError> {
        Ok(UpstreamTls {
            h1: client_config(mesh, id, ALPN_HTTP1)?,
            h2: client_config(mesh, id, ALPN_H2)?,
            l4: client_config(mesh, id, ALPN_OPAQUE)?,
            learn: None,
            sni: None,
        })
    }
}

/// Builds a cluster's TLS settings (mesh needs the proxy's identity).
pub fn tls_for(spec: &api::Cluster, mesh: Option<&Mesh>) -> Result<Option<Arc<UpstreamTls>>, TlsError> {
    let Some(t) = &spec.tls else { return Ok(None) };
    let built = match t.mode {
        api::ClusterTlsMode::Mesh => {
            let mesh =
                mesh.ok_or_else(|| TlsError::Invalid(format!("clusters[{}].tls: mesh needs an identity", spec.name)))?;
            UpstreamTls::mesh(mesh, t.identity.as_deref().unwrap_or_default())?
        }
        api::ClusterTlsMode::Tls => {
            let bundle = t.trust_bundle.as_deref().unwrap_or_default();
            let offers: [&[&[u8]]; 3] = [&[ALPN_HTTP1], &[ALPN_H2], &[ALPN_H2, ALPN_HTTP1]];
            let [h1, h2, learn] = <[_; 3]>::try_from(crate::tls::edge::client_configs(bundle, &offers)?)
                .map_err(|_| TlsError::Invalid("tls client configs".into()))?;
            UpstreamTls { l4: h1.clone(), h1, h2, learn: Some(learn), sni: t.sni.clone() }
        }
    };
    Ok(Some(Arc::new(built)))
}

/// Mesh client TLS by expected identity, for one config (one proxy identity): built on
/// first use, then shared by every endpoint expecting that identity.
#[derive(Debug, Default)]
pub struct MeshClients {
    mesh: Option<Arc<Mesh>>,
    by_id: Mutex<HashMap<Arc<str>, Arc<UpstreamTls>>>,
}

impl MeshClients {
    pub fn new(mesh: Option<Arc<Mesh>>) -> MeshClients {
        MeshClients { mesh, by_id: Mutex::default() }
    }

    /// The TLS of an endpoint that must present `id`; `None` when this proxy has no
    /// identity of its own (it cannot do mTLS).
    pub fn get(&self, id: &Arc<str>) -> Result<Option<Arc<UpstreamTls>>, TlsError> {
        let Some(mesh) = &self.mesh else { return Ok(None) };
        let mut by_id = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = by_id.get(id) {
            return Ok(Some(t.clone()));
        }
        let t = Arc::new(UpstreamTls::mesh(mesh, id)?);
        by_id.insert(id.clone(), t.clone());
        Ok(Some(t))
    }
}

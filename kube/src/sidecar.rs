//! The bootstrap of an injected proxy, built at start from its pod (`trellis proxy
//! --sidecar`): the pod's namespace and service account (the downward API's env vars) name
//! its identity `spiffe://trellis.local/ns/<ns>/sa/<sa>`, which the control plane signs on
//! the strength of the pod's projected service-account token; listeners are the transparent
//! pair of DESIGN §9. The file is written next to the identity files, in the pod's
//! memory-backed working directory, then run like any bootstrap (and watched).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use trellis_certs::{DEFAULT_TRUST_DOMAIN, SpiffeId};

use crate::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};

/// The env vars the injected container sets (from the downward API and the injection).
pub mod env {
    pub const POD_NAME: &str = "TRELLIS_POD_NAME";
    pub const POD_NAMESPACE: &str = "TRELLIS_POD_NAMESPACE";
    pub const POD_SERVICE_ACCOUNT: &str = "TRELLIS_POD_SERVICE_ACCOUNT";
    pub const POD_IP: &str = "TRELLIS_POD_IP";
    /// `https://HOST:7070`: where the certificate is asked for.
    pub const CONTROL_PLANE_API: &str = "TRELLIS_CONTROL_PLANE_API";
    /// `https://HOST:7071`: the discovery stream.
    pub const CONTROL_PLANE_DISCOVERY: &str = "TRELLIS_CONTROL_PLANE_DISCOVERY";
    /// `mesh` or `permissive`.
    pub const INBOUND_TLS: &str = "TRELLIS_INBOUND_TLS";
    /// Where the projected token and trust bundle are (default /var/run/secrets/trellis.dev).
    pub const CREDENTIALS_DIR: &str = "TRELLIS_CREDENTIALS_DIR";
}

/// The name of the inbound listener's authorization policy.
pub const INBOUND_POLICY: &str = "trellis-inbound";

/// Who the pod is and where its control plane is.
#[derive(Clone, Debug)]
pub struct Sidecar {
    pub pod_name: String,
    pub namespace: String,
    pub service_account: String,
    /// Registered with the control plane as this pod's endpoint (`IP:4143`).
    pub pod_ip: Option<IpAddr>,
    pub control_plane_api: String,
    pub control_plane_discovery: String,
    /// Accept plaintext inbound too (`trellis.dev/inbound-tls: permissive`).
    pub permissive: bool,
    /// Holds `token` (the projected service-account token) and `ca.pem`.
    pub credentials_dir: PathBuf,
}

/// Why the bootstrap cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("the pod's identity: {0}")]
    Identity(#[from] trellis_certs::CertError),
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("{}: {source}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

impl Sidecar {
    /// `spiffe://trellis.local/ns/<namespace>/sa/<service account>`.
    pub fn identity(&self) -> Result<SpiffeId, SidecarError> {
        Ok(SpiffeId::workload(DEFAULT_TRUST_DOMAIN, &self.namespace, &self.service_account)?)
    }

    /// The bootstrap (DESIGN §3) for this pod; `dir` holds the identity files.
    pub fn bootstrap(&self, dir: &Path) -> Result<Value, SidecarError> {
        let id = self.identity()?;
        if self.pod_name.is_empty() {
            return Err(SidecarError::Invalid { what: "pod name", reason: "empty".into() });
        }
        for (what, url) in
            [("control plane API", &self.control_plane_api), ("discovery", &self.control_plane_discovery)]
        {
            if !url.starts_with("https://") && !url.starts_with("http://") {
                return Err(SidecarError::Invalid { what, reason: format!("\"{url}\" is not http(s)://HOST:PORT") });
            }
        }
        let path = |p: &Path| p.display().to_string();
        let mut control_plane = json!({ "address": self.control_plane_discovery });
        if let Some(ip) = self.pod_ip {
            control_plane["inbound_address"] = json!(std::net::SocketAddr::new(ip, INBOUND_PORT).to_string());
        }
        let inbound_tls = if self.permissive { "permissive" } else { "mesh" };
        Ok(json!({
            "node": { "id": format!("{}.{}", self.pod_name, self.namespace), "service": self.service_account },
            "admin": { "address": format!("0.0.0.0:{ADMIN_PORT}") },
            "identity": {
                "cert": path(&dir.join("id.pem")),
                "key": path(&dir.join("id.key")),
                "trust_bundle": path(&self.credentials_dir.join("ca.pem")),
                "issuer": {
                    "server": self.control_plane_api,
                    "id": id.as_str(),
                    "token_file": path(&self.credentials_dir.join("token")),
                },
            },
            "control_plane": control_plane,
            "listeners": [
                {
                    "name": "outbound",
                    "address": format!("127.0.0.1:{OUTBOUND_PORT}"),
                    "protocol": "auto",
                    "transparent": true,
                    "outbound_policy": "allow_any",
                },
                {
                    "name": "inbound",
                    "address": format!("0.0.0.0:{INBOUND_PORT}"),
                    "protocol": "auto",
                    "transparent": true,
                    "tls": { "mode": inbound_tls },
                    "policy": INBOUND_POLICY,
                },
            ],
            "policies": [{
                "name": INBOUND_POLICY,
                "default": "deny",
                "rules": [{ "from": [format!("spiffe://{}/*", id.trust_domain())] }],
            }],
        }))
    }

    /// Writes the bootstrap to `config` (YAML, through a temporary file and a rename).
    pub fn write_bootstrap(&self, config: &Path) -> Result<(), SidecarError> {
        let dir = config.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let bootstrap = self.bootstrap(dir)?;
        let yaml = crate::documents::to_yaml([&bootstrap])
            .map_err(|e| SidecarError::Invalid { what: "bootstrap", reason: e.to_string() })?;
        let err = |source| SidecarError::Write { path: config.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(err)?;
        trellis_certs::write_atomically(config, yaml.as_bytes(), trellis_certs::Access::Public).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar() -> Sidecar {
        Sidecar {
            pod_name: "web-5d9c".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            pod_ip: Some("10.1.2.3".parse().unwrap()),
            control_plane_api: "https://cp.trellis-system.svc:7070".into(),
            control_plane_discovery: "https://cp.trellis-system.svc:7071".into(),
            permissive: false,
            credentials_dir: "/var/run/secrets/trellis.dev".into(),
        }
    }

    #[test]
    fn the_identity_and_node_come_from_the_pod() {
        let b = sidecar().bootstrap(Path::new("/var/run/trellis")).unwrap();
        assert_eq!(b["identity"]["issuer"]["id"], "spiffe://trellis.local/ns/shop/sa/web");
        assert_eq!(b["identity"]["issuer"]["token_file"], "/var/run/secrets/trellis.dev/token");
        assert_eq!(b["identity"]["trust_bundle"], "/var/run/secrets/trellis.dev/ca.pem");
        assert_eq!(b["identity"]["cert"], "/var/run/trellis/id.pem");
        assert_eq!(b["node"], json!({ "id": "web-5d9c.shop", "service": "web" }));
        assert_eq!(b["control_plane"]["inbound_address"], "10.1.2.3:4143");
        assert_eq!(b["listeners"][0]["transparent"], true);
        assert_eq!(b["listeners"][1]["tls"]["mode"], "mesh");
    }

    #[test]
    fn a_bad_namespace_is_refused() {
        let mut s = sidecar();
        s.namespace = "a/b".into();
        assert!(s.bootstrap(Path::new("/x")).unwrap_err().to_string().starts_with("the pod's identity"));
    }
}

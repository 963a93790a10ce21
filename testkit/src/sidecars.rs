//! A sidecar pair under the real control plane, for tests of what spans the mesh (the mesh
//! page, one trace across the mTLS hop).

use super::*;
use crate::config::{self, ControlPlaneConfig, Node, Tracing, Yaml};

/// A control plane (discovery over mTLS, a bearer token, stats reports every second) and
/// two sidecars from its CA: `a` (outbound listener `a_out`, route to cluster `b`) and `b`
/// (mesh mTLS inbound listener `b_in`, registered as `b`'s endpoint, routing to `app`).
pub struct SidecarPair {
    pub pki: Pki,
    pub token: String,
    pub cp: ControlPlane,
    pub a: Proxy,
    pub b: Proxy,
    pub a_out: SocketAddr,
    pub b_in: SocketAddr,
}

impl SidecarPair {
    /// Starts the pair in front of `app`, both sidecars exporting spans with `tracing`, and
    /// waits until `a` → `b` answers 200.
    pub async fn start(app: SocketAddr, tracing: Option<Tracing>) -> SidecarPair {
        let pki = Pki::new();
        let token = "ui-test-token".to_owned();
        let token_file = pki.path("token");
        std::fs::write(&token_file, &token).unwrap();
        let token_arg = token_file.display().to_string();
        let (dir, api, xds) = (pki.dir.path().to_owned(), listen_addr(), listen_addr());
        let args = ["--xds-tls", "--token-file", &token_arg, "--report-interval", "1s"];
        let cp = blocking(|| ControlPlane::start_with(&dir, api, xds, &args));
        let (a_out, b_in) = (listen_addr(), listen_addr());
        let b_id = spiffe("b");
        let a_id = spiffe("a");
        let resources = [
            ("policies", "b-authz", serde_json::json!({ "default": "deny", "rules": [{ "from": [a_id.as_str()] }] })),
            (
                "clusters",
                "b-app",
                serde_json::json!({ "protocol": "http1", "endpoints": [{ "address": app.to_string() }] }),
            ),
            ("routes", "b-local", serde_json::json!({ "backends": [{ "cluster": "b-app" }] })),
            (
                "listeners",
                "b-in",
                serde_json::json!({ "service": "b", "address": b_in.to_string(), "tls": { "mode": "mesh" }, "policy": "b-authz", "routes": ["b-local"] }),
            ),
            (
                "clusters",
                "b",
                serde_json::json!({ "tls": { "mode": "mesh", "identity": b_id.as_str() }, "endpoints": [] }),
            ),
            ("routes", "to-b", serde_json::json!({ "backends": [{ "cluster": "b" }] })),
            (
                "listeners",
                "a-out",
                serde_json::json!({ "service": "a", "address": a_out.to_string(), "routes": ["to-b"] }),
            ),
        ];
        for (kind, name, body) in resources {
            let got = cp.put_with_token(&token, kind, name, body).await;
            assert!(got.status.is_success(), "PUT {kind}/{name}: {}", got.text());
        }
        let bootstrap = |svc: &str, inbound: Option<SocketAddr>| {
            let (cert, key) = pki.issue(svc, spiffe(svc).as_str(), &[]);
            config::Bootstrap {
                node: Node { id: format!("{svc}-0"), service: Some(svc.into()), zone: None },
                drain_timeout: Some(trellis_api::Duration::from_secs(1)),
                identity: Some(config::identity(&cert, &key, &pki.bundle())),
                control_plane: Some(ControlPlaneConfig {
                    address: trellis_api::Addresses::one(format!("https://{xds}")),
                    identity: None,
                    token_file: Some(token_file.display().to_string()),
                    inbound_address: inbound.map(|a| a.to_string()),
                }),
                tracing: tracing.clone(),
                ..config::bootstrap()
            }
            .yaml()
        };
        let (ya, yb) = (bootstrap("a", None), bootstrap("b", Some(b_in)));
        let b = blocking(|| Proxy::start(&yb));
        let a = blocking(|| Proxy::start(&ya));
        // `a` learns `b`'s registered endpoint a moment after its first config.
        let answered = wait_until(Duration::from_secs(10), || async {
            match tokio::net::TcpStream::connect(a_out).await {
                Ok(s) => Client::over(s, a_out, false).await.get("/ready-check").await.status == 200,
                Err(_) => false,
            }
        })
        .await;
        assert!(answered, "a → b never answered 200:\n{}\n{}", a.logs(), b.logs());
        SidecarPair { pki, token, cp, a, b, a_out, b_in }
    }

    /// `GET path` of the control plane's REST API with the token.
    pub async fn cp_get(&self, path: &str) -> Got {
        let mut c = Client::h1(self.cp.api).await;
        let req = Request::get(path).header("authorization", format!("Bearer {}", self.token)).body(full("")).unwrap();
        c.fetch(req).await
    }
}

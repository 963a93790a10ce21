//! Discovery over mTLS (`trellis control-plane --xds-tls`, `control_plane.address: https://…`)
//! with the real binaries: a proxy holding an identity from the control plane's CA gets its
//! config; one from another CA, one that claims another service, one expecting another
//! control-plane identity, and a plaintext one get nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{self, ControlPlaneConfig, Identity, Node, Yaml};
use trellis_testkit::*;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// Issues `spiffe://trellis.local/ns/default/sa/SA` from the CA in `ca_dir` into `dir/SA.*`
/// and returns the bootstrap's identity.
fn identity(ca_dir: &Path, dir: &Path, sa: &str) -> Identity {
    let ca = trellis_certs::Ca::load(ca_dir).unwrap();
    let prefix = dir.join(sa);
    issue_to(&ca, &format!("spiffe://trellis.local/ns/default/sa/{sa}"), &[], &prefix);
    let (cert, key) = pem_key(&prefix);
    config::identity(&cert, &key, &trellis_certs::Ca::cert_path(ca_dir))
}

/// A proxy of `service` with `identity`, taking its config from `cp` at `scheme://xds`,
/// which must present `cp_identity` (default: the control plane's).
fn bootstrap(service: &str, identity: Identity, scheme: &str, xds: SocketAddr, cp_identity: Option<&str>) -> String {
    config::Bootstrap {
        node: Node { id: format!("{service}-0"), service: Some(service.into()), zone: None },
        identity: Some(identity),
        control_plane: Some(ControlPlaneConfig {
            address: trellis_api::Addresses::one(format!("{scheme}://{xds}")),
            identity: cp_identity.map(str::to_owned),
            token_file: None,
            inbound_address: None,
        }),
        ..config::bootstrap()
    }
    .yaml()
}

fn ready(proxy: &Proxy) -> bool {
    admin_get(proxy.admin, "/ready").map(|(s, _)| s == 200).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_proxies_with_the_control_planes_identities_get_config() {
    within(LIMIT, async {
        ring_provider();
        let data = tempfile::tempdir().unwrap();
        let cp = blocking({
            let data = data.path().to_owned();
            move || ControlPlane::start_with(&data, listen_addr(), listen_addr(), &["--xds-tls"])
        });
        let ca_dir = data.path().join("ca");
        let certs = tempfile::tempdir().unwrap();
        let app = Origin::echo("shop-app").await;
        let listen = listen_addr();
        for (kind, name, body) in [
            ("clusters", "app", serde_json::json!({ "endpoints": [{ "address": app.addr.to_string() }] })),
            ("routes", "all", serde_json::json!({ "match": { "path_prefix": "/" }, "backends": [{ "cluster": "app" }] })),
            ("listeners", "in", serde_json::json!({ "address": listen.to_string(), "service": "shop", "routes": ["all"] })),
        ] {
            let got = cp.put(kind, name, body).await;
            assert!(got.status.is_success(), "{kind}/{name}: {}", got.text());
        }

        // The right CA, the right service: config arrives over mTLS and the listener serves.
        let shop = Proxy::start(&bootstrap("shop", identity(&ca_dir, certs.path(), "shop"), "https", cp.xds, None));
        let became_ready = wait_until(Duration::from_secs(10), || async { blocking(|| ready(&shop)) }).await;
        assert!(became_ready, "{}", log_tail(&shop, 20));
        let got = Client::h1(listen).await.get("/hello").await;
        assert_eq!(got.status, 200, "{}", got.text());
        let (_, proxies) = admin_get(cp.api, "/v1/proxies").unwrap();
        let proxies: serde_json::Value = serde_json::from_str(&proxies).unwrap_or_else(|e| panic!("{e}: {proxies}"));
        let list = proxies.get("proxies").unwrap_or(&proxies);
        let shop0 = list.as_array().and_then(|a| a.iter().find(|p| p["id"] == "shop-0")).cloned();
        let shop0 = shop0.unwrap_or_else(|| panic!("shop-0 in {proxies}"));
        assert_eq!(shop0["identity"], "spiffe://trellis.local/ns/default/sa/shop", "the verified identity: {shop0}");

        // A certificate of another CA: the handshake fails, nothing is applied.
        let other = tempfile::tempdir().unwrap();
        trellis_certs::Ca::init(other.path().join("ca"), false).unwrap();
        let foreign = Proxy::spawn_live(
            &bootstrap("billing", identity(&other.path().join("ca"), other.path(), "billing"), "https", cp.xds, None),
            &["--threads", "1"],
        );
        // The right CA, but claiming another service than its identity's.
        let impostor = Proxy::spawn_live(
            &bootstrap("payments", identity(&ca_dir, certs.path(), "cart"), "https", cp.xds, None),
            &["--threads", "1"],
        );
        // Expecting another control-plane identity: the proxy refuses the server.
        let wary = Proxy::spawn_live(
            &bootstrap(
                "shop",
                identity(&ca_dir, certs.path(), "shop"),
                "https",
                cp.xds,
                Some("spiffe://trellis.local/ns/other/sa/control-plane"),
            ),
            &["--threads", "1"],
        );
        // Plaintext to an mTLS port.
        let plain =
            Proxy::spawn_live(&bootstrap("shop", identity(&ca_dir, certs.path(), "shop"), "http", cp.xds, None), &["--threads", "1"]);
        let failures = [
            ("foreign CA", &foreign, "control-plane stream failed"),
            ("impostor", &impostor, "is not the service of this proxy's identity"),
            ("wrong control-plane identity", &wary, "the control plane's identity mismatch: expected spiffe://trellis.local/ns/other/sa/control-plane, got spiffe://trellis.local/ns/trellis-system/sa/control-plane"),
            ("plaintext", &plain, "control-plane stream failed"),
        ];
        for (what, p, needle) in failures {
            let logged = wait_log(p, needle, Duration::from_secs(10)).await;
            assert!(logged, "{what}: expected {needle:?} in:\n{}", log_tail(p, 10));
        }
        for (what, p, _) in failures {
            assert!(!blocking(|| ready(p)), "{what}: must not become ready");
        }
        let (_, proxies) = admin_get(cp.api, "/v1/proxies").unwrap();
        for id in ["billing-0", "payments-0"] {
            assert!(!proxies.contains(id), "{id} must not be registered: {proxies}");
        }
    })
    .await;
}

#[test]
fn an_https_control_plane_needs_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.yaml");
    std::fs::write(&cfg, "control_plane: { address: \"https://127.0.0.1:7071\" }\n").unwrap();
    let (code, out) = trellis(&["validate", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("control_plane.address") && out.contains("identity"), "{out}");
    std::fs::write(&cfg, "control_plane: { address: \"127.0.0.1:7071\" }\n").unwrap();
    let (code, out) = trellis(&["validate", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("control_plane.address"), "{out}");
}

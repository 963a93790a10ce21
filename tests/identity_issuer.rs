//! `identity.issuer` end to end: a proxy with no certificate gets one from the control
//! plane's CA (only a CSR leaves the proxy), serves mTLS with it, renews it before it
//! expires without a failed request, keeps the old one while the control plane is away,
//! and refuses to start when the control plane refuses it.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{self, Yaml};
use trellis_testkit::*;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use trellis_certs::Ca;

use trellis_testkit::mesh::*;

/// A control plane with a token, and a directory for the proxy's identity files.
struct Mesh {
    cp: ControlPlane,
    data: tempfile::TempDir,
    files: tempfile::TempDir,
    token: PathBuf,
    /// A client config holding the frontend identity, from the control plane's CA.
    fe: Arc<rustls::ClientConfig>,
}

impl Mesh {
    fn start() -> Mesh {
        Self::start_with(&[])
    }

    /// With more control-plane arguments (e.g. `--api-tls`).
    fn start_with(args: &[&str]) -> Mesh {
        ring_provider();
        let data = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let token = files.path().join("cp.token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let cp = ControlPlane::start_with(
            data.path(),
            listen_addr(),
            listen_addr(),
            &[&["--token-file", token.to_str().unwrap()], args].concat(),
        );
        let ca = Ca::load(data.path().join("ca")).unwrap();
        let fe_prefix = files.path().join("frontend");
        issue_to(&ca, FRONTEND, &[], &fe_prefix);
        let fe = tls_client_config(&TlsClientOpts { identity: Some(pem_key(&fe_prefix)), ..Default::default() });
        Mesh { cp, data, files, token, fe }
    }

    fn bundle(&self) -> PathBuf {
        Ca::cert_path(self.data.path().join("ca"))
    }

    fn cert(&self) -> PathBuf {
        self.files.path().join("id/checkout.pem")
    }

    fn key(&self) -> PathBuf {
        self.files.path().join("id/checkout.key")
    }

    /// An inbound sidecar whose identity comes from the control plane, valid for `ttl`.
    fn sidecar(&self, mesh: SocketAddr, app: SocketAddr, ttl: &str, token: &Path) -> config::Bootstrap {
        self.sidecar_at(&self.cert(), &self.key(), mesh, app, ttl, token)
    }

    fn sidecar_yaml(&self, mesh: SocketAddr, app: SocketAddr, ttl: &str, token: &Path) -> String {
        self.sidecar(mesh, app, ttl, token).yaml()
    }

    fn sidecar_at(
        &self,
        cert: &Path,
        key: &Path,
        mesh: SocketAddr,
        app: SocketAddr,
        ttl: &str,
        token: &Path,
    ) -> config::Bootstrap {
        let mut identity = config::identity(cert, key, &self.bundle());
        identity.issuer = Some(config::issuer(&self.cp.api_url(), CHECKOUT, token, ttl));
        inbound(&identity, &[("inbound", mesh, Some("authz"))], app)
    }
}

/// One request on a fresh mTLS connection: the status and the certificate presented.
async fn call(mesh: SocketAddr, fe: &Arc<rustls::ClientConfig>) -> Result<(u16, trellis_certs::CertInfo), String> {
    let (got, seen) = tls_fetch(mesh, fe.clone(), "checkout", "GET", "/api/x").await?;
    Ok((got.status.as_u16(), seen.leaf))
}

fn counter(proxy: &Proxy, result: &str) -> f64 {
    let needle = format!("trellis_identity_renewals_total{{result=\"{result}\"}}");
    proxy
        .metrics()
        .lines()
        .find(|l| l.starts_with(&needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_its_identity_from_the_control_plane_and_renews_it_without_a_failed_request() {
    let m = Mesh::start();
    let app = Origin::echo("app").await;
    let mesh = listen_addr();
    assert!(!m.cert().exists());
    let proxy = Proxy::start(&m.sidecar_yaml(mesh, app.addr, "9s", &m.token));

    // The key was made here and written owner-only; the certificate is for the ID asked.
    let mode = std::fs::metadata(m.key()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode {mode:o}");
    let info = trellis_certs::inspect_file(m.cert()).unwrap();
    assert_eq!(info[0].spiffe_id.as_ref().map(ToString::to_string).as_deref(), Some(CHECKOUT));

    let (status, first) = call(mesh, &m.fe).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(first.spiffe_id.as_ref().map(ToString::to_string).as_deref(), Some(CHECKOUT));

    // Renewed once less than a third of the 9 s is left: a new leaf within ~7 s, and not
    // one failed request meanwhile.
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut calls = 0;
    let renewed = loop {
        let (status, leaf) =
            call(mesh, &m.fe).await.unwrap_or_else(|e| panic!("request failed: {e}\n{}", proxy.logs()));
        assert_eq!(status, 200);
        calls += 1;
        if leaf.serial != first.serial {
            break leaf;
        }
        assert!(Instant::now() < deadline, "no renewal in 12 s: {}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(calls > 10, "only {calls} calls");
    assert_eq!(renewed.spiffe_id.as_ref().map(ToString::to_string).as_deref(), Some(CHECKOUT));
    assert!(renewed.not_after > first.not_after);
    assert!(counter(&proxy, "ok") >= 1.0, "{}", proxy.metrics());
    assert!(proxy.logs().contains("identity certificate renewed"), "{}", proxy.logs());
    // The key and certificate land together: no reload saw one without the other.
    assert!(!proxy.logs().contains("config reload refused"), "{}", proxy.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_control_plane_is_away_the_old_identity_keeps_serving() {
    let mut m = Mesh::start();
    let app = Origin::echo("app").await;
    let mesh = listen_addr();
    let proxy = Proxy::start(&m.sidecar_yaml(mesh, app.addr, "21s", &m.token));
    let (_, first) = call(mesh, &m.fe).await.unwrap();

    // The control plane goes away; the renewal (due ~14 s after issue) fails and is retried
    // (at most a quarter of the time left apart, so well before the 21 s run out).
    let (api, xds) = (m.cp.api, m.cp.xds);
    let _ = m.cp.child.kill();
    let _ = m.cp.child.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(&proxy, "error") < 1.0 {
        assert!(Instant::now() < deadline, "no failed renewal counted: {}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, leaf) = call(mesh, &m.fe).await.unwrap();
    assert_eq!((status, &leaf.serial), (200, &first.serial), "the old identity keeps serving");
    assert!(proxy.logs().contains("identity renewal failed"), "{}", proxy.logs());

    // Back: the next attempt renews.
    m.cp = ControlPlane::start_with(m.data.path(), api, xds, &["--token-file", m.token.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, leaf) =
            call(mesh, &m.fe).await.unwrap_or_else(|e| panic!("request failed: {e}\n{}", proxy.logs()));
        assert_eq!(status, 200);
        if leaf.serial != first.serial {
            break;
        }
        assert!(Instant::now() < deadline, "not renewed after the control plane came back: {}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_the_identity_files_gets_them_issued_and_applies() {
    let m = Mesh::start();
    let app = Origin::echo("app").await;
    let mesh = listen_addr();
    let proxy = Proxy::start(&m.sidecar_yaml(mesh, app.addr, "1h", &m.token));
    let (_, first) = call(mesh, &m.fe).await.unwrap();
    let version = proxy.version();

    // New paths, nothing there yet: the first reload is refused for the missing files, the
    // proxy gets a certificate for them, and the reload then applies.
    let (cert, key) = (m.files.path().join("moved/id.pem"), m.files.path().join("moved/id.key"));
    proxy.write_config(&m.sidecar_at(&cert, &key, mesh, app.addr, "1h", &m.token).yaml());
    assert!(wait_version_above(&proxy, version, Duration::from_secs(10)).await, "{}", proxy.logs());
    let written = trellis_certs::inspect_file(&cert).unwrap();
    let (status, leaf) = call(mesh, &m.fe).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(leaf.serial, written[0].serial, "the moved identity is the one presented");
    assert_ne!(leaf.serial, first.serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_stops_the_start_with_the_control_planes_reason() {
    let m = Mesh::start();
    let wrong = m.files.path().join("wrong.token");
    std::fs::write(&wrong, "guess").unwrap();
    let cfg = m.files.path().join("sidecar.yaml");
    let yaml = m.sidecar_yaml(listen_addr(), listen_addr(), "1h", &wrong);
    std::fs::write(&cfg, yaml.replace("{admin}", &listen_addr().to_string())).unwrap();
    let started = Instant::now();
    let (code, err) = blocking(move || trellis(&["proxy", "--config", cfg.to_str().unwrap()]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("identity.issuer.server") && err.contains("(401)"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "a refusal is not retried");
    assert!(!m.cert().exists() && !m.key().exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_issuer_must_be_the_control_plane_of_the_trust_bundle() {
    let m = Mesh::start_with(&["--api-tls"]);
    let app = Origin::echo("app").await;
    let mesh = listen_addr();
    let mut b = m.sidecar(mesh, app.addr, "1h", &m.token);
    let issuer = b.identity.as_mut().and_then(|i| i.issuer.as_mut()).unwrap();
    issuer.server = issuer.server.replace("http://", "https://");
    let _proxy = Proxy::start(&b.yaml());
    let (status, leaf) = call(mesh, &m.fe).await.unwrap();
    assert_eq!((status, leaf.spiffe_id.map(|i| i.to_string())), (200, Some(CHECKOUT.to_owned())));

    // A trust bundle of another CA: the control plane is not believed, and nothing retried.
    let other = tempfile::tempdir().unwrap();
    Ca::init(other.path(), false).unwrap();
    let cfg = m.files.path().join("untrusting.yaml");
    let identity = b.identity.as_mut().unwrap();
    identity.trust_bundle = Ca::cert_path(other.path()).display().to_string();
    let id2 = |file: &str| m.files.path().join("id2").join(file).display().to_string();
    (identity.cert, identity.key) = (id2("checkout.pem"), id2("checkout.key"));
    let yaml = b.yaml().replace("{admin}", &listen_addr().to_string());
    std::fs::write(&cfg, yaml).unwrap();
    let started = Instant::now();
    let (code, err) = blocking(move || trellis(&["proxy", "--config", cfg.to_str().unwrap()]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not the control plane") && err.contains("UnknownIssuer"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "a TLS refusal is not retried");
}

#[test]
fn issuer_fields_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    let cases = [
        ("server: \"ftp://127.0.0.1:7070\", id: \"spiffe://trellis.local/ns/a/sa/b\"", "identity.issuer.server"),
        ("server: \"http://127.0.0.1:7070\", id: \"checkout\"", "identity.issuer.id"),
        ("server: \"http://127.0.0.1\", id: \"spiffe://trellis.local/ns/a/sa/b\"", "identity.issuer.server"),
        ("server: \"http://127.0.0.1:7070\", id: \"spiffe://trellis.local/ns/a/sa/b\", ttl: 1s", "identity.issuer.ttl"),
        ("server: \"http://127.0.0.1:7070\", id: \"spiffe://trellis.local/ns/a/sa/b\", renew: 1h", "renew"),
    ];
    for (issuer, field) in cases {
        std::fs::write(
            &cfg,
            format!("identity: {{ cert: a.pem, key: a.key, trust_bundle: ca.pem, issuer: {{ {issuer} }} }}\n"),
        )
        .unwrap();
        let (code, err) = trellis(&["validate", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 2, "{issuer}: {err}");
        assert!(err.contains(field), "{issuer}: {err}");
    }
}

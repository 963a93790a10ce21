//! Workload identity without a shared secret (DESIGN §10): the control plane with
//! `--workload-jwks` signs a CSR only for the service account a pod's JWT names. Tokens
//! are made here from keys made here (ES256 from our certs crate, RS256 from openssl):
//! valid, expired, wrong audience, wrong signature, another namespace, trellis-system;
//! and a real proxy gets its certificate with its token, re-read at every request.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{self, Yaml};
use trellis_testkit::*;

use http::{Request, Response};
use hyper::body::Incoming;
use jsonwebtoken::Algorithm;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ADMIN_TOKEN: &str = "admin-s3cret";

fn csr(id: &str) -> String {
    trellis_certs::new_csr(&trellis_certs::SpiffeId::parse(id).unwrap()).unwrap().csr_pem
}

async fn sign(cp: &ControlPlane, bearer: Option<&str>, csr: &str) -> Got {
    let mut c = Client::h1(cp.api).await;
    let mut req = Request::post("/v1/certificates").header("content-type", "application/json");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    c.fetch(req.body(full(serde_json::json!({ "csr": csr, "ttl": "1h" }).to_string())).unwrap()).await
}

/// A control plane with the admin token, `--workload-jwks FILE` and `more` arguments.
fn control_plane(dir: &Path, jwks_json: &str, more: &[&str]) -> ControlPlane {
    let (token, keys) = (dir.join("admin.token"), dir.join("jwks.json"));
    std::fs::write(&token, ADMIN_TOKEN).unwrap();
    std::fs::write(&keys, jwks_json).unwrap();
    ControlPlane::start_with(
        &dir.join("data"),
        listen_addr(),
        listen_addr(),
        &[&["--token-file", token.to_str().unwrap(), "--workload-jwks", keys.to_str().unwrap()], more].concat(),
    )
}

const WEB: &str = "spiffe://trellis.local/ns/shop/sa/web";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_signed_only_for_the_service_account_of_a_valid_token() {
    ring_provider();
    let dir = tempfile::tempdir().unwrap();
    let (ec, rsa, stranger) = (Signer::ec("ec-1"), Signer::rsa("rsa-1"), Signer::ec("ec-1"));
    let cp = control_plane(dir.path(), &jwks(&[&ec, &rsa]), &[]);

    // Valid tokens, ES256 and RS256: the certificate is for the token's service account.
    for signer in [&ec, &rsa] {
        let got = sign(&cp, Some(&signer.token("shop", "web", AUDIENCE, 600)), &csr(WEB)).await;
        assert_eq!(got.status, 200, "{:?}: {}", signer.alg, got.text());
        let pem = got.json()["certificate"].as_str().unwrap().to_owned();
        let leaf = trellis_certs::inspect(pem.as_bytes()).unwrap();
        assert_eq!(leaf.spiffe_id.unwrap().as_str(), WEB);
    }

    // Each refusal names what failed, and never repeats the token's signature.
    let wrong_sig = stranger.token("shop", "web", AUDIENCE, 600);
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("expired", ec.token("shop", "web", AUDIENCE, -600), WEB, 401, "expired"),
        ("wrong audience", rsa.token("shop", "web", "vault", 600), WEB, 401, "audience"),
        ("wrong signature", wrong_sig.clone(), WEB, 401, "signature"),
        ("another namespace", ec.token("billing", "web", AUDIENCE, 600), WEB, 403, "service account billing/web"),
        (
            "trellis-system",
            ec.token("trellis-system", "control-plane", AUDIENCE, 600),
            "spiffe://trellis.local/ns/trellis-system/sa/control-plane",
            403,
            "control plane's namespace",
        ),
        ("the admin token", ADMIN_TOKEN.into(), WEB, 403, "admin token does not sign"),
        ("not a JWT", "abc.def".into(), WEB, 401, "not a JWT"),
    ];
    for (what, token, id, status, reason) in cases {
        let got = sign(&cp, Some(&token), &csr(id)).await;
        assert_eq!(got.status.as_u16(), status, "{what}: {}", got.text());
        let error = got.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(reason), "{what}: {error}");
        let signature = token.rsplit('.').next().unwrap();
        assert!(signature.len() < 8 || !got.text().contains(signature), "{what} echoes the signature: {error}");
    }
    let got = sign(&cp, None, &csr(WEB)).await;
    assert_eq!(got.status, 401, "{}", got.text());

    // The admin token keeps the write API.
    let mut c = Client::h1(cp.api).await;
    let put = Request::put("/v1/clusters/web")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(full(r#"{"endpoints": [{"address": "127.0.0.1:8080"}]}"#))
        .unwrap();
    assert!(c.fetch(put).await.status.is_success());

    // A new key in the file is used without a restart.
    let later = Signer::ec("ec-2");
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&ec, &rsa, &later])).unwrap();
    let got = sign(&cp, Some(&later.token("shop", "web", AUDIENCE, 600)), &csr(WEB)).await;
    assert_eq!(got.status, 200, "{}", got.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_can_come_from_the_api_servers_jwks_url() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("apiserver", "spiffe://trellis.local/ns/default/sa/kubernetes", &["127.0.0.1"]);
    let ec = Signer::ec("ec-url");
    let body = jwks(&[&ec]);
    let (origin, _) = tls_origin(&cert, &key, move |req: Request<Incoming>| {
        let body = body.clone();
        async move {
            // Like the API server: the caller's own token is required.
            let authorized = req.headers().get("authorization").is_some_and(|v| v == "Bearer cp-sa-token");
            let status = if authorized && req.uri().path() == "/openid/v1/jwks" { 200 } else { 401 };
            Response::builder().status(status).body(full(if status == 200 { body } else { String::new() })).unwrap()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sa_token = dir.path().join("sa.token");
    std::fs::write(&sa_token, "cp-sa-token\n").unwrap();
    let url = format!("https://127.0.0.1:{}/openid/v1/jwks", origin.addr.port());
    let cp = ControlPlane::start_with(
        &dir.path().join("data"),
        listen_addr(),
        listen_addr(),
        &[
            "--workload-jwks-url",
            &url,
            "--workload-jwks-ca",
            pki.bundle().to_str().unwrap(),
            "--workload-jwks-token-file",
            sa_token.to_str().unwrap(),
        ],
    );
    let got = sign(&cp, Some(&ec.token("shop", "web", AUDIENCE, 600)), &csr(WEB)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = sign(&cp, Some(&Signer::ec("ec-url").token("shop", "web", AUDIENCE, 600)), &csr(WEB)).await;
    assert_eq!(got.status, 401, "{}", got.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_keys_are_refused_at_start_or_answered_503() {
    ring_provider();
    let dir = tempfile::tempdir().unwrap();
    // A file without usable keys: the control plane does not start, and says why.
    let keys = dir.path().join("jwks.json");
    std::fs::write(&keys, r#"{"keys": []}"#).unwrap();
    let (code, err) = trellis(&[
        "control-plane",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--api-addr",
        &listen_addr().to_string(),
        "--xds-addr",
        &listen_addr().to_string(),
        "--workload-jwks",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("jwks.json: no RS256 or ES256"), "{err}");

    // A URL nobody answers: the control plane starts, and certificate requests get 503
    // until the keys can be fetched.
    let pki = Pki::new();
    let nobody = format!("https://127.0.0.1:{}/openid/v1/jwks", free_port());
    let cp = ControlPlane::start_with(
        &dir.path().join("data2"),
        listen_addr(),
        listen_addr(),
        &["--workload-jwks-url", &nobody, "--workload-jwks-ca", pki.bundle().to_str().unwrap()],
    );
    let got = sign(&cp, Some(&Signer::ec("k").token("shop", "web", AUDIENCE, 600)), &csr(WEB)).await;
    assert_eq!(got.status, 503, "{}", got.text());
    assert!(got.json()["error"].as_str().unwrap().starts_with("workload keys:"), "{}", got.text());
}

/// The identity of a sidecar that asks `cp` with the token in `token`.
fn identity_with_token(dir: &Path, cp: &ControlPlane, token: &Path, ttl: &str) -> config::Identity {
    let bundle = trellis_certs::Ca::cert_path(dir.join("data/ca"));
    let mut identity = config::identity(&dir.join("id.pem"), &dir.join("id.key"), &bundle);
    identity.issuer = Some(config::issuer(&cp.api_url(), WEB, token, ttl));
    identity
}

fn renewals(proxy: &Proxy, result: &str) -> f64 {
    metric_value(&proxy.metrics(), "trellis_identity_renewals_total", &[("result", result)]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_its_identity_with_its_service_account_token_read_anew_each_time() {
    ring_provider();
    let dir = tempfile::tempdir().unwrap();
    let ec = Signer::ec("ec-1");
    // Discovery over mTLS: the certificate got with the token is the proxy's credential
    // there too; the admin token stays with the admins.
    let cp = control_plane(dir.path(), &jwks(&[&ec]), &["--xds-tls"]);
    let token = dir.path().join("token");
    let yaml = |ttl: &str| {
        config::Bootstrap {
            node: config::Node { id: "web-0".into(), service: Some("web".into()), zone: None },
            control_plane: Some(config::control_plane(&[format!("https://{}", cp.xds)])),
            identity: Some(identity_with_token(dir.path(), &cp, &token, ttl)),
            ..config::bootstrap()
        }
        .yaml()
    };

    // An expired token: the proxy does not start, and says why.
    std::fs::write(&token, ec.token("shop", "web", AUDIENCE, -600)).unwrap();
    let mut refused = Proxy::spawn(&yaml("1h"), &[]);
    let status = refused.wait_exit(Duration::from_secs(20)).expect("the proxy stops");
    assert!(!status.success());
    assert!(refused.logs().contains("expired"), "{}", refused.logs());

    // A valid token: the certificate is the pod's, and with it the discovery stream is
    // accepted (ready = first config applied) without the bearer token.
    std::fs::write(&token, ec.token("shop", "web", AUDIENCE, 600)).unwrap();
    let proxy = Proxy::start(&yaml("6s"));
    let info = trellis_certs::inspect_file(dir.path().join("id.pem")).unwrap();
    assert_eq!(info[0].spiffe_id.as_ref().unwrap().as_str(), WEB);

    // The kubelet rotates the file: the next renewal reads it (a token for another
    // namespace is refused), and the one after that a good one again.
    std::fs::write(&token, ec.token("billing", "web", AUDIENCE, 600)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while renewals(&proxy, "error") < 1.0 {
        assert!(Instant::now() < deadline, "no refused renewal: {}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.logs().contains("service account billing/web"), "{}", proxy.logs());
    std::fs::write(&token, ec.token("shop", "web", AUDIENCE, 600)).unwrap();
    let ok_before = renewals(&proxy, "ok");
    let deadline = Instant::now() + Duration::from_secs(15);
    while renewals(&proxy, "ok") <= ok_before {
        assert!(Instant::now() < deadline, "not renewed with the new token: {}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

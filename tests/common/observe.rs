//! Test helpers not yet in the kit: a time bound, headless Chromium, a sidecar pair under
//! a control plane (metrics, memory and access-log helpers are the kit's).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// Runs `f` under a hard time bound so a hung proxy fails the test instead of the suite.
pub async fn bounded<F: Future<Output = ()>>(limit: Duration, f: F) {
    tokio::time::timeout(limit, f).await.expect("test exceeded its time bound");
}

/// Debian's `chromium`, or `None` (with a message) when it is absent and
/// `TRELLIS_REQUIRE_CHROMIUM` is not set (.ci/run sets it and installs chromium).
pub fn chromium(test: &str) -> Option<&'static str> {
    let found = std::process::Command::new("chromium").arg("--version").output().is_ok_and(|o| o.status.success());
    if found {
        return Some("chromium");
    }
    assert!(
        std::env::var_os("TRELLIS_REQUIRE_CHROMIUM").is_none(),
        "TRELLIS_REQUIRE_CHROMIUM is set but chromium is missing (apt-get install --no-install-recommends chromium)"
    );
    eprintln!("SKIPPED {test}: chromium not found (Debian package `chromium`)");
    None
}

/// Headless Chromium on `url` with a new profile and no background networking, letting the
/// page's scripts run for `budget` of virtual time; `extra` is e.g. `--dump-dom` or
/// `--screenshot=PATH`. Returns stdout (the DOM with `--dump-dom`).
pub fn headless_chromium(chromium: &str, url: &str, budget: Duration, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .args(extra)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed on {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A control plane (discovery over mTLS, a bearer token, stats reports every second) and
/// two sidecars from its CA: `a` (outbound listener `a_out`, route to cluster `b`) and `b`
/// (mesh mTLS inbound listener `b_in`, registered as `b`'s endpoint, routing to `app`).
/// `extra` is added to both bootstraps (e.g. a `tracing:` block).
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
    pub async fn start(app: SocketAddr, extra: &str) -> SidecarPair {
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
            let identity = pki.issue(svc, spiffe(svc).as_str(), &[]);
            let inbound = inbound.map(|a| format!(", inbound_address: \"{a}\"")).unwrap_or_default();
            format!(
                "node: {{ id: {svc}-0, service: {svc} }}\nadmin: {{ address: \"{{admin}}\" }}\ndrain_timeout: 1s\n{}control_plane: {{ address: \"https://{xds}\", token_file: \"{}\"{inbound} }}\n{extra}",
                identity_yaml(&identity.0, &identity.1, &pki.bundle()),
                token_file.display(),
            )
        };
        let (ya, yb) = (bootstrap("a", None), bootstrap("b", Some(b_in)));
        let b = blocking(|| Proxy::start(&yb));
        let a = blocking(|| Proxy::start(&ya));
        // `a` learns `b`'s registered endpoint a moment after its first config.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = match tokio::net::TcpStream::connect(a_out).await {
                Ok(s) => {
                    let mut c = Client::over(s, a_out, false).await;
                    c.get("/ready-check").await.status == 200
                }
                Err(_) => false,
            };
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "a → b never answered 200:\n{}\n{}", a.logs(), b.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        SidecarPair { pki, token, cp, a, b, a_out, b_in }
    }

    /// `GET path` of the control plane's REST API with the token.
    pub async fn cp_get(&self, path: &str) -> Got {
        let mut c = Client::h1(self.cp.api).await;
        let req = Request::get(path).header("authorization", format!("Bearer {}", self.token)).body(full("")).unwrap();
        c.fetch(req).await
    }
}

//! An HTTP/3 client for the tests: `tests/h3_client.py` on aioquic (pinned in
//! `.ci/requirements.txt`), fed a JSON plan, answering JSON.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// Whether the HTTP/3 client can run here. On a developer machine without python3 or
/// aioquic the caller skips (printing why); where `TRELLIS_REQUIRE_H3_CLIENT` is set (CI),
/// a missing client fails the test instead.
pub fn h3_client_available(test: &str) -> bool {
    python_module_available(test, "aioquic", "TRELLIS_REQUIRE_H3_CLIENT")
}

/// Whether `python3 -c "import MODULE"` works. Where `require_env` is set (CI) a missing
/// module fails the test; elsewhere the caller skips, and this prints why.
pub fn python_module_available(test: &str, module: &str, require_env: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os(require_env).is_none(),
            "{test}: python3 with {module} is required here (pip install -r .ci/requirements.txt)"
        );
        eprintln!("SKIPPED {test}: python3 with {module} not found (pip install -r .ci/requirements.txt)");
    }
    ok
}

/// Runs `tests/h3_client.py` on `plan` (see its docstring) and returns its JSON answer.
/// The client is killed if it runs past the plan's timeout per connection plus a margin
/// (a test's runtime waits for it otherwise, whatever the test's own time limit).
pub async fn h3_client(plan: serde_json::Value) -> serde_json::Value {
    let conns = plan["connections"].as_array().map_or(1, Vec::len) as u64;
    let limit = (plan["timeout"].as_u64().unwrap_or(20) + 5) * conns + 10;
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h3_client.py");
        let mut child = Command::new("timeout")
            .args(["--kill-after=2", &limit.to_string(), "python3", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3 tests/h3_client.py");
        child.stdin.take().unwrap().write_all(plan.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap_or_else(|e| {
            panic!("h3 client answered no JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
        })
    })
    .await
    .unwrap()
}

/// A plan for `tests/h3_client.py`: `connections` against `addr` with SNI `sni`, verified
/// against `ca` (or not verified).
pub fn h3_plan(
    addr: SocketAddr,
    sni: &str,
    ca: Option<&std::path::Path>,
    connections: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "host": addr.ip().to_string(),
        "port": addr.port(),
        "sni": sni,
        "ca": ca.map(|p| p.display().to_string()),
        "timeout": 20,
        "connections": connections,
    })
}

/// A bootstrap with one terminating listener `edge` on `listen` (certificates `certs`,
/// `http3: true` plus `tls_extra`, e.g. `, early_data: true`; `listener_extra`, e.g.
/// `header_timeout: 1s`), one catch-all route to `app` (`protocol: http2`: h2c upstream, so
/// trailers go both ways), `tail` appended (e.g. an `access_log:` line) and `{admin}`.
pub fn h3_edge_yaml(
    listen: SocketAddr,
    certs: &[(PathBuf, PathBuf)],
    tls_extra: &str,
    listener_extra: &str,
    app: SocketAddr,
    tail: &str,
) -> String {
    let certs: Vec<String> =
        certs.iter().map(|(c, k)| format!("{{ cert: \"{}\", key: \"{}\" }}", c.display(), k.display())).collect();
    format!(
        r#"admin: {{ address: "{{admin}}" }}
drain_timeout: 5s
listeners:
  - name: edge
    address: "{listen}"
    tls: {{ mode: terminate, certificates: [{}], http3: true{tls_extra} }}
    routes: [all]
    {listener_extra}
routes:
  - name: all
    match: {{ path_prefix: / }}
    backends: [{{ cluster: app }}]
clusters:
  - name: app
    protocol: http2
    endpoints: [{{ address: "{app}" }}]
{tail}"#,
        certs.join(", ")
    )
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Config validation at the command line: `trellis proxy` and `trellis validate` refuse bad
//! configs with exit code 2 and a message naming the field path, before binding anything;
//! good configs validate; help works.

use trellis_testkit::*;

use std::net::{SocketAddr, TcpListener};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// A valid config on fresh ports.
struct Ports {
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Ports {
    fn new() -> Ports {
        Ports { listen: listen_addr(), admin: listen_addr() }
    }

    fn good(&self) -> String {
        format!(
            r#"admin: {{ address: "{admin}" }}
listeners:
  - name: in
    address: "{listen}"
    routes: [api]
routes:
  - name: api
    match: {{ path_prefix: / }}
    backends: [{{ cluster: c }}]
    timeout: 5s
clusters:
  - name: c
    endpoints: [{{ address: "127.0.0.1:9" }}]
"#,
            admin = self.admin,
            listen = self.listen
        )
    }

    /// Both addresses can be bound right now (nobody holds them).
    fn assert_free(&self, ctx: &str) {
        for a in [self.listen, self.admin] {
            TcpListener::bind(a).unwrap_or_else(|e| panic!("{ctx}: {a} is still bound after exit: {e}"));
        }
    }
}

fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "edit target {from:?} not in config");
    text.replacen(from, to, 1)
}

/// Runs the binary with a time bound; returns its output and how long it ran.
fn run(args: &[&str]) -> (Output, Duration) {
    let t0 = Instant::now();
    let mut child = trellis_command()
        .args(args)
        .env("TRELLIS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = t0 + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("trellis {args:?} still running after 10 s: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (child.wait_with_output().unwrap(), t0.elapsed())
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// Checks that `trellis proxy` and `trellis validate` both refuse `config` with exit 2 and
/// every `needles` in stderr, and that the proxy bound nothing.
fn assert_refused(ports: &Ports, config: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "bad.yaml", config);
    for cmd in ["proxy", "validate"] {
        let ctx = format!("trellis {cmd} with {needles:?}");
        let (out, took) = run(&[cmd, "--config", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{ctx}: exit status; stderr: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{ctx}: stderr should contain {n:?}: {stderr}");
        }
        assert!(!stderr.contains("ready"), "{ctx}: the proxy started: {stderr}");
        assert!(took < Duration::from_secs(5), "{ctx}: took {took:?}");
        ports.assert_free(&ctx);
    }
}

#[test]
fn good_config_validates() {
    let ports = Ports::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "good.yaml", &ports.good());
    let (out, _) = run(&["validate", "--config", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    // And the same file really runs.
    let proxy = Proxy::start(&ports.good().replace(&ports.admin.to_string(), "{admin}"));
    assert_eq!(admin_get(proxy.admin, "/live").unwrap().0, 200);
}

#[test]
fn unknown_field_names_its_path() {
    let p = Ports::new();
    let bad = edit(&p.good(), "    routes: [api]", "    rutes: [api]");
    assert_refused(&p, &bad, &["listeners[0].rutes", "unknown field `rutes`"]);
}

#[test]
fn unknown_nested_field_names_its_path() {
    let p = Ports::new();
    let bad = edit(&p.good(), "backends: [{ cluster: c }]", "backends: [{ cluster: c, wieght: 3 }]");
    assert_refused(&p, &bad, &["routes[0].backends[0].wieght"]);
}

#[test]
fn dangling_cluster_is_named() {
    let p = Ports::new();
    let bad = edit(&p.good(), "backends: [{ cluster: c }]", "backends: [{ cluster: x }]");
    assert_refused(&p, &bad, &[r#"routes[api].backends[0].cluster: no cluster named "x""#]);
}

#[test]
fn dangling_route_is_named() {
    let p = Ports::new();
    let bad = edit(&p.good(), "routes: [api]", "routes: [api, nope]");
    assert_refused(&p, &bad, &[r#"listeners[in].routes[1]: no route named "nope""#]);
}

#[test]
fn bad_durations_are_named() {
    let p = Ports::new();
    let bad = edit(&p.good(), "timeout: 5s", "timeout: 5");
    assert_refused(&p, &bad, &["routes[0].timeout", "no unit"]);
    let bad = edit(&p.good(), "timeout: 5s", "timeout: 5 parsecs");
    assert_refused(&p, &bad, &["routes[0].timeout"]);
    let bad = edit(&p.good(), "timeout: 5s", "timeout: soon");
    assert_refused(&p, &bad, &["routes[0].timeout"]);
}

#[test]
fn bad_addresses_are_named() {
    let p = Ports::new();
    let bad = edit(&p.good(), &format!("address: \"{}\"", p.listen), "address: \"127.0.0.1\"");
    assert_refused(&p, &bad, &["listeners[in].address", "127.0.0.1"]);
    let bad = edit(&p.good(), &format!("address: \"{}\"", p.listen), "address: \"127.0.0.1:99999\"");
    assert_refused(&p, &bad, &["listeners[in].address"]);
    let bad = edit(&p.good(), "address: \"127.0.0.1:9\"", "address: \"not-an-address\"");
    assert_refused(&p, &bad, &["clusters[c].endpoints[0].address"]);
    let bad = edit(&p.good(), &format!("address: \"{}\" }}", p.admin), "address: \"nowhere\" }");
    assert_refused(&p, &bad, &["admin.address"]);
}

#[test]
fn every_problem_is_reported() {
    let p = Ports::new();
    let bad = edit(&p.good(), "backends: [{ cluster: c }]", "backends: [{ cluster: x }]");
    let bad = edit(&bad, "routes: [api]", "routes: [api, nope]");
    assert_refused(
        &p,
        &bad,
        &[
            r#"routes[api].backends[0].cluster: no cluster named "x""#,
            r#"listeners[in].routes[1]: no route named "nope""#,
        ],
    );
}

#[test]
fn json_config_errors_name_the_same_path() {
    let p = Ports::new();
    let json = format!(
        r#"{{"admin": {{"address": "{}"}}, "listeners": [{{"name": "in", "address": "{}", "rutes": ["api"]}}]}}"#,
        p.admin, p.listen
    );
    assert_refused(&p, &json, &["listeners[0].rutes"]);
}

#[test]
fn unreadable_or_malformed_config_is_exit_2() {
    let (out, _) = run(&["proxy", "--config", "/nonexistent/trellis.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/trellis.yaml"));
    let p = Ports::new();
    assert_refused(&p, "listeners: [\n  - name: in\n", &["YAML"]);
}

/// A valid config whose listener port is taken fails at runtime (exit 1), names the
/// listener, and leaves the admin port free.
#[test]
fn busy_port_is_runtime_failure_naming_the_listener() {
    let p = Ports::new();
    let holder = TcpListener::bind(p.listen).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "busy.yaml", &p.good());
    let (out, _) = run(&["proxy", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("listeners[in].address"), "{stderr}");
    TcpListener::bind(p.admin).unwrap_or_else(|e| panic!("admin {} still bound: {e}", p.admin));
    drop(holder);
}

#[test]
fn validate_without_config_and_unknown_flags_are_usage_errors() {
    let (out, _) = run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let (out, _) = run(&["proxy", "--config", "x.yaml", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let (out, _) = run(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_exits_zero() {
    let (out, _) = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("proxy") && text.contains("validate"), "{text}");
    let (out, _) = run(&["proxy", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
    let (code, _) = trellis(&["validate", "--help"]);
    assert_eq!(code, 0);
}

#[test]
fn schema_describes_the_config_file() {
    let (out, _) = run(&["schema"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "Bootstrap");
    assert_eq!(schema["additionalProperties"], false, "unknown fields are refused, so the schema says so");
    for field in ["node", "admin", "listeners", "routes", "clusters", "policies", "identity", "control_plane"] {
        assert!(schema["properties"].get(field).is_some(), "no {field} in {schema}");
    }
    let listener = &schema["$defs"]["Listener"];
    assert_eq!(listener["required"], serde_json::json!(["name", "address"]));
    assert!(listener["properties"]["header_timeout"]["description"].as_str().unwrap().contains("10s"));
}

//! An HTTP/3 client for the tests: `tests/h3_client.py` on aioquic (pinned in
//! `.ci/requirements.txt`), fed a JSON plan, answering JSON; and the edge config it talks to.

use super::*;
use crate::config::{self, Bootstrap, ClusterProtocol};

/// Whether the HTTP/3 client can run here. On a developer machine without python3 or
/// aioquic the caller skips (printing why); where `TRELLIS_REQUIRE_H3_CLIENT` is set (CI),
/// a missing client fails the test instead.
pub fn h3_client_available(test: &str) -> bool {
    python_module_available(test, "aioquic", "TRELLIS_REQUIRE_H3_CLIENT")
}

/// An HTTP/3 test's frame: runs `body` within `limit`, or skips as [`h3_client_available`]
/// says when the client cannot run here.
pub async fn with_h3_client(test: &str, limit: std::time::Duration, body: impl std::future::Future<Output = ()>) {
    if h3_client_available(test) {
        within(limit, body).await;
    }
}

/// Runs `tests/h3_client.py` on `plan` (see its docstring) and returns its JSON answer.
/// The client is killed if it runs past the plan's timeout per connection plus a margin.
pub async fn h3_client(plan: serde_json::Value) -> serde_json::Value {
    let conns = plan["connections"].as_array().map_or(1, Vec::len) as u64;
    let limit = (plan["timeout"].as_u64().unwrap_or(20) + 5) * conns + 10;
    python_json("h3_client.py", &[], Some(plan.to_string()), limit).await
}

/// A plan for `tests/h3_client.py`: `connections` against `addr` with SNI `sni`, verified
/// against `ca` (or not verified).
pub fn h3_plan(addr: SocketAddr, sni: &str, ca: Option<&Path>, connections: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "host": addr.ip().to_string(),
        "port": addr.port(),
        "sni": sni,
        "ca": ca.map(|p| p.display().to_string()),
        "timeout": 20,
        "connections": connections,
    })
}

/// A bootstrap with one terminating listener `edge` on `listen` serving HTTP/3 too
/// (certificates `certs`), one catch-all route `all` to cluster `app` (`protocol: http2`:
/// h2c upstream, so trailers go both ways), drain timeout 5 s.
pub fn h3_edge(listen: SocketAddr, certs: &[(PathBuf, PathBuf)], app: SocketAddr) -> Bootstrap {
    let mut edge = config::listener("edge", listen, &["all"]);
    edge.tls = Some(config::ListenerTls { http3: true, ..config::terminate(certs) });
    Bootstrap {
        drain_timeout: Some(trellis_api::Duration::from_secs(5)),
        listeners: vec![edge],
        routes: vec![config::route("all", "/", "app")],
        clusters: vec![config::cluster("app", ClusterProtocol::Http2, &[app])],
        ..config::bootstrap()
    }
}

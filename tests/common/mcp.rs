//! MCP for the tests: a real MCP server (`tests/mcp_server.py`, the official Python SDK,
//! Streamable HTTP) and a real MCP client session (`tests/mcp_client.py`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// Whether the MCP SDK can run here (else the test prints why and skips; with
/// `TRELLIS_REQUIRE_MCP` set, as in CI, it fails).
pub fn mcp_sdk_available(test: &str) -> bool {
    python_module_available(test, "mcp", "TRELLIS_REQUIRE_MCP")
}

/// A running `tests/mcp_server.py` (tools search, add, delete_everything, whoami, slow,
/// fail, countdown at `/mcp`), killed on drop.
pub struct McpServer {
    child: Child,
    pub addr: SocketAddr,
}

impl McpServer {
    /// Starts it on a free port, answering in SSE or (`json`) application/json, and waits
    /// until it accepts connections.
    pub async fn start(json: bool) -> McpServer {
        Self::start_with(if json { &["--json"] } else { &[] }).await
    }

    /// Starts it with `mcp_server.py`'s options (`--json`, `--stateless`, `--replica NAME`,
    /// `--broken`).
    pub async fn start_with(options: &[&str]) -> McpServer {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_server.py");
        let mut args = vec![script.to_owned(), addr.port().to_string()];
        args.extend(options.iter().map(|o| (*o).to_owned()));
        let child = Command::new("python3")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run python3 tests/mcp_server.py");
        let mut server = McpServer { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("mcp_server.py exited early: {status}");
            }
            assert!(Instant::now() < deadline, "mcp_server.py not listening in 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an MCP client session against `url`: initialize, tools/list, then tools/call of
/// each tool; returns `tests/mcp_client.py`'s JSON (`server`, `tools`, `calls`, `texts`).
pub async fn mcp_session(url: &str, tools: &[&str]) -> serde_json::Value {
    let mut args = vec!["--kill-after=2".to_owned(), "30".into(), "python3".into()];
    args.push(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_client.py").into());
    args.push(url.into());
    args.extend(tools.iter().map(|t| (*t).to_owned()));
    tokio::task::spawn_blocking(move || {
        let out = Command::new("timeout").args(&args).output().expect("run python3 tests/mcp_client.py");
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap_or_else(|e| {
            panic!("mcp client answered no JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
        })
    })
    .await
    .unwrap()
}

/// A tool server's answer to any call: an empty JSON-RPC result (for origins that stand in
/// for an MCP server).
pub fn empty_tool_result() -> http::Response<Body> {
    http::Response::builder()
        .header("content-type", "application/json")
        .body(full(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#))
        .unwrap()
}

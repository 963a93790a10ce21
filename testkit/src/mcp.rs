//! MCP for the tests: a real MCP server (`tests/mcp_server.py`, the official Python SDK,
//! Streamable HTTP) and a real MCP client session (`tests/mcp_client.py`).

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
        let mut args = vec![test_script("mcp_server.py"), addr.port().to_string()];
        args.extend(options.iter().map(|o| (*o).to_owned()));
        let child = Command::new("python3")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run python3 tests/mcp_server.py");
        let mut server = McpServer { child, addr };
        let mut exited = None;
        let listening = wait_until(Duration::from_secs(20), || {
            exited = exited.or(server.child.try_wait().unwrap());
            let done = exited.is_some();
            async move { done || tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        if let Some(status) = exited {
            panic!("mcp_server.py exited early: {status}");
        }
        assert!(listening, "mcp_server.py not listening in 20s");
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
    let mut args = vec![url];
    args.extend_from_slice(tools);
    python_json("mcp_client.py", &args, None, 30).await
}

/// A tool server's answer to any call: an empty JSON-RPC result (for origins that stand in
/// for an MCP server).
pub fn empty_tool_result() -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(full(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#))
        .unwrap()
}

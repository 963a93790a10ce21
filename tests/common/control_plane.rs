//! A `trellis control-plane` process for end-to-end tests, and its REST helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::process::{Child, Command, Stdio};

/// A running `trellis control-plane`, killed (hard) on drop.
pub struct ControlPlane {
    pub child: Child,
    pub data: std::path::PathBuf,
    pub api: SocketAddr,
    pub xds: SocketAddr,
}

impl ControlPlane {
    pub fn start(data: &std::path::Path, api: SocketAddr, xds: SocketAddr) -> ControlPlane {
        Self::start_with(data, api, xds, &[])
    }

    /// Like [`ControlPlane::start`], with more command-line arguments (e.g. `--xds-tls`).
    pub fn start_with(data: &std::path::Path, api: SocketAddr, xds: SocketAddr, args: &[&str]) -> ControlPlane {
        std::fs::create_dir_all(data).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data.join("control-plane.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .arg("control-plane")
            .arg("--data-dir")
            .arg(data)
            .args(["--api-addr", &api.to_string(), "--xds-addr", &xds.to_string(), "--endpoint-grace", "1s"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Over TLS (`--api-tls`) a listening port is as far as a plain client can tell.
        let tls = args.contains(&"--api-tls");
        let up = || match tls {
            true => std::net::TcpStream::connect(api).is_ok(),
            false => admin_get(api, "/healthz").map(|(s, _)| s == 200).unwrap_or(false),
        };
        while Instant::now() < deadline {
            if up() {
                return ControlPlane { child, data: data.to_owned(), api, xds };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "control plane did not come up: {}",
            std::fs::read_to_string(data.join("control-plane.log")).unwrap_or_default()
        );
    }

    /// What it logged (stderr).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.data.join("control-plane.log")).unwrap_or_default()
    }

    /// `http://` its REST API.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// `http://` its discovery server.
    pub fn xds_url(&self) -> String {
        format!("http://{}", self.xds)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn fresh() -> (ControlPlane, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(dir.path(), listen_addr(), listen_addr());
        (cp, dir)
    }

    pub async fn put(&self, kind: &str, name: &str, body: serde_json::Value) -> Got {
        let mut c = Client::h1(self.api).await;
        let req = Request::put(format!("/v1/{kind}/{name}"))
            .header("content-type", "application/json")
            .body(full(body.to_string()))
            .unwrap();
        c.fetch(req).await
    }

    /// `put` with `Authorization: Bearer TOKEN` (a control plane started with `--token-file`).
    pub async fn put_with_token(&self, token: &str, kind: &str, name: &str, body: serde_json::Value) -> Got {
        let mut c = Client::h1(self.api).await;
        let req = Request::put(format!("/v1/{kind}/{name}"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(full(body.to_string()))
            .unwrap();
        c.fetch(req).await
    }

    /// The bootstrap of a proxy of `service` taking everything from this control plane.
    pub fn bootstrap(&self, id: &str, service: &str) -> String {
        format!(
            "node: {{ id: {id}, service: {service} }}\nadmin: {{ address: \"{{admin}}\" }}\ndrain_timeout: 2s\ncontrol_plane: {{ address: \"http://{}\" }}\n",
            self.xds
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A `trellis control-plane` process for end-to-end tests, and its REST helpers.

use super::*;

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
    /// Waits until `/healthz` answers 200 (over `--api-tls`: until the port accepts).
    pub fn start_with(data: &std::path::Path, api: SocketAddr, xds: SocketAddr, args: &[&str]) -> ControlPlane {
        std::fs::create_dir_all(data).unwrap();
        let log = data.join("control-plane.log");
        let (api_s, xds_s) = (api.to_string(), xds.to_string());
        let mut argv: Vec<&std::ffi::OsStr> = vec!["control-plane".as_ref(), "--data-dir".as_ref(), data.as_os_str()];
        for a in ["--api-addr", &api_s, "--xds-addr", &xds_s, "--endpoint-grace", "1s"]
            .into_iter()
            .chain(args.iter().copied())
        {
            argv.push(a.as_ref());
        }
        let mut child = spawn_trellis(&argv, &log, &[]);
        let tls = args.contains(&"--api-tls");
        wait_ready_or_panic(&mut child, &log, "serving its API", Duration::from_secs(20), || match tls {
            // A listening port is as far as a plain client can tell; the CA it made first
            // tells this control plane from another process that took the port meanwhile.
            true => data.join("ca/ca.pem").exists() && std::net::TcpStream::connect(api).is_ok(),
            false => admin_get(api, "/healthz").is_ok_and(|(s, _)| s == 200),
        });
        ControlPlane { child, data: data.to_owned(), api, xds }
    }

    /// A control plane on `data` with fresh API and discovery ports.
    pub fn start_in(data: &std::path::Path) -> ControlPlane {
        Self::start(data, free_addr(), free_addr())
    }

    /// A typed REST client of its API.
    pub fn client(&self) -> trellis_control_plane::client::Client {
        trellis_control_plane::client::Client::new(&self.api_url(), None).unwrap()
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
        let cp = ControlPlane::start_in(dir.path());
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
        let b = config::discovery_bootstrap(self.xds, id, service);
        config::Bootstrap { drain_timeout: Some(trellis_api::Duration::from_secs(2)), ..b }.yaml()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        end_process(&mut self.child, "control plane", &self.data.join("control-plane.log"));
    }
}

/// The control plane as a library in this process (`trellis_control_plane::start`) on
/// ephemeral ports, its data in a fresh directory; `tune` sets options first.
pub async fn in_process_control_plane(
    tune: impl FnOnce(&mut trellis_control_plane::Options),
) -> (trellis_control_plane::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = trellis_control_plane::Options::new(dir.path().join("data"));
    opts.api_addr = "127.0.0.1:0".parse().unwrap();
    opts.xds_addr = "127.0.0.1:0".parse().unwrap();
    tune(&mut opts);
    (trellis_control_plane::start(opts).await.unwrap(), dir)
}

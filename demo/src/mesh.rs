//! Starting the demo mesh: certificates, the control plane, the resources (through its REST
//! API, as a user would with `trellis ctl apply`), the sidecars and the agent services.

use crate::{DemoError, Options, agents, mcp};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trellis_certs::{Ca, SpiffeId};

const PLANNER_ID: &str = "spiffe://trellis.local/ns/demo/sa/planner";
const TOOLS_ID: &str = "spiffe://trellis.local/ns/demo/sa/tools";

/// Everything the demo started.
pub struct Mesh {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    agents: Vec<tokio::task::JoinHandle<()>>,
    pub planner_app: SocketAddr,
    api: SocketAddr,
    xds: SocketAddr,
    admins: [SocketAddr; 2],
    pub outbound: SocketAddr,
    inbound: SocketAddr,
    /// The OTLP collector the sidecars export spans to, and what it received.
    otlp: SocketAddr,
    pub collector: crate::trace::Collector,
}

/// The default port if it is free, else any free one.
fn port(default: u16) -> Result<SocketAddr, DemoError> {
    let l =
        std::net::TcpListener::bind(("127.0.0.1", default)).or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))?;
    Ok(l.local_addr()?)
}

impl Mesh {
    pub async fn start(opts: &Options) -> Result<Mesh, DemoError> {
        let dir = tempfile::Builder::new().prefix("trellis-demo-").tempdir()?;
        let d = dir.path().to_owned();
        let d = d.as_path();
        let (api, xds) = (port(7070)?, port(7071)?);
        let admins = [port(9901)?, port(9902)?];
        let (outbound, inbound) = (port(4140)?, port(4143)?);
        let (planner_app, tools_app, mcp_app) = (port(8081)?, port(8082)?, port(8083)?);
        let otlp = port(4318)?;

        // The control plane's CA (it would make it on first start) and one SPIFFE identity
        // per service from it: the same identities secure the sidecars' mTLS and their
        // discovery streams (`--xds-tls`).
        let ca_dir = d.join("store").join("ca");
        let ca = Ca::init(&ca_dir, false)?;
        for (name, id) in [("planner", PLANNER_ID), ("tools", TOOLS_ID)] {
            ca.issue(&SpiffeId::parse(id)?, Duration::from_secs(24 * 3600), &[])?.write(d.join(name))?;
        }

        let mut mesh = Mesh {
            dir,
            children: Vec::new(),
            agents: Vec::new(),
            planner_app,
            api,
            xds,
            admins,
            outbound,
            inbound,
            otlp,
            collector: crate::trace::Collector::default(),
        };
        let collector = tokio::net::TcpListener::bind(otlp).await?;
        mesh.agents.push(tokio::spawn(mesh.collector.clone().serve(collector)));
        let log = |name: &str| std::fs::File::create(d.join(format!("{name}.log")));
        let cp = Command::new(&opts.trellis)
            .args(["control-plane", "--data-dir"])
            .arg(d.join("store"))
            .args(["--api-addr", &api.to_string(), "--xds-addr", &xds.to_string(), "--endpoint-grace", "5s"])
            .arg("--xds-tls")
            .stdout(Stdio::null())
            .stderr(log("control-plane")?)
            .spawn()?;
        mesh.children.push(cp);
        wait_http(api, "/healthz").await?;
        mesh.apply_resources(tools_app, mcp_app).await?;

        for (i, (name, service, registers)) in
            [("planner", "planner", false), ("tools", "tools", true)].into_iter().enumerate()
        {
            let bootstrap = serde_json::json!({
                "node": { "id": format!("{name}-0"), "service": service },
                "admin": { "address": admins[i].to_string() },
                "drain_timeout": "5s",
                "identity": {
                    "cert": d.join(format!("{name}.pem")), "key": d.join(format!("{name}.key")),
                    "trust_bundle": ca_dir.join("ca.pem"),
                },
                "control_plane": {
                    "address": format!("https://{xds}"),
                    "inbound_address": registers.then(|| inbound.to_string()),
                },
            });
            let path = d.join(format!("{name}-bootstrap.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(&bootstrap).unwrap_or_default())?;
            let child = Command::new(&opts.trellis)
                .args(["proxy", "--threads", "1", "--config"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(log(name)?)
                .spawn()?;
            mesh.children.push(child);
        }

        let tools = tokio::net::TcpListener::bind(tools_app).await?;
        mesh.agents.push(tokio::spawn(agents::serve(tools, agents::tools)));
        let mcp_tools = tokio::net::TcpListener::bind(mcp_app).await?;
        mesh.agents.push(tokio::spawn(agents::serve(mcp_tools, mcp::server)));
        let planner = tokio::net::TcpListener::bind(planner_app).await?;
        mesh.agents.push(tokio::spawn(agents::serve(planner, move |req| agents::planner(req, outbound))));

        for a in admins {
            wait_http(a, "/ready").await?;
        }
        Ok(mesh)
    }

    /// The mesh's resources, PUT through the REST API like `trellis ctl apply` does.
    async fn apply_resources(&self, tools_app: SocketAddr, mcp_app: SocketAddr) -> Result<(), DemoError> {
        let resources = [
            // Tracing for every proxy of the mesh, from the control plane: spans go to the
            // demo's collector; only requests whose `traceparent` is sampled are traced.
            (
                "telemetry",
                "mesh",
                serde_json::json!({
                    "tracing": {
                        "otlp": { "endpoint": format!("http://{}", self.otlp), "protocol": "http" },
                        "sample_ratio": 0.0,
                    },
                }),
            ),
            (
                "policies",
                "tools-authz",
                serde_json::json!({
                    "default": "deny",
                    "rules": [
                        { "from": [PLANNER_ID], "paths": ["/search", "/run"], "methods": ["GET"] },
                        // MCP: the planner may call search_docs (and list tools), nothing else.
                        { "from": [PLANNER_ID], "paths": ["/mcp"], "mcp": { "tools": [mcp::ALLOWED_TOOL] } },
                    ],
                }),
            ),
            (
                "clusters",
                "tools-app",
                serde_json::json!({
                    "protocol": "http1", "endpoints": [{ "address": tools_app.to_string() }],
                }),
            ),
            ("routes", "tools-local", serde_json::json!({ "backends": [{ "cluster": "tools-app" }] })),
            (
                "clusters",
                "tools-mcp-app",
                serde_json::json!({ "protocol": "http1", "endpoints": [{ "address": mcp_app.to_string() }] }),
            ),
            (
                "routes",
                "tools-mcp",
                serde_json::json!({
                    "match": { "path": "/mcp" }, "backends": [{ "cluster": "tools-mcp-app" }], "mcp": {},
                }),
            ),
            (
                "listeners",
                "tools-inbound",
                serde_json::json!({
                    "service": "tools", "address": self.inbound.to_string(),
                    "tls": { "mode": "mesh" }, "policy": "tools-authz", "routes": ["tools-mcp", "tools-local"],
                }),
            ),
            // Endpoints of `tools` come from the tools sidecar's registration.
            (
                "clusters",
                "tools",
                serde_json::json!({
                    "protocol": "http2", "lb": "peak_ewma",
                    "tls": { "mode": "mesh", "identity": TOOLS_ID },
                    "outlier_detection": { "consecutive_5xx": 5 },
                    "endpoints": [],
                }),
            ),
            (
                "routes",
                "to-tools",
                serde_json::json!({
                    "backends": [{ "cluster": "tools" }],
                    "retry": { "attempts": 2 }, "timeout": "10s", "idle_timeout": "5s",
                }),
            ),
            (
                "listeners",
                "planner-outbound",
                serde_json::json!({
                    "service": "planner", "address": self.outbound.to_string(), "routes": ["to-tools"],
                }),
            ),
        ];
        for (kind, name, body) in resources {
            let (status, text) =
                request(self.api, "PUT", &format!("/v1/{kind}/{name}"), Some(body.to_string())).await?;
            if !(200..300).contains(&status) {
                return Err(DemoError::Setup(format!("PUT /v1/{kind}/{name}: {status} {text}")));
            }
        }
        Ok(())
    }

    pub fn print_guide(&self) {
        let d = self.dir.path().display();
        println!(
            "Trellis demo: a control plane, two sidecars with mTLS between them, two agent services and an MCP tool server."
        );
        println!();
        println!("  planner app  http://{}/plan   (calls tools through its sidecar)", self.planner_app);
        println!("  planner sidecar  outbound {}  admin http://{}", self.outbound, self.admins[0]);
        println!("  tools sidecar    inbound  {} (mTLS)  admin http://{}", self.inbound, self.admins[1]);
        println!("  control plane    REST http://{}  discovery https://{} (mTLS)", self.api, self.xds);
        println!("  OTLP collector   http://{} (in the demo; the sidecars export to it: telemetry/mesh)", self.otlp);
        println!("  files and logs   {d}");
        println!();
        println!("Try:");
        println!("  trellis ctl --server http://{} get routes", self.api);
        println!("  trellis ctl --server http://{} proxies", self.api);
        println!("  curl -s http://{}/clusters", self.admins[0]);
        println!("  curl -s http://{}/metrics | grep trellis_requests_total", self.admins[1]);
        println!("  curl -s http://{}/plan", self.planner_app);
        println!(
            "  curl -s http://{}/mcp -H 'content-type: application/json' -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"{}\"}}}}'",
            self.outbound,
            mcp::DENIED_TOOL
        );
        println!();
        println!("Ctrl-C stops everything.");
    }

    pub fn stop(mut self) {
        for a in &self.agents {
            a.abort();
        }
        // Sidecars first (reverse start order), then the control plane.
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until GET `path` answers 2xx.
async fn wait_http(addr: SocketAddr, path: &str) -> Result<(), DemoError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok((s, _)) = request(addr, "GET", path, None).await
            && (200..300).contains(&s)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DemoError::Setup(format!("http://{addr}{path} did not come up in 20s (logs are in the demo directory)")))
}

async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<String>) -> Result<(u16, String), DemoError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let resp = tx.send_request(req).await.map_err(|e| DemoError::Setup(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| DemoError::Setup(e.to_string()))?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

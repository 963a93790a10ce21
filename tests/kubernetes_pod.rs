//! Injected pods run for real (DESIGN §9–§10): two pods of an injected manifest, each a
//! network namespace, run the `trellis-init` and `trellis-proxy` command lines taken from
//! the injected YAML (env from the downward API filled in as the kubelet would, volumes
//! mapped to directories, the proxy as its `runAsUser`). Each sidecar gets its identity from
//! the control plane with its own service-account token and registers over mTLS; the
//! frontend app's plaintext call to the checkout app's pod IP is captured by its sidecar,
//! crosses the wire as mTLS and is delivered by the checkout sidecar. Root only (CI runs as
//! root); skipped with a message elsewhere.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::*;

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(90);
const APP_PORT: u16 = 8080;

const MANIFEST: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: frontend-0, namespace: shop}
spec:
  serviceAccountName: frontend
  containers: [{name: app, image: registry.example/frontend:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: checkout-0, namespace: shop}
spec:
  serviceAccountName: checkout
  containers: [{name: app, image: registry.example/checkout:1, ports: [{containerPort: 8080}]}]
";

/// The kubelet's part for one container: its argv, and its env with the downward API
/// filled in from `pod`.
fn command_line(container: &Value, pod: &Value, ip: &str, binary: &Path) -> (Vec<String>, Vec<(String, String)>) {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().map(|s| s.as_str().unwrap().to_owned()).collect()
    };
    let mut argv = strings(&container["command"]);
    argv.extend(strings(&container["args"]));
    assert_eq!(argv[0], "trellis", "{argv:?}");
    argv[0] = binary.display().to_string();
    let env = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                None => e["value"].as_str().unwrap().to_owned(),
                Some("metadata.name") => pod["metadata"]["name"].as_str().unwrap().to_owned(),
                Some("metadata.namespace") => pod["metadata"]["namespace"].as_str().unwrap().to_owned(),
                Some("spec.serviceAccountName") => pod["spec"]["serviceAccountName"].as_str().unwrap().to_owned(),
                Some("status.podIP") => ip.to_owned(),
                Some(other) => panic!("unexpected downward API field {other}"),
            };
            (name, value)
        })
        .collect();
    (argv, env)
}

/// One injected pod running: its sidecar's files and log.
struct RunningPod {
    ns: String,
    run: tempfile::TempDir,
    creds: tempfile::TempDir,
    log: PathBuf,
}

impl RunningPod {
    fn logs(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    fn admin(&self, path: &str) -> std::io::Result<(u16, String)> {
        in_ns(&self.ns, || admin_get("127.0.0.1:9901".parse().unwrap(), path))
    }
}

/// Runs `trellis-init`, then the proxy, of the injected `pod` in network namespace `at`.
fn start_pod(net: &Net, at: &Pod, injected: &Value, token: &str, ca_pem: &str) -> RunningPod {
    let spec = &injected["spec"];
    let init = &spec["initContainers"][0];
    let proxy = &spec["initContainers"][1];
    assert_eq!((init["name"].as_str(), proxy["name"].as_str()), (Some("trellis-init"), Some("trellis-proxy")));
    let ip = at.ip.to_string();

    // trellis-init: proxy-init as root, as its securityContext says.
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    let (argv, _) = command_line(init, injected, &ip, net.binary());
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    let (code, out, err) = net.trellis(&at.ns, &args);
    assert_eq!(code, 0, "trellis-init {args:?}: {out}{err}");
    assert!(net.nat_rules(&at.ns).contains("TRELLIS_OUTPUT"), "{}", net.nat_rules(&at.ns));

    // The volumes: the emptyDir the proxy writes, the projected token and trust bundle.
    let run = world_readable_dir();
    std::os::unix::fs::chown(run.path(), Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    let creds = world_readable_dir();
    std::fs::write(creds.path().join("token"), token).unwrap();
    std::fs::write(creds.path().join("ca.pem"), ca_pem).unwrap();
    let mounts: Vec<(String, PathBuf)> = proxy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let dir = match m["name"].as_str().unwrap() {
                "trellis-run" => run.path(),
                "trellis-credentials" => creds.path(),
                other => panic!("unexpected mount {other}"),
            };
            (m["mountPath"].as_str().unwrap().to_owned(), dir.to_owned())
        })
        .collect();
    let (argv, mut env) = command_line(proxy, injected, &ip, net.binary());
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| mounts.iter().fold(a, |a, (path, dir)| a.replace(path.as_str(), &dir.display().to_string())))
        .collect();
    // The credentials volume is mounted where the proxy looks by default.
    let creds_mount = mounts.iter().find(|(p, _)| p == trellis_kube::pod::CREDENTIALS_DIR).expect("credentials mount");
    env.push(("TRELLIS_CREDENTIALS_DIR".into(), creds_mount.1.display().to_string()));
    env.push(("TRELLIS_LOG".into(), "info,trellis_proxy=debug".into()));

    // The proxy as its runAsUser, with that env only.
    let uid = proxy["securityContext"]["runAsUser"].as_u64().unwrap().to_string();
    assert_eq!(uid, PROXY_UID.to_string());
    let mut args: Vec<String> = vec!["-i".into()];
    args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    args.extend(["setpriv", "--reuid", &uid, "--regid", &uid, "--clear-groups"].map(str::to_owned));
    args.extend(argv);
    let log = run.path().join("proxy.log");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net.spawn(&at.ns, Path::new("/usr/bin/env"), &args, &log);
    RunningPod { ns: at.ns.clone(), run, creds, log }
}

/// A tiny HTTP/1.1 app: answers every request with where the connection came from.
fn app(ns: &str, port: u16) -> tokio::task::JoinHandle<()> {
    tcp_server_in(ns, port, |mut s: tokio::net::TcpStream, peer: SocketAddr| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let body = serde_json::json!({ "origin": "checkout-app", "peer": peer.ip().to_string() }).to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(answer.as_bytes()).await;
    })
}

/// `GET /` to `to` from inside `ns`: the status and body, or why not.
async fn get_from(ns: &str, to: SocketAddr) -> Result<(u16, String), String> {
    let attempt = async {
        let s = connect_in(ns, to).await.map_err(|e| e.to_string())?;
        let mut c = Client::over(s, to, false).await;
        let resp = c.send(http::Request::get("/").body(full("")).unwrap()).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(3), attempt).await.map_err(|_| "timed out".to_owned())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pods_get_their_identity_from_their_token_and_their_traffic_is_captured() {
    let Some(net) = Net::create(2) else { return };
    within(LIMIT, async {
        let (a, b) = (&net.pods[0], &net.pods[1]);
        // The control plane, as `trellis install` runs it (JWKS from a file here).
        let data = world_readable_dir();
        let d = data.path().join("data");
        let (code, err) = trellis(&["certs", "init", "--dir", d.join("ca").to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let cluster = Signer::ec("cluster-key");
        let keys = data.path().join("jwks.json");
        std::fs::write(&keys, jwks(&[&cluster])).unwrap();
        let admin_token = data.path().join("admin.token");
        std::fs::write(&admin_token, "admin-only").unwrap();
        let (api, xds) = (SocketAddr::from((net.wire_ip, 7070)), SocketAddr::from((net.wire_ip, 7071)));
        let cp_log = data.path().join("control-plane.log");
        let args = [
            "control-plane".to_owned(),
            format!("--data-dir={}", d.display()),
            format!("--api-addr={api}"),
            format!("--xds-addr={xds}"),
            "--api-tls".into(),
            "--xds-tls".into(),
            format!("--token-file={}", admin_token.display()),
            format!("--workload-jwks={}", keys.display()),
            "--endpoint-grace=1s".into(),
        ];
        net.spawn(&net.wire, net.binary(), &args.iter().map(String::as_str).collect::<Vec<_>>(), &cp_log);
        let deadline = Instant::now() + Duration::from_secs(20);
        while blocking(|| in_ns(&net.wire, || std::net::TcpStream::connect(api))).is_err() {
            assert!(
                Instant::now() < deadline,
                "control plane: {}",
                std::fs::read_to_string(&cp_log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The manifest, injected by the CLI, pointed at this control plane.
        let ca = trellis_certs::Ca::cert_path(d.join("ca"));
        let manifest = data.path().join("pods.yaml");
        std::fs::write(&manifest, MANIFEST).unwrap();
        let out = trellis_command()
            .args(["inject", "-f", manifest.to_str().unwrap(), "--trust-bundle", ca.to_str().unwrap()])
            .args(["--control-plane", &net.wire_ip.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let pods: Vec<Value> = trellis_kube::documents::parse(&String::from_utf8(out.stdout).unwrap())
            .unwrap()
            .into_iter()
            .filter_map(|d| d.value)
            .collect();
        let ca_pem = std::fs::read_to_string(&ca).unwrap();

        let _checkout_app = app(&b.ns, APP_PORT);
        let frontend = start_pod(&net, a, &pods[0], &cluster.token("shop", "frontend", AUDIENCE, 600), &ca_pem);
        let checkout = start_pod(&net, b, &pods[1], &cluster.token("shop", "checkout", AUDIENCE, 600), &ca_pem);
        for p in [&frontend, &checkout] {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !blocking(|| p.admin("/ready")).is_ok_and(|(s, _)| s == 200) {
                assert!(Instant::now() < deadline, "{} not ready: {}", p.ns, p.logs());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Each identity is its pod's service account, signed on the strength of its token.
        for (p, sa) in [(&frontend, "frontend"), (&checkout, "checkout")] {
            let info = trellis_certs::inspect_file(p.run.path().join("id.pem")).unwrap();
            assert_eq!(info[0].spiffe_id.as_ref().unwrap().as_str(), format!("spiffe://trellis.local/ns/shop/sa/{sa}"));
        }

        // The frontend app calls the checkout pod's IP in plaintext; once its sidecar has
        // heard of the checkout sidecar, the call goes over mTLS and the checkout sidecar
        // hands it to the app from 127.0.0.1.
        let deadline = Instant::now() + Duration::from_secs(20);
        let body = loop {
            match get_from(&a.ns, b.addr(APP_PORT)).await {
                Ok((200, body)) => break body,
                other => assert!(
                    Instant::now() < deadline,
                    "never reached the checkout app through the mesh ({other:?}):\n{}\n{}",
                    frontend.logs(),
                    checkout.logs()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let j: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((j["origin"].as_str(), j["peer"].as_str()), (Some("checkout-app"), Some("127.0.0.1")), "{j}");
        let metrics = blocking(|| frontend.admin("/metrics")).unwrap().1;
        let mesh = [("listener", "outbound"), ("mesh", "true")];
        assert!(
            metric_value(&metrics, "trellis_transparent_connections_total", &[mesh[0], ("protocol", "http"), mesh[1]])
                .is_some_and(|v| v >= 1.0),
            "{metrics}"
        );
        let metrics = blocking(|| checkout.admin("/metrics")).unwrap().1;
        assert!(
            metric_value(&metrics, "trellis_downstream_connections_total", &[("listener", "inbound")])
                .is_some_and(|v| v >= 1.0),
            "{metrics}"
        );

        // From outside the mesh, the checkout app's port is captured by the mTLS-only
        // inbound listener; the proxy's admin port is not (the kubelet probes it).
        assert!(!matches!(get_from(&net.wire, b.addr(APP_PORT)).await, Ok((200, _))), "plaintext reached the app");
        let ready = blocking(|| in_ns(&net.wire, || admin_get(b.addr(9901), "/ready")));
        assert_eq!(ready.map(|(s, _)| s).ok(), Some(200));
    })
    .await;
}

//! Sidecars in pods (DESIGN §9), for real: network namespaces joined by veth pairs, each
//! "pod" with an app, `trellis proxy-init`'s iptables redirect, and `trellis proxy` running
//! as UID 2102. Apps talk to each other's addresses as if no proxy were there; the tests
//! check from outside the proxies what crossed the wire (raw frames on the wire namespace),
//! what the apps saw, the access logs and the metrics. They need root, `ip netns` and
//! iptables (CI has them) and print SKIPPED elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{
    self, Bootstrap, ClusterProtocol, Identity, Listener, ListenerTls, ListenerTlsMode, OutboundPolicy, Policy,
    PolicyDefault, PolicyRule, Yaml,
};
use trellis_testkit::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const FRONTEND: &str = "spiffe://trellis.local/ns/default/sa/frontend";
const CHECKOUT: &str = "spiffe://trellis.local/ns/default/sa/checkout";
const LIMIT: Duration = Duration::from_secs(60);
const APP: u16 = 8080;
const ECHO: u16 = 7000;
/// Not in the default opaque ports: detection has to time out for the banner to arrive.
const BANNER: u16 = 2525;
const SKIPPED: u16 = 9000;

/// Identities from one CA, in files the proxies (UID 2102) can read.
struct Identities {
    dir: tempfile::TempDir,
    ca: trellis_certs::Ca,
    bundle: PathBuf,
}

impl Identities {
    fn new() -> Identities {
        ring_provider();
        let dir = world_readable_dir();
        let ca = trellis_certs::Ca::generate().unwrap();
        let bundle = dir.path().join("ca.pem");
        std::fs::write(&bundle, ca.cert_pem()).unwrap();
        Identities { dir, ca, bundle }
    }

    /// Identities of the control plane's CA (in `data/ca`).
    fn of_control_plane(data: &Path) -> Identities {
        ring_provider();
        let dir = world_readable_dir();
        let ca = trellis_certs::Ca::load(data.join("ca")).unwrap();
        let bundle = dir.path().join("ca.pem");
        std::fs::copy(trellis_certs::Ca::cert_path(data.join("ca")), &bundle).unwrap();
        Identities { dir, ca, bundle }
    }

    /// The bootstrap's identity `id`, issued to files named `name`.
    fn identity(&self, name: &str, id: &str) -> Identity {
        let prefix = self.dir.path().join(name);
        issue_to(&self.ca, id, &[], &prefix);
        let (cert, key) = pem_key(&prefix);
        give_to_proxy(&[&cert, &key]);
        config::identity(&cert, &key, &self.bundle)
    }
}

/// An access log file the proxy (UID 2102) can write.
fn access_log(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}-access.log"));
    std::fs::write(&path, "").unwrap();
    give_to_proxy(&[&path]);
    path
}

/// A pod's sidecar: transparent outbound on 127.0.0.1:4140 (`outbound_policy` for
/// destinations outside the mesh), and transparent inbound on 0.0.0.0:4143 with TLS
/// `inbound_tls` and policy `callers` (see [`callers`]).
fn sidecar(
    identity: Identity,
    log: &Path,
    outbound_policy: Option<OutboundPolicy>,
    inbound_tls: ListenerTlsMode,
) -> Bootstrap {
    let outbound = Listener {
        transparent: true,
        detect_timeout: Some(config::ms(300)),
        outbound_policy,
        ..config::listener("outbound", "127.0.0.1:4140".parse().unwrap(), &[])
    };
    let inbound = Listener {
        transparent: true,
        tls: Some(ListenerTls { mode: inbound_tls, ..Default::default() }),
        policy: Some("callers".into()),
        ..config::listener("inbound", "0.0.0.0:4143".parse().unwrap(), &[])
    };
    Bootstrap {
        drain_timeout: Some(config::ms(1000)),
        access_log: Some(config::AccessLog { path: log.display().to_string() }),
        identity: Some(identity),
        listeners: vec![outbound, inbound],
        policies: vec![callers()],
        ..config::bootstrap()
    }
}

/// The policy every test's inbound side uses: the mesh's workloads, and anyone on /public/*.
fn callers() -> Policy {
    let workloads = PolicyRule { from: vec!["spiffe://trellis.local/ns/default/*".into()], ..Default::default() };
    let public = PolicyRule { paths: vec!["/public/*".into()], ..Default::default() };
    Policy { name: "callers".into(), default: PolicyDefault::Deny, rules: vec![workloads, public] }
}

/// A sidecar that also has a cluster naming the pod at `addr` as a mesh endpoint with `identity`.
fn with_mesh_endpoint(mut sidecar: Bootstrap, name: &str, addr: SocketAddr, identity: &str) -> Bootstrap {
    let mut cluster = config::cluster(name, ClusterProtocol::default(), &[addr]);
    cluster.endpoints[0].identity = Some(identity.into());
    sidecar.clusters.push(cluster);
    sidecar
}

/// The apps of the "checkout" pod: an HTTP/1.1-only JSON echo on 8080, a TCP echo on 7000,
/// a server-first banner service on 2525 (greets, then echoes), and on 9000 (a port the
/// pods skip) a TCP echo that first says who connected.
fn checkout_apps(pod: &Pod, tag: &str) -> Vec<tokio::task::JoinHandle<()>> {
    let app = Origin::serve_with(
        listen_in(&pod.ns, SocketAddr::from(([0, 0, 0, 0], APP))),
        |req| echo_answer("checkout-app", req),
        true,
    );
    let banner = format!("220 trellis-banner-{tag}\r\n");
    vec![
        tokio::spawn(async move {
            let _app = app;
            std::future::pending::<()>().await
        }),
        tcp_server_in(&pod.ns, ECHO, |mut s, _| async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }),
        tcp_server_in(&pod.ns, BANNER, move |mut s, _| {
            let banner = banner.clone();
            async move {
                if s.write_all(banner.as_bytes()).await.is_ok() {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            }
        }),
        tcp_server_in(&pod.ns, SKIPPED, |mut s, peer| async move {
            if s.write_all(format!("peer {}\n", peer.ip()).as_bytes()).await.is_ok() {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        }),
    ]
}

/// Writes `msg` on a connection made from `ns` to `to` and reads back as many bytes.
async fn echo_from(ns: &str, to: SocketAddr, msg: &str) -> Result<String, String> {
    let mut s = connect_in(ns, to).await.map_err(|e| e.to_string())?;
    let work = async {
        s.write_all(msg.as_bytes()).await?;
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())
}

/// What a connection from `ns` to `to` reads before the other side closes it (5 s at most),
/// after writing `msg`.
async fn answer_before_close(ns: &str, to: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = connect_in(ns, to).await.map_err(|e| e.to_string())?;
    let _ = s.write_all(msg).await;
    let mut got = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await {
        Ok(_) => Ok(got),
        Err(_) => Err("still open after 5 s".into()),
    }
}

/// Access-log lines (JSON) of `log` satisfying `pick`, waiting up to 5 s for `n` of them.
async fn log_lines(log: &Path, n: usize, pick: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|l| pick(l))
            .collect();
        if lines.len() >= n || std::time::Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two pods, each app unaware of any proxy: HTTP, opaque TCP and a server-first protocol
/// cross between them over mTLS (no plaintext on the wire), the inbound side logs the
/// caller's SPIFFE ID, a skipped port bypasses both proxies, and nothing loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_talk_through_their_sidecars_over_mtls() {
    let Some(net) = Net::create(2) else { return };
    within(LIMIT, async {
        let (a, b) = (&net.pods[0], &net.pods[1]);
        let tag = format!("{:08x}", fastrand::u32(..));
        let _apps = checkout_apps(b, &tag);
        let ids = Identities::new();
        let (a_log, b_log) = (access_log(ids.dir.path(), "frontend"), access_log(ids.dir.path(), "checkout"));
        let fe = sidecar(ids.identity("frontend", FRONTEND), &a_log, None, ListenerTlsMode::Mesh);
        let frontend = net.start_proxy(a, &with_mesh_endpoint(fe, "checkout", b.addr(APP), CHECKOUT).yaml());
        let co = sidecar(ids.identity("checkout", CHECKOUT), &b_log, None, ListenerTlsMode::Mesh);
        let checkout = net.start_proxy(b, &co.yaml());
        net.proxy_init(a, &["--skip-outbound-ports", &SKIPPED.to_string()]);
        net.proxy_init(b, &["--skip-inbound-ports", &SKIPPED.to_string()]);
        let wire = Capture::start(&net);

        // HTTP/1.1 from the frontend's app to the checkout pod's address: it reaches the
        // HTTP/1.1-only app as HTTP/1.1, through both sidecars, over mTLS.
        let mut c = client_in(&a.ns, b.addr(APP), false).await;
        let got = c.get(&format!("/api/marker-{tag}")).await;
        assert_eq!(got.status, 200, "{}\n{}", got.text(), frontend.logs());
        let j = got.json();
        assert_eq!((j["origin"].as_str(), j["version"].as_str()), (Some("checkout-app"), Some("HTTP/1.1")), "{j}");
        assert_eq!(j["headers"]["x-forwarded-proto"], "https", "the inbound sidecar took it over TLS: {j}");

        // Opaque TCP, and a protocol where the server speaks first: detection times out and
        // the banner comes through, over the same mTLS.
        let echoed = echo_from(&a.ns, b.addr(ECHO), &format!("opaque-{tag}")).await;
        assert_eq!(echoed, Ok(format!("opaque-{tag}")), "{}", frontend.logs());
        let s = connect_in(&a.ns, b.addr(BANNER)).await.unwrap();
        let mut lines = BufReader::new(s);
        let mut banner = String::new();
        tokio::time::timeout(Duration::from_secs(5), lines.read_line(&mut banner))
            .await
            .expect("banner in time")
            .unwrap();
        assert_eq!(banner, format!("220 trellis-banner-{tag}\r\n"));
        lines.get_mut().write_all(format!("QUIT-{tag}\n").as_bytes()).await.unwrap();
        let mut bye = String::new();
        lines.read_line(&mut bye).await.unwrap();
        assert_eq!(bye, format!("QUIT-{tag}\n"));
        drop(lines);

        // The skipped port: straight from app to app, the checkout app sees the frontend's
        // own address (through a proxy it would see 127.0.0.1).
        let mut s = connect_in(&a.ns, b.addr(SKIPPED)).await.unwrap();
        let mut who = vec![0u8; format!("peer {}\n", a.ip).len()];
        s.read_exact(&mut who).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&who), format!("peer {}\n", a.ip));
        s.write_all(format!("skip-{tag}").as_bytes()).await.unwrap();
        let mut back = vec![0u8; 13];
        s.read_exact(&mut back).await.unwrap();
        drop(s);

        // Straight to the outbound listener itself: refused, logged, counted (no loop).
        let refused = answer_before_close(&a.ns, "127.0.0.1:4140".parse().unwrap(), b"hello\r\n").await;
        assert_eq!(refused, Ok(Vec::new()), "closed without an answer");
        assert!(frontend.wait_log("its original destination is this listener", secs(3)).await, "{}", frontend.logs());
        let loops =
            wait_metric(&frontend, "trellis_transparent_refused_total", &[("reason", "loop")], |v| v >= 1.0, secs(3));
        assert_eq!(loops.await, Some(1.0));

        // On the wire: the skipped port's plaintext (the capture sees payloads), TLS
        // records, and none of what the apps sent or received through the sidecars.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen = wire.stop();
        assert!(holds(&seen, format!("skip-{tag}").as_bytes()), "the capture sees plaintext ({} bytes)", seen.len());
        assert!(holds(&seen, &[0x17, 0x03, 0x03]), "TLS application data records");
        for secret in
            [format!("marker-{tag}"), format!("opaque-{tag}"), format!("trellis-banner-{tag}"), format!("QUIT-{tag}")]
        {
            assert!(!holds(&seen, secret.as_bytes()), "{secret:?} crossed the wire in plaintext");
        }

        // The inbound sidecar names the caller: the HTTP request and both TCP connections.
        let http = log_lines(&b_log, 1, |l| l["path"] == format!("/api/marker-{tag}")).await;
        assert_eq!(http.len(), 1, "{:?}", std::fs::read_to_string(&b_log));
        assert_eq!((http[0]["peer_id"].as_str(), http[0]["listener"].as_str()), (Some(FRONTEND), Some("inbound")));
        assert_eq!(http[0]["protocol"], "HTTP/2", "h2 between the sidecars: {}", http[0]);
        let tcp = log_lines(&b_log, 2, |l| l["protocol"] == "TCP").await;
        assert_eq!(tcp.len(), 2, "{tcp:?}");
        for l in &tcp {
            assert_eq!((l["peer_id"].as_str(), l["cluster"].as_str()), (Some(FRONTEND), Some("passthrough")), "{l}");
        }

        // What the proxies counted: at the frontend, one HTTP and two opaque connections to
        // a mesh destination, and exactly the four the app opened (with the refused one):
        // its own upstream connections were not redirected back into it.
        let out = |protocol| [("listener", "outbound"), ("protocol", protocol), ("mesh", "true")];
        assert_eq!(frontend.metric("trellis_transparent_connections_total", &out("http")), Some(1.0));
        assert_eq!(frontend.metric("trellis_transparent_connections_total", &out("opaque")), Some(2.0));
        let accepted = |p: &PodProxy, l| p.metric("trellis_downstream_connections_total", &[("listener", l)]);
        assert_eq!(accepted(&frontend, "outbound"), Some(4.0), "{}", frontend.metrics());
        assert_eq!(accepted(&checkout, "inbound"), Some(3.0), "one h2 connection and two opaque ones");
        assert_eq!(accepted(&frontend, "inbound"), Some(0.0), "nothing came in to the frontend pod");
    })
    .await;
}

/// Sidecars that register with the control plane (over mTLS) are mesh destinations for
/// each other with their identities: no endpoint is written anywhere, and the call is
/// mTLS end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_sidecars_are_mesh_destinations() {
    let Some(net) = Net::create(2) else { return };
    within(LIMIT, async {
        let (a, b) = (&net.pods[0], &net.pods[1]);
        let data = world_readable_dir();
        let (api, xds) = (SocketAddr::from((net.wire_ip, 7070)), SocketAddr::from((net.wire_ip, 7071)));
        let cp_log = data.path().join("control-plane.log");
        let d = data.path().join("data");
        net.spawn(
            &net.wire,
            net.binary(),
            &[
                "control-plane",
                "--data-dir",
                &d.to_string_lossy(),
                "--api-addr",
                &api.to_string(),
                "--xds-addr",
                &xds.to_string(),
                "--xds-tls",
                "--endpoint-grace",
                "1s",
            ],
            &cp_log,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !blocking(|| in_ns(&net.wire, || admin_get(api, "/healthz"))).is_ok_and(|(s, _)| s == 200) {
            assert!(
                std::time::Instant::now() < deadline,
                "control plane: {}",
                std::fs::read_to_string(&cp_log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ids = Identities::of_control_plane(&d);
        let tag = format!("{:08x}", fastrand::u32(..));
        let _apps = checkout_apps(b, &tag);
        let b_log = access_log(ids.dir.path(), "checkout");
        let a_log = access_log(ids.dir.path(), "frontend");
        let registered = |service: &str, id: &str, log: &Path, pod: &Pod| {
            Bootstrap {
                node: config::Node { id: format!("{service}-0"), service: Some(service.into()), zone: None },
                control_plane: Some(config::ControlPlaneConfig {
                    inbound_address: Some(pod.addr(4143).to_string()),
                    ..config::control_plane(&[format!("https://{xds}")])
                }),
                ..sidecar(ids.identity(service, id), log, None, ListenerTlsMode::Mesh)
            }
            .yaml()
        };
        net.proxy_init(a, &[]);
        net.proxy_init(b, &[]);
        let frontend = net.spawn_proxy(a, &registered("frontend", FRONTEND, &a_log, a));
        let checkout = net.spawn_proxy(b, &registered("checkout", CHECKOUT, &b_log, b));
        for p in [&frontend, &checkout] {
            assert!(p.ready_within(Duration::from_secs(15)).await, "{}: {}", p.ns, p.logs());
        }

        // Until the frontend's sidecar hears of the checkout one, the call goes out as
        // plaintext and the checkout's mesh inbound refuses it; then it goes over mTLS.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let got = loop {
            let attempt = async {
                let s = connect_in(&a.ns, b.addr(APP)).await.ok()?;
                let mut c = Client::over(s, b.addr(APP), false).await;
                let resp =
                    c.send(http::Request::get(format!("/api/registered-{tag}")).body(full("")).unwrap()).await.ok()?;
                let status = resp.status();
                let body = http_body_util::BodyExt::collect(resp.into_body()).await.ok()?.to_bytes();
                Some((status, body))
            };
            match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                Ok(Some((status, body))) if status == 200 => break body,
                _ => {}
            }
            assert!(std::time::Instant::now() < deadline, "never reached checkout over the mesh:\n{}", frontend.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let j: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(j["origin"], "checkout-app", "{j}");
        let line = log_lines(&b_log, 1, |l| l["path"] == format!("/api/registered-{tag}")).await;
        assert_eq!(line.first().and_then(|l| l["peer_id"].as_str()), Some(FRONTEND), "{line:?}");
        let mesh = [("listener", "outbound"), ("protocol", "http"), ("mesh", "true")];
        assert!(frontend.metric("trellis_transparent_connections_total", &mesh).is_some_and(|v| v >= 1.0));
        // The opaque echo goes over the registered identity too.
        assert_eq!(echo_from(&a.ns, b.addr(ECHO), "registered-echo").await, Ok("registered-echo".into()));
        let tcp = log_lines(&b_log, 1, |l| l["protocol"] == "TCP").await;
        assert_eq!(tcp.first().and_then(|l| l["peer_id"].as_str()), Some(FRONTEND), "{tcp:?}");
    })
    .await;
}

/// `outbound_policy: registry_only` closes (and counts) connections to a destination
/// outside the mesh and lets mesh ones through; `allow_any` passes the outside one through
/// unchanged. A `permissive` inbound side takes a plaintext caller without a sidecar (with
/// no identity for the policy: /public/* only), counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_only_refuses_outside_destinations_and_permissive_takes_plaintext() {
    let Some(net) = Net::create(3) else { return };
    within(LIMIT, async {
        let (a, b, c) = (&net.pods[0], &net.pods[1], &net.pods[2]);
        let tag = format!("{:08x}", fastrand::u32(..));
        let _apps = checkout_apps(b, &tag);
        // The outside pod: no sidecar, a TCP echo that says who connected.
        let _outside = tcp_server_in(&c.ns, ECHO, |mut s, peer| async move {
            if s.write_all(format!("peer {}\n", peer.ip()).as_bytes()).await.is_ok() {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let ids = Identities::new();
        let (a_log, b_log) = (access_log(ids.dir.path(), "frontend"), access_log(ids.dir.path(), "checkout"));
        let strict = sidecar(
            ids.identity("frontend", FRONTEND),
            &a_log,
            Some(OutboundPolicy::RegistryOnly),
            ListenerTlsMode::Mesh,
        );
        let strict = with_mesh_endpoint(strict, "checkout", b.addr(APP), CHECKOUT);
        let frontend = net.start_proxy(a, &strict.yaml());
        let permissive = sidecar(ids.identity("checkout", CHECKOUT), &b_log, None, ListenerTlsMode::Permissive);
        let _checkout = net.start_proxy(b, &permissive.yaml());
        net.proxy_init(a, &[]);
        net.proxy_init(b, &[]);

        // Outside the registry: closed at once, logged, counted.
        assert_eq!(answer_before_close(&a.ns, c.addr(ECHO), b"hello\n").await, Ok(Vec::new()));
        let refused = [("listener", "outbound"), ("reason", "registry_only")];
        assert_eq!(
            wait_metric(&frontend, "trellis_transparent_refused_total", &refused, |v| v >= 1.0, secs(3)).await,
            Some(1.0)
        );
        assert!(frontend.wait_log("destination outside the mesh registry", secs(3)).await);
        // In the mesh: through.
        let got = client_in(&a.ns, b.addr(APP), false).await.get("/api/in-mesh").await;
        assert_eq!(got.status, 200, "{}", got.text());

        // allow_any: the outside destination gets the connection as the app made it (its
        // echo sees the frontend pod's own address: plaintext, not through a sidecar).
        let mut open = strict.clone();
        open.listeners[0].outbound_policy = Some(OutboundPolicy::AllowAny);
        frontend.reload(&open.yaml()).await;
        let mut s = connect_in(&a.ns, c.addr(ECHO)).await.unwrap();
        let mut who = vec![0u8; format!("peer {}\n", a.ip).len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut who)).await.expect("answer").unwrap();
        assert_eq!(String::from_utf8_lossy(&who), format!("peer {}\n", a.ip));
        let out = [("listener", "outbound"), ("protocol", "opaque"), ("mesh", "false")];
        assert_eq!(
            wait_metric(&frontend, "trellis_transparent_connections_total", &out, |v| v >= 1.0, secs(3)).await,
            Some(1.0)
        );

        // Permissive: the outside pod calls checkout in plaintext. No identity: /public/*
        // is allowed, the rest is 403; both connections are counted as plaintext.
        let got = client_in(&c.ns, b.addr(APP), false).await.get("/public/menu").await;
        assert_eq!(got.status, 200, "{}", got.text());
        let got = client_in(&c.ns, b.addr(APP), false).await.get("/api/orders").await;
        assert_eq!(got.status, 403, "{}", got.text());
        let plain = _checkout.metric("trellis_inbound_plaintext_total", &[("listener", "inbound")]);
        assert_eq!(plain, Some(2.0), "{}", _checkout.metrics());
        let line = log_lines(&b_log, 1, |l| l["path"] == "/public/menu").await;
        assert_eq!(line.first().map(|l| (l["peer_id"].is_null(), l["status"].as_u64())), Some((true, Some(200))));
        // The frontend still comes in over mTLS, with its identity.
        let got = client_in(&a.ns, b.addr(APP), false).await.get("/api/mtls").await;
        assert_eq!(got.status, 200, "{}", got.text());
        let line = log_lines(&b_log, 1, |l| l["path"] == "/api/mtls").await;
        assert_eq!(line.first().and_then(|l| l["peer_id"].as_str()), Some(FRONTEND));
    })
    .await;
}

/// proxy-init in a pod: bad values exit 2 naming the flag and change nothing, a missing
/// CAP_NET_ADMIN exits 1 saying so, a second run leaves one set of rules, `--simulate`
/// changes nothing, `--cleanup` removes everything (twice is fine), for iptables-nft and
/// iptables-legacy, IPv4 and IPv6.
#[tokio::test]
async fn proxy_init_rules_in_a_pod() {
    let Some(net) = Net::create(1) else { return };
    let pod = &net.pods[0].ns;
    let pristine = net.nat_rules(pod);
    let run = |args: &[&str]| {
        let mut all = vec!["proxy-init"];
        all.extend_from_slice(args);
        net.trellis(pod, &all)
    };
    for (args, flag) in [
        (&["--inbound-port", "70000"][..], "--inbound-port"),
        (&["--outbound-port", "0"], "--outbound-port"),
        (&["--skip-inbound-ports", "22,abc"], "--skip-inbound-ports"),
        (&["--skip-outbound-ports", "9000-80"], "--skip-outbound-ports"),
        (&["--skip-subnets", "10.0.0.0/33"], "--skip-subnets"),
        (&["--skip-subnets", "10.0.0/8"], "--skip-subnets"),
        (&["--skip-subnets", "fd00::/8"], "--skip-subnets"),
        (&["--inbound-port", "4140"], "--outbound-port"),
        (&["--proxy-uid", "root"], "--proxy-uid"),
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: the message names {flag}: {err}");
        assert_eq!(net.nat_rules(pod), pristine, "{args:?} changed nothing");
    }
    // Without CAP_NET_ADMIN: as root with the capability dropped, and as the proxy's UID.
    let bin = net.binary().to_string_lossy().into_owned();
    let uid = PROXY_UID.to_string();
    for prefix in [
        vec!["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"],
        vec!["setpriv", "--reuid", &uid, "--regid", &uid, "--clear-groups"],
    ] {
        let mut args: Vec<&str> = prefix[1..].to_vec();
        args.extend([bin.as_str(), "proxy-init"]);
        let out = net.exec(pod, prefix[0], &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{prefix:?}: {err}");
        assert!(err.contains("CAP_NET_ADMIN"), "{prefix:?}: {err}");
        assert_eq!(net.nat_rules(pod), pristine, "{prefix:?} changed nothing");
    }
    // --simulate prints the rules and changes nothing.
    let (code, out, _) = run(&["--simulate", "--skip-inbound-ports", "22"]);
    assert_eq!(code, 0);
    assert!(out.contains("-A TRELLIS_INBOUND -p tcp -m multiport --dports 22 "), "{out}");
    assert_eq!(net.nat_rules(pod), pristine);

    for mode in ["nft", "legacy"] {
        let save = if mode == "nft" { "iptables-nft-save" } else { "iptables-legacy-save" };
        let ours = || {
            let out = net.exec(pod, save, &["-t", "nat"]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("TRELLIS"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let args = ["--iptables-mode", mode, "--skip-subnets", "10.96.0.0/12", "--skip-outbound-ports", "5432"];
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{mode}: {err}");
        let once = ours();
        assert_eq!(once.len(), 10, "{mode}: {once:#?}");
        assert_eq!(once.iter().filter(|l| l.starts_with("-A PREROUTING")).count(), 1);
        assert!(once.iter().any(|l| l.contains("--uid-owner 2102")), "{once:#?}");
        // Again (auto finds the backend holding the rules): one set.
        let (code, _, err) = run(&["--skip-subnets", "10.96.0.0/12", "--skip-outbound-ports", "5432"]);
        assert_eq!(code, 0, "{mode}: {err}");
        assert!(err.contains(&format!("iptables-{mode}")), "{mode}: auto took the backend with the rules: {err}");
        assert_eq!(ours(), once, "{mode}: a second run leaves one set");
        let (code, _, err) = run(&["--cleanup"]);
        assert_eq!(code, 0, "{mode}: {err}");
        assert!(ours().is_empty(), "{mode}: {:#?}", ours());
        let (code, _, err) = run(&["--cleanup", "--iptables-mode", mode]);
        assert_eq!((code, err.contains("no rules to remove")), (0, true), "{mode}: {err}");
    }
    // IPv6 too.
    let (code, _, err) = run(&["--ipv6", "--skip-subnets", "fd00::/8,10.0.0.0/8"]);
    assert_eq!(code, 0, "{err}");
    let v6 = String::from_utf8_lossy(&net.exec(pod, "ip6tables-save", &["-t", "nat"]).stdout).into_owned();
    assert!(v6.contains("-d fd00::/8") && v6.contains("TRELLIS_OUTPUT") && !v6.contains("10.0.0.0/8"), "{v6}");
    let (code, _, err) = run(&["--cleanup", "--ipv6"]);
    assert_eq!(code, 0, "{err}");
    let v6 = String::from_utf8_lossy(&net.exec(pod, "ip6tables-save", &["-t", "nat"]).stdout).into_owned();
    assert!(!v6.contains("TRELLIS"), "{v6}");
}

/// A connection addressed to a transparent listener itself (no redirect: its original
/// destination is the listener) is an explicit client: served by the listener's routes,
/// or, without routes, refused with a log line and counted (following it would loop). On
/// loopback, without namespaces: runs anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transparent_listener_addressed_directly_serves_its_routes_or_refuses() {
    within(LIMIT, async {
        let app = Origin::echo("app").await;
        let (routed, bare) = (listen_addr(), listen_addr());
        let mut b = config::simple(routed, app.addr, config::ClusterProtocol::Http1);
        b.listeners[0].transparent = true;
        b.listeners.push(config::Listener { transparent: true, ..config::listener("bare", bare, &[]) });
        let proxy = Proxy::start(&b.yaml());
        let got = Client::h1(routed).await.get("/explicit").await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["origin"], "app");

        let mut s = tokio::net::TcpStream::connect(bare).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(secs(5), s.read_to_end(&mut buf)).await;
        // Closed (a FIN, or a reset since the request was left unread), without an answer.
        assert!(read.is_ok() && buf.is_empty(), "closed without an answer: {:?}", String::from_utf8_lossy(&buf));
        assert!(
            wait_log(&proxy, "its original destination is this listener", secs(3)).await,
            "{}",
            log_tail(&proxy, 10)
        );
        let refused = wait_metric(
            &proxy,
            "trellis_transparent_refused_total",
            &[("listener", "bare"), ("reason", "loop")],
            |v| v >= 1.0,
            secs(3),
        );
        assert_eq!(refused.await, Some(1.0));
    })
    .await;
}

/// Bad values are refused before anything is looked at, even where these tests cannot
/// make namespaces (not root): exit 2, the flag named. (`--simulate` changes nothing.)
#[test]
fn proxy_init_refuses_bad_values_anywhere() {
    for (args, flag) in [
        (&["proxy-init", "--simulate", "--inbound-port", "65536"][..], "--inbound-port"),
        (&["proxy-init", "--simulate", "--skip-subnets", "300.0.0.0/8"], "--skip-subnets"),
        (&["proxy-init", "--simulate", "--skip-outbound-ports", "1,,2"], "--skip-outbound-ports"),
    ] {
        let (code, err) = trellis(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let out = trellis_command().args(["proxy-init", "--simulate", "--cleanup"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("-X TRELLIS_OUTPUT"), "{text}");
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

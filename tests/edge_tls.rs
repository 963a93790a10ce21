//! Edge TLS and certificates end to end (DESIGN §4) against the real binary: terminating
//! listeners pick certificates by SNI (checked with rustls and `openssl s_client`), offer h2
//! by ALPN and honour `min_version`; `tls` clusters verify the origin's name against their
//! trust bundle; and the `trellis certs` command line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{self, ClusterProtocol, Yaml};
use trellis_testkit::mesh::secs;
use trellis_testkit::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use trellis_certs::Ca;

const EDGE_DEFAULT: &str = "spiffe://trellis.local/ns/edge/sa/default";
const EDGE_A: &str = "spiffe://trellis.local/ns/edge/sa/a";
const EDGE_WILD: &str = "spiffe://trellis.local/ns/edge/sa/wild-b";

/// Terminating listeners `(name, address, certificates, min_version)` in front of an echo
/// app (cluster protocol `auto`: HTTP/2 upstream for HTTP/2 clients).
/// A terminating listener: name, address, certificate (cert, key) files, min_version.
type EdgeListener<'a> = (&'a str, SocketAddr, &'a [(PathBuf, PathBuf)], Option<&'a str>);

fn edge_config(listeners: &[EdgeListener<'_>], app: SocketAddr) -> String {
    let mut b = config::bootstrap();
    b.drain_timeout = Some(config::ms(1000));
    for (name, addr, certs, min) in listeners {
        let mut l = config::listener(name, *addr, &["all"]);
        l.tls = Some(config::ListenerTls { min_version: min.map(str::to_owned), ..config::terminate(certs) });
        b.listeners.push(l);
    }
    b.routes.push(config::route("all", "/", "app"));
    b.clusters.push(config::cluster("app", ClusterProtocol::Auto, &[app]));
    b.yaml()
}

/// A client trusting `roots` (or anything, when `None`), offering `alpn`.
fn edge_client(roots: Option<&Path>, tls12_only: bool, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    tls_client_config(&TlsClientOpts {
        identity: None,
        roots: roots.map(Path::to_path_buf),
        tls12_only,
        alpn: alpn.iter().map(|p| p.to_vec()).collect(),
    })
}

const H1: &[&[u8]] = &[b"http/1.1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_min_version() {
    within(Duration::from_secs(30), async {
        let pki = Pki::new();
        let cert = pki.issue("edge", EDGE_DEFAULT, &["edge.test"]);
        let certs = [cert];
        let app = Origin::echo("app").await;
        let (l12, l13, ldef) = (listen_addr(), listen_addr(), listen_addr());
        let proxy = Proxy::start(&edge_config(
            &[
                ("edge12", l12, &certs, Some("1.2")),
                ("edge13", l13, &certs, Some("1.3")),
                ("edgedef", ldef, &certs, None),
            ],
            app.addr,
        ));
        let tls12 = edge_client(Some(&pki.bundle()), true, H1);
        let tls13 = edge_client(Some(&pki.bundle()), false, H1);

        for addr in [l12, ldef] {
            let (got, seen) = tls_fetch(addr, tls12.clone(), "edge.test", "GET", "/x").await.unwrap();
            assert_eq!(got.status, 200);
            assert_eq!(seen.version, Some(rustls::ProtocolVersion::TLSv1_2));
            assert_eq!(got.json()["headers"]["x-forwarded-proto"], "https");
        }
        let r = tls_fetch(l13, tls12, "edge.test", "GET", "/x").await;
        assert!(r.is_err(), "TLS 1.2 accepted by min_version 1.3: {:?}", r.map(|(g, s)| (g.status, s.version)));
        let v =
            wait_metric(&proxy, "trellis_tls_handshake_errors_total", &[("listener", "edge13")], |v| v >= 1.0, secs(2))
                .await;
        assert_eq!(v, Some(1.0), "{}", blocking(|| proxy.metrics()));

        for addr in [l12, l13, ldef] {
            let (got, seen) = tls_fetch(addr, tls13.clone(), "edge.test", "GET", "/x").await.unwrap();
            assert_eq!(got.status, 200);
            assert_eq!(seen.version, Some(rustls::ProtocolVersion::TLSv1_3));
        }
    })
    .await;
}

/// `openssl s_client -servername NAME` (or `-noservername`) against `addr`: the subject and
/// the subjectAltName extension of the certificate the server sent.
fn openssl_server_cert(addr: SocketAddr, servername: Option<&str>, scratch: &Path) -> (String, String) {
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "openssl", "s_client", "-connect", &addr.to_string()]);
    match servername {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd.stdin(Stdio::null()).output().expect("run openssl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let begin = stdout.find("-----BEGIN CERTIFICATE-----");
    let end = stdout.find("-----END CERTIFICATE-----");
    let (Some(b), Some(e)) = (begin, end) else {
        panic!("no certificate from openssl s_client: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    };
    let pem = &stdout[b..e + "-----END CERTIFICATE-----".len()];
    let file = scratch.join(format!("openssl-{}.pem", servername.unwrap_or("none")));
    std::fs::write(&file, format!("{pem}\n")).unwrap();
    let subject = stdout.lines().find(|l| l.starts_with("subject=")).unwrap_or_default().to_owned();
    let x509 = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&file)
        .output()
        .expect("run openssl x509");
    (subject, String::from_utf8_lossy(&x509.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_certificate() {
    within(Duration::from_secs(40), async {
        let pki = Pki::new();
        let default = pki.issue("default", EDGE_DEFAULT, &["default.example.com", "127.0.0.1"]);
        let a = pki.issue("a", EDGE_A, &["a.example.com"]);
        let wild = pki.issue("wild", EDGE_WILD, &["*.b.example.com"]);
        let certs = [default.clone(), a.clone(), wild.clone()];
        let app = Origin::echo("app").await;
        let edge = listen_addr();
        let proxy = Proxy::start(&edge_config(&[("edge", edge, &certs, None)], app.addr));

        // Verified against the CA: the name must match the certificate picked.
        let verified = edge_client(Some(&pki.bundle()), false, H1);
        for (name, id, dns) in [
            ("a.example.com", EDGE_A, "a.example.com"),
            ("x.b.example.com", EDGE_WILD, "*.b.example.com"),
            ("127.0.0.1", EDGE_DEFAULT, "default.example.com"),
        ] {
            let (got, seen) = tls_fetch(edge, verified.clone(), name, "GET", "/sni").await.unwrap();
            assert_eq!(got.status, 200, "{name}");
            assert_eq!(seen.leaf.spiffe_id.as_ref().map(|i| i.as_str()), Some(id), "{name}");
            assert!(seen.leaf.dns_names.iter().any(|d| d == dns), "{name}: {:?}", seen.leaf.dns_names);
        }
        // Names without a certificate get the first one (the wildcard covers one label only).
        let any = edge_client(None, false, H1);
        for name in ["other.example.org", "b.example.com", "y.x.b.example.com", "example.com"] {
            let (got, seen) = tls_fetch(edge, any.clone(), name, "GET", "/sni").await.unwrap();
            assert_eq!(got.status, 200, "{name}");
            assert_eq!(seen.leaf.spiffe_id.as_ref().map(|i| i.as_str()), Some(EDGE_DEFAULT), "{name}");
        }

        // The same through OpenSSL.
        let scratch = pki.path("openssl");
        std::fs::create_dir_all(&scratch).unwrap();
        for (servername, id, dns) in [
            (Some("x.b.example.com"), EDGE_WILD, "DNS:*.b.example.com"),
            (Some("a.example.com"), EDGE_A, "DNS:a.example.com"),
            (None, EDGE_DEFAULT, "DNS:default.example.com"),
        ] {
            let (subject, san) = blocking(|| openssl_server_cert(edge, servername, &scratch));
            assert!(subject.contains(id), "{servername:?}: {subject}");
            assert!(san.contains(dns) && san.contains(&format!("URI:{id}")), "{servername:?}: {san}");
        }

        // The listener's earliest certificate expiry is exported.
        let earliest = [&default, &a, &wild]
            .iter()
            .map(|(c, _)| trellis_certs::inspect_file(c).unwrap()[0].not_after)
            .min()
            .unwrap();
        let v = metric_value(
            &blocking(|| proxy.metrics()),
            "trellis_tls_cert_expiry_timestamp_seconds",
            &[("cert", "listener:edge")],
        );
        assert_eq!(v.map(|v| v as i64), Some(earliest));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_through_a_terminating_listener() {
    within(Duration::from_secs(30), async {
        let pki = Pki::new();
        let certs = [pki.issue("edge", EDGE_DEFAULT, &["edge.test"])];
        let app = Origin::echo("app").await;
        let edge = listen_addr();
        let _proxy = Proxy::start(&edge_config(&[("edge", edge, &certs, None)], app.addr));

        let h2 = edge_client(Some(&pki.bundle()), false, &[b"h2", b"http/1.1"]);
        let mut conn = TlsConn::open(edge, h2, "edge.test").await.unwrap();
        assert_eq!(conn.seen.alpn.as_deref(), Some(&b"h2"[..]));
        for i in 0..3 {
            let got = conn.get(&format!("/h2/{i}")).await.unwrap();
            assert_eq!(got.status, 200);
            let j = got.json();
            // The cluster is `protocol: auto` and nothing says the app speaks h2: it is
            // spoken to in HTTP/1.1 (DESIGN §11).
            assert_eq!(j["version"], "HTTP/1.1", "{j}");
            assert_eq!(j["path"], format!("/h2/{i}"));
        }
        // HTTP/1.1 by ALPN, and with no ALPN at all.
        for alpn in [H1, &[][..]] {
            let c = edge_client(Some(&pki.bundle()), false, alpn);
            let (got, seen) = tls_fetch(edge, c, "edge.test", "GET", "/h1").await.unwrap();
            assert_eq!(got.status, 200);
            assert_eq!(got.json()["version"], "HTTP/1.1");
            assert_eq!(seen.alpn.as_deref(), alpn.first().copied());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_verifies_the_origin_name() {
    within(Duration::from_secs(30), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("origin", "spiffe://trellis.local/ns/default/sa/origin", &["origin.test"]);
        let (origin, snis) = tls_echo_origin("tls-origin", &cert, &key).await;
        let other = Ca::generate().unwrap();
        let other_bundle = pki.path("other-ca.pem");
        std::fs::write(&other_bundle, other.cert_pem()).unwrap();
        let bundle = pki.bundle();

        let listen = listen_addr();
        let o = origin.addr;
        let cluster = |name: &str, proto: ClusterProtocol, sni: Option<&str>, bundle: &Path| config::Cluster {
            tls: Some(config::origin_tls(sni, bundle)),
            ..config::cluster(name, proto, &[o])
        };
        let names = ["good", "good2", "wrong", "nosni", "untrusted"];
        let routes = names.iter().map(|n| config::route(n, &format!("/{n}/"), n)).collect();
        let clusters = vec![
            cluster("good", ClusterProtocol::Http1, Some("origin.test"), &bundle),
            cluster("good2", ClusterProtocol::Http2, Some("origin.test"), &bundle),
            cluster("wrong", ClusterProtocol::Http1, Some("wrong.test"), &bundle),
            cluster("nosni", ClusterProtocol::Http1, None, &bundle),
            cluster("untrusted", ClusterProtocol::Http1, Some("origin.test"), &other_bundle),
        ];
        let _proxy = Proxy::start(&config::serving(listen, routes, clusters).yaml());

        let mut c = Client::h1(listen).await;
        for (path, version) in [("/good/x", "HTTP/1.1"), ("/good2/x", "HTTP/2.0")] {
            let got = c.get(path).await;
            assert_eq!(got.status, 200, "{path}: {}", got.text());
            let j = got.json();
            assert_eq!(j["origin"], "tls-origin");
            assert_eq!(j["version"], version, "{path}");
        }
        for path in ["/wrong/x", "/nosni/x", "/untrusted/x"] {
            let got = c.get(path).await;
            assert_eq!(got.status, 502, "{path}: {}", got.text());
            assert_eq!(got.header("x-trellis-error"), Some("upstream tls failure"), "{path}: {}", got.text());
        }
        let snis = snis.lock().unwrap().clone();
        assert!(!snis.is_empty());
        assert!(snis.iter().all(|s| s.as_deref() == Some("origin.test")), "{snis:?}");
    })
    .await;
}

/// Runs `trellis ARGS…`; returns (exit code, stdout, stderr).
fn trellis_out(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_cli_init_issue_inspect() {
    within(Duration::from_secs(40), async {
        ring_provider();
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).display().to_string();
        let ca = p("ca");

        let (code, out, err) = trellis_out(&["certs", "init", "--dir", &ca]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("created root CA") && out.contains(&format!("{ca}/ca.pem")), "{out}");
        assert_eq!(mode(Path::new(&format!("{ca}/ca.key"))), 0o600);
        let (code, _, err) = trellis_out(&["certs", "init", "--dir", &ca]);
        assert_eq!(code, 1, "a second init must refuse: {err}");
        assert!(err.contains("already exists") && err.contains("--force"), "{err}");

        for (sa, prefix) in [("checkout", p("out/checkout")), ("frontend", p("out/frontend"))] {
            let id = format!("spiffe://trellis.local/ns/default/sa/{sa}");
            let (code, out, err) = trellis_out(&[
                "certs",
                "issue",
                "--dir",
                &ca,
                "--id",
                &id,
                "--out",
                &prefix,
                "--dns",
                &format!("{sa}.svc"),
            ]);
            assert_eq!(code, 0, "{err}");
            assert!(out.contains(&format!("issued {id}")), "{out}");
            assert_eq!(mode(Path::new(&format!("{prefix}.key"))), 0o600);

            let (code, out, err) = trellis_out(&["certs", "inspect", &format!("{prefix}.pem")]);
            assert_eq!(code, 0, "{err}");
            assert!(out.contains(&format!("spiffe id:   {id}")), "{out}");
            assert!(out.contains(&format!("dns names:   {sa}.svc")), "{out}");
            assert!(out.contains("(leaf)") && out.contains("(CA)"), "leaf then CA: {out}");
        }
        let (code, out, _) = trellis_out(&["certs", "inspect", &format!("{ca}/ca.pem")]);
        assert_eq!(code, 0);
        assert!(out.contains("is ca:       yes") && out.contains("spiffe id:   -"), "{out}");

        // Bad input: clap rejects a bad --id (exit 2); a missing CA or file is exit 1.
        let (code, _, err) = trellis_out(&["certs", "issue", "--dir", &ca, "--id", "not-an-id", "--out", &p("x")]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--id") && err.contains("spiffe://"), "{err}");
        let (code, _, err) = trellis_out(&[
            "certs",
            "issue",
            "--dir",
            &p("no-such-ca"),
            "--id",
            "spiffe://trellis.local/ns/default/sa/x",
            "--out",
            &p("x"),
        ]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("no CA in") && err.contains("trellis certs init"), "{err}");
        assert!(!Path::new(&p("x.pem")).exists());
        let (code, _, err) = trellis_out(&["certs", "inspect", &p("missing.pem")]);
        assert_eq!(code, 1);
        assert!(err.contains("missing.pem"), "{err}");

        // What the CLI issued works as mesh identities.
        let app = Origin::echo("app").await;
        let mesh = listen_addr();
        let c = p("out/checkout");
        let identity = config::identity(
            Path::new(&format!("{c}.pem")),
            Path::new(&format!("{c}.key")),
            &Path::new(&ca).join("ca.pem"),
        );
        let mut b = config::Bootstrap { identity: Some(identity), ..config::bootstrap() };
        b.listeners.push(config::Listener {
            tls: Some(config::mesh_tls()),
            policy: Some("fe".into()),
            ..config::listener("mesh", mesh, &["all"])
        });
        b.routes.push(config::route("all", "/", "app"));
        b.clusters.push(config::cluster("app", ClusterProtocol::default(), &[app.addr]));
        b.policies.push(config::allow_from("fe", &["spiffe://trellis.local/ns/default/sa/frontend"]));
        let yaml = b.yaml();
        let _proxy = Proxy::start(&yaml);
        let client = tls_client_config(&TlsClientOpts {
            identity: Some(pem_key(Path::new(&p("out/frontend")))),
            alpn: H1.iter().map(|a| a.to_vec()).collect(),
            ..Default::default()
        });
        let (got, seen) = tls_fetch(mesh, client, "checkout", "GET", "/any").await.unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(
            seen.leaf.spiffe_id.as_ref().map(|i| i.as_str()),
            Some("spiffe://trellis.local/ns/default/sa/checkout")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_certificate_rotation_applies_to_new_handshakes() {
    within(Duration::from_secs(30), async {
        let pki = Pki::new();
        let default = pki.issue("default", EDGE_DEFAULT, &["default.example.com"]);
        let a = pki.issue("a", EDGE_A, &["a.example.com"]);
        let certs = [default.clone(), a.clone()];
        let app = Origin::echo("app").await;
        let edge = listen_addr();
        let proxy = Proxy::start(&edge_config(&[("edge", edge, &certs, None)], app.addr));
        let client = edge_client(Some(&pki.bundle()), false, H1);
        let leaf_of = |name: &'static str| {
            let client = client.clone();
            async move { TlsConn::open(edge, client, name).await.map(|c| c.seen.leaf.sha256) }
        };
        let old_a = trellis_certs::inspect_file(&a.0).unwrap().remove(0).sha256;
        let old_default = trellis_certs::inspect_file(&default.0).unwrap().remove(0).sha256;
        assert_eq!(leaf_of("a.example.com").await.unwrap(), old_a);
        let mut established = TlsConn::open(edge, client.clone(), "a.example.com").await.unwrap();

        // Replace a.example.com's key, then its certificate.
        let id = trellis_certs::SpiffeId::parse(EDGE_A).unwrap();
        let next = pki.ca.issue(&id, secs(7200), &["a.example.com".to_owned()]).unwrap();
        let new_a = trellis_certs::inspect(next.cert_pem.as_bytes()).unwrap();
        replace_file(&a.1, next.key_pem.as_bytes());
        replace_file(&a.0, next.cert_pem.as_bytes());
        let rotated = std::time::Instant::now();
        let mut seen = String::new();
        while rotated.elapsed() < secs(3) {
            seen = leaf_of("a.example.com").await.unwrap();
            if seen == new_a.sha256 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(seen, new_a.sha256, "{}", log_tail(&proxy, 10));
        assert!(rotated.elapsed() <= secs(2), "took {:?}", rotated.elapsed());
        assert_eq!(leaf_of("default.example.com").await.unwrap(), old_default);
        let got = established.get("/still").await.unwrap();
        assert_eq!(got.status, 200);
        let v = metric_value(
            &blocking(|| proxy.metrics()),
            "trellis_tls_cert_expiry_timestamp_seconds",
            &[("cert", "listener:edge")],
        );
        let default_expiry = trellis_certs::inspect_file(&default.0).unwrap()[0].not_after;
        assert_eq!(v.map(|v| v as i64), Some(default_expiry.min(new_a.not_after)));
    })
    .await;
}

/// A TLS origin that speaks one HTTP version, chosen by its ALPN list: `h2` only (hyper's
/// HTTP/2 server, nothing else), `http/1.1` only, or no ALPN at all (HTTP/1.1). Records the
/// protocol each handshake selected; aborted on drop.
struct AlpnOrigin {
    addr: SocketAddr,
    selected: Arc<std::sync::Mutex<Vec<Option<Vec<u8>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AlpnOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AlpnOrigin {
    async fn start(name: &'static str, cert: &Path, key: &Path, alpn: &[&[u8]]) -> AlpnOrigin {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let h2_only = alpn == [b"h2"];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls(cert, key, alpn)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let selected: Arc<std::sync::Mutex<Vec<Option<Vec<u8>>>>> = Arc::default();
        let seen = selected.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(secs(5), acceptor.accept(stream)).await else { return };
                    seen.lock().unwrap().push(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
                    let svc = hyper::service::service_fn(move |req| async move {
                        Ok::<_, std::convert::Infallible>(echo_answer(name, req).await)
                    });
                    let io = TokioIo::new(tls);
                    if h2_only {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                    }
                });
            }
        });
        AlpnOrigin { addr, selected, task }
    }

    fn handshakes(&self) -> Vec<Option<Vec<u8>>> {
        self.selected.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_tls_cluster_learns_the_upstream_version_by_alpn() {
    within(secs(40), async {
        let pki = Pki::new();
        let (cert, key) = pki.issue("origin", "spiffe://trellis.local/ns/default/sa/origin", &["origin.test"]);
        let h2_app = AlpnOrigin::start("h2-only", &cert, &key, &[b"h2"]).await;
        let h1_app = AlpnOrigin::start("h1-only", &cert, &key, &[b"http/1.1"]).await;
        let no_alpn = AlpnOrigin::start("no-alpn", &cert, &key, &[]).await;
        let burst_app = AlpnOrigin::start("burst", &cert, &key, &[b"h2"]).await;
        let bundle = pki.bundle();

        let listen = listen_addr();
        let cluster = |name: &str, addr: SocketAddr| config::Cluster {
            tls: Some(config::origin_tls(Some("origin.test"), &bundle)),
            ..config::cluster(name, ClusterProtocol::Auto, &[addr])
        };
        let names = ["h2app", "h1app", "noalpn"];
        let routes = names.iter().chain(&["burst"]).map(|n| config::route(n, &format!("/{n}/"), n)).collect();
        let clusters = vec![
            cluster("h2app", h2_app.addr),
            cluster("h1app", h1_app.addr),
            cluster("noalpn", no_alpn.addr),
            cluster("burst", burst_app.addr),
        ];
        let proxy = Proxy::start(&config::serving(listen, routes, clusters).yaml());

        // Before any request nothing is known.
        let view = |proxy: &Proxy| {
            let (status, body) = admin_get(proxy.admin, "/clusters").unwrap();
            assert_eq!(status, 200);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let alpn_of = |name: &str| {
                let list = v.as_array().or_else(|| v["clusters"].as_array()).expect("cluster list");
                let c = list.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name} in {v}"));
                c["endpoints"][0]["alpn"].as_str().unwrap_or("null").to_owned()
            };
            names.map(alpn_of)
        };
        assert_eq!(view(&proxy), ["unknown", "unknown", "unknown"]);

        // h2 and HTTP/1.1 clients, one after the other, then many at once on one h2 client.
        for h2_client in [false, true] {
            let mut c = if h2_client { Client::h2(listen).await } else { Client::h1(listen).await };
            for (path, origin, version) in [
                ("/h2app/a", "h2-only", "HTTP/2.0"),
                ("/h1app/a", "h1-only", "HTTP/1.1"),
                ("/noalpn/a", "no-alpn", "HTTP/1.1"),
            ] {
                let got = c.get(path).await;
                assert_eq!(got.status, 200, "{path} (h2 client: {h2_client}): {}\n{}", got.text(), proxy.logs());
                let j = got.json();
                assert_eq!(j["origin"], origin, "{j}");
                assert_eq!(j["version"], version, "{path} (h2 client: {h2_client}): {j}");
                assert_eq!(j["path"], path);
            }
        }
        assert_eq!(view(&proxy), ["h2", "http/1.1", "http/1.1"]);

        // The h2 upstream is multiplexed: 20 concurrent requests ride the one connection
        // its first request opened (with both versions offered; the upstream chose h2).
        let c = Client::h2(listen).await;
        let many: Vec<_> = (0..20)
            .map(|i| {
                let mut c = c.clone_h2();
                tokio::spawn(async move { c.get(&format!("/h2app/m{i}")).await })
            })
            .collect();
        for t in many {
            let got = t.await.unwrap();
            assert_eq!(got.status, 200, "{}", got.text());
            assert_eq!(got.json()["version"], "HTTP/2.0");
        }
        // A burst of first requests to an endpoint not yet known: one connection learns,
        // the others wait for it and share it.
        let many: Vec<_> = (0..20)
            .map(|i| {
                let mut c = c.clone_h2();
                tokio::spawn(async move { c.get(&format!("/burst/b{i}")).await })
            })
            .collect();
        for t in many {
            let got = t.await.unwrap();
            assert_eq!(got.status, 200, "{}", got.text());
            assert_eq!(got.json()["version"], "HTTP/2.0");
        }
        assert_eq!(burst_app.handshakes(), vec![Some(b"h2".to_vec())], "a burst opens one connection");
        let h2_handshakes = h2_app.handshakes();
        assert_eq!(h2_handshakes, vec![Some(b"h2".to_vec())], "one connection, h2 selected");
        // The HTTP/1.1 upstreams never saw h2: one connection each, pooled (the
        // requests above were sequential).
        assert!(
            h1_app.handshakes().iter().all(|p| p.as_deref() == Some(&b"http/1.1"[..])),
            "{:?}",
            h1_app.handshakes()
        );
        assert!(no_alpn.handshakes().iter().all(Option::is_none), "{:?}", no_alpn.handshakes());
    })
    .await;
}

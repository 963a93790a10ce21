//! `trellis ctl` against an in-process control plane: apply (created / configured /
//! unchanged, dependency order, errors naming the document), get, delete, proxies, through
//! the CLI's own argument types (`trellis::cli`); `binary_*` tests run the real `trellis ctl`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::{CommandFactory, Parser};
use trellis::cli::{Cli, Cmd};
use trellis::ctl_cmd;
use trellis_control_plane::Running;
use trellis_control_plane::client::Client;
use trellis_control_plane::{Kind, Options};
use trellis_testkit::{ControlPlane, free_addr, in_process_control_plane, trellis_command};

const MANIFEST: &str = "\
kind: Listener
name: out
address: 127.0.0.1:4140
routes: [all]
---
kind: Route
name: all
backends: [{cluster: web}]
---
kind: Cluster
name: web
endpoints: [{address: \"127.0.0.1:8080\"}]
";

async fn start() -> (Running, tempfile::TempDir) {
    in_process_control_plane(|_: &mut Options| {}).await
}

/// Runs `trellis ctl ARGS` through the module (on a blocking thread: it has its own runtime).
async fn ctl(server: &Running, args: &[&str]) -> anyhow::Result<()> {
    let mut argv =
        vec!["trellis".to_string(), "ctl".into(), "--server".into(), format!("http://{}", server.api_addr())];
    argv.extend(args.iter().map(|s| s.to_string()));
    let Cmd::Ctl(parsed) = Cli::try_parse_from(argv).unwrap().cmd else { panic!("not ctl") };
    tokio::task::spawn_blocking(move || ctl_cmd::run(parsed)).await.unwrap()
}

#[test]
fn cli_definitions_are_consistent() {
    Cli::command().debug_assert();
    let Cmd::ControlPlane(cp) = Cli::try_parse_from(["trellis", "control-plane", "--data-dir", "/tmp/x"]).unwrap().cmd
    else {
        panic!("not control-plane")
    };
    assert_eq!(cp.api_addr.to_string(), "127.0.0.1:7070");
    assert_eq!(cp.xds_addr.to_string(), "127.0.0.1:7071");
    assert_eq!(cp.endpoint_grace, std::time::Duration::from_secs(10));
    assert!(Cli::try_parse_from(["trellis", "control-plane", "--data-dir", "x", "--endpoint-grace", "10"]).is_err());
    let Cmd::Ctl(ctl) = Cli::try_parse_from(["trellis", "ctl", "get", "cluster", "web", "-o", "json"]).unwrap().cmd
    else {
        panic!("not ctl")
    };
    assert!(matches!(ctl.cmd, ctl_cmd::CtlCmd::Get { kind: Kind::Cluster, .. }));
    assert!(Cli::try_parse_from(["trellis", "ctl", "get", "gateways"]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_delete() {
    let (cp, dir) = start().await;
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let f = file.to_str().unwrap();
    // Listed listener-first, applied cluster-first: references resolve.
    ctl(&cp, &["apply", "-f", f]).await.unwrap();
    let client = Client::new(&format!("http://{}", cp.api_addr()), None).unwrap();
    let web = client.get(Kind::Cluster, "web").await.unwrap().expect("applied");
    let v1 = client.send(http::Method::GET, "/v1/clusters/web", None, &[]).await.unwrap().etag();

    // Again: unchanged, nothing written.
    ctl(&cp, &["apply", "-f", f]).await.unwrap();
    let v2 = client.send(http::Method::GET, "/v1/clusters/web", None, &[]).await.unwrap().etag();
    assert_eq!(v1, v2);

    std::fs::write(&file, MANIFEST.replace("8080", "8081")).unwrap();
    ctl(&cp, &["apply", "-f", f]).await.unwrap();
    let changed = client.get(Kind::Cluster, "web").await.unwrap().unwrap();
    assert_ne!(changed, web);

    ctl(&cp, &["get", "clusters"]).await.unwrap();
    ctl(&cp, &["get", "route", "all", "-o", "json"]).await.unwrap();
    ctl(&cp, &["proxies"]).await.unwrap();
    let missing = ctl(&cp, &["get", "clusters", "nope"]).await.unwrap_err();
    assert!(format!("{missing:#}").contains("no cluster named \"nope\""), "{missing:#}");

    let refused = ctl(&cp, &["delete", "cluster", "web"]).await.unwrap_err();
    assert!(format!("{refused:#}").contains("routes[all].backends[0].cluster"), "{refused:#}");
    ctl(&cp, &["delete", "listener", "out"]).await.unwrap();
    assert!(client.get(Kind::Listener, "out").await.unwrap().is_none());
    cp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_names_the_bad_document_and_writes_nothing() {
    let (cp, dir) = start().await;
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, MANIFEST.replace("backends: [{cluster: web}]", "backends: [{cluster: web, wieght: 1}]"))
        .unwrap();
    let err = ctl(&cp, &["apply", "-f", file.to_str().unwrap()]).await.unwrap_err();
    assert!(format!("{err:#}").contains("document 2: Route all: backends[0].wieght"), "{err:#}");
    let client = Client::new(&format!("http://{}", cp.api_addr()), None).unwrap();
    assert!(client.list(Kind::Cluster).await.unwrap().is_empty());

    // A server-side refusal carries the server's message.
    std::fs::write(&file, "kind: Route\nname: r\nbackends: [{cluster: ghost}]\n").unwrap();
    let err = ctl(&cp, &["apply", "-f", file.to_str().unwrap()]).await.unwrap_err();
    assert!(format!("{err:#}").contains("no cluster named \"ghost\""), "{err:#}");
    cp.stop().await.unwrap();
}

/// A `trellis control-plane` process with a token (and `extra` arguments), serving:
/// the process, its directory and the token file.
fn control_plane_process(extra: &[&str]) -> (ControlPlane, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken").unwrap();
    let mut args = vec!["--token-file", token.to_str().unwrap()];
    args.extend(extra);
    let server = ControlPlane::start_with(&dir.path().join("data"), free_addr(), free_addr(), &args);
    (server, dir, token)
}

/// `trellis ctl` as a process against a `trellis control-plane` process with a token.
#[test]
fn binary_ctl_apply_prints_what_it_did() {
    let (server, dir, token) = control_plane_process(&[]);
    let api = server.api;
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let run = |args: &[&str]| {
        let out = trellis_command()
            .arg("ctl")
            .args(args)
            .env("TRELLIS_SERVER", format!("http://{api}"))
            .env("TRELLIS_TOKEN_FILE", &token)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "cluster/web created\nroute/all created\nlistener/out created\n");
    let (_, out, _) = run(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(out, "cluster/web unchanged\nroute/all unchanged\nlistener/out unchanged\n");
    let (code, out, _) = run(&["get", "clusters"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("kind: Cluster\n"), "{out}");
    // What `get` prints, `apply` reads back.
    let again = dir.path().join("again.yaml");
    std::fs::write(&again, &out).unwrap();
    let (_, out, _) = run(&["apply", "-f", again.to_str().unwrap()]);
    assert_eq!(out, "cluster/web unchanged\n");
    let (code, _, err) = run(&["delete", "cluster", "web"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("routes[all].backends[0].cluster"), "{err}");

    let out = trellis_command()
        .args(["ctl", "--server", &format!("http://{api}"), "get", "clusters"])
        .env_remove("TRELLIS_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "no token: refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bearer token"));
}

/// A control plane with `--api-tls`: `trellis ctl` reaches it over HTTPS only with its CA
/// (and verifies its SPIFFE ID under it); plain HTTP and another CA get nothing.
#[test]
fn binary_ctl_over_tls_needs_and_checks_the_control_planes_ca() {
    let (server, dir, token) = control_plane_process(&["--api-tls"]);
    let api = server.api;
    let ca = dir.path().join("data/ca/ca.pem");
    let other = dir.path().join("other");
    trellis_certs::Ca::init(&other, false).unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let run = |server: String, ca: Option<&std::path::Path>, args: &[&str]| {
        let mut cmd = trellis_command();
        cmd.arg("ctl").args(args).env("TRELLIS_SERVER", server).env("TRELLIS_TOKEN_FILE", &token);
        if let Some(ca) = ca {
            cmd.env("TRELLIS_CA_FILE", ca);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let https = format!("https://{api}");
    let (code, out, err) = run(https.clone(), Some(&ca), &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "cluster/web created\nroute/all created\nlistener/out created\n");
    let (code, out, _) = run(https.clone(), Some(&ca), &["get", "clusters"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("kind: Cluster\n"), "{out}");

    let (code, _, err) = run(https.clone(), None, &["get", "clusters"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--ca-file"), "{err}");
    let (code, _, err) = run(https, Some(&other.join("ca.pem")), &["get", "clusters"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("UnknownIssuer") || err.contains("unknown issuer"), "{err}");
    let (code, _, err) = run(format!("http://{api}"), None, &["get", "clusters"]);
    assert_eq!(code, Some(1), "plain HTTP to the TLS port: {err}");
}

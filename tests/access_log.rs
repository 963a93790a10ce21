//! The JSON access log (DESIGN §7), from the real binary: one line per request with the
//! route, cluster, endpoint, status, size and request ID; proxy-made errors and bodies cut
//! short say why; an unusable path is a config error naming the field.

use http::Request;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use trellis_testkit::config::{self, AccessLog, Bootstrap, Route, Yaml};
use trellis_testkit::*;

const LIMIT: Duration = Duration::from_secs(30);

fn config(listen: SocketAddr, log: &Path, origin: SocketAddr, silent: SocketAddr) -> String {
    use config::{ClusterProtocol::Auto, cluster, listener, route};
    Bootstrap {
        access_log: Some(AccessLog { path: log.display().to_string() }),
        listeners: vec![listener("edge", listen, &["api", "quiet", "gone"])],
        routes: vec![
            route("api", "/api", "app"),
            Route { idle_timeout: Some(config::ms(200)), ..route("quiet", "/quiet", "silent") },
            route("gone", "/gone", "refused"),
        ],
        clusters: vec![
            cluster("app", Auto, &[origin]),
            cluster("silent", Auto, &[silent]),
            cluster("refused", Auto, &[free_addr()]),
        ],
        ..config::bootstrap()
    }
    .yaml()
}

fn line_for<'a>(lines: &'a [serde_json::Value], path: &str, protocol: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["path"] == path && l["protocol"] == protocol)
        .unwrap_or_else(|| panic!("no {protocol} line for {path} in {lines:#?}"))
}

#[tokio::test]
async fn every_request_gets_one_json_line() {
    within(LIMIT, async {
        let origin = Origin::echo("app").await;
        // Answers with a head and then nothing: the route's idle timeout cuts the body.
        let silent = Origin::start(|_req| async {
            let (_tx, body) = chan_body();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                drop(_tx);
            });
            http::Response::builder().header("content-type", "text/event-stream").body(body).unwrap()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let listen = listen_addr();
        let proxy = Proxy::start(&config(listen, &log, origin.addr, silent.addr));

        let mut h1 = Client::h1(listen).await;
        let ok = h1.fetch(Request::post("/api/orders?id=7").body(full("hello")).unwrap()).await;
        assert_eq!(ok.status, 200);
        let seen_id = ok.json()["headers"]["x-request-id"].as_str().unwrap().to_owned();
        assert_eq!(h1.get("/nowhere").await.status, 404);
        assert_eq!(h1.get("/gone").await.status, 502);
        let mut h2 = Client::h2(listen).await;
        let ok2 = h2.fetch(Request::get("/api/h2").header("x-request-id", "mine-1").body(full("")).unwrap()).await;
        assert_eq!(ok2.status, 200);
        let cut = h2.send(Request::get("/quiet").body(full("")).unwrap()).await.unwrap();
        assert_eq!(cut.status(), 200);
        let _ = http_body_util::BodyExt::collect(cut.into_body()).await;

        let lines = access_log_lines(&log, 5).await;
        assert_eq!(lines.len(), 5, "{lines:#?}");

        let l = line_for(&lines, "/api/orders?id=7", "HTTP/1.1");
        assert_eq!(l["method"], "POST");
        assert_eq!(l["status"], 200);
        assert_eq!(l["listener"], "edge");
        assert_eq!(l["route"], "api");
        assert_eq!(l["cluster"], "app");
        assert_eq!(l["upstream"], origin.addr.to_string());
        assert_eq!(l["request_id"], seen_id.as_str(), "the ID the upstream saw");
        assert_eq!(l["bytes_sent"], ok.body.len() as u64);
        assert_eq!(l["peer"], "127.0.0.1");
        assert!(l["duration_ms"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["time"].as_str().unwrap().ends_with('Z'), "RFC 3339 UTC: {l}");
        assert!(l.get("error").is_none() && l.get("peer_id").is_none(), "{l}");

        let l = line_for(&lines, "/nowhere", "HTTP/1.1");
        assert_eq!((l["status"].as_u64(), l["error"].as_str()), (Some(404), Some("no route")), "{l}");
        assert!(l.get("route").is_none(), "{l}");

        let l = line_for(&lines, "/gone", "HTTP/1.1");
        assert_eq!(l["status"], 502);
        assert_eq!((l["route"].as_str(), l["cluster"].as_str()), (Some("gone"), Some("refused")), "{l}");
        assert!(l["error"].as_str().is_some_and(|e| !e.is_empty()), "{l}");

        let l = line_for(&lines, "/api/h2", "HTTP/2");
        assert_eq!((l["status"].as_u64(), l["request_id"].as_str()), (Some(200), Some("mine-1")), "{l}");

        let l = line_for(&lines, "/quiet", "HTTP/2");
        assert_eq!(l["status"], 200);
        assert!(l["error"].as_str().is_some_and(|e| e.contains("idle")), "a cut body says why: {l}");
        assert!(l["duration_ms"].as_f64().unwrap() >= 150.0, "logged when the body ended: {l}");
        drop(proxy);
    })
    .await;
}

#[test]
fn an_unusable_log_path_is_a_config_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.yaml");
    let yaml = format!("access_log: {{ path: \"{}/no/such/dir/access.log\" }}\nlisteners: []\n", dir.path().display());
    std::fs::write(&cfg, yaml).unwrap();
    let (code, out) = trellis(&["proxy", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("access_log.path"), "{out}");
}

/// logrotate's default (move the file away, let the writer make a new one): lines go to a
/// new file at the path within about a second, none are lost to the moved file afterwards.
#[tokio::test]
async fn a_moved_log_file_is_followed() {
    within(LIMIT, async {
        let origin = Origin::echo("app").await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let listen = listen_addr();
        let _proxy = Proxy::start(&config(listen, &log, origin.addr, origin.addr));
        let mut c = Client::h1(listen).await;
        assert_eq!(c.get("/api/before").await.status, 200);
        access_log_lines(&log, 1).await;
        let moved = dir.path().join("access.log.1");
        std::fs::rename(&log, &moved).unwrap();
        let mut sent = 0;
        while !log.exists() && sent < 60 {
            assert_eq!(c.get("/api/after").await.status, 200);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(log.exists(), "no new file at {} after {sent} requests", log.display());
        let now = access_log_lines(&log, 1).await;
        assert!(now.iter().all(|l| l["path"] == "/api/after"), "{now:#?}");
        let old = std::fs::read_to_string(&moved).unwrap();
        assert!(old.lines().next().is_some_and(|l| l.contains("/api/before")), "{old}");
    })
    .await;
}

/// Lines still buffered when the proxy drains on SIGTERM are written before it exits.
#[test]
fn draining_writes_the_last_lines() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(Origin::echo("app"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let listen = listen_addr();
    let mut proxy = Proxy::start(&config(listen, &log, origin.addr, origin.addr));
    rt.block_on(async {
        let mut c = Client::h1(listen).await;
        for _ in 0..5 {
            assert_eq!(c.get("/api/last").await.status, 200);
        }
    });
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(10)).expect("exits after the drain");
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(text.lines().filter(|l| l.contains("/api/last")).count(), 5, "{text}");
}

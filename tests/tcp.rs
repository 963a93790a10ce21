//! L4 (`protocol: tcp`) forwarding from the real binary: a TCP sidecar pair carries raw
//! bytes over mTLS with the server's SPIFFE ID checked, a wrong identity never gets a byte
//! through, and each closed connection writes one access log line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_certs::Ca;
use trellis_testkit::config::{self, ClusterProtocol, Yaml};
use trellis_testkit::*;

use trellis_testkit::mesh::*;

const DB: &str = "spiffe://trellis.local/ns/default/sa/db";
const LIMIT: Duration = Duration::from_secs(30);

/// Sends `msg` over a fresh connection to `addr`, half-closes, and returns all that came back.
async fn exchange(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sidecar_pair_carries_bytes_over_mtls_and_logs_each_connection() {
    within(LIMIT, async {
        ring_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = trellis_certs::Ca::init(dir.path().join("ca"), false).unwrap();
        let (echo, _echo_task) = tcp_echo().await;
        let (inbound, outbound, wrong) = (listen_addr(), listen_addr(), listen_addr());
        let log = dir.path().join("outbound.log");
        let identity = |name: &str, id: &str| {
            let prefix = dir.path().join(name);
            issue_to(&ca, id, &[], &prefix);
            let (cert, key) = pem_key(&prefix);
            Some(config::identity(&cert, &key, &Ca::cert_path(dir.path().join("ca"))))
        };
        let mut db = config::Bootstrap { identity: identity("db", DB), ..config::bootstrap() };
        db.listeners.push(config::Listener {
            tls: Some(config::mesh_tls()),
            policy: Some("fe".into()),
            ..config::tcp_listener("db-in", inbound, "db")
        });
        db.clusters.push(config::cluster("db", ClusterProtocol::default(), &[echo]));
        db.policies.push(config::allow_from("fe", &[FRONTEND]));
        let inbound_yaml = db.yaml();
        // `db-out` expects the right identity; `wrong-out` expects another one.
        let mut fe = config::Bootstrap {
            access_log: Some(config::AccessLog { path: log.display().to_string() }),
            identity: identity("frontend", FRONTEND),
            ..config::bootstrap()
        };
        fe.listeners.push(config::tcp_listener("db-out", outbound, "db"));
        fe.listeners.push(config::tcp_listener("wrong-out", wrong, "impostor"));
        for (name, expect) in [("db", DB), ("impostor", FRONTEND)] {
            let mut c = config::cluster(name, ClusterProtocol::default(), &[inbound]);
            c.tls = Some(config::mesh_cluster_tls(expect));
            fe.clusters.push(c);
        }
        let outbound_yaml = fe.yaml();
        let _db = Proxy::start(&inbound_yaml);
        let _frontend = Proxy::start(&outbound_yaml);

        let big = vec![b'x'; 256 * 1024];
        assert_eq!(exchange(outbound, b"hello over mtls").await, b"hello over mtls");
        assert_eq!(exchange(outbound, &big).await.len(), big.len());
        // The inbound only speaks mTLS: plaintext from the outbound would get nothing back,
        // and so does a connection whose server identity is not the expected one.
        assert!(exchange(wrong, b"secret").await.is_empty(), "a wrong server identity gets no bytes through");

        let lines = access_log_lines(&log, 3).await;
        let ok: Vec<_> = lines.iter().filter(|l| l["listener"] == "db-out").collect();
        assert_eq!(ok.len(), 2, "{lines:#?}");
        for l in &ok {
            assert_eq!(l["protocol"], "TCP");
            assert_eq!(l["cluster"], "db");
            assert_eq!(l["upstream"], inbound.to_string());
            assert_eq!(l["bytes_received"], l["bytes_sent"], "an echo: {l}");
            assert!(l.get("error").is_none(), "{l}");
        }
        assert!(ok.iter().any(|l| l["bytes_sent"] == big.len() as u64), "{ok:#?}");
        let bad = lines.iter().find(|l| l["listener"] == "wrong-out").expect("the impostor line");
        let err = bad["error"].as_str().unwrap_or_default();
        assert!(err.contains("identity mismatch") && err.contains(DB), "{bad}");
    })
    .await;
}

//! A real etcd (Debian's `etcd-server`, 3.x) on loopback for tests: free ports, a temp data
//! directory, stopped by PID on drop. Where no etcd binary is installed the tests that need
//! one skip with a message — unless `TRELLIS_REQUIRE_ETCD` is set (CI sets it), then they
//! fail. And a [`Gate`]: a TCP forwarder a test can shut to cut one control plane off etcd.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// A running etcd.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `127.0.0.1:PORT` clients connect to.
    pub client: SocketAddr,
    peer: SocketAddr,
    /// Set: clients speak TLS and must present a certificate from this CA.
    pub tls: Option<EtcdTls>,
    /// More command-line arguments.
    extra: Vec<String>,
}

/// The PEM files of a TLS etcd: its CA, and a client certificate and key from that CA.
pub struct EtcdTls {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl EtcdTls {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
    pub fn make(dir: &std::path::Path) -> EtcdTls {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, SanType,
        };
        // Distinct subjects: a leaf named like its issuer looks self-signed to TLS stacks.
        let named = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            p.distinguished_name = dn;
            p
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = named("trellis test etcd CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |server: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p = named(if server { "etcd" } else { "trellis" });
            if server {
                p.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            } else {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            (p.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
        };
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let (server, client) = (leaf(true), leaf(false));
        EtcdTls {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server.0),
            server_key: write("server.key", &server.1),
            client_cert: write("client.pem", &client.0),
            client_key: write("client.key", &client.1),
        }
    }
}

impl Etcd {
    /// Starts etcd, or `None` (having said why) when it is not installed on this machine.
    pub fn start() -> Option<Etcd> {
        Self::start_with(false)
    }

    /// Starts an etcd whose clients must speak TLS and present a certificate from its CA.
    pub fn start_tls() -> Option<Etcd> {
        Self::start_with(true)
    }

    /// Starts etcd with more command-line arguments (e.g. `--max-request-bytes`).
    pub fn start_with_args(extra: &[&str]) -> Option<Etcd> {
        Self::start_inner(false, extra.iter().map(|s| s.to_string()).collect())
    }

    fn start_with(tls: bool) -> Option<Etcd> {
        Self::start_inner(tls, Vec::new())
    }

    fn start_inner(tls: bool, extra: Vec<String>) -> Option<Etcd> {
        let Some(bin) = find() else {
            let why =
                "etcd is not installed (apt-get install --no-install-recommends etcd-server, or set TRELLIS_ETCD)";
            assert!(std::env::var_os("TRELLIS_REQUIRE_ETCD").is_none(), "TRELLIS_REQUIRE_ETCD is set but {why}");
            eprintln!("SKIPPED: {why}");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.then(|| EtcdTls::make(dir.path()));
        let mut etcd = Etcd {
            child: None,
            dir,
            bin,
            client: super::ports::free_addr(),
            peer: super::ports::free_addr(),
            tls,
            extra,
        };
        etcd.run();
        Some(etcd)
    }

    /// `etcd://127.0.0.1:PORT`, for `--store`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.client)
    }

    /// A client of this etcd (the control plane's own, used here as any etcd client).
    pub fn api(&self) -> trellis_control_plane::etcd::Client {
        let tls = self.tls.as_ref().map(|t| trellis_control_plane::etcd::Tls {
            ca_file: t.ca.clone(),
            client: Some((t.client_cert.clone(), t.client_key.clone())),
        });
        trellis_control_plane::etcd::Client::with_tls(&[self.client.to_string()], tls.as_ref()).unwrap()
    }

    /// The `trellis control-plane` flags for TLS to this etcd (none without TLS).
    pub fn tls_flags(&self) -> Vec<String> {
        let Some(t) = &self.tls else { return Vec::new() };
        let path = |p: &PathBuf| p.to_str().unwrap().to_string();
        vec![
            "--etcd-ca-file".into(),
            path(&t.ca),
            "--etcd-cert-file".into(),
            path(&t.client_cert),
            "--etcd-key-file".into(),
            path(&t.client_key),
        ]
    }

    /// Kills etcd (SIGKILL, by PID); [`Etcd::restart`] brings it back with its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    fn run(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let (client, peer) = (format!("{scheme}://{}", self.client), format!("http://{}", self.peer));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let mut cmd = Command::new(&self.bin);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file").arg(&t.server_cert).arg("--key-file").arg(&t.server_key);
            cmd.arg("--trusted-ca-file").arg(&t.ca).arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}"), "--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("etcd exited ({status}): {}", self.logs());
            }
            // etcd serves /health on its client port next to gRPC.
            if self.healthy() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd not healthy in 20s: {}", self.logs());
    }

    fn healthy(&self) -> bool {
        let Some(t) = &self.tls else {
            return admin_get(self.client, "/health").is_ok_and(|(s, body)| s == 200 && body.contains("true"));
        };
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "2", "--cacert"])
            .arg(&t.ca)
            .arg("--cert")
            .arg(&t.client_cert)
            .arg("--key")
            .arg(&t.client_key)
            .arg(format!("https://{}/health", self.client))
            .output();
        out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("true"))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The etcd binary: `TRELLIS_ETCD`, else `etcd` on the PATH, else /usr/bin/etcd.
fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TRELLIS_ETCD") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("etcd")).find(|p| p.is_file()));
    on_path.or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
}

/// A TCP forwarder on loopback to `target` that a test can shut (every connection through
/// it cut, new ones refused until opened again): a control plane that reaches etcd
/// through it loses etcd while the others keep it.
pub struct Gate {
    pub addr: SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn start(target: SocketAddr) -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else { continue };
                if !o.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let conn = tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(target).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
                c.lock().unwrap().push(conn.abort_handle());
            }
        });
        Gate { addr, open, conns, task }
    }

    /// Cuts every connection and refuses new ones.
    pub fn shut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.shut();
        self.task.abort();
    }
}

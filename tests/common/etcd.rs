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
}

impl Etcd {
    /// Starts etcd, or `None` (having said why) when it is not installed on this machine.
    pub fn start() -> Option<Etcd> {
        let Some(bin) = find() else {
            let why =
                "etcd is not installed (apt-get install --no-install-recommends etcd-server, or set TRELLIS_ETCD)";
            assert!(std::env::var_os("TRELLIS_REQUIRE_ETCD").is_none(), "TRELLIS_REQUIRE_ETCD is set but {why}");
            eprintln!("SKIPPED: {why}");
            return None;
        };
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            bin,
            client: super::ports::free_addr(),
            peer: super::ports::free_addr(),
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
        trellis_control_plane::etcd::Client::new(&[self.client.to_string()]).unwrap()
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
        let (client, peer) = (format!("http://{}", self.client), format!("http://{}", self.peer));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(&self.bin)
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}"), "--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"])
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
            if admin_get(self.client, "/health").is_ok_and(|(s, body)| s == 200 && body.contains("true")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd not healthy in 20s: {}", self.logs());
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

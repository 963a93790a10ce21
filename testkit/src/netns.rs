//! "Pods" in network namespaces for the transparent interception tests (DESIGN §9).
//!
//! One namespace per pod, each with an `eth0` veth whose peer sits on a bridge in a "wire"
//! namespace; addresses in a /28 of 10.250.0.0/24 picked per topology, no default route, so
//! nothing leaves the machine and the root namespace is not touched. Names start with
//! `trl15-<pid>-<n>-` so parallel runs and other engineers' namespaces never collide.
//! In-process apps and clients live inside a pod through sockets made on a thread moved
//! into its namespace (`in_ns`); processes (`trellis proxy` as UID 2102, `trellis
//! proxy-init`) run under `ip netns exec`. Dropping the [`Net`] kills every process it
//! started and deletes every namespace (their veths go with them), also when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// The UID the proxy runs as (DESIGN §9).
pub const PROXY_UID: u32 = 2102;

/// A set of pods and the wire between them.
pub struct Net {
    /// `trl15-<pid>-<n>`.
    pub prefix: String,
    /// The namespace holding the bridge (and nothing else but what a test runs there).
    pub wire: String,
    /// The bridge's own address in the wire namespace (for a control plane).
    pub wire_ip: Ipv4Addr,
    pub pods: Vec<Pod>,
    children: Mutex<Vec<Child>>,
    namespaces: Vec<String>,
    bin: Arc<Binary>,
}

/// One pod: a namespace and its address.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl Pod {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }
}

/// Why these tests cannot run here, if they cannot.
fn unsupported() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    let ok = |cmd: &str, args: &[&str]| Command::new(cmd).args(args).output().is_ok_and(|o| o.status.success());
    if !ok("ip", &["netns", "list"]) {
        return Some("`ip netns` is not available (iproute2)".into());
    }
    if !ok("setpriv", &["--version"]) {
        return Some("`setpriv` (util-linux) is not available".into());
    }
    if !ok("iptables-save", &["--version"]) {
        return Some("iptables is not installed (apt-get install --no-install-recommends iptables)".into());
    }
    None
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|u| u.split_whitespace().nth(1) == Some("0"))))
        .unwrap_or(false)
}

impl Net {
    /// `pods` pods on one wire, or `None` (with the reason printed) where the machine
    /// cannot run these tests: not root, or no `ip netns`/iptables. CI runs as root with
    /// iptables installed, so there they always run.
    pub fn create(pods: usize) -> Option<Net> {
        if let Some(why) = unsupported() {
            // CI (.ci/run) says these must run there: a missing tool is a failure, not a skip.
            assert!(
                std::env::var_os("TRELLIS_REQUIRE_NETNS").is_none(),
                "TRELLIS_REQUIRE_NETNS is set but this network-namespace test cannot run: {why}"
            );
            eprintln!("SKIPPED: network-namespace test needs root, `ip netns`, setpriv and iptables: {why}");
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("trl15-{pid}-{n}");
        // A /28 of 10.250.0.0/24 per topology: .1 the bridge, .2… the pods.
        let base = 16 * ((pid.wrapping_mul(7).wrapping_add(n)) % 16) as u8;
        let wire = format!("{prefix}-w");
        let mut net = Net {
            wire: wire.clone(),
            wire_ip: Ipv4Addr::new(10, 250, 0, base + 1),
            pods: Vec::new(),
            children: Mutex::new(Vec::new()),
            namespaces: Vec::new(),
            bin: Binary::get(),
            prefix,
        };
        // From here on, Drop removes whatever was made.
        net.ip(&["netns", "add", &wire]);
        net.namespaces.push(wire.clone());
        net.ip(&["-n", &wire, "link", "add", "br0", "type", "bridge"]);
        net.ip(&["-n", &wire, "addr", "add", &format!("{}/28", net.wire_ip), "dev", "br0"]);
        net.ip(&["-n", &wire, "link", "set", "br0", "up"]);
        net.ip(&["-n", &wire, "link", "set", "lo", "up"]);
        for i in 0..pods {
            let ns = format!("{}-{}", net.prefix, (b'a' + i as u8) as char);
            let ip = Ipv4Addr::new(10, 250, 0, base + 2 + i as u8);
            net.ip(&["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            let peer = format!("v{i}");
            net.ip(&["link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &peer, "netns", &wire]);
            net.ip(&["-n", &wire, "link", "set", &peer, "master", "br0", "up"]);
            net.ip(&["-n", &ns, "addr", "add", &format!("{ip}/28"), "dev", "eth0"]);
            net.ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            net.ip(&["-n", &ns, "link", "set", "lo", "up"]);
            net.pods.push(Pod { ns, ip });
        }
        Some(net)
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `cmd args…` in namespace `ns` to completion.
    pub fn exec(&self, ns: &str, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", ns, cmd]).args(args).output().expect("ip netns exec")
    }

    /// Runs `trellis ARGS…` in `ns` (as root) to completion: (exit code, stdout, stderr).
    pub fn trellis(&self, ns: &str, args: &[&str]) -> (i32, String, String) {
        let out = self.exec(ns, &self.bin.path.to_string_lossy(), args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `trellis proxy-init ARGS…` in the pod, which must succeed.
    pub fn proxy_init(&self, pod: &Pod, args: &[&str]) {
        let mut all = vec!["proxy-init"];
        all.extend_from_slice(args);
        let (code, out, err) = self.trellis(&pod.ns, &all);
        assert_eq!(code, 0, "proxy-init {args:?} in {}: {out}{err}", pod.ns);
    }

    /// The `nat` table of `ns` as `iptables-save` prints it (without its comment lines).
    pub fn nat_rules(&self, ns: &str) -> String {
        let out = self.exec(ns, "iptables-save", &["-t", "nat"]);
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n")
    }

    /// Starts `trellis proxy` in `pod` as UID 2102 on `yaml` (`{admin}` is 127.0.0.1:9901 in
    /// the pod) and waits until it is ready.
    pub fn start_proxy(&self, pod: &Pod, yaml: &str) -> PodProxy {
        let proxy = self.spawn_proxy(pod, yaml);
        proxy.wait_ready();
        proxy
    }

    /// Like [`Net::start_proxy`] without waiting.
    pub fn spawn_proxy(&self, pod: &Pod, yaml: &str) -> PodProxy {
        let dir = world_readable_dir();
        let config = dir.path().join("trellis.yaml");
        let log = dir.path().join("proxy.log");
        let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        std::fs::write(&config, yaml.replace("{admin}", &admin.to_string())).unwrap();
        let uid = PROXY_UID.to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &pod.ns, "setpriv", "--reuid", &uid, "--regid", &uid, "--clear-groups"])
            .arg(&self.bin.path)
            .args(["proxy", "--threads", "1", "--config"])
            .arg(&config)
            .env("TRELLIS_LOG", "info,trellis_proxy=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn trellis proxy in the pod");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        PodProxy { ns: pod.ns.clone(), pid, dir, config, log, admin }
    }

    /// Starts a process in namespace `ns` (as root), killed when the net is dropped.
    pub fn spawn(&self, ns: &str, cmd: &std::path::Path, args: &[&str], log: &std::path::Path) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn in the pod");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// The `trellis` binary the pods run (readable and executable by UID 2102).
    pub fn binary(&self) -> &std::path::Path {
        &self.bin.path
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for mut c in self.children.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace takes its veth ends (and so the pairs) with it.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A `trellis proxy` running in a pod.
pub struct PodProxy {
    pub ns: String,
    pub pid: u32,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
    /// In the pod's namespace.
    pub admin: SocketAddr,
}

impl PodProxy {
    pub fn logs(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        in_ns(&self.ns, || admin_get(self.admin, path))
    }

    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.admin_get("/ready").is_ok_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("proxy in {} not ready in 20s: {}", self.ns, self.logs());
    }

    /// Waits until `/ready` answers 200 (a proxy taking its config from a control plane).
    pub async fn ready_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if blocking(|| self.admin_get("/ready")).is_ok_and(|(s, _)| s == 200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Replaces the config and SIGHUPs; waits until `/config_dump` shows a newer version.
    pub async fn reload(&self, yaml: &str) {
        let version = || -> u64 {
            let (_, body) = self.admin_get("/config_dump").unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["version"].as_u64()).unwrap_or(0)
        };
        let before = blocking(version);
        let tmp = self.dir.path().join("next.yaml");
        std::fs::write(&tmp, yaml.replace("{admin}", &self.admin.to_string())).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
        let _ = Command::new("kill").args(["-HUP", &self.pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while blocking(version) <= before {
            assert!(Instant::now() < deadline, "not reloaded: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the log contains `needle`, up to `limit`.
    pub async fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// Runs `f` on a thread moved into network namespace `ns`: sockets it makes belong there.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the namespace");
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                .expect("setns");
            f()
        })
        .join()
        .expect("thread in the namespace")
    })
}

/// A TCP listener bound in `ns`, for the runtime.
pub fn listen_in(ns: &str, addr: SocketAddr) -> tokio::net::TcpListener {
    let l = in_ns(ns, || std::net::TcpListener::bind(addr)).unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
    l.set_nonblocking(true).unwrap();
    tokio::net::TcpListener::from_std(l).unwrap()
}

/// A TCP connection made from inside `ns` (the pod's iptables rules apply to it).
pub async fn connect_in(ns: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let ns = ns.to_owned();
    let s = tokio::task::spawn_blocking(move || {
        in_ns(&ns, || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
    })
    .await
    .unwrap()?;
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}

/// An HTTP/1.1 (or h2c, `h2`) client on a connection made from inside `ns`.
pub async fn client_in(ns: &str, addr: SocketAddr, h2: bool) -> Client {
    let s = connect_in(ns, addr).await.unwrap_or_else(|e| panic!("connect {addr} from {ns}: {e}"));
    Client::over(s, addr, h2).await
}

/// A TCP server in `ns` on `port` running `serve` per connection (with the peer address).
pub fn tcp_server_in<F, Fut>(ns: &str, port: u16, serve: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = listen_in(ns, SocketAddr::from(([0, 0, 0, 0], port)));
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = l.accept().await else { continue };
            tokio::spawn(serve(s, peer));
        }
    })
}

/// Raw frames seen on the wire namespace (AF_PACKET, every interface there: the veths and
/// the bridge carry only traffic between pods) until [`Capture::stop`].
pub struct Capture {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Capture {
    pub fn start(net: &Net) -> Capture {
        use socket2::{Domain, Protocol, Socket, Type};
        const ETH_P_ALL: u16 = 0x0003;
        let sock = in_ns(&net.wire, || {
            Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))))
        })
        .expect("packet socket");
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Read;
            let mut sock = sock;
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 1 << 17];
            while !flag.load(Ordering::Acquire) {
                if let Ok(n) = sock.read(&mut buf)
                    && seen.len() < 64 << 20
                {
                    seen.extend_from_slice(&buf[..n]);
                }
            }
            seen
        });
        Capture { stop, thread: Some(thread) }
    }

    /// Everything captured so far, and the end of the capture.
    pub fn stop(mut self) -> Vec<u8> {
        self.stop.store(true, Ordering::Release);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Whether `needle` occurs in `hay`.
pub fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A temp dir UID 2102 can read (configs, certificates, keys).
pub fn world_readable_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("trl15-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Makes `files` (keys are 0600) readable by the proxy's UID.
pub fn give_to_proxy(files: &[&std::path::Path]) {
    for f in files {
        std::os::unix::fs::chown(f, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    }
}

/// The `trellis` binary, where UID 2102 can run it: the build's own when every directory
/// above it lets others in, else a copy in /tmp removed when the last user drops it.
struct Binary {
    path: PathBuf,
    _copy: Option<tempfile::TempDir>,
}

impl Binary {
    fn get() -> Arc<Binary> {
        static SHARED: Mutex<std::sync::Weak<Binary>> = Mutex::new(std::sync::Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = shared.upgrade() {
            return b;
        }
        let built = trellis_bin();
        let b = Arc::new(if others_can_run(&built) {
            Binary { path: built, _copy: None }
        } else {
            let dir = world_readable_dir();
            let path = dir.path().join("trellis");
            if std::fs::hard_link(&built, &path).is_err() {
                std::fs::copy(&built, &path).unwrap();
            }
            Binary { path, _copy: Some(dir) }
        });
        *shared = Arc::downgrade(&b);
        b
    }
}

fn others_can_run(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    mode(p) & 0o005 == 0o005 && p.ancestors().skip(1).all(|d| d.as_os_str().is_empty() || mode(d) & 0o001 != 0)
}

impl crate::observe::Scrape for PodProxy {
    fn scrape(&self) -> String {
        self.metrics()
    }
}

//! The real `trellis` binary as a child process: where it is, spawning it with its stderr in
//! a log file, waiting on a condition (never a fixed sleep) with the log in the panic
//! message when it exits early or the wait times out, and the running `trellis proxy`.

use super::*;
use std::process::ExitStatus;

/// The `trellis` binary under test.
///
/// `env!("CARGO_BIN_EXE_trellis")` exists only while compiling the root package's
/// integration tests, not this crate: Cargo also sets it in the environment of the test
/// processes it runs (Cargo ≥ 1.91), and otherwise the binary is found beside the test
/// binary (`target/<profile>/deps/NAME-HASH` → `target/<profile>/trellis`), which Cargo
/// builds before any integration test runs.
pub fn trellis_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CARGO_BIN_EXE_trellis") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
        let bin = profile.join(format!("trellis{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "no trellis binary at {} (run the tests with cargo test)", bin.display());
        bin
    })
    .clone()
}

/// `trellis ARGS…` with stdout discarded and stderr appended to `log`; not waited for.
pub fn spawn_trellis(args: &[&std::ffi::OsStr], log: &Path, env: &[(&str, &str)]) -> Child {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open the log file");
    Command::new(trellis_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn trellis")
}

/// A `trellis` command to add arguments and environment to (for CLI tests).
pub fn trellis_command() -> Command {
    Command::new(trellis_bin())
}

/// Runs `trellis ARGS…` to completion; returns (exit code, stderr).
pub fn trellis(args: &[&str]) -> (i32, String) {
    let out = trellis_command().args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Polls `ready` every 20 ms until it holds, up to `limit`. Panics with the process's log
/// if the child exits first or the time runs out (`what` names the wait).
pub fn wait_ready_or_panic(
    child: &mut Child,
    log: &Path,
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("trellis exited before {what} ({status}): {}", read_log(log));
        }
        if ready() {
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("trellis not {what} within {limit:?}: {}", read_log(log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
/// For blocking callers; async tests use [`wait_until`].
pub fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Awaits `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `child` to exit by itself, up to `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut status = None;
    poll_until(limit, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status
}

/// Sends `kill -SIG` to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(ok.success(), "kill -{sig} {pid}");
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// A running `trellis proxy`, killed on drop.
pub struct Proxy {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Proxy {
    /// Writes `yaml` (with `{admin}` replaced by a free admin address) and starts the proxy
    /// with `--threads 2`; waits until `/ready` answers 200.
    pub fn start(yaml: &str) -> Proxy {
        Self::start_with(yaml, &["--threads", "2"])
    }

    pub fn start_with(yaml: &str, args: &[&str]) -> Proxy {
        let mut p = Self::spawn(yaml, args);
        p.wait_admin("ready", "/ready");
        p
    }

    /// Starts the proxy and waits only for its admin server (`/live`), not for `/ready`:
    /// for proxies that are expected never to get a config.
    pub fn spawn_live(yaml: &str, args: &[&str]) -> Proxy {
        let mut p = Self::spawn(yaml, args);
        p.wait_admin("live", "/live");
        p
    }

    /// Starts the proxy without waiting for anything (e.g. for one expected to exit).
    pub fn spawn(yaml: &str, args: &[&str]) -> Proxy {
        Self::spawn_with_env(yaml, args, &[])
    }

    /// Like [`Proxy::start`], with more environment variables (e.g. `SSL_CERT_FILE`).
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Proxy {
        let mut p = Self::spawn_with_env(yaml, &["--threads", "2"], env);
        p.wait_admin("ready", "/ready");
        p
    }

    /// Like [`Proxy::spawn`], with more environment variables.
    pub fn spawn_with_env(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let admin = free_addr();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("trellis.yaml");
        let log = dir.path().join("proxy.log");
        std::fs::write(&config, yaml.replace("{admin}", &admin.to_string())).unwrap();
        let mut argv: Vec<&std::ffi::OsStr> = vec!["proxy".as_ref(), "--config".as_ref(), config.as_os_str()];
        argv.extend(args.iter().map(std::ffi::OsStr::new));
        let mut vars = vec![("TRELLIS_LOG", "info,trellis_proxy=debug")];
        vars.extend_from_slice(env);
        let child = spawn_trellis(&argv, &log, &vars);
        Proxy { child, dir, config, admin, log }
    }

    fn wait_admin(&mut self, what: &str, path: &str) {
        let admin = self.admin;
        wait_ready_or_panic(&mut self.child, &self.log, what, Duration::from_secs(20), || {
            admin_get(admin, path).is_ok_and(|(s, _)| s == 200)
        });
    }

    pub fn logs(&self) -> String {
        read_log(&self.log)
    }

    /// Replaces the config file atomically (the proxy notices within ~0.5 s).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.path().join("next.yaml");
        std::fs::write(&tmp, yaml.replace("{admin}", &self.admin.to_string())).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Writes a new config, SIGHUPs, and waits until `/config_dump` shows a newer version.
    pub fn reload(&self, yaml: &str) -> u64 {
        let before = self.version();
        self.write_config(yaml);
        self.signal("HUP");
        let mut now = before;
        if poll_until(Duration::from_secs(5), || {
            now = self.version();
            now > before
        }) {
            return now;
        }
        panic!("config not reloaded: {}", self.logs());
    }

    pub fn version(&self) -> u64 {
        let (_, body) = admin_get(self.admin, "/config_dump").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["version"].as_u64().unwrap()
    }

    pub fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics").unwrap().1
    }

    /// Waits for the process to exit by itself, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        end_process(&mut self.child, "proxy", &self.log);
    }
}

/// Kills `child` and reaps it; when the test is failing (this runs while it unwinds), prints
/// the end of the process's log, which is otherwise lost with its temp dir.
pub fn end_process(child: &mut Child, what: &str, log: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    if std::thread::panicking() {
        let text = read_log(log);
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        eprintln!("--- last {} lines of the {what}'s log ({}):\n{}", tail.len(), log.display(), tail.join("\n"));
    }
}

/// A blocking GET over plain TCP for admin checks (no runtime needed).
pub fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

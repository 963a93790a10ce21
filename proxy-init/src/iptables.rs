//! Talking to the kernel through the iptables tools: which backend (nft or legacy) to use,
//! reading the `nat` table, applying restore input, and the CAP_NET_ADMIN check done
//! before any of it.

use crate::{Backend, Family, InitError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The pair of tools for one family and backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tools {
    pub save: PathBuf,
    pub restore: PathBuf,
}

impl Tools {
    /// `iptables-nft`, `ip6tables-legacy`, `iptables`…: the name shown to the user.
    pub fn name(&self) -> String {
        let file = self.restore.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        file.trim_end_matches("-restore").to_owned()
    }

    /// `iptables-save -t nat`.
    pub fn save_nat(&self) -> Result<String, InitError> {
        run(&self.save, &["-t", "nat"], None)
    }

    /// `iptables-restore --noflush` of `script` (one atomic commit of the table).
    pub fn restore(&self, script: &str) -> Result<(), InitError> {
        run(&self.restore, &["--noflush", "--wait", "5"], Some(script)).map(drop)
    }
}

/// The tools to use: those asked for, or (`auto`) the backend that already holds rules in
/// this namespace (as Kubernetes' iptables wrapper decides: the one with more rules), nft
/// when neither does, and plain `iptables` when only it is installed.
pub fn tools(backend: Backend, family: Family) -> Result<Tools, InitError> {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let pair = |variant: &str| -> Option<Tools> {
        let save = find(&format!("{base}{variant}-save"))?;
        let restore = find(&format!("{base}{variant}-restore"))?;
        Some(Tools { save, restore })
    };
    match backend {
        Backend::Nft => pair("-nft").ok_or(InitError::NoIptables(format!("{base}-nft"))),
        Backend::Legacy => pair("-legacy").ok_or(InitError::NoIptables(format!("{base}-legacy"))),
        Backend::Auto => match (pair("-nft"), pair("-legacy")) {
            (Some(nft), Some(legacy)) => {
                // Without `-t`, save lists only tables that exist, so asking creates none.
                let rules =
                    |t: &Tools| run(&t.save, &[], None).map(|s| s.lines().filter(|l| l.starts_with("-A ")).count());
                if rules(&legacy)? > rules(&nft)? { Ok(legacy) } else { Ok(nft) }
            }
            (Some(one), None) | (None, Some(one)) => Ok(one),
            (None, None) => pair("").ok_or(InitError::NoIptables(base.to_owned())),
        },
    }
}

/// Whether this process holds CAP_NET_ADMIN (bit 12 of `CapEff` in /proc/self/status).
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// `name` on PATH, or in the sbin directories a non-login root shell may lack.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn run(bin: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    let command = format!("{} {}", bin.display(), args.join(" "));
    let failed = |stderr: String| InitError::Command { command: command.clone(), stderr };
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(|e| failed(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(failed(if stderr.is_empty() { out.status.to_string() } else { stderr }));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

//! `trellis proxy-init` (DESIGN §9): the iptables redirect that sends a pod's TCP traffic
//! through its sidecar, in the current network namespace's `nat` table.
//!
//! - `TRELLIS_INBOUND`, from PREROUTING: TCP arriving at the pod, except skipped ports, is
//!   redirected to the proxy's inbound port.
//! - `TRELLIS_OUTPUT`, from OUTPUT: the proxy's own traffic (its UID), loopback, skipped
//!   ports and skipped subnets return; every other TCP connection the pod opens is
//!   redirected to the proxy's outbound port.
//!
//! [`flags`] parses the values, [`rules`] makes the restore input (pure, tested without a
//! kernel), [`iptables`] picks the backend (nft or legacy) and applies it. Everything is
//! checked before anything changes: a bad value or a missing capability leaves the
//! namespace as it was.

pub mod flags;
pub mod iptables;
pub mod rules;

use flags::{Cidr, PortRange};
use thiserror::Error;

/// What to redirect where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// The proxy runs as this UID; its connections are never redirected (no loop).
    pub proxy_uid: u32,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    /// Destinations reached directly (outbound). IPv6 ones need `ipv6`.
    pub skip_subnets: Vec<Cidr>,
    /// Also install the rules for IPv6 (ip6tables).
    pub ipv6: bool,
    pub backend: Backend,
}

/// Default ports and UID (DESIGN §2, §9).
pub const DEFAULT_INBOUND_PORT: u16 = 4143;
pub const DEFAULT_OUTBOUND_PORT: u16 = 4140;
pub const DEFAULT_PROXY_UID: u32 = 2102;

impl Default for Options {
    fn default() -> Self {
        Self {
            inbound_port: DEFAULT_INBOUND_PORT,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            proxy_uid: DEFAULT_PROXY_UID,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_subnets: Vec::new(),
            ipv6: false,
            backend: Backend::Auto,
        }
    }
}

/// Which iptables backend to drive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The one already holding rules in this namespace; nft when neither does.
    #[default]
    Auto,
    Nft,
    Legacy,
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Install the rules, or remove them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Install,
    Cleanup,
}

/// Why proxy-init did nothing (or stopped).
#[derive(Debug, Error)]
pub enum InitError {
    /// A flag's value is wrong (exit 2).
    #[error("{flag}: {reason}")]
    Usage { flag: &'static str, reason: String },
    #[error(
        "needs the CAP_NET_ADMIN capability in this network namespace to change iptables rules \
         (run it as root, or give the container NET_ADMIN); nothing was changed"
    )]
    NoCapability,
    #[error("{0} not found: install the iptables package (iptables-nft or iptables-legacy)")]
    NoIptables(String),
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
}

impl InitError {
    /// The process exit code (DESIGN §0): 2 for bad usage, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::Usage { .. } => 2,
            _ => 1,
        }
    }
}

impl Options {
    /// Checks what the flag parsers alone cannot.
    pub fn check(&self) -> Result<(), InitError> {
        if self.inbound_port == self.outbound_port {
            return Err(InitError::Usage {
                flag: "--outbound-port",
                reason: format!("{} is also the inbound port", self.outbound_port),
            });
        }
        if let Some(v6) = self.skip_subnets.iter().find(|c| c.is_ipv6())
            && !self.ipv6
        {
            return Err(InitError::Usage {
                flag: "--skip-subnets",
                reason: format!("{v6} is IPv6: add --ipv6 to install IPv6 rules"),
            });
        }
        Ok(())
    }

    /// The families rules are installed for.
    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 { vec![Family::V4, Family::V6] } else { vec![Family::V4] }
    }
}

/// What was (or would be) applied for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub family: Family,
    /// The tools used (`iptables-nft`…).
    pub tools: String,
    /// The restore input; `None` when there was nothing to do (cleanup of a clean table).
    pub script: Option<String>,
    /// Our rules as `iptables-save` shows them afterwards.
    pub now: Vec<String>,
}

/// The restore input for a namespace with none of our rules, without touching anything.
pub fn simulate(opts: &Options, action: Action) -> Result<Vec<Applied>, InitError> {
    opts.check()?;
    Ok(opts
        .families()
        .into_iter()
        .map(|family| {
            let install = rules::install(opts, family, "");
            let script = match action {
                Action::Install => Some(install),
                // As it would be right after an install.
                Action::Cleanup => rules::cleanup(&install),
            };
            let tools = match family {
                Family::V4 => "iptables",
                Family::V6 => "ip6tables",
            };
            Applied { family, tools: tools.into(), script, now: Vec::new() }
        })
        .collect())
}

/// Installs or removes the rules in this network namespace.
pub fn apply(opts: &Options, action: Action) -> Result<Vec<Applied>, InitError> {
    opts.check()?;
    if !iptables::has_net_admin() {
        return Err(InitError::NoCapability);
    }
    // Find every tool first: a missing ip6tables must not leave IPv4 half done.
    let tools = opts
        .families()
        .into_iter()
        .map(|f| iptables::tools(opts.backend, f).map(|t| (f, t)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut done = Vec::with_capacity(tools.len());
    for (family, t) in tools {
        let existing = t.save_nat()?;
        let script = match action {
            Action::Install => Some(rules::install(opts, family, &existing)),
            Action::Cleanup => rules::cleanup(&existing),
        };
        if let Some(s) = &script {
            t.restore(s)?;
        }
        let after = t.save_nat()?;
        let now = rules::ours(&after).into_iter().map(str::to_owned).collect();
        done.push(Applied { family, tools: t.name(), script, now });
    }
    Ok(done)
}

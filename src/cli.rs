//! The `trellis` command line: its argument types (what `trellis --help` shows), parsed by
//! `src/main.rs` and by the tests, which build the same values.

use crate::{certs_cmd, cp_cmd, ctl_cmd, kube_cmd, proxy_init_cmd};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Trellis: a zero-trust mTLS service-mesh data plane.
#[derive(Parser)]
#[command(name = "trellis", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `trellis_proxy=debug`. Release
    /// builds log at most `debug` (trace-level callsites are compiled out).
    #[arg(long, global = true, env = "TRELLIS_LOG", default_value = "info")]
    pub log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run a proxy (sidecar or gateway) from a bootstrap/static config file.
    Proxy {
        /// Bootstrap config, YAML or JSON (DESIGN §3). Watched: edits are applied live.
        #[arg(long, short)]
        config: PathBuf,
        /// Worker threads (each a single-threaded runtime). Default: one per CPU.
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        sidecar: kube_cmd::SidecarArgs,
    },
    /// Check a config file and print the first problems found; exit 2 if invalid.
    Validate {
        /// Config file, YAML or JSON.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the JSON Schema of a config file (for editors that validate YAML).
    Schema,
    /// Run the control plane (REST API, durable store, discovery server, CA).
    ControlPlane(cp_cmd::ControlPlaneArgs),
    /// Drive a control plane: apply, get, delete, proxies.
    Ctl(ctl_cmd::CtlArgs),
    /// CA and workload certificates.
    Certs {
        #[command(subcommand)]
        cmd: certs_cmd::CertsCmd,
    },
    /// Add the proxy to every pod template of a Kubernetes YAML file (printed on stdout).
    Inject(kube_cmd::InjectArgs),
    /// Serve the same injection as a mutating admission webhook (POST /inject, HTTPS).
    Injector(kube_cmd::InjectorArgs),
    /// Print the Kubernetes manifests of the control plane and injector.
    Install(kube_cmd::InstallArgs),
    /// Install the iptables redirect that sends this network namespace's (pod's) TCP
    /// traffic through the sidecar (DESIGN §9); `--simulate` prints it, `--cleanup` removes it.
    ProxyInit(proxy_init_cmd::ProxyInitArgs),
    /// A whole local mesh on embedded defaults (control plane, CA, two sidecars with mTLS,
    /// two agent services calling each other), with traffic, until Ctrl-C.
    Demo {
        /// Concurrent simulated users.
        #[arg(long, default_value_t = 4)]
        users: usize,
        /// Stop by itself after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

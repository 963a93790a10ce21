//! The `trellis` command line: parses arguments and calls into the crates. No logic here.

mod alloc;
mod certs_cmd;
mod cp_cmd;
mod ctl_cmd;
mod kube_cmd;
mod proxy_init_cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Trellis: a zero-trust mTLS service-mesh data plane.
#[derive(Parser)]
#[command(name = "trellis", version, about, propagate_version = true)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `trellis_proxy=debug`.
    #[arg(long, global = true, env = "TRELLIS_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    // One crypto provider for the whole process (ring); ignore "already installed".
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.cmd {
        Cmd::Proxy { config, threads, sidecar } => match sidecar.write_bootstrap(&config) {
            Err(e) => {
                eprintln!("trellis: invalid config: --sidecar: {e:#}");
                ExitCode::from(2)
            }
            Ok(()) => run_proxy(config, threads),
        },
        Cmd::Validate { config } => match trellis_proxy::config::load(&config) {
            Ok(_) => {
                println!("{}: valid", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("trellis: invalid config: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Schema => match serde_json::to_string_pretty(&trellis_api::reference::bootstrap_schema()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("trellis: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Demo { users, seconds } => {
            let trellis = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("trellis: cannot find its own binary: {e}");
                    return ExitCode::from(1);
                }
            };
            let opts = trellis_demo::Options { trellis, users, duration: seconds.map(std::time::Duration::from_secs) };
            match trellis_demo::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("trellis demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::ControlPlane(args) => match cp_cmd::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trellis: {e:#}");
                ExitCode::from(1)
            }
        },
        Cmd::Ctl(args) => match ctl_cmd::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trellis: {e:#}");
                ExitCode::from(1)
            }
        },
        Cmd::Inject(args) => match kube_cmd::inject(args) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(kube_cmd::BadInput(e))) => {
                eprintln!("trellis inject: {e}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("trellis inject: {e:#}");
                ExitCode::from(1)
            }
        },
        Cmd::Injector(args) => match kube_cmd::injector(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trellis injector: {e:#}");
                ExitCode::from(1)
            }
        },
        Cmd::Install(args) => match kube_cmd::install(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trellis install: {e:#}");
                ExitCode::from(2)
            }
        },
        Cmd::ProxyInit(args) => proxy_init_cmd::run(args),
        Cmd::Certs { cmd } => match certs_cmd::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trellis: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn run_proxy(config: PathBuf, threads: Option<usize>) -> ExitCode {
    match trellis_proxy::run(trellis_proxy::Options { config, threads }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ trellis_proxy::RunError::Config(_)) => {
            eprintln!("trellis: invalid config: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("trellis: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(filter: &str, json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

//! The `trellis` command line: parses arguments and calls into the crates. No logic here.

mod alloc;
mod certs_cmd;
mod cp_cmd;
mod ctl_cmd;

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
        Cmd::Proxy { config, threads } => match trellis_proxy::run(trellis_proxy::Options { config, threads }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ trellis_proxy::RunError::Config(_)) => {
                eprintln!("trellis: invalid config: {e}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("trellis: {e}");
                ExitCode::from(1)
            }
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
        Cmd::Certs { cmd } => match certs_cmd::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trellis: {e:#}");
                ExitCode::from(1)
            }
        },
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

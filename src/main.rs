//! The `trellis` command line: parses arguments and calls into the crates. No logic here.

mod alloc;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use trellis::cli::{Cli, Cmd};
use trellis::{certs_cmd, cp_cmd, ctl_cmd, kube_cmd, proxy_init_cmd};

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

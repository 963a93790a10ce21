//! The `trellis` command line as a library: the clap argument types of every subcommand
//! ([`cli::Cli`]) and the commands behind them. `src/main.rs` parses and dispatches; tests
//! use the same types as a normal dependency.

pub mod certs_cmd;
pub mod cli;
pub mod cp_cmd;
pub mod ctl_cmd;
pub mod kube_cmd;
pub mod proxy_init_cmd;

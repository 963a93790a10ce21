//! `trellis demo`: brings up a whole local mesh on embedded defaults, in one process tree —
//! a control plane (child process, store in a temp dir), a CA and two SPIFFE identities,
//! two sidecars (child processes) with mTLS between them, and two small agent services
//! (in this process) that call each other through the mesh, one of them streaming SSE, and
//! an MCP tool server whose sidecar allows one tool and denies another; both sidecars
//! export spans to a collector in the demo (tracing set by the control plane), and the
//! demo prints one request's trace.
//! It configures the mesh through the control plane's REST API, drives traffic, prints
//! where to look and a live one-line summary, and on Ctrl-C stops everything it started.

mod agents;
mod mcp;
mod mesh;
mod trace;
mod traffic;

use std::time::Duration;
use thiserror::Error;

/// Why the demo could not run.
#[derive(Debug, Error)]
pub enum DemoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("certificates: {0}")]
    Certs(#[from] trellis_certs::CertError),
    #[error("{0}")]
    Setup(String),
}

/// Options of `trellis demo`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `trellis` binary to start the control plane and sidecars with.
    pub trellis: std::path::PathBuf,
    /// Concurrent simulated users.
    pub users: usize,
    /// Stop by itself after this long (None: until Ctrl-C).
    pub duration: Option<Duration>,
}

/// Runs the demo until Ctrl-C (or `duration`).
pub fn run(opts: Options) -> Result<(), DemoError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let mesh = mesh::Mesh::start(&opts).await?;
        mesh.print_guide();
        println!();
        if let Err(e) = mcp::session(mesh.outbound).await {
            println!("  MCP session failed: {e}");
        }
        if let Err(e) = trace::show(mesh.outbound, &mesh.collector).await {
            println!("  tracing: {e}");
        }
        let stats = traffic::Stats::default();
        let load = tokio::spawn(traffic::drive(mesh.planner_app, opts.users, stats.clone()));
        let stop = async {
            match opts.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        tokio::select! {
            _ = stop => {}
            _ = traffic::report(stats.clone()) => {}
        }
        load.abort();
        println!();
        println!("{}", stats.summary_total());
        println!("stopping: sidecars, control plane, agents");
        mesh.stop();
        Ok(())
    })
}

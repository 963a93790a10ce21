//! `trellis proxy`: load and validate the config, bind every listener, start the workers and
//! the admin server, then wait for reloads (SIGHUP, file change) and for SIGTERM/SIGINT,
//! which drains in-flight requests before returning.

use crate::admin;
use crate::config::{self, ConfigError};
use crate::discovery;
use crate::listener::{self, Workers};
use crate::reload::{self, Reloader};
use crate::telemetry;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};
use trellis_api as api;

/// How to run the proxy.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// Worker threads; default: one per CPU.
    pub threads: Option<usize>,
}

/// Why the proxy could not run.
#[derive(Debug, Error)]
pub enum RunError {
    /// The config is unreadable or invalid (exit code 2).
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("listeners[{name}].address: cannot bind {addr}: {source}")]
    Bind { name: String, addr: String, source: std::io::Error },
    #[error(transparent)]
    BindUdp(#[from] crate::h3::endpoint::BindError),
    #[error("{0}")]
    Runtime(String),
    /// `identity.issuer` could not provide a certificate.
    #[error("{0}")]
    Identity(#[from] crate::tls::issuer::IssueError),
}

/// Runs the proxy until SIGTERM/SIGINT and the drain that follows.
pub fn run(opts: Options) -> Result<(), RunError> {
    let bootstrap = config::load(&opts.config)?;
    if let Some(identity) = &bootstrap.identity {
        crate::tls::issuer::ensure_at_start(identity)?;
    }
    let workers = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let admin_addr = bootstrap.admin.as_ref().map_or(api::DEFAULT_ADMIN_ADDRESS, |a| a.address.as_str()).to_owned();
    let prometheus = telemetry::install().map_err(RunError::Runtime)?;
    let file = bootstrap.clone();
    let control_plane = bootstrap.control_plane.clone();
    let node = bootstrap.node.clone();
    let transparent = bootstrap.listeners.iter().any(|l| l.transparent);
    let snapshot = config::build(bootstrap, None, workers, 1)?;

    // Bind everything before starting anything, so a busy port fails the start cleanly.
    let admin_socket = std::net::TcpListener::bind(&admin_addr)
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .map_err(|source| RunError::Bind { name: "admin".into(), addr: admin_addr.clone(), source })?;
    let mut sockets = Vec::with_capacity(snapshot.listeners.len());
    for l in &snapshot.listeners {
        let s = listener::bind(l.addr, workers).map_err(|source| RunError::Bind {
            name: l.name.to_string(),
            addr: l.addr.to_string(),
            source,
        })?;
        sockets.push((l.name.clone(), s));
    }
    let h3 = crate::h3::Endpoints::default();
    let udp = h3.bind(&snapshot, |_| true)?;

    metrics::gauge!(telemetry::CONFIG_VERSION, "type" => "static").set(snapshot.version as f64);
    snapshot.publish();
    let shared = Arc::new(ArcSwap::from_pointee(snapshot));
    let pool = Workers::start(workers, shared.clone()).map_err(|e| RunError::Runtime(e.to_string()))?;
    for (name, s) in sockets {
        pool.start_listener(&name, s);
    }
    h3.apply(&shared.load(), udp, &pool, Duration::ZERO);
    let reloader = Arc::new(Reloader::new(opts.config.clone(), file, shared.clone(), pool, h3));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Runtime(e.to_string()))?;
    let discovery = Arc::new(discovery::Status::default());
    let signals = Arc::new(crate::tls::issuer::Signals::default());
    let state = Arc::new(admin::State {
        config: shared.clone(),
        metrics: prometheus,
        ready: false.into(),
        discovery: control_plane.as_ref().map(|_| discovery.clone()),
    });
    let drain = rt.block_on(async {
        let admin_listener =
            tokio::net::TcpListener::from_std(admin_socket).map_err(|e| RunError::Runtime(e.to_string()))?;
        tokio::spawn(admin::serve(admin_listener, state.clone()));
        crate::resilience::health::start(&shared.load());
        let upkeep = state.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        state.ready.store(true, Ordering::Release);
        tokio::spawn(crate::tls::issuer::renew_forever(
            opts.config.clone(),
            crate::tls::issuer::from_snapshot(shared.clone()),
            signals.clone(),
        ));
        if let Some(cp) = control_plane {
            let metrics = Some(state.metrics.clone());
            tokio::spawn(discovery::run(cp, node, transparent, reloader.clone(), discovery.clone(), metrics));
        }
        tracing::info!(config = %opts.config.display(), workers, admin = %admin_addr, "trellis proxy started");
        wait_and_reload(&opts, &reloader, &signals).await
    })?;

    state.ready.store(false, Ordering::Release);
    tracing::info!(drain_timeout = ?drain, "draining");
    // The admin server keeps answering (/ready 503) while the workers drain.
    let draining = reloader.clone();
    rt.block_on(async move {
        let _ = tokio::task::spawn_blocking(move || draining.workers().drain_and_join(drain)).await;
    });
    crate::access_log::flush_all(Duration::from_secs(2));
    tracing::info!("stopped");
    Ok(())
}

/// Serves reload triggers until a stop signal; returns the drain timeout then in force.
async fn wait_and_reload(
    opts: &Options,
    reloader: &Reloader,
    signals: &crate::tls::issuer::Signals,
) -> Result<Duration, RunError> {
    let sig = |k| signal(k).map_err(|e| RunError::Runtime(format!("signal handler: {e}")));
    let (mut hup, mut term, mut int) =
        (sig(SignalKind::hangup())?, sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?);
    // The config file and every certificate, key and bundle it names are watched: a
    // rotation of identity files is a reload like any other.
    let watched = || config::watched_files(&opts.config, &reloader.snapshot().source);
    let stamps = |files: &[PathBuf]| files.iter().map(|f| reload::stamp(f)).collect::<Vec<_>>();
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut files = watched();
    let mut last = stamps(&files);
    loop {
        // `before` is stamped before the reload reads the files: a change made while it
        // reads is then seen by the next poll instead of being taken as already applied.
        let (why, before) = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => ("SIGHUP", stamps(&files)),
            () = signals.renewed.notified() => ("identity renewed", stamps(&files)),
            _ = poll.tick() => {
                if stamps(&files) == last {
                    continue;
                }
                // A rotation writes a certificate and its key one after the other: let
                // both land before reading them.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let settled = stamps(&files);
                if settled.iter().any(Option::is_none) {
                    continue;
                }
                ("file changed", settled)
            }
        };
        match reloader.reload_file() {
            Ok(v) => tracing::info!(version = v, trigger = why, "config reloaded"),
            Err(e) => tracing::error!(trigger = why, error = %e, "config reload refused; the previous config stays"),
        }
        signals.config_changed.notify_one();
        let now_watched = watched();
        last = if now_watched == files { before } else { stamps(&now_watched) };
        files = now_watched;
    }
    Ok(reloader.snapshot().drain_timeout)
}

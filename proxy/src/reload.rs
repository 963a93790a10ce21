//! Applying a new static config while serving: parse and validate the file, build the new
//! snapshot off the hot path, bind any new listeners, swap, then retire what was removed.
//! A bad file is refused with the error logged; the old config keeps serving.

use crate::config::{self, ConfigError, Snapshot};
use crate::listener::{self, Workers};
use crate::telemetry;
use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listeners[{name}].address: cannot bind {addr}: {source}")]
    Bind { name: String, addr: std::net::SocketAddr, source: std::io::Error },
}

/// A file's identity for change detection (modification time and length).
pub fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reloads from `path`. Returns the new version.
pub fn reload(path: &Path, shared: &ArcSwap<Snapshot>, workers: &Workers) -> Result<u64, ReloadError> {
    let result = try_reload(path, shared, workers);
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(telemetry::CONFIG_RELOADS_TOTAL, "result" => outcome).increment(1);
    result
}

fn try_reload(path: &Path, shared: &ArcSwap<Snapshot>, workers: &Workers) -> Result<u64, ReloadError> {
    let bootstrap = config::load(path)?;
    let old = shared.load_full();
    let next = config::build(bootstrap, Some(&old), workers.len(), old.version + 1)?;

    // Listeners whose name, address and protocol stay keep their sockets and connections.
    let kept = |l: &config::Listener, other: &Snapshot| {
        other.listener(&l.name).is_some_and(|o| o.addr == l.addr && o.spec.protocol == l.spec.protocol)
    };
    let mut bound = Vec::new();
    for l in next.listeners.iter().filter(|l| !kept(l, &old)) {
        // An address the old config holds under another name is released first, below.
        let reuse = old.listeners.iter().any(|o| o.addr == l.addr);
        if !reuse {
            let sockets = listener::bind(l.addr, workers.len()).map_err(|source| ReloadError::Bind {
                name: l.name.to_string(),
                addr: l.addr,
                source,
            })?;
            bound.push((l.name.clone(), Some(sockets), l.addr));
        } else {
            bound.push((l.name.clone(), None, l.addr));
        }
    }
    let removed: Vec<_> = old.listeners.iter().filter(|l| !kept(l, &next)).map(|l| l.name.clone()).collect();
    let retired = old.removed_routes(&next);
    let drain = next.drain_timeout;
    let version = next.version;
    crate::resilience::health::start(&next);
    shared.store(Arc::new(next));

    for name in &removed {
        workers.stop_listener(name, drain);
    }
    for (name, sockets, addr) in bound {
        // With SO_REUSEPORT, an address moved between listener names can be bound while the
        // old sockets still drain.
        let sockets = match sockets {
            Some(s) => s,
            None => match listener::bind(addr, workers.len()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(listener = %name, %addr, error = %e, "cannot bind moved listener");
                    continue;
                }
            },
        };
        workers.start_listener(&name, sockets);
    }
    for life in retired {
        life.retire(drain);
    }
    metrics::gauge!(telemetry::CONFIG_VERSION, "type" => "static").set(version as f64);
    Ok(version)
}

//! Applying a new config while serving: the static file (reloaded on SIGHUP or change) merged
//! with what discovery delivered, validated, built into a new snapshot off the hot path;
//! then new listeners are bound, the snapshot swapped, and what was removed retired. A bad
//! config is refused with the error logged (or NACKed); the old config keeps serving.

use crate::config::{self, ConfigError, Snapshot};
use crate::discovery::Dynamic;
use crate::listener::{self, Workers};
use crate::telemetry;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use trellis_api::Bootstrap;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listeners[{name}].address: cannot bind {addr}: {source}")]
    Bind { name: String, addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    BindUdp(#[from] crate::h3::endpoint::BindError),
}

/// A file's identity for change detection: inode, length, modification time, and a hash of
/// the content (config and certificate files are small), so even a same-length rewrite
/// within one timestamp tick is noticed.
pub fn stamp(path: &Path) -> Option<(u64, u64, SystemTime, u64)> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let content = if m.len() <= 4 << 20 { std::fs::read(path).ok()? } else { Vec::new() };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    content.hash(&mut h);
    Some((m.ino(), m.len(), m.modified().ok()?, h.finish()))
}

/// Where the config comes from: the static file, plus (with a control plane) the resources
/// discovery delivered. Both paths end in [`Reloader::apply`].
pub struct Reloader {
    path: PathBuf,
    shared: Arc<ArcSwap<Snapshot>>,
    workers: Workers,
    h3: crate::h3::Endpoints,
    sources: Mutex<Sources>,
}

struct Sources {
    file: Bootstrap,
    dynamic: Dynamic,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        file: Bootstrap,
        shared: Arc<ArcSwap<Snapshot>>,
        workers: Workers,
        h3: crate::h3::Endpoints,
    ) -> Self {
        Self { path, shared, workers, h3, sources: Mutex::new(Sources { file, dynamic: Dynamic::default() }) }
    }

    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.load_full()
    }

    /// Re-reads the static file and applies it with the current dynamic resources.
    pub fn reload_file(&self) -> Result<u64, ReloadError> {
        let result = (|| {
            let file = config::load(&self.path)?;
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            let merged = sources.dynamic.merge_into(&file);
            let v = self.apply(merged)?;
            sources.file = file;
            Ok(v)
        })();
        count(&result);
        result
    }

    /// Applies resources from the control plane on top of the static file. On error nothing
    /// changes (the caller NACKs).
    pub fn apply_dynamic(&self, dynamic: Dynamic) -> Result<u64, ReloadError> {
        let result = (|| {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = dynamic.telemetry_for(sources.file.node.service.as_deref()) {
                check_telemetry(t)?;
            }
            let merged = dynamic.merge_into(&sources.file);
            let v = self.apply(merged)?;
            sources.dynamic = dynamic;
            Ok(v)
        })();
        count(&result);
        result
    }

    fn apply(&self, bootstrap: Bootstrap) -> Result<u64, ReloadError> {
        trellis_api::validate(&bootstrap).map_err(|e| ReloadError::Config(ConfigError::Invalid(e)))?;
        apply(bootstrap, &self.shared, &self.workers, &self.h3)
    }
}

/// The telemetry resource that will apply, checked first so that a refusal names it
/// (`telemetry[NAME].tracing.otlp.ca_file: …`) rather than the merged config's `tracing`.
fn check_telemetry(t: &trellis_api::Telemetry) -> Result<(), ConfigError> {
    let alone = Bootstrap { telemetry: vec![t.clone()], ..Bootstrap::default() };
    trellis_api::validate_resources(&alone).map_err(ConfigError::Invalid)?;
    match &t.tracing {
        Some(tracing) => {
            crate::trace::Tracer::check(tracing, &format!("telemetry[{}].tracing", t.name)).map_err(ConfigError::Build)
        }
        None => Ok(()),
    }
}

fn count(result: &Result<u64, ReloadError>) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(telemetry::CONFIG_RELOADS_TOTAL, "result" => outcome).increment(1);
}

fn apply(
    bootstrap: Bootstrap,
    shared: &ArcSwap<Snapshot>,
    workers: &Workers,
    h3: &crate::h3::Endpoints,
) -> Result<u64, ReloadError> {
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
    // HTTP/3 sides that start: a stop of the listener's TCP side stops them too.
    let udp = h3.bind(&next, |name| next.listener(name).is_some_and(|l| !kept(l, &old)))?;
    let removed: Vec<_> = old.listeners.iter().filter(|l| !kept(l, &next)).map(|l| l.name.clone()).collect();
    let retired = old.removed_routes(&next);
    let drain = next.drain_timeout;
    let version = next.version;
    crate::resilience::health::start(&next);
    next.publish();
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
    h3.apply(&shared.load(), udp, workers, drain);
    for life in retired {
        life.retire(drain);
    }
    metrics::gauge!(telemetry::CONFIG_VERSION, "type" => "static").set(version as f64);
    Ok(version)
}

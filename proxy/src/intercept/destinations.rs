//! What a transparent listener knows about original destinations: which are in the mesh
//! (by IP, with the identity their proxy presents) and which are known at all (for
//! `outbound_policy: registry_only`), as of one config; and the endpoint objects of the
//! destinations connections went to, whose pools outlive reloads.

use crate::upstream::{Cluster, Endpoint, UpstreamTls};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// The mesh and the registry as the config describes them.
#[derive(Debug, Default)]
pub struct Destinations {
    /// A mesh endpoint is named by its IP: every port of it is a mesh destination.
    mesh: HashMap<IpAddr, Arc<str>>,
    /// Every endpoint address of every cluster.
    known: HashSet<SocketAddr>,
}

impl Destinations {
    /// From the endpoints of `clusters` (static, control-plane and registered ones alike).
    pub fn new<'a>(clusters: impl IntoIterator<Item = &'a Arc<Cluster>>) -> Destinations {
        let mut d = Destinations::default();
        for c in clusters {
            for e in &c.endpoints {
                d.known.insert(e.addr);
                let Some(id) = &e.identity else { continue };
                let ip = e.addr.ip().to_canonical();
                match d.mesh.get(&ip) {
                    Some(other) if other != id => tracing::warn!(
                        %ip, identity = %id, kept = %other,
                        "two identities for one mesh IP; the first one is expected"
                    ),
                    Some(_) => {}
                    None => {
                        d.mesh.insert(ip, id.clone());
                    }
                }
            }
        }
        d
    }

    /// The identity of the proxy at `ip`, when it is in the mesh.
    pub fn identity(&self, ip: IpAddr) -> Option<&Arc<str>> {
        self.mesh.get(&ip.to_canonical())
    }

    /// Whether `addr` is in the registry: a mesh IP, or an endpoint of a cluster.
    pub fn known(&self, addr: SocketAddr) -> bool {
        self.identity(addr.ip()).is_some() || self.known.contains(&addr)
    }
}

/// At most this many original destinations keep their endpoint object (and idle pooled
/// connections); past it, the idle ones are forgotten.
const MAX_KEPT: usize = 4096;

/// The endpoint objects of original destinations, by address. One per listener, kept
/// across reloads so pooled connections (one h2 connection per mesh destination) survive.
#[derive(Debug)]
pub struct Passthrough {
    endpoints: Mutex<HashMap<SocketAddr, Arc<Endpoint>>>,
    workers: usize,
}

impl Passthrough {
    pub fn new(workers: usize) -> Passthrough {
        Passthrough { endpoints: Mutex::default(), workers }
    }

    /// The endpoint of `addr` in `cluster`, made on first use; reached over mTLS checking
    /// `identity` (with `tls`) when it is in the mesh. A destination whose identity changed
    /// gets a new endpoint object (new connections); a rotated certificate (new `tls`) is
    /// used from the next connection on.
    pub fn endpoint(
        &self,
        addr: SocketAddr,
        identity: Option<&Arc<str>>,
        tls: Option<Arc<UpstreamTls>>,
        cluster: &Cluster,
    ) -> Arc<Endpoint> {
        let mut all = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ep) = all.get(&addr)
            && ep.identity.as_deref() == identity.map(|i| &**i)
        {
            let current = ep.tls.load();
            if !same(current.as_ref(), tls.as_ref()) {
                ep.tls.store(tls);
            }
            return ep.clone();
        }
        if all.len() >= MAX_KEPT {
            all.retain(|_, e| e.in_flight() > 0);
        }
        let mut ep = Endpoint::new(addr, 1, None, cluster.settings, self.workers);
        ep.cluster = cluster.name.clone();
        ep.counts = cluster.counts.clone();
        ep.identity = identity.cloned();
        ep.tls.store(tls);
        let ep = Arc::new(ep);
        all.insert(addr, ep.clone());
        ep
    }
}

fn same(a: Option<&Arc<UpstreamTls>>, b: Option<&Arc<UpstreamTls>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use trellis_api as api;

    fn cluster(yaml: &str) -> Arc<Cluster> {
        let spec: api::Cluster = api::parse::parse(yaml).unwrap();
        let addrs = spec.endpoints.iter().map(|e| (e.address.parse().unwrap(), e, None)).collect();
        Arc::new(Cluster::build(&spec, addrs, None, 1, None, None))
    }

    #[test]
    fn mesh_destinations_are_named_by_ip_and_the_registry_by_address() {
        let mesh = cluster(
            "{ name: a, endpoints: [{ address: '10.0.0.2:4143', identity: 'spiffe://td/ns/x/sa/a' }, { address: '10.0.0.3:8080' }] }",
        );
        let d = Destinations::new([&mesh]);
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(d.identity(a("10.0.0.2:9999").ip()).map(|i| &**i), Some("spiffe://td/ns/x/sa/a"), "any port");
        assert_eq!(d.identity("::ffff:10.0.0.2".parse().unwrap()).map(|i| &**i), Some("spiffe://td/ns/x/sa/a"));
        assert_eq!(d.identity(a("10.0.0.3:8080").ip()), None);
        assert!(d.known(a("10.0.0.2:1")) && d.known(a("10.0.0.3:8080")));
        assert!(!d.known(a("10.0.0.3:8081")) && !d.known(a("10.0.0.9:8080")));
        assert!(!mesh.mesh, "not every endpoint has an identity");
    }

    #[test]
    fn destinations_keep_their_endpoint_until_the_identity_changes() {
        let pass = cluster("{ name: passthrough, endpoints: [] }");
        let p = Passthrough::new(1);
        let addr: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let id: Arc<str> = "spiffe://td/ns/x/sa/a".into();
        let first = p.endpoint(addr, Some(&id), None, &pass);
        assert!(Arc::ptr_eq(&first, &p.endpoint(addr, Some(&id), None, &pass)), "kept: its pools live on");
        assert_eq!(&*first.cluster, "passthrough");
        let other: Arc<str> = "spiffe://td/ns/x/sa/b".into();
        let changed = p.endpoint(addr, Some(&other), None, &pass);
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_eq!(changed.identity.as_deref(), Some("spiffe://td/ns/x/sa/b"));
        assert!(p.endpoint(addr, None, None, &pass).identity.is_none());
    }
}

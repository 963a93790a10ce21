//! What one proxy should hold, as a pure function of the store snapshot, the registered
//! endpoints and the proxy's service; its subscriptions; and the delta between what it
//! was sent and what it should hold now.
//!
//! Clusters are sent without their endpoints; every endpoint is an ENDPOINTS resource of
//! its own (`CLUSTER/ADDRESS`, trellis-api's `endpoints` module), so that when one endpoint
//! of a large cluster changes, the delta is that endpoint. Deltas compare bodies, not
//! versions: rewriting a cluster gives it a new revision, but only the endpoints whose body
//! changed are sent again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use trellis_api::discovery::{DiscoveryRequest, HeldResource, RemovedResource, Resource, ResourceType};
use trellis_api::endpoints;

use super::registry::Endpoints;
use crate::store::{Item, Snapshot};
use crate::stored::{Kind, Resource as Stored};

/// A resource's identity in a proxy's view.
pub type Key = (ResourceType, Arc<str>);

/// One resource of a view.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The store revision (or registration generation) the body was produced at.
    pub version: u64,
    pub body: Arc<str>,
}

/// Everything one proxy should hold. Views are shared between the streams of a service
/// (see `cache`); `id` tells shared views apart (0: the empty view, before any push).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub id: u64,
    /// The store revision the view was computed from: the responses' `system_version`.
    pub revision: u64,
    pub entries: BTreeMap<Key, Entry>,
}

/// A stored cluster as discovery sends it: the body without endpoints, and the name and
/// body of one ENDPOINTS resource per written endpoint. Made once per stored cluster and
/// kept on its store item, so every view shares these strings.
#[derive(Debug)]
pub struct ClusterParts {
    body: Arc<str>,
    endpoints: Vec<(Arc<str>, Arc<str>)>,
}

impl ClusterParts {
    fn of(item: &Item) -> ClusterParts {
        let Stored::Cluster(c) = &item.resource else {
            return ClusterParts { body: item.json.clone(), endpoints: Vec::new() };
        };
        // Serializing plain data cannot fail; an endpoint that somehow did would be left out
        // rather than stop discovery for every proxy.
        let mut value = item.resource.to_value();
        value["endpoints"] = serde_json::Value::Array(Vec::new());
        let endpoints = c
            .endpoints
            .iter()
            .filter_map(|e| {
                let body = serde_json::to_string(&endpoints::Body::written(e)).ok()?;
                Some((endpoints::name(&c.name, &e.address).into(), body.into()))
            })
            .collect();
        ClusterParts { body: value.to_string().into(), endpoints }
    }
}

/// The view of a proxy of `service`: the listeners meant for it (no `service`, or its
/// own), the routes, clusters and policies they reference, and the endpoints of those
/// clusters: the written ones, then registered ones at other addresses; and the telemetry
/// resource that selects it, if any. A `transparent`
/// proxy (one that intercepts its pod's traffic) also gets every registered sidecar, under
/// the cluster named after its service: the stored one, or an empty one made for it.
pub fn compute(snap: &Snapshot, registered: &Endpoints, service: Option<&str>, transparent: bool) -> View {
    let mut view = View { id: 0, revision: snap.revision(), entries: BTreeMap::new() };
    let add = |view: &mut View, kind: Kind, name: &str| -> bool {
        let Some(item) = snap.get(kind, name) else { return false };
        let entry = Entry { version: item.version, body: item.json.clone() };
        view.entries.insert((kind.resource_type(), name.into()), entry).is_none()
    };
    let mut routes = BTreeSet::new();
    let mut clusters = BTreeSet::new();
    for item in snap.list(Kind::Listener) {
        let Stored::Listener(l) = &item.resource else { continue };
        if l.service.as_deref().is_some_and(|s| Some(s) != service) {
            continue;
        }
        add(&mut view, Kind::Listener, &l.name);
        routes.extend(l.routes.iter().map(String::as_str));
        clusters.extend(l.cluster.as_deref());
        if let Some(p) = &l.policy {
            add(&mut view, Kind::Policy, p);
        }
    }
    for name in routes {
        if add(&mut view, Kind::Route, name)
            && let Some(Stored::Route(r)) = snap.get(Kind::Route, name).map(|i| &i.resource)
        {
            clusters.extend(r.backends.iter().map(|b| b.cluster.as_str()));
        }
    }
    for name in &clusters {
        if let Some(item) = snap.get(Kind::Cluster, name) {
            add_cluster(&mut view, name, item, registered);
        }
    }
    if let Some(t) = telemetry_for(snap, service) {
        add(&mut view, Kind::Telemetry, t);
    }
    if transparent {
        for (name, set) in &registered.services {
            if clusters.contains(name.as_str()) {
                continue;
            }
            match snap.get(Kind::Cluster, name) {
                Some(item) => add_cluster(&mut view, name, item, registered),
                None => {
                    let version = set.values().map(|r| r.version).max().unwrap_or_default();
                    let body = serde_json::json!({ "name": name, "endpoints": [] }).to_string().into();
                    view.entries.insert((ResourceType::Cluster, name.as_str().into()), Entry { version, body });
                    for r in set.values() {
                        let entry = Entry { version: r.version, body: r.body.clone() };
                        view.entries.insert((ResourceType::Endpoints, r.name.clone()), entry);
                    }
                }
            }
        }
    }
    view
}

/// The telemetry resource a proxy of `service` gets: the one selecting its service, else
/// the mesh-wide one (validation keeps each selector to one resource).
fn telemetry_for<'a>(snap: &'a Snapshot, service: Option<&str>) -> Option<&'a str> {
    let mut mesh_wide = None;
    for item in snap.list(Kind::Telemetry) {
        let Stored::Telemetry(t) = &item.resource else { continue };
        match t.service.as_deref() {
            Some(s) if Some(s) == service => return Some(&t.name),
            None if mesh_wide.is_none() => mesh_wide = Some(t.name.as_str()),
            _ => {}
        }
    }
    mesh_wide
}

/// A stored cluster, its written endpoints, and the registered ones at other addresses.
fn add_cluster(view: &mut View, name: &str, item: &Item, registered: &Endpoints) {
    let parts = item.discovery.get_or_init(|| ClusterParts::of(item));
    let entry = |body: &Arc<str>| Entry { version: item.version, body: body.clone() };
    view.entries.insert((ResourceType::Cluster, name.into()), entry(&parts.body));
    for (ep, body) in &parts.endpoints {
        view.entries.insert((ResourceType::Endpoints, ep.clone()), entry(body));
    }
    for r in registered.services.get(name).into_iter().flat_map(|set| set.values()) {
        // A written endpoint wins over a registration at the same address.
        view.entries
            .entry((ResourceType::Endpoints, r.name.clone()))
            .or_insert_with(|| Entry { version: r.version, body: r.body.clone() });
    }
}

const TYPES: [ResourceType; 6] = [
    ResourceType::Listener,
    ResourceType::Cluster,
    ResourceType::Route,
    ResourceType::Policy,
    ResourceType::Endpoints,
    ResourceType::Telemetry,
];

/// Which names of one type a proxy wants.
#[derive(Clone, Debug, Default, PartialEq)]
struct Sub {
    /// `None`: every name (the default).
    only: Option<BTreeSet<String>>,
    except: BTreeSet<String>,
}

/// A proxy's subscriptions: by default everything in its view. `subscribe` names narrow a
/// type to those names (and later ones add to them); `unsubscribe` names drop out. A
/// request of type UNSPECIFIED applies its names to every type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Subscriptions(BTreeMap<ResourceType, Sub>);

impl Subscriptions {
    /// Applies a request's subscribe/unsubscribe lists; `true` when anything changed.
    pub fn update(&mut self, req: &DiscoveryRequest) -> bool {
        if req.subscribe.is_empty() && req.unsubscribe.is_empty() {
            return false;
        }
        let before = self.clone();
        let types: Vec<ResourceType> = match ResourceType::try_from(req.r#type) {
            Ok(ResourceType::Unspecified) | Err(_) => TYPES.to_vec(),
            Ok(t) => vec![t],
        };
        for t in types {
            let sub = self.0.entry(t).or_default();
            for name in &req.subscribe {
                sub.except.remove(name);
                if let Some(only) = &mut sub.only {
                    only.insert(name.clone());
                }
            }
            if sub.only.is_none() && !req.subscribe.is_empty() {
                sub.only = Some(req.subscribe.iter().cloned().collect());
            }
            for name in &req.unsubscribe {
                if let Some(only) = &mut sub.only {
                    only.remove(name);
                }
                sub.except.insert(name.clone());
            }
        }
        *self != before
    }

    /// Everything in the view (the default): the proxy can share its service's view.
    pub fn is_all(&self) -> bool {
        self.0.values().all(|s| *s == Sub::default())
    }

    /// `view` without what the proxy did not subscribe to (a copy: narrowed proxies do
    /// not share views).
    pub fn filter(&self, view: &View) -> View {
        let entries = view
            .entries
            .iter()
            .filter(|((t, name), _)| {
                self.0.get(t).is_none_or(|s| {
                    !s.except.contains(&**name) && s.only.as_ref().is_none_or(|only| only.contains(&**name))
                })
            })
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        View { id: view.id, revision: view.revision, entries }
    }
}

/// What a resuming proxy holds (its first request's `initial_resources`), as a view to
/// compute its first delta from: a held resource whose body digest matches `view`'s shares
/// that entry (nothing to send); any other gets a body nothing equals, so the delta sends
/// it again, or removes it if `view` has no such resource.
pub fn held(held: Vec<HeldResource>, view: &View) -> View {
    let stale = || Entry { version: 0, body: Arc::from("") };
    let mut entries = BTreeMap::new();
    for h in held {
        let Ok(t) = ResourceType::try_from(h.r#type) else { continue };
        if t == ResourceType::Unspecified {
            continue;
        }
        let key: Key = (t, Arc::from(h.name));
        let entry = match view.entries.get(&key) {
            Some(e) if trellis_api::digest::digest(&e.body) == h.digest => e.clone(),
            _ => stale(),
        };
        entries.insert(key, entry);
    }
    View { id: 0, revision: 0, entries }
}

/// What one response carries: resources to add or update, names to remove.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    pub resources: Vec<Resource>,
    pub removed: Vec<RemovedResource>,
    /// About the encoded size of a response carrying it.
    pub size: usize,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.removed.is_empty()
    }

    /// Every key the delta touches (to forget after a NACK).
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        let key = |t: i32, name: &str| (ResourceType::try_from(t).unwrap_or_default(), Arc::from(name));
        self.resources
            .iter()
            .map(move |r| key(r.r#type, &r.name))
            .chain(self.removed.iter().map(move |r| key(r.r#type, &r.name)))
    }
}

/// What a proxy holding `sent` needs to hold `view`. Resources count as changed when their
/// body differs; keys in `dirty` (the proxy's copy is unknown after a NACK) are sent again,
/// or removed again, whatever the bodies say.
pub fn delta(sent: &View, dirty: &BTreeSet<Key>, view: &View) -> Delta {
    let resources = view
        .entries
        .iter()
        .filter(|(key, e)| {
            dirty.contains(*key)
                || sent.entries.get(*key).is_none_or(|s| !Arc::ptr_eq(&s.body, &e.body) && s.body != e.body)
        })
        .map(|((t, name), e)| Resource {
            r#type: *t as i32,
            name: name.to_string(),
            version: e.version.to_string(),
            body: e.body.to_string(),
        })
        .collect::<Vec<_>>();
    let gone = |key: &&Key| !view.entries.contains_key(*key);
    let removed = sent
        .entries
        .keys()
        .filter(gone)
        .chain(dirty.iter().filter(|k| !sent.entries.contains_key(*k)).filter(gone))
        .map(|(t, name)| RemovedResource { r#type: *t as i32, name: name.to_string() })
        .collect::<Vec<_>>();
    // Each entry also costs a tag and a length prefix in the response: a few bytes.
    let size = resources.iter().map(|r| prost::Message::encoded_len(r) + 4).sum::<usize>()
        + removed.iter().map(|r| prost::Message::encoded_len(r) + 4).sum::<usize>();
    Delta { resources, removed, size }
}

#[cfg(test)]
mod tests;

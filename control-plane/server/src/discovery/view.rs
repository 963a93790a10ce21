//! What one proxy should hold, as a pure function of the store snapshot, the registered
//! endpoints and the proxy's service; its subscriptions; and the delta between what it
//! was sent and what it should hold now.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use trellis_api::discovery::{DiscoveryRequest, RemovedResource, Resource, ResourceType};

use super::registry::Endpoints;
use crate::resource::{Kind, Resource as Stored};
use crate::store::Snapshot;

/// A resource's identity in a proxy's view.
pub type Key = (ResourceType, String);

/// One resource of a view.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub version: String,
    pub body: Arc<str>,
}

/// Everything one proxy should hold.
pub type View = BTreeMap<Key, Entry>;

/// The view of a proxy of `service`: the listeners meant for it (no `service`, or its
/// own), the routes, clusters and policies they reference, and the registered endpoints
/// of those clusters.
pub fn compute(snap: &Snapshot, endpoints: &Endpoints, service: Option<&str>) -> View {
    let mut view = View::new();
    let add = |view: &mut View, kind: Kind, name: &str| -> bool {
        let Some(item) = snap.get(kind, name) else { return false };
        let entry = Entry { version: item.version.to_string(), body: item.json.clone() };
        view.insert((kind.resource_type(), name.to_string()), entry).is_none()
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
    for name in clusters {
        add(&mut view, Kind::Cluster, name);
        if let Some(set) = endpoints.0.get(name) {
            let entry = Entry { version: set.version.to_string(), body: set.body.clone() };
            view.insert((ResourceType::Endpoints, name.to_string()), entry);
        }
    }
    view
}

const TYPES: [ResourceType; 5] =
    [ResourceType::Listener, ResourceType::Cluster, ResourceType::Route, ResourceType::Policy, ResourceType::Endpoints];

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

    /// Drops from `view` what the proxy did not subscribe to.
    pub fn filter(&self, view: &mut View) {
        view.retain(|(t, name), _| {
            self.0
                .get(t)
                .is_none_or(|s| !s.except.contains(name) && s.only.as_ref().is_none_or(|only| only.contains(name)))
        });
    }
}

/// Resources to add or update and names to remove so that a proxy holding `sent` holds
/// `view`; `sent` is updated to `view`. `None` when there is nothing to send.
pub fn delta(sent: &mut BTreeMap<Key, String>, view: &View) -> Option<(Vec<Resource>, Vec<RemovedResource>)> {
    let resources: Vec<Resource> = view
        .iter()
        .filter(|(key, e)| sent.get(*key) != Some(&e.version))
        .map(|((t, name), e)| Resource {
            r#type: *t as i32,
            name: name.clone(),
            version: e.version.clone(),
            body: e.body.to_string(),
        })
        .collect();
    let removed: Vec<RemovedResource> = sent
        .keys()
        .filter(|key| !view.contains_key(*key))
        .map(|(t, name)| RemovedResource { r#type: *t as i32, name: name.clone() })
        .collect();
    *sent = view.iter().map(|(k, e)| (k.clone(), e.version.clone())).collect();
    (!resources.is_empty() || !removed.is_empty()).then_some((resources, removed))
}

#[cfg(test)]
mod tests;

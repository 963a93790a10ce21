//! Validating the control plane's whole resource set, and blaming a write only for the
//! problems it brings.
//!
//! `validate_resources` sees one proxy's config, where two listeners on one address clash.
//! In the store, listeners for different services go to different proxies, so each group of
//! listeners a proxy may receive (those without `service` plus those of one service) is
//! checked on its own; clusters, routes and policies are checked once.

use std::collections::BTreeSet;

use trellis_api::{Bootstrap, ValidationError, validate_resources, validate_resources_offline};

/// Every problem in `b` seen as a control plane holding resources for many proxies.
#[cfg(test)]
pub fn problems(b: &Bootstrap) -> Vec<ValidationError> {
    problems_with(b, validate_resources)
}

/// [`problems`] with the given resource check (with or without DNS).
fn problems_with(
    b: &Bootstrap,
    validate_resources: fn(&Bootstrap) -> Result<(), Vec<ValidationError>>,
) -> Vec<ValidationError> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut keep = |errs: Vec<ValidationError>, only_listeners: bool| {
        for e in errs {
            if only_listeners && !e.field.starts_with("listeners[") {
                continue;
            }
            if seen.insert((e.field.clone(), e.reason.clone())) {
                out.push(e);
            }
        }
    };

    let shared = Bootstrap { listeners: Vec::new(), ..b.clone() };
    keep(validate_resources(&shared).err().unwrap_or_default(), false);
    if b.listeners.is_empty() {
        return out;
    }

    // Listener passes only need the names of what listeners reference; endpoints (whose
    // host names would be resolved again) were checked above.
    let mut names_only = shared;
    for c in &mut names_only.clusters {
        c.endpoints.clear();
    }
    let services: BTreeSet<Option<&str>> = b.listeners.iter().map(|l| l.service.as_deref()).collect();
    let groups: Vec<Option<&str>> = if services.iter().any(Option::is_some) {
        services.into_iter().flatten().map(Some).collect()
    } else {
        vec![None]
    };
    for group in groups {
        let listeners =
            b.listeners.iter().filter(|l| l.service.is_none() || l.service.as_deref() == group).cloned().collect();
        let pass = Bootstrap { listeners, ..names_only.clone() };
        keep(validate_resources(&pass).err().unwrap_or_default(), true);
    }
    out
}

/// The problems of `after` that `before` did not have: what a write would break. A
/// problem already present (say, an endpoint host that stopped resolving) does not block
/// unrelated writes.
pub fn new_problems(before: &Bootstrap, after: &Bootstrap) -> Vec<ValidationError> {
    new_problems_with(before, after, validate_resources)
}

/// [`new_problems`] without host-name lookups (see `validate_resources_offline`): for
/// changes another replica validated, read back from etcd.
pub fn new_problems_offline(before: &Bootstrap, after: &Bootstrap) -> Vec<ValidationError> {
    new_problems_with(before, after, validate_resources_offline)
}

fn new_problems_with(
    before: &Bootstrap,
    after: &Bootstrap,
    validate_resources: fn(&Bootstrap) -> Result<(), Vec<ValidationError>>,
) -> Vec<ValidationError> {
    let found = problems_with(after, validate_resources);
    if found.is_empty() {
        return found;
    }
    let old = problems_with(before, validate_resources);
    found.into_iter().filter(|e| !old.contains(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Bootstrap {
        trellis_api::parse_bootstrap(yaml).unwrap()
    }

    const BASE: &str = "clusters: [{name: c, endpoints: [{address: \"127.0.0.1:1\"}]}]\n\
                        routes: [{name: r, backends: [{cluster: c}]}]\n";

    #[test]
    fn listeners_of_different_services_may_share_an_address() {
        let b = config(&format!(
            "{BASE}listeners:\n\
             - {{name: a, address: \"0.0.0.0:4143\", service: a, routes: [r]}}\n\
             - {{name: b, address: \"0.0.0.0:4143\", service: b, routes: [r]}}\n"
        ));
        assert_eq!(problems(&b), vec![]);
    }

    #[test]
    fn a_shared_listener_clashes_with_every_service() {
        let b = config(&format!(
            "{BASE}listeners:\n\
             - {{name: all, address: \"0.0.0.0:4143\", routes: [r]}}\n\
             - {{name: b, address: \"0.0.0.0:4143\", service: b, routes: [r]}}\n"
        ));
        let errs = problems(&b);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].field.ends_with(".address"), "{errs:?}");
    }

    #[test]
    fn dangling_references_are_reported_once() {
        let b = config(
            "routes: [{name: r, backends: [{cluster: nope}]}]\n\
             listeners:\n\
             - {name: a, address: \"127.0.0.1:1\", service: a, routes: [r, x]}\n\
             - {name: b, address: \"127.0.0.1:2\", service: b, routes: [r]}\n",
        );
        let fields: Vec<String> = problems(&b).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["routes[r].backends[0].cluster", "listeners[a].routes[1]"]);
    }

    #[test]
    fn old_problems_do_not_block_a_write() {
        let before = config("routes: [{name: r, backends: [{cluster: gone}]}]\n");
        let after =
            config("routes: [{name: r, backends: [{cluster: gone}]}, {name: s, backends: [{cluster: other}]}]\n");
        let fields: Vec<String> = new_problems(&before, &after).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["routes[s].backends[0].cluster"]);
    }
}

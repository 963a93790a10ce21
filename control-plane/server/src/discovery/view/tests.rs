use super::*;
use crate::discovery::EndpointSet;

fn snapshot() -> Snapshot {
    let r = |kind, json: &str| Stored::parse(kind, json).unwrap();
    Snapshot::from_resources(
        7,
        vec![
            r(Kind::Policy, r#"{"name":"p","default":"allow"}"#),
            r(Kind::Cluster, r#"{"name":"a","endpoints":[]}"#),
            r(Kind::Cluster, r#"{"name":"b","endpoints":[]}"#),
            r(Kind::Cluster, r#"{"name":"db","endpoints":[]}"#),
            r(Kind::Cluster, r#"{"name":"unused","endpoints":[]}"#),
            r(Kind::Route, r#"{"name":"to-a","backends":[{"cluster":"a"}]}"#),
            r(Kind::Route, r#"{"name":"to-b","backends":[{"cluster":"b"}]}"#),
            r(Kind::Listener, r#"{"name":"out","address":"127.0.0.1:4140","routes":["to-a"]}"#),
            r(
                Kind::Listener,
                r#"{"name":"in-a","address":"0.0.0.0:4143","service":"a","routes":["to-b"],"policy":"p"}"#,
            ),
            r(Kind::Listener, r#"{"name":"in-b","address":"0.0.0.0:4143","service":"b","routes":["to-a"]}"#),
            r(
                Kind::Listener,
                r#"{"name":"sql","address":"127.0.0.1:5432","service":"b","protocol":"tcp","cluster":"db"}"#,
            ),
        ],
    )
}

fn names(view: &View) -> Vec<String> {
    view.keys().map(|(t, n)| format!("{}/{n}", t.as_str_name())).collect()
}

#[test]
fn a_proxy_gets_its_listeners_and_their_closure_only() {
    let snap = snapshot();
    let eps = Endpoints::default();
    assert_eq!(
        names(&compute(&snap, &eps, Some("a"))),
        ["LISTENER/in-a", "LISTENER/out", "CLUSTER/a", "CLUSTER/b", "ROUTE/to-a", "ROUTE/to-b", "POLICY/p"]
    );
    assert_eq!(
        names(&compute(&snap, &eps, Some("b"))),
        ["LISTENER/in-b", "LISTENER/out", "LISTENER/sql", "CLUSTER/a", "CLUSTER/db", "ROUTE/to-a"]
    );
    assert_eq!(names(&compute(&snap, &eps, None)), ["LISTENER/out", "CLUSTER/a", "ROUTE/to-a"]);
}

#[test]
fn registered_endpoints_of_clusters_in_the_closure_come_along() {
    let snap = snapshot();
    let set = |v| EndpointSet { version: v, body: r#"[{"address":"10.0.0.1:4143","weight":1}]"#.into() };
    let eps = Endpoints([("a".to_string(), set(3)), ("unused".to_string(), set(4))].into_iter().collect());
    let view = compute(&snap, &eps, None);
    let got = view.get(&(ResourceType::Endpoints, "a".into())).expect("endpoints of a");
    assert_eq!(got.version, "3");
    assert!(!view.contains_key(&(ResourceType::Endpoints, "unused".into())));
}

#[test]
fn deltas_carry_changes_and_removals_only() {
    let snap = snapshot();
    let eps = Endpoints::default();
    let mut sent = BTreeMap::new();
    let (all, removed) = delta(&mut sent, &compute(&snap, &eps, Some("a"))).unwrap();
    assert_eq!((all.len(), removed.len()), (7, 0));
    assert!(delta(&mut sent, &compute(&snap, &eps, Some("a"))).is_none(), "nothing changed");

    // Same store, seen as service b: in-a, to-b, b and p leave; in-b, sql and db arrive.
    let (added, removed) = delta(&mut sent, &compute(&snap, &eps, Some("b"))).unwrap();
    let added: Vec<&str> = added.iter().map(|r| r.name.as_str()).collect();
    let removed: Vec<&str> = removed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(added, ["in-b", "sql", "db"]);
    assert_eq!(removed, ["in-a", "b", "to-b", "p"]);
}

#[test]
fn subscriptions_narrow_and_drop_names() {
    let snap = snapshot();
    let mut subs = Subscriptions::default();
    let req = |t: ResourceType, sub: &[&str], unsub: &[&str]| DiscoveryRequest {
        r#type: t as i32,
        subscribe: sub.iter().map(|s| s.to_string()).collect(),
        unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert!(!subs.update(&req(ResourceType::Unspecified, &[], &[])), "empty = all");
    assert!(subs.update(&req(ResourceType::Listener, &["out"], &[])));
    assert!(subs.update(&req(ResourceType::Cluster, &[], &["b"])));
    let mut view = compute(&snap, &Endpoints::default(), Some("a"));
    subs.filter(&mut view);
    assert_eq!(names(&view), ["LISTENER/out", "CLUSTER/a", "ROUTE/to-a", "ROUTE/to-b", "POLICY/p"]);
}

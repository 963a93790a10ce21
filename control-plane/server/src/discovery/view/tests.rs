use super::held as held_view;
use super::*;
use crate::discovery::Registered;
use crate::discovery::cache::Views;
use crate::discovery::registry::Registry;
use crate::store::Store;
use std::time::Duration;

fn r(kind: Kind, json: &str) -> Stored {
    Stored::parse(kind, json).unwrap()
}

fn snapshot() -> Snapshot {
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
    view.entries.keys().map(|(t, n)| format!("{}/{n}", t.as_str_name())).collect()
}

/// Brings `sent` to `view` and returns the delta.
fn step(sent: &mut View, view: View) -> Delta {
    let d = delta(sent, &BTreeSet::new(), &view);
    *sent = view;
    d
}

#[test]
fn a_proxy_gets_its_listeners_and_their_closure_only() {
    let snap = snapshot();
    let eps = Endpoints::default();
    assert_eq!(
        names(&compute(&snap, &eps, Some("a"), false)),
        ["LISTENER/in-a", "LISTENER/out", "CLUSTER/a", "CLUSTER/b", "ROUTE/to-a", "ROUTE/to-b", "POLICY/p"]
    );
    assert_eq!(
        names(&compute(&snap, &eps, Some("b"), false)),
        ["LISTENER/in-b", "LISTENER/out", "LISTENER/sql", "CLUSTER/a", "CLUSTER/db", "ROUTE/to-a"]
    );
    assert_eq!(names(&compute(&snap, &eps, None, false)), ["LISTENER/out", "CLUSTER/a", "ROUTE/to-a"]);
}

#[test]
fn clusters_travel_without_endpoints_and_each_endpoint_alone() {
    let snap = Snapshot::from_resources(
        3,
        vec![
            r(
                Kind::Cluster,
                r#"{"name":"a","lb":"maglev","endpoints":[{"address":"10.0.0.1:80","weight":2},{"address":"10.0.0.2:80","zone":"z"}]}"#,
            ),
            r(Kind::Route, r#"{"name":"to-a","backends":[{"cluster":"a"}]}"#),
            r(Kind::Listener, r#"{"name":"out","address":"127.0.0.1:4140","routes":["to-a"]}"#),
        ],
    );
    let view = compute(&snap, &Endpoints::default(), None, false);
    let cluster: serde_json::Value =
        serde_json::from_str(&view.entries[&(ResourceType::Cluster, "a".into())].body).unwrap();
    assert_eq!((cluster["lb"].as_str(), cluster["endpoints"].as_array().map(Vec::len)), (Some("maglev"), Some(0)));
    let ep = |name: &str| view.entries[&(ResourceType::Endpoints, name.into())].clone();
    assert_eq!(&*ep("a/10.0.0.1:80").body, r#"{"address":"10.0.0.1:80","weight":2}"#);
    assert_eq!(&*ep("a/10.0.0.2:80").body, r#"{"address":"10.0.0.2:80","weight":1,"zone":"z"}"#);
    assert_eq!(ep("a/10.0.0.1:80").version, 3);
}

fn registered(service: &str, address: &str, version: u64) -> (String, Registered) {
    let body = format!(r#"{{"address":"{address}","weight":1,"registered":true}}"#);
    let name = trellis_api::endpoints::name(service, address).into();
    (address.to_string(), Registered { name, version, body: body.into() })
}

#[test]
fn registered_endpoints_of_clusters_in_the_closure_come_along_and_written_ones_win() {
    let snap = Snapshot::from_resources(
        7,
        vec![
            r(Kind::Cluster, r#"{"name":"a","endpoints":[{"address":"10.0.0.1:4143"}]}"#),
            r(Kind::Cluster, r#"{"name":"unused","endpoints":[]}"#),
            r(Kind::Route, r#"{"name":"to-a","backends":[{"cluster":"a"}]}"#),
            r(Kind::Listener, r#"{"name":"out","address":"127.0.0.1:4140","routes":["to-a"]}"#),
        ],
    );
    let set = |eps: Vec<(String, Registered)>| Arc::new(eps.into_iter().collect());
    let eps = Endpoints {
        generation: 4,
        services: [
            ("a".to_string(), set(vec![registered("a", "10.0.0.1:4143", 3), registered("a", "10.0.0.2:4143", 4)])),
            ("unused".to_string(), set(vec![registered("unused", "10.0.0.3:4143", 4)])),
        ]
        .into_iter()
        .collect(),
    };
    let view = compute(&snap, &eps, None, false);
    let written = &view.entries[&(ResourceType::Endpoints, "a/10.0.0.1:4143".into())];
    assert_eq!((written.version, &*written.body), (7, r#"{"address":"10.0.0.1:4143","weight":1}"#));
    let reg = &view.entries[&(ResourceType::Endpoints, "a/10.0.0.2:4143".into())];
    assert_eq!(reg.version, 4);
    assert!(reg.body.contains(r#""registered":true"#));
    assert!(!view.entries.keys().any(|(_, n)| n.starts_with("unused")));
}

#[test]
fn a_transparent_proxy_gets_every_registered_sidecar() {
    let snap = Snapshot::from_resources(
        7,
        vec![
            r(Kind::Cluster, r#"{"name":"a","endpoints":[]}"#),
            r(Kind::Cluster, r#"{"name":"b","lb":"round_robin","endpoints":[{"address":"10.0.0.9:80"}]}"#),
            r(Kind::Route, r#"{"name":"to-a","backends":[{"cluster":"a"}]}"#),
            r(Kind::Listener, r#"{"name":"out","address":"127.0.0.1:4140","routes":["to-a"]}"#),
        ],
    );
    let set = |eps: Vec<(String, Registered)>| Arc::new(eps.into_iter().collect());
    let eps = Endpoints {
        generation: 5,
        services: [
            ("a".to_string(), set(vec![registered("a", "10.0.0.1:4143", 3)])),
            ("b".to_string(), set(vec![registered("b", "10.0.0.2:4143", 4)])),
            ("c".to_string(), set(vec![registered("c", "10.0.0.3:4143", 5)])),
        ]
        .into_iter()
        .collect(),
    };
    assert_eq!(
        names(&compute(&snap, &eps, None, false)),
        ["LISTENER/out", "CLUSTER/a", "ROUTE/to-a", "ENDPOINTS/a/10.0.0.1:4143"]
    );
    let view = compute(&snap, &eps, None, true);
    assert_eq!(
        names(&view),
        [
            "LISTENER/out",
            "CLUSTER/a",
            "CLUSTER/b",
            "CLUSTER/c",
            "ROUTE/to-a",
            "ENDPOINTS/a/10.0.0.1:4143",
            "ENDPOINTS/b/10.0.0.2:4143",
            "ENDPOINTS/b/10.0.0.9:80",
            "ENDPOINTS/c/10.0.0.3:4143",
        ]
    );
    // A stored cluster comes whole; a service without one gets an empty cluster.
    assert!(view.entries[&(ResourceType::Cluster, "b".into())].body.contains("round_robin"));
    let c = &view.entries[&(ResourceType::Cluster, "c".into())];
    assert_eq!((c.version, &*c.body), (5, r#"{"endpoints":[],"name":"c"}"#));
}

#[test]
fn deltas_carry_changes_and_removals_only() {
    let snap = snapshot();
    let eps = Endpoints::default();
    let mut sent = View::default();
    let all = step(&mut sent, compute(&snap, &eps, Some("a"), false));
    assert_eq!((all.resources.len(), all.removed.len()), (7, 0));
    assert!(step(&mut sent, compute(&snap, &eps, Some("a"), false)).is_empty(), "nothing changed");

    // Same store, seen as service b: in-a, to-b, b and p leave; in-b, sql and db arrive.
    let d = step(&mut sent, compute(&snap, &eps, Some("b"), false));
    let added: Vec<&str> = d.resources.iter().map(|r| r.name.as_str()).collect();
    let removed: Vec<&str> = d.removed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(added, ["in-b", "sql", "db"]);
    assert_eq!(removed, ["in-a", "b", "to-b", "p"]);
}

/// A store holding a listener → route → cluster `big` with `n` endpoints, the last at `last`.
async fn big(store: &Store, n: u32, last: &str) {
    let mut eps: Vec<serde_json::Value> = (0..n - 1)
        .map(|i| serde_json::json!({ "address": format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255) }))
        .collect();
    eps.push(serde_json::json!({ "address": last }));
    let c = serde_json::json!({ "name": "big", "endpoints": eps }).to_string();
    store.put(r(Kind::Cluster, &c), None).await.unwrap();
    store.put(r(Kind::Route, r#"{"name":"to-big","backends":[{"cluster":"big"}]}"#), None).await.unwrap();
    store
        .put(r(Kind::Listener, r#"{"name":"out","address":"127.0.0.1:4140","routes":["to-big"]}"#), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn one_endpoint_changed_in_a_large_cluster_is_one_resource_and_removal_one_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    big(&store, 10_000, "10.200.0.1:8080").await;
    let eps = Endpoints::default();
    let mut sent = View::default();
    let first = step(&mut sent, compute(&store.snapshot(), &eps, None, false));
    assert_eq!(first.resources.len(), 3 + 10_000, "listener, route, cluster and every endpoint");

    // The last endpoint's weight changes: the cluster is rewritten, one endpoint is sent.
    let mut c: serde_json::Value =
        serde_json::from_str(&store.snapshot().get(Kind::Cluster, "big").unwrap().json).unwrap();
    c["endpoints"][9_999]["weight"] = 5.into();
    store.put(r(Kind::Cluster, &c.to_string()), None).await.unwrap();
    let d = step(&mut sent, compute(&store.snapshot(), &eps, None, false));
    assert_eq!(d.resources.len(), 1, "{:?}", d.resources);
    assert_eq!(d.resources[0].r#type, ResourceType::Endpoints as i32);
    assert_eq!(d.resources[0].name, "big/10.200.0.1:8080");
    assert_eq!(d.resources[0].body, r#"{"address":"10.200.0.1:8080","weight":5}"#);
    assert!(d.removed.is_empty());

    // It goes away: one removed name, nothing else.
    c["endpoints"].as_array_mut().unwrap().pop();
    store.put(r(Kind::Cluster, &c.to_string()), None).await.unwrap();
    let d = step(&mut sent, compute(&store.snapshot(), &eps, None, false));
    assert!(d.resources.is_empty(), "{:?}", d.resources);
    assert_eq!(
        d.removed,
        [RemovedResource { r#type: ResourceType::Endpoints as i32, name: "big/10.200.0.1:8080".into() }]
    );

    // A cluster setting changes: the cluster alone, no endpoint.
    c["lb"] = "round_robin".into();
    store.put(r(Kind::Cluster, &c.to_string()), None).await.unwrap();
    let d = step(&mut sent, compute(&store.snapshot(), &eps, None, false));
    let sent_names: Vec<&str> = d.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!((sent_names, d.removed.len()), (vec!["big"], 0));
}

#[test]
fn after_a_nack_the_refused_keys_go_again() {
    let snap = snapshot();
    let eps = Endpoints::default();
    let mut sent = View::default();
    step(&mut sent, compute(&snap, &eps, Some("a"), false));
    let next = compute(&snap, &eps, Some("b"), false);
    let refused = step(&mut sent, next.clone());
    let dirty: BTreeSet<Key> = refused.keys().collect();
    let again = delta(&sent, &dirty, &next);
    assert_eq!(again.resources.len(), refused.resources.len());
    assert_eq!(again.removed, refused.removed);
}

#[tokio::test]
async fn streams_of_a_service_share_one_view_and_one_delta() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    big(&store, 1_000, "10.200.0.1:8080").await;
    let registry = Registry::new(Duration::from_secs(1));
    let views = Views::new(store.clone(), registry.subscribe());
    let (v1, v2) = (views.current(Some("web"), false), views.current(Some("web"), false));
    assert!(Arc::ptr_eq(&v1, &v2), "computed once");
    let empty = View::default();
    assert!(Arc::ptr_eq(&views.delta(Some("web"), false, &empty, &v1), &views.delta(Some("web"), false, &empty, &v1)));

    store
        .put(r(Kind::Route, r#"{"name":"to-big","backends":[{"cluster":"big"}],"timeout":"1s"}"#), None)
        .await
        .unwrap();
    let v3 = views.current(Some("web"), false);
    assert!(!Arc::ptr_eq(&v1, &v3) && v3.id > v1.id);
    let d = views.delta(Some("web"), false, &v1, &v3);
    assert_eq!(d.resources.len(), 1);
    // The endpoint bodies are the store's, not copies.
    let key = (ResourceType::Endpoints, Arc::from("big/10.200.0.1:8080"));
    assert!(Arc::ptr_eq(&v1.entries[&key].body, &v3.entries[&key].body));
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
    assert!(subs.is_all());
    assert!(subs.update(&req(ResourceType::Listener, &["out"], &[])));
    assert!(subs.update(&req(ResourceType::Cluster, &[], &["b"])));
    assert!(!subs.is_all());
    let view = subs.filter(&compute(&snap, &Endpoints::default(), Some("a"), false));
    assert_eq!(names(&view), ["LISTENER/out", "CLUSTER/a", "ROUTE/to-a", "ROUTE/to-b", "POLICY/p"]);
}

#[test]
fn a_resuming_proxy_is_sent_what_differs_from_what_it_holds() {
    let snap = snapshot();
    let eps = Endpoints::default();
    let view = compute(&snap, &eps, Some("a"), false);
    let digest = |key: &Key| trellis_api::digest::digest(&view.entries[key].body);
    let mut keys = view.entries.keys();
    let (same, stale) = (keys.next().unwrap().clone(), keys.next().unwrap().clone());
    let held = vec![
        HeldResource { r#type: same.0 as i32, name: same.1.to_string(), digest: digest(&same) },
        HeldResource { r#type: stale.0 as i32, name: stale.1.to_string(), digest: digest(&stale) ^ 1 },
        HeldResource { r#type: ResourceType::Route as i32, name: "gone".into(), digest: 1 },
    ];
    let d = delta(&held_view(held, &view), &BTreeSet::new(), &view);
    let sent: BTreeSet<&str> = d.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent.len(), view.entries.len() - 1, "all but the one held as is");
    assert!(!sent.contains(&*same.1) && sent.contains(&*stale.1));
    assert_eq!(d.removed, [RemovedResource { r#type: ResourceType::Route as i32, name: "gone".into() }]);
}

#[test]
fn a_proxy_gets_the_telemetry_of_its_service_else_the_mesh_wide_one() {
    let eps = Endpoints::default();
    let telemetry = |resources: Vec<Stored>| Snapshot::from_resources(3, resources);
    let mesh = r(Kind::Telemetry, r#"{"name":"mesh","tracing":{"otlp":{"endpoint":"http://c:4317"}}}"#);
    let web = r(Kind::Telemetry, r#"{"name":"web","service":"web"}"#);
    let snap = telemetry(vec![mesh.clone(), web.clone()]);
    assert_eq!(names(&compute(&snap, &eps, Some("web"), false)), ["TELEMETRY/web"]);
    assert_eq!(names(&compute(&snap, &eps, Some("api"), false)), ["TELEMETRY/mesh"]);
    assert_eq!(names(&compute(&snap, &eps, None, false)), ["TELEMETRY/mesh"]);

    // Only a service's own: others get none. None at all: nothing is sent.
    let snap = telemetry(vec![web]);
    assert_eq!(names(&compute(&snap, &eps, Some("api"), false)), Vec::<String>::new());
    assert!(compute(&telemetry(vec![]), &eps, Some("web"), false).entries.is_empty());

    // The service's own resource arriving replaces the mesh-wide one in one delta.
    let mut sent = compute(&telemetry(vec![mesh.clone()]), &eps, Some("web"), false);
    let d = step(
        &mut sent,
        compute(&snap_with(&[mesh, r(Kind::Telemetry, r#"{"name":"w2","service":"web"}"#)]), &eps, Some("web"), false),
    );
    let added: Vec<&str> = d.resources.iter().map(|r| r.name.as_str()).collect();
    let removed: Vec<&str> = d.removed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!((added, removed), (vec!["w2"], vec!["mesh"]));
}

fn snap_with(resources: &[Stored]) -> Snapshot {
    Snapshot::from_resources(4, resources.to_vec())
}

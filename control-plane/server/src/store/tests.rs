use super::*;

fn res(kind: Kind, json: &str) -> Resource {
    Resource::parse(kind, json).unwrap()
}

fn cluster(name: &str, port: u16) -> Resource {
    res(Kind::Cluster, &format!(r#"{{"name":"{name}","endpoints":[{{"address":"127.0.0.1:{port}"}}]}}"#))
}

fn route(name: &str, cluster: &str) -> Resource {
    res(Kind::Route, &format!(r#"{{"name":"{name}","backends":[{{"cluster":"{cluster}"}}]}}"#))
}

#[tokio::test]
async fn writes_get_versions_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut rx = store.subscribe();
    assert_eq!(store.snapshot().revision(), 0);

    let w = store.put(cluster("a", 1), None).await.unwrap();
    assert_eq!((w.outcome, w.version), (Outcome::Created, 1));
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 1);

    let w = store.put(cluster("a", 1), None).await.unwrap();
    assert_eq!((w.outcome, w.version), (Outcome::Unchanged, 1), "identical: nothing written");
    assert!(!rx.has_changed().unwrap());

    let w = store.put(cluster("a", 2), None).await.unwrap();
    assert_eq!((w.outcome, w.version), (Outcome::Updated, 2));
    store.put(route("r", "a"), None).await.unwrap();
    store.put(cluster("b", 3), None).await.unwrap();
    assert_eq!(store.delete(Kind::Cluster, "b", None).await.unwrap().version, 5);
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let snap = store.snapshot();
    assert_eq!(snap.revision(), 5);
    assert_eq!(snap.get(Kind::Cluster, "a").map(|i| i.version), Some(2));
    assert_eq!(snap.get(Kind::Cluster, "a").map(|i| i.resource.clone()), Some(cluster("a", 2)));
    assert_eq!(snap.get(Kind::Route, "r").map(|i| i.version), Some(3));
    assert!(snap.get(Kind::Cluster, "b").is_none());
}

#[tokio::test]
async fn invalid_writes_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    match store.put(route("r", "nope"), None).await {
        Err(WriteError::Invalid(errs)) => assert_eq!(errs[0].field, "routes[r].backends[0].cluster"),
        other => panic!("expected invalid, got {other:?}"),
    }
    assert_eq!(store.snapshot().revision(), 0);
    assert!(store.snapshot().get(Kind::Route, "r").is_none());
}

#[tokio::test]
async fn deleting_a_referenced_resource_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.put(cluster("a", 1), None).await.unwrap();
    store.put(route("r", "a"), None).await.unwrap();
    match store.delete(Kind::Cluster, "a", None).await {
        Err(WriteError::Referenced(errs)) => assert_eq!(errs[0].field, "routes[r].backends[0].cluster"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(store.delete(Kind::Cluster, "zz", None).await, Err(WriteError::NotFound)));
    store.delete(Kind::Route, "r", None).await.unwrap();
    store.delete(Kind::Cluster, "a", None).await.unwrap();
}

#[tokio::test]
async fn if_match_guards_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let any = IfMatch::Any;
    assert!(matches!(
        store.put(cluster("a", 1), Some(any.clone())).await,
        Err(WriteError::Precondition { current: None })
    ));
    store.put(cluster("a", 1), None).await.unwrap();
    let stale = IfMatch::Versions(vec![7]);
    assert!(matches!(
        store.put(cluster("a", 2), Some(stale.clone())).await,
        Err(WriteError::Precondition { current: Some(1) })
    ));
    assert!(matches!(
        store.delete(Kind::Cluster, "a", Some(stale.clone())).await,
        Err(WriteError::Precondition { .. })
    ));
    store.put(cluster("a", 2), Some(IfMatch::Versions(vec![1]))).await.unwrap();
    store.delete(Kind::Cluster, "a", Some(IfMatch::Versions(vec![2]))).await.unwrap();
}

//! The control plane: REST CRUD with validation, ETags, auth and limits; durability across
//! kill -9 of the real binary; discovery streams (closure per service, deltas, ACK/NACK,
//! sidecar endpoints with a grace period, coalesced pushes).
//!
//! Most tests run the library in-process (`trellis_control_plane::start`); those named
//! `binary_*` spawn `trellis control-plane`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use trellis_api::discovery::discovery_client::DiscoveryClient;
use trellis_api::discovery::{DiscoveryRequest, DiscoveryResponse, HeldResource, Node, ResourceType};
use trellis_control_plane::client::{Answer, Client};
use trellis_control_plane::{Options, Running};
use trellis_testkit::{ControlPlane, blocking, in_process_control_plane, signal, wait_exit, within};

// ---------- helpers ----------

/// An in-process control plane on ephemeral ports.
struct Cp {
    running: Option<Running>,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Cp {
    async fn start() -> Cp {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tune: impl FnOnce(&mut Options)) -> Cp {
        let mut token = None;
        let (running, dir) = in_process_control_plane(|opts| {
            tune(opts);
            token = opts.token_file.as_ref().map(|p| std::fs::read_to_string(p).unwrap().trim().to_string());
        })
        .await;
        let client = Client::new(&format!("http://{}", running.api_addr()), token).unwrap();
        Cp { running: Some(running), client, _dir: dir }
    }

    fn xds(&self) -> SocketAddr {
        self.running.as_ref().unwrap().xds_addr()
    }

    async fn req(&self, method: Method, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Answer {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.client.send(method, path, body, headers).await.unwrap()
    }

    async fn put(&self, path: &str, body: Value) -> Answer {
        self.req(Method::PUT, path, Some(body), &[]).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.req(Method::GET, path, None, &[]).await
    }

    async fn ok_put(&self, path: &str, body: Value) -> u64 {
        let a = self.put(path, body).await;
        assert!(a.status.is_success(), "PUT {path}: {} {}", a.status, String::from_utf8_lossy(&a.body));
        a.etag().expect("an ETag")
    }

    async fn proxy(&self, id: &str) -> Option<Value> {
        let proxies = self.client.proxies().await.unwrap();
        proxies.into_iter().find(|p| p["id"] == id)
    }

    async fn stop(mut self) {
        self.running.take().unwrap().stop().await.unwrap();
    }
}

fn cluster(port: u16) -> Value {
    json!({ "endpoints": [{ "address": format!("127.0.0.1:{port}") }] })
}

fn error_of(a: &Answer) -> (String, Option<String>) {
    let v = a.json().unwrap();
    (v["error"].as_str().unwrap().to_string(), v["field"].as_str().map(str::to_string))
}

/// A discovery stream, as a proxy would hold it.
struct Xds {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

fn node(id: &str, service: &str, inbound: &str) -> Node {
    Node {
        id: id.into(),
        service: service.into(),
        zone: "z1".into(),
        inbound_address: inbound.into(),
        transparent: false,
    }
}

impl Xds {
    async fn connect(addr: SocketAddr, node: Node, token: Option<&str>) -> Result<Xds, tonic::Status> {
        Self::connect_with(addr, DiscoveryRequest { node: Some(node), ..Default::default() }, token).await
    }

    /// A stream whose first request is `first`.
    async fn connect_with(
        addr: SocketAddr,
        first: DiscoveryRequest,
        token: Option<&str>,
    ) -> Result<Xds, tonic::Status> {
        let mut client = DiscoveryClient::connect(format!("http://{addr}")).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let requests = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut req = tonic::Request::new(requests);
        if let Some(t) = token {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let rx = client.stream(req).await?.into_inner();
        Ok(Xds { tx, rx })
    }

    /// The next response, or `None` if none comes within `limit`.
    async fn next(&mut self, limit: Duration) -> Option<DiscoveryResponse> {
        match tokio::time::timeout(limit, self.rx.message()).await {
            Ok(Ok(Some(r))) => Some(r),
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => None,
        }
    }

    async fn answer(&self, r: &DiscoveryResponse, error: &str) {
        let req = DiscoveryRequest { response_nonce: r.nonce.clone(), error: error.into(), ..Default::default() };
        self.tx.send(req).await.unwrap();
    }
}

fn names(r: &DiscoveryResponse, t: ResourceType) -> Vec<String> {
    let mut n: Vec<String> = r.resources.iter().filter(|x| x.r#type == t as i32).map(|x| x.name.clone()).collect();
    n.sort();
    n
}

// ---------- REST ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_round_trip_with_etags() {
    let cp = Cp::start().await;
    let created = cp.put("/v1/clusters/web", cluster(8080)).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let v1 = created.etag().unwrap();
    assert_eq!(created.json().unwrap()["name"], "web", "name taken from the path");

    let got = cp.get("/v1/clusters/web").await;
    assert_eq!((got.status, got.etag()), (StatusCode::OK, Some(v1)));
    assert_eq!(got.json().unwrap()["endpoints"][0]["address"], "127.0.0.1:8080");
    assert_eq!(got.json().unwrap()["lb"], "peak_ewma", "stored with defaults filled in");

    let same =
        cp.put("/v1/clusters/web", json!({ "name": "web", "endpoints": [{ "address": "127.0.0.1:8080" }] })).await;
    assert_eq!((same.status, same.etag()), (StatusCode::OK, Some(v1)), "identical write: unchanged");

    let updated = cp.put("/v1/clusters/web", cluster(8081)).await;
    assert_eq!(updated.status, StatusCode::OK);
    let v2 = updated.etag().unwrap();
    assert!(v2 > v1);

    cp.ok_put("/v1/routes/all", json!({ "backends": [{ "cluster": "web" }] })).await;
    let list = cp.get("/v1/clusters").await;
    assert_eq!(list.status, StatusCode::OK);
    let list = list.json().unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["versions"]["web"], v2);

    assert_eq!(cp.req(Method::DELETE, "/v1/routes/all", None, &[]).await.status, StatusCode::OK);
    assert_eq!(cp.req(Method::DELETE, "/v1/clusters/web", None, &[]).await.status, StatusCode::OK);
    assert_eq!(cp.get("/v1/clusters/web").await.status, StatusCode::NOT_FOUND);
    let again = cp.req(Method::DELETE, "/v1/clusters/web", None, &[]).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert!(error_of(&again).0.contains("web"));
    assert_eq!(cp.get("/v1/gateways").await.status, StatusCode::NOT_FOUND);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_writes_name_the_field_and_store_nothing() {
    let cp = Cp::start().await;
    let bad = cp.put("/v1/clusters/web", json!({ "endpoints": [{ "adress": "127.0.0.1:1" }] })).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let (error, field) = error_of(&bad);
    assert_eq!(field.as_deref(), Some("clusters[web].endpoints[0].adress"), "{error}");
    assert!(error.contains("unknown field"), "{error}");

    let renamed = cp.put("/v1/clusters/web", json!({ "name": "other", "endpoints": [] })).await;
    assert_eq!(renamed.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&renamed).1.as_deref(), Some("name"));

    let range = cp.put("/v1/routes/r", json!({ "backends": [{ "cluster": "c" }], "retry": { "attempts": 0 } })).await;
    assert_eq!(range.status, StatusCode::BAD_REQUEST);

    let not_json = cp.client.send(Method::PUT, "/v1/clusters/web", Some(b"{nope".to_vec()), &[]).await.unwrap();
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert!(not_json.json().unwrap()["error"].is_string(), "4xx bodies are JSON");

    assert_eq!(cp.get("/v1/clusters/web").await.status, StatusCode::NOT_FOUND);
    let list = cp.get("/v1/clusters").await.json().unwrap();
    assert_eq!((list["revision"].as_u64(), list["items"].as_array().map(Vec::len)), (Some(0), Some(0)));
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangling_references_are_refused() {
    let cp = Cp::start().await;
    let dangling = cp.put("/v1/routes/api", json!({ "backends": [{ "cluster": "x" }] })).await;
    assert_eq!(dangling.status, StatusCode::BAD_REQUEST);
    let (error, field) = error_of(&dangling);
    assert_eq!(field.as_deref(), Some("routes[api].backends[0].cluster"));
    assert_eq!(error, r#"routes[api].backends[0].cluster: no cluster named "x""#);

    cp.ok_put("/v1/clusters/x", cluster(1)).await;
    cp.ok_put("/v1/routes/api", json!({ "backends": [{ "cluster": "x" }] })).await;
    let gone = cp.req(Method::DELETE, "/v1/clusters/x", None, &[]).await;
    assert_eq!(gone.status, StatusCode::CONFLICT);
    assert_eq!(error_of(&gone).1.as_deref(), Some("routes[api].backends[0].cluster"));
    assert_eq!(cp.get("/v1/clusters/x").await.status, StatusCode::OK, "still there");

    // Listeners of different services may share an address (they go to different proxies).
    for svc in ["a", "b"] {
        let l = json!({ "address": "0.0.0.0:4143", "service": svc, "routes": ["api"] });
        cp.ok_put(&format!("/v1/listeners/in-{svc}"), l).await;
    }
    let shared = cp.put("/v1/listeners/all", json!({ "address": "0.0.0.0:4143", "routes": ["api"] })).await;
    assert_eq!(shared.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&shared).1.as_deref(), Some("listeners[all].address"));
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_mismatch_is_412() {
    let cp = Cp::start().await;
    let v = cp.ok_put("/v1/clusters/web", cluster(1)).await;
    let stale = format!("\"{}\"", v + 100);
    let current = format!("\"{v}\"");
    let a = cp.req(Method::PUT, "/v1/clusters/web", Some(cluster(2)), &[("if-match", &stale)]).await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED);
    assert!(a.json().unwrap()["error"].is_string());
    let a = cp.req(Method::DELETE, "/v1/clusters/web", None, &[("if-match", &stale)]).await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED);
    let a = cp.req(Method::PUT, "/v1/clusters/new", Some(cluster(2)), &[("if-match", "*")]).await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED, "If-Match: * needs an existing resource");
    let a = cp.req(Method::PUT, "/v1/clusters/web", Some(cluster(2)), &[("if-match", &current)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let now = format!("\"{}\"", a.etag().unwrap());
    let a = cp.req(Method::DELETE, "/v1/clusters/web", None, &[("if-match", &now)]).await;
    assert_eq!(a.status, StatusCode::OK);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_except_for_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let cp = Cp::start_with(|o| o.token_file = Some(token_file.clone())).await;
    let base = format!("http://{}", cp.running.as_ref().unwrap().api_addr());

    let anonymous = Client::new(&base, None).unwrap();
    let wrong = Client::new(&base, Some("nope".into())).unwrap();
    assert_eq!(anonymous.send(Method::GET, "/healthz", None, &[]).await.unwrap().status, StatusCode::OK);
    for (client, path) in [(&anonymous, "/v1/clusters"), (&wrong, "/v1/clusters"), (&anonymous, "/openapi.json")] {
        let a = client.send(Method::GET, path, None, &[]).await.unwrap();
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(a.json().unwrap()["error"].is_string());
    }
    let a = anonymous.send(Method::PUT, "/v1/clusters/x", Some(b"{}".to_vec()), &[]).await.unwrap();
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(cp.get("/v1/clusters").await.status, StatusCode::OK, "the right token passes");

    // Discovery wants it too.
    let denied = Xds::connect(cp.xds(), node("p", "", ""), None).await.err().expect("refused");
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let denied = Xds::connect(cp.xds(), node("p", "", ""), Some("nope")).await.err().expect("refused");
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let mut ok = Xds::connect(cp.xds(), node("p", "", ""), Some("s3cret")).await.unwrap();
    assert!(ok.next(Duration::from_secs(2)).await.is_some());
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_one_mib_are_413() {
    let cp = Cp::start().await;
    let big = format!(r#"{{"endpoints": [], "pad": "{}"}}"#, "x".repeat(1_100_000));
    let a = cp.client.send(Method::PUT, "/v1/clusters/big", Some(big.into_bytes()), &[]).await.unwrap();
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.json().unwrap()["error"].is_string());
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_path() {
    let cp = Cp::start().await;
    let doc = cp.client.get_json("/openapi.json").await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in ["/healthz", "/openapi.json", "/v1/{kind}", "/v1/{kind}/{name}", "/v1/proxies", "/v1/certificates"] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    for m in ["get", "put", "delete"] {
        assert!(paths["/v1/{kind}/{name}"].get(m).is_some(), "{m} missing");
    }
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_signed_from_csrs() {
    let cp = Cp::start().await;
    let id = trellis_certs::SpiffeId::workload("trellis.local", "default", "web").unwrap();
    let csr = trellis_certs::new_csr(&id).unwrap();
    let signed = cp.req(Method::POST, "/v1/certificates", Some(json!({ "csr": csr.csr_pem, "ttl": "1h" })), &[]).await;
    assert_eq!(signed.status, StatusCode::OK, "{}", String::from_utf8_lossy(&signed.body));
    let pem = signed.json().unwrap()["certificate"].as_str().unwrap().to_string();
    let chain = trellis_certs::inspect_chain(pem.as_bytes()).unwrap();
    assert_eq!(chain.len(), 2, "leaf then CA");
    assert_eq!(chain[0].spiffe_id.as_ref(), Some(&id));

    let bad = cp.req(Method::POST, "/v1/certificates", Some(json!({ "csr": "not a csr" })), &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&bad).1.as_deref(), Some("csr"));

    // Nobody gets the control plane's identity (or anything in its namespace) this way.
    let own = trellis_certs::SpiffeId::workload("trellis.local", "trellis-system", "control-plane").unwrap();
    let csr = trellis_certs::new_csr(&own).unwrap();
    let refused = cp.req(Method::POST, "/v1/certificates", Some(json!({ "csr": csr.csr_pem })), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(error_of(&refused).0.contains("trellis-system"), "{:?}", error_of(&refused));
    cp.stop().await;
}

// ---------- discovery ----------

/// Two services' inbound listeners on one address, each routing to the other's cluster,
/// plus an outbound listener for everyone.
async fn two_services(cp: &Cp) {
    for svc in ["a", "b"] {
        cp.ok_put(&format!("/v1/clusters/{svc}"), json!({ "endpoints": [] })).await;
        cp.ok_put(&format!("/v1/routes/to-{svc}"), json!({ "backends": [{ "cluster": svc }] })).await;
    }
    cp.ok_put("/v1/listeners/in-a", json!({ "address": "0.0.0.0:4143", "service": "a", "routes": ["to-b"] })).await;
    cp.ok_put("/v1/listeners/in-b", json!({ "address": "0.0.0.0:4143", "service": "b", "routes": ["to-a"] })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_gets_its_closure_only() {
    let cp = Cp::start().await;
    two_services(&cp).await;
    cp.ok_put("/v1/clusters/unused", json!({ "endpoints": [] })).await;
    let mut a = Xds::connect(cp.xds(), node("a-0", "a", ""), None).await.unwrap();
    let mut b = Xds::connect(cp.xds(), node("b-0", "b", ""), None).await.unwrap();
    let ra = a.next(Duration::from_secs(2)).await.unwrap();
    let rb = b.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(names(&ra, ResourceType::Listener), ["in-a"]);
    assert_eq!(names(&ra, ResourceType::Route), ["to-b"]);
    assert_eq!(names(&ra, ResourceType::Cluster), ["b"]);
    assert_eq!(names(&rb, ResourceType::Listener), ["in-b"]);
    assert_eq!(names(&rb, ResourceType::Cluster), ["a"]);
    assert_eq!(ra.resources.len(), 3);
    assert_eq!(ra.system_version, "7");
    let body: Value = serde_json::from_str(&ra.resources[0].body).unwrap();
    assert!(body.get("name").is_some(), "bodies are the resource JSON");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_proxy_gets_only_what_differs_from_what_it_holds() {
    let cp = Cp::start().await;
    two_services(&cp).await;
    cp.ok_put("/v1/clusters/b", cluster(9000)).await;
    let mut a = Xds::connect(cp.xds(), node("a-0", "a", ""), None).await.unwrap();
    let first = a.next(Duration::from_secs(2)).await.unwrap();
    assert!(!first.resumed, "nothing held: the whole view");
    let holding = |r: &DiscoveryResponse| -> Vec<HeldResource> {
        let digest = trellis_api::digest::digest;
        r.resources
            .iter()
            .map(|x| HeldResource { r#type: x.r#type, name: x.name.clone(), digest: digest(&x.body) })
            .collect()
    };
    drop(a);

    // It holds everything current: the first response is empty, marked resumed.
    let resume =
        |held| DiscoveryRequest { node: Some(node("a-0", "a", "")), initial_resources: held, ..Default::default() };
    let mut again = Xds::connect_with(cp.xds(), resume(holding(&first)), None).await.unwrap();
    let r = again.next(Duration::from_secs(2)).await.unwrap();
    assert!(r.resumed && r.resources.is_empty() && r.removed.is_empty(), "{r:?}");
    drop(again);

    // One body it holds is stale and one resource is no longer in its view: exactly those.
    let mut held = holding(&first);
    let stale = held.iter().position(|h| h.r#type == ResourceType::Endpoints as i32).unwrap();
    held[stale].digest ^= 1;
    let stale_name = held[stale].name.clone();
    held.push(HeldResource { r#type: ResourceType::Route as i32, name: "gone".into(), digest: 7 });
    let mut again = Xds::connect_with(cp.xds(), resume(held), None).await.unwrap();
    let r = again.next(Duration::from_secs(2)).await.unwrap();
    assert!(r.resumed);
    assert_eq!(r.resources.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), [stale_name.as_str()]);
    assert_eq!(r.removed.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["gone"]);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_write_reaches_the_proxy_as_a_delta_within_a_second() {
    let cp = Cp::start().await;
    two_services(&cp).await;
    let mut a = Xds::connect(cp.xds(), node("a-0", "a", ""), None).await.unwrap();
    let first = a.next(Duration::from_secs(2)).await.unwrap();
    a.answer(&first, "").await;

    let started = Instant::now();
    let v = cp.ok_put("/v1/clusters/b", cluster(9000)).await;
    let delta = a.next(Duration::from_secs(1)).await.expect("a delta within 1 s");
    eprintln!("delta after {:?}", started.elapsed());
    // The cluster's settings did not change, its endpoint list did: one ENDPOINTS resource.
    assert_eq!(delta.resources.len(), 1, "only what changed: {delta:?}");
    assert_eq!(
        (delta.resources[0].name.as_str(), delta.resources[0].version.clone()),
        ("b/127.0.0.1:9000", v.to_string())
    );
    assert_eq!(delta.system_version, v.to_string());
    assert_ne!(delta.nonce, first.nonce);

    // Writes outside the closure send nothing.
    cp.ok_put("/v1/clusters/a", cluster(9001)).await;
    assert!(a.next(Duration::from_millis(400)).await.is_none());

    // Removing a listener from the view removes its closure.
    cp.ok_put("/v1/listeners/in-a", json!({ "address": "0.0.0.0:4143", "service": "c", "routes": ["to-b"] })).await;
    let delta = a.next(Duration::from_secs(1)).await.unwrap();
    let mut removed: Vec<String> = delta.removed.iter().map(|r| r.name.clone()).collect();
    removed.sort();
    assert_eq!(removed, ["b", "b/127.0.0.1:9000", "in-a", "to-b"], "the cluster leaves with its endpoints");

    a.answer(&delta, "").await;
    let acked = within(Duration::from_secs(2), async {
        loop {
            let p = cp.proxy("a-0").await.unwrap();
            if p["acked_version"].as_u64() == delta.system_version.parse().ok() {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(acked["connected"], true);
    assert_eq!(acked["service"], "a");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_shows_in_proxies() {
    let cp = Cp::start().await;
    two_services(&cp).await;
    let mut a = Xds::connect(cp.xds(), node("a-0", "a", ""), None).await.unwrap();
    let first = a.next(Duration::from_secs(2)).await.unwrap();
    a.answer(&first, "listeners[in-a]: cannot bind").await;
    let nack = within(Duration::from_secs(2), async {
        loop {
            if let Some(n) = cp.proxy("a-0").await.map(|p| p["last_nack"].clone()).filter(|n| !n.is_null()) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(nack["error"], "listeners[in-a]: cannot bind");
    assert_eq!(nack["version"].to_string(), first.system_version);
    assert!(nack["at"].as_str().unwrap().ends_with('Z'));
    let p = cp.proxy("a-0").await.unwrap();
    assert!(p["acked_version"].is_null(), "{p}");
    assert_eq!(p["sent_version"].to_string(), first.system_version);

    // The proxy kept its old config: nothing is pushed again until something changes, and
    // then the refused resources come again with the change.
    assert!(a.next(Duration::from_millis(300)).await.is_none(), "no retry loop");
    cp.ok_put("/v1/clusters/b", cluster(9000)).await;
    let again = a.next(Duration::from_secs(1)).await.unwrap();
    // The three refused (in-a, to-b, b) and b's new endpoint.
    assert_eq!(again.resources.len(), 4, "{again:?}");
    a.answer(&again, "").await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_endpoints_come_and_go_after_the_grace_period() {
    let cp = Cp::start_with(|o| o.endpoint_grace = Duration::from_secs(1)).await;
    cp.ok_put("/v1/clusters/web", json!({ "endpoints": [] })).await;
    cp.ok_put("/v1/routes/to-web", json!({ "backends": [{ "cluster": "web" }] })).await;
    cp.ok_put("/v1/listeners/out", json!({ "address": "127.0.0.1:4140", "routes": ["to-web"] })).await;

    let mut gw = Xds::connect(cp.xds(), node("gw", "", ""), None).await.unwrap();
    let first = gw.next(Duration::from_secs(2)).await.unwrap();
    assert!(names(&first, ResourceType::Endpoints).is_empty());

    let mut sidecar = Xds::connect(cp.xds(), node("web-0", "web", "127.0.0.1:18080"), None).await.unwrap();
    sidecar.next(Duration::from_secs(2)).await.unwrap();
    let push = gw.next(Duration::from_secs(1)).await.expect("endpoints pushed");
    assert_eq!(names(&push, ResourceType::Endpoints), ["web/127.0.0.1:18080"]);
    let body: Value = serde_json::from_str(&push.resources[0].body).unwrap();
    assert_eq!(body, json!({ "address": "127.0.0.1:18080", "weight": 1, "zone": "z1", "registered": true }));
    let p = cp.proxy("web-0").await.unwrap();
    assert_eq!((p["connected"].clone(), p["inbound_address"].clone()), (json!(true), json!("127.0.0.1:18080")));

    drop(sidecar);
    let gone = Instant::now();
    assert!(gw.next(Duration::from_millis(600)).await.is_none(), "kept during the grace period");
    let push = gw.next(Duration::from_secs(3)).await.expect("endpoint removed after the grace");
    eprintln!("endpoint removed {:?} after the stream ended", gone.elapsed());
    assert_eq!(push.removed.len(), 1);
    assert_eq!(
        (push.removed[0].r#type, push.removed[0].name.as_str()),
        (ResourceType::Endpoints as i32, "web/127.0.0.1:18080")
    );
    assert_eq!(cp.proxy("web-0").await.unwrap()["connected"], false);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_is_coalesced_into_few_pushes() {
    let cp = Cp::start().await;
    two_services(&cp).await;
    let mut a = Xds::connect(cp.xds(), node("a-0", "a", ""), None).await.unwrap();
    a.next(Duration::from_secs(2)).await.unwrap();
    let mut last = 0;
    for i in 0..20 {
        last = cp.ok_put("/v1/clusters/b", cluster(9000 + i)).await;
    }
    let mut pushes = Vec::new();
    while let Some(r) = a.next(Duration::from_millis(800)).await {
        pushes.push(r);
    }
    eprintln!("20 writes → {} pushes", pushes.len());
    assert!(!pushes.is_empty() && pushes.len() <= 5, "{} pushes", pushes.len());
    let final_push = pushes.last().unwrap();
    assert_eq!(final_push.system_version, last.to_string());
    assert_eq!(names(final_push, ResourceType::Endpoints), ["b/127.0.0.1:9019"]);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_comes_in_parts_with_one_nonce() {
    let cp = Cp::start().await;
    let eps: Vec<Value> =
        (0..2_000).map(|i| json!({ "address": format!("10.0.{}.{}:8080", i >> 8, i & 255) })).collect();
    cp.ok_put("/v1/clusters/big", json!({ "endpoints": eps })).await;
    cp.ok_put("/v1/routes/to-big", json!({ "backends": [{ "cluster": "big" }] })).await;
    cp.ok_put("/v1/listeners/out", json!({ "address": "127.0.0.1:4140", "routes": ["to-big"] })).await;
    let mut a = Xds::connect(cp.xds(), node("gw", "", ""), None).await.unwrap();
    let mut parts = vec![a.next(Duration::from_secs(2)).await.unwrap()];
    while parts.last().unwrap().more {
        parts.push(a.next(Duration::from_secs(2)).await.expect("the next part"));
    }
    assert!(parts.len() > 2, "{} parts", parts.len());
    let (nonce, version) = (&parts[0].nonce, &parts[0].system_version);
    for p in &parts {
        assert_eq!((&p.nonce, &p.system_version), (nonce, version));
        assert!(prost::Message::encoded_len(p) < 40 << 10, "{} bytes", prost::Message::encoded_len(p));
    }
    let total: usize = parts.iter().map(|p| p.resources.len()).sum();
    assert_eq!(total, 3 + 2_000);
    // One answer for the whole.
    a.answer(parts.last().unwrap(), "").await;
    let acked = within(Duration::from_secs(2), async {
        loop {
            let p = cp.proxy("gw").await.unwrap();
            if !p["acked_version"].is_null() {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(acked["acked_version"].to_string(), *version);
    assert_eq!((acked["pushes"].as_u64(), acked["last_push"]["resources"].as_u64()), (Some(1), Some(2_003)));
    cp.stop().await;
}

// ---------- the real binary ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut bin = blocking(|| ControlPlane::start_in(&dir.path().join("data")));
    let c = bin.client();
    assert!(c.put(trellis_control_plane::Kind::Cluster, "web", &cluster(1)).await.unwrap(), "created");
    assert!(c.get(trellis_control_plane::Kind::Cluster, "web").await.unwrap().is_some());
    assert!(dir.path().join("data/trellis.redb").exists());
    assert!(dir.path().join("data/ca/ca.pem").exists(), "the CA is made on first start");
    signal(bin.child.id(), "TERM");
    let status = blocking(|| wait_exit(&mut bin.child, Duration::from_secs(10))).expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", bin.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keeps_every_acknowledged_write_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut bin = blocking(|| ControlPlane::start_in(&data));
    let client = bin.client();
    let acked = Arc::new(AtomicUsize::new(0));
    let kill_after = 40 + fastrand::usize(..80);

    // Up to 200 writes, one after another, recording each acknowledged one.
    let writer = tokio::spawn({
        let acked = acked.clone();
        async move {
            let mut done = Vec::new();
            for i in 0..200u16 {
                let name = format!("c{i}");
                let body = serde_json::to_vec(&cluster(10_000 + i)).unwrap();
                let path = format!("/v1/clusters/{name}");
                match client.send(Method::PUT, &path, Some(body), &[]).await {
                    Ok(a) if a.status == StatusCode::CREATED => {
                        done.push((name, a.etag().unwrap()));
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => break,
                }
            }
            done
        }
    });
    within(Duration::from_secs(30), async {
        while acked.load(Ordering::SeqCst) < kill_after {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    bin.child.kill().unwrap(); // SIGKILL, mid-stream
    bin.child.wait().unwrap();
    let done = within(Duration::from_secs(30), writer).await.unwrap();
    eprintln!("killed after {} acknowledged writes", done.len());
    assert!(done.len() >= kill_after && done.len() < 200, "the kill landed mid-stream: {}", done.len());

    let bin = blocking(|| ControlPlane::start_in(&data));
    let client = bin.client();
    for (name, version) in &done {
        let a = client.send(Method::GET, &format!("/v1/clusters/{name}"), None, &[]).await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "{name} was acknowledged but is gone");
        assert_eq!(a.etag(), Some(*version), "{name}");
    }
}

//! Who is connected, what each proxy was sent and acknowledged, and the sidecar endpoints
//! registered by discovery streams.
//!
//! A stream whose node has a `service` and an `inbound_address` registers that address as
//! an endpoint of the service. When the stream ends the endpoint stays for the grace period
//! (a restarting sidecar keeps its place), then leaves. Endpoint sets are published as an
//! immutable [`Endpoints`] value on a `watch` channel that every stream follows; each
//! endpoint carries its ENDPOINTS resource name and body, made once at registration.
//!
//! With an etcd store the registry is shared ([`Registry::shared`]): this replica's
//! registrations are written to etcd ([`RegistrationOp`], under the replica's lease) rather
//! than published directly, and what is published is every replica's registrations as
//! etcd's watch reports them ([`Registry::apply_shared`]), versioned by their etcd mod
//! revision. A dead replica's registrations leave when its lease expires.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use trellis_api::endpoints::{self, Body};

use crate::metrics::Metrics;

/// How long a disconnected proxy stays listed in `GET /v1/proxies`.
const KEEP_DISCONNECTED: Duration = Duration::from_secs(300);

/// Identifies one discovery stream.
pub type StreamId = u64;

/// One registered endpoint, as discovery sends it.
#[derive(Clone, Debug, PartialEq)]
pub struct Registered {
    /// The ENDPOINTS resource name, `SERVICE/ADDRESS`.
    pub name: Arc<str>,
    /// The generation at which it was registered or last changed.
    pub version: u64,
    /// JSON of a `trellis_api::endpoints::Body` with `registered: true`.
    pub body: Arc<str>,
}

/// The registered endpoints of one service, by address.
pub type EndpointSet = BTreeMap<String, Registered>;

/// Every service's registered endpoints (services without any are absent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Endpoints {
    /// Bumped on every change, so a view computed from one value is known to be current.
    pub generation: u64,
    pub services: BTreeMap<String, Arc<EndpointSet>>,
}

/// What a proxy says about itself on its first request.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub id: String,
    pub service: Option<String>,
    pub zone: Option<String>,
    pub inbound_address: Option<String>,
    /// The verified SPIFFE ID of the proxy's client certificate (discovery over mTLS).
    pub identity: Option<String>,
    /// The proxy intercepts its pod's traffic: its view holds every registered sidecar.
    pub transparent: bool,
}

/// A refused update, as the proxy reported it.
#[derive(Clone, Debug, Serialize)]
pub struct Nack {
    /// The `system_version` of the refused response.
    pub version: u64,
    pub error: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// One response sent to a proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Push {
    /// Its `system_version`.
    pub version: u64,
    /// Resources added or updated.
    pub resources: usize,
    /// Names removed.
    pub removed: usize,
    /// Its size, protobuf-encoded.
    pub bytes: usize,
}

/// One proxy's discovery state, as `GET /v1/proxies` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    pub id: String,
    pub service: Option<String>,
    pub zone: Option<String>,
    pub inbound_address: Option<String>,
    /// The proxy's verified SPIFFE ID, when it connected over mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub connected: bool,
    pub connected_at: String,
    pub disconnected_at: Option<String>,
    /// `system_version` of the last response sent.
    pub sent_version: Option<u64>,
    /// `system_version` of the last response acknowledged.
    pub acked_version: Option<u64>,
    pub last_nack: Option<Nack>,
    /// Responses sent on this stream.
    pub pushes: u64,
    /// Bytes of the responses sent on this stream (protobuf-encoded).
    pub bytes_sent: u64,
    /// The last response sent.
    pub last_push: Option<Push>,
    #[serde(skip)]
    disconnected: Option<SystemTime>,
}

/// A registration as kept in etcd: the value of `PREFIX/registrations/SERVICE/ADDRESS`.
/// Unknown fields are ignored, so a newer replica may add some.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistrationValue {
    /// The registering proxy's `node.id`.
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The proxy's verified SPIFFE ID, when it connected over mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// What this replica asks of its registrations in etcd.
#[derive(Clone, Debug, PartialEq)]
pub enum RegistrationOp {
    /// Write it under this replica's lease (taking it over from another replica's).
    Put { service: String, address: String, value: RegistrationValue },
    /// Delete it, if it is still under this replica's lease.
    Delete { service: String, address: String },
}

/// Where a shared registry's [`RegistrationOp`]s arrive (the etcd store's writer).
pub type RegistrationOps = mpsc::UnboundedReceiver<RegistrationOp>;

/// One change to the registrations in etcd, any replica's, as the watch reports it.
#[derive(Clone, Debug)]
pub enum SharedChange {
    Put { service: String, address: String, version: u64, value: Vec<u8> },
    Delete { service: String, address: String },
}

/// A registration read from etcd.
#[derive(Clone, Debug, PartialEq)]
struct SharedRegistration {
    zone: Option<String>,
    /// The registering stream's verified SPIFFE ID.
    identity: Option<String>,
    /// Its key's mod revision: the same on every replica.
    version: u64,
}

struct Registration {
    stream: StreamId,
    zone: Option<String>,
    /// The registering stream's verified SPIFFE ID: the endpoint's mesh identity.
    identity: Option<String>,
    /// The generation at which the endpoint was registered or its zone changed.
    version: u64,
    /// The owning stream ended; the endpoint leaves when the grace period is over.
    leaving: bool,
}

#[derive(Default)]
struct Inner {
    next_stream: StreamId,
    proxies: BTreeMap<StreamId, ProxyStatus>,
    /// service → address → registration.
    registered: BTreeMap<String, BTreeMap<String, Registration>>,
    /// Bumped on every endpoint change; a changed endpoint takes it as its version.
    generation: u64,
    /// Shared registry: every replica's registrations, from etcd (service → address →).
    shared: BTreeMap<String, BTreeMap<String, SharedRegistration>>,
}

/// The registry. Share it in an `Arc`.
pub struct Registry {
    inner: Mutex<Inner>,
    endpoints: watch::Sender<Arc<Endpoints>>,
    grace: Duration,
    /// Shared registry: where this replica's registrations go.
    ops: Option<mpsc::UnboundedSender<RegistrationOp>>,
    metrics: Arc<Metrics>,
}

impl Registry {
    /// A registry keeping endpoints of ended streams for `grace`.
    pub fn new(grace: Duration) -> Registry {
        let (endpoints, _) = watch::channel(Arc::new(Endpoints::default()));
        Registry { inner: Mutex::new(Inner::default()), endpoints, grace, ops: None, metrics: Arc::default() }
    }

    /// This control plane's metrics (discovery's and the store's).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A shared registry (etcd store): registrations go out as [`RegistrationOp`]s on the
    /// returned receiver, and the published endpoints are what [`Registry::apply_shared`]
    /// is told.
    pub fn shared(grace: Duration) -> (Registry, RegistrationOps) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Registry { ops: Some(tx), ..Registry::new(grace) }, rx)
    }

    /// Follows the registered endpoints.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Endpoints>> {
        self.endpoints.subscribe()
    }

    /// Records a new stream and registers its endpoint, if it offers one.
    pub fn connect(&self, node: NodeInfo) -> StreamId {
        let mut inner = self.lock();
        let now = SystemTime::now();
        inner.proxies.retain(|_, p| {
            // A reconnecting proxy replaces its own stale entry.
            p.connected || (p.id != node.id && p.disconnected.is_some_and(|t| age(t, now) < KEEP_DISCONNECTED))
        });
        inner.next_stream += 1;
        let stream = inner.next_stream;
        if let (Some(service), Some(address)) = (&node.service, &node.inbound_address) {
            let before = inner.registered.get(service).and_then(|s| s.get(address));
            let same = before.filter(|r| r.zone == node.zone && r.identity == node.identity).map(|r| r.version);
            let version = same.unwrap_or(inner.generation + 1);
            let identity = node.identity.clone();
            let reg = Registration { stream, zone: node.zone.clone(), identity, version, leaving: false };
            inner.registered.entry(service.clone()).or_default().insert(address.clone(), reg);
            match &self.ops {
                // Always: the registration may be under another replica's lease (the proxy
                // moved here), and must come under this one's.
                Some(ops) => {
                    let value = RegistrationValue {
                        node: node.id.clone(),
                        zone: node.zone.clone(),
                        identity: node.identity.clone(),
                    };
                    let _ = ops.send(RegistrationOp::Put { service: service.clone(), address: address.clone(), value });
                }
                None if same.is_none() => self.changed(&mut inner, [service.as_str()]),
                None => {}
            }
        }
        self.metrics.connected.increment(1.0);
        inner.proxies.insert(
            stream,
            ProxyStatus {
                id: node.id,
                service: node.service,
                zone: node.zone,
                inbound_address: node.inbound_address,
                identity: node.identity,
                connected: true,
                connected_at: rfc3339(now),
                disconnected_at: None,
                sent_version: None,
                acked_version: None,
                last_nack: None,
                pushes: 0,
                bytes_sent: 0,
                last_push: None,
                disconnected: None,
            },
        );
        stream
    }

    /// The verified identity of the connected stream of node `id` (`Some(None)`: connected
    /// without one); `None` when no stream of that node is connected.
    pub fn connected_identity(&self, id: &str) -> Option<Option<String>> {
        self.lock().proxies.values().find(|p| p.connected && p.id == id).map(|p| p.identity.clone())
    }

    /// `push` went out on `stream`.
    pub fn sent(&self, stream: StreamId, push: Push) {
        self.metrics.pushes.increment(1);
        self.metrics.push_bytes.increment(push.bytes as u64);
        if let Some(p) = self.lock().proxies.get_mut(&stream) {
            p.sent_version = Some(push.version);
            p.pushes += 1;
            p.bytes_sent += push.bytes as u64;
            p.last_push = Some(push);
        }
    }

    /// The proxy on `stream` applied the response with `version`.
    pub fn acked(&self, stream: StreamId, version: u64) {
        self.metrics.acks.increment(1);
        if let Some(p) = self.lock().proxies.get_mut(&stream) {
            p.acked_version = Some(version);
        }
    }

    /// The proxy on `stream` refused the response with `version`.
    pub fn nacked(&self, stream: StreamId, version: u64, error: String) {
        self.metrics.nacks.increment(1);
        if let Some(p) = self.lock().proxies.get_mut(&stream) {
            p.last_nack = Some(Nack { version, error, at: rfc3339(SystemTime::now()) });
        }
    }

    /// The stream ended: the proxy shows as disconnected and its endpoint leaves after the
    /// grace period (unless a new stream registers it again first).
    pub fn disconnect(self: &Arc<Self>, stream: StreamId) {
        let mut inner = self.lock();
        let Some(p) = inner.proxies.get_mut(&stream) else { return };
        let now = SystemTime::now();
        if p.connected {
            self.metrics.connected.decrement(1.0);
        }
        p.connected = false;
        p.disconnected = Some(now);
        p.disconnected_at = Some(rfc3339(now));
        let (Some(service), Some(address)) = (p.service.clone(), p.inbound_address.clone()) else { return };
        let Some(reg) = inner.registered.get_mut(&service).and_then(|s| s.get_mut(&address)) else { return };
        if reg.stream != stream {
            return;
        }
        reg.leaving = true;
        drop(inner);
        let registry = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(registry.grace).await;
            registry.expire(&service, &address, stream);
        });
    }

    /// Removes `service`'s endpoint `address` if `stream` still owns it and is gone.
    fn expire(&self, service: &str, address: &str, stream: StreamId) {
        let mut inner = self.lock();
        let Some(set) = inner.registered.get_mut(service) else { return };
        if !set.get(address).is_some_and(|r| r.stream == stream && r.leaving) {
            return;
        }
        set.remove(address);
        if set.is_empty() {
            inner.registered.remove(service);
        }
        match &self.ops {
            Some(ops) => {
                let _ = ops.send(RegistrationOp::Delete { service: service.into(), address: address.into() });
            }
            None => self.changed(&mut inner, [service]),
        }
    }

    /// Every registration of this replica's streams (those in their grace period too), to
    /// write again under a new lease.
    pub fn local_registrations(&self) -> Vec<RegistrationOp> {
        let inner = self.lock();
        let mut out = Vec::new();
        for (service, set) in &inner.registered {
            for (address, reg) in set {
                let proxy = inner.proxies.get(&reg.stream);
                let value = RegistrationValue {
                    node: proxy.map(|p| p.id.clone()).unwrap_or_default(),
                    zone: reg.zone.clone(),
                    identity: proxy.and_then(|p| p.identity.clone()),
                };
                out.push(RegistrationOp::Put { service: service.clone(), address: address.clone(), value });
            }
        }
        out
    }

    /// Shared registry: applies what etcd's watch reports (`all`: the whole set, as listed
    /// after a (re)start of the watch). A value that does not parse is logged and skipped
    /// (the last good one stays); returns those, by key, with why.
    pub fn apply_shared(&self, all: bool, changes: Vec<SharedChange>) -> Vec<(String, String)> {
        let mut inner = self.lock();
        let previous = match all {
            true => std::mem::take(&mut inner.shared),
            false => BTreeMap::new(),
        };
        // Each touched service's set as it was, to tell whether it changed.
        let mut before: BTreeMap<String, Option<BTreeMap<String, SharedRegistration>>> =
            previous.iter().map(|(s, set)| (s.clone(), Some(set.clone()))).collect();
        let mut refused = Vec::new();
        for change in changes {
            let (SharedChange::Put { service, .. } | SharedChange::Delete { service, .. }) = &change;
            if !before.contains_key(service) {
                before.insert(service.clone(), inner.shared.get(service).cloned());
            }
            match change {
                SharedChange::Put { service, address, version, value } => {
                    match serde_json::from_slice::<RegistrationValue>(&value) {
                        Ok(v) => {
                            let reg = SharedRegistration { zone: v.zone, identity: v.identity, version };
                            inner.shared.entry(service).or_default().insert(address, reg);
                        }
                        Err(e) => {
                            tracing::warn!(%service, %address, error = %e, "skipped an invalid registration in etcd");
                            refused.push((format!("registrations/{service}/{address}"), e.to_string()));
                            // The last good value stays, if this replica had one.
                            let old = previous.get(&service).and_then(|s| s.get(&address)).cloned();
                            if let Some(old) = old {
                                inner.shared.entry(service).or_default().insert(address, old);
                            }
                        }
                    }
                }
                SharedChange::Delete { service, address } => {
                    if let Some(set) = inner.shared.get_mut(&service) {
                        set.remove(&address);
                        if set.is_empty() {
                            inner.shared.remove(&service);
                        }
                    }
                }
            }
        }
        let changed: Vec<String> =
            before.into_iter().filter(|(s, was)| inner.shared.get(s) != was.as_ref()).map(|(s, _)| s).collect();
        if !changed.is_empty() {
            self.changed(&mut inner, changed.iter().map(String::as_str));
        }
        refused
    }

    /// Connected proxies and those gone for less than five minutes, oldest stream first.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let now = SystemTime::now();
        self.lock()
            .proxies
            .values()
            .filter(|p| p.disconnected.is_none_or(|t| age(t, now) < KEEP_DISCONNECTED))
            .cloned()
            .collect()
    }

    /// Republishes the endpoints after `services`' sets changed: a new generation, those
    /// services' sets rebuilt, the other services' sets shared with the previous value.
    /// The sets come from this replica's streams, or (shared registry) from etcd.
    fn changed<'a>(&self, inner: &mut Inner, services: impl IntoIterator<Item = &'a str>) {
        inner.generation += 1;
        let mut next = Endpoints::clone(&self.endpoints.borrow());
        next.generation = inner.generation;
        for service in services {
            let set: EndpointSet = match &self.ops {
                Some(_) => inner
                    .shared
                    .get(service)
                    .into_iter()
                    .flatten()
                    .map(|(a, r)| registered(service, a, &r.zone, &r.identity, r.version))
                    .collect(),
                None => inner
                    .registered
                    .get(service)
                    .into_iter()
                    .flatten()
                    .map(|(a, r)| registered(service, a, &r.zone, &r.identity, r.version))
                    .collect(),
            };
            if set.is_empty() {
                next.services.remove(service);
            } else {
                next.services.insert(service.to_string(), Arc::new(set));
            }
        }
        self.endpoints.send_replace(Arc::new(next));
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent; ignore poison.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One registered endpoint as discovery sends it, keyed by its address.
fn registered(
    service: &str,
    address: &str,
    zone: &Option<String>,
    identity: &Option<String>,
    version: u64,
) -> (String, Registered) {
    let body = Body {
        address: address.to_string(),
        weight: 1,
        zone: zone.clone(),
        registered: true,
        identity: identity.clone(),
    };
    // Plain data: serializing cannot fail.
    let body = serde_json::to_string(&body).unwrap_or_default().into();
    let name = endpoints::name(service, address).into();
    (address.to_string(), Registered { name, version, body })
}

fn age(t: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or_default()
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    trellis_certs::format_unix_time(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(id: &str, service: &str, address: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            service: Some(service.into()),
            zone: Some("z1".into()),
            inbound_address: Some(address.into()),
            identity: None,
            transparent: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn endpoint_stays_for_the_grace_period() {
        let reg = Arc::new(Registry::new(Duration::from_secs(10)));
        let rx = reg.subscribe();
        let s = reg.connect(sidecar("a-0", "a", "10.0.0.1:4143"));
        let set = rx.borrow().services.get("a").cloned().expect("registered");
        let ep = &set["10.0.0.1:4143"];
        assert_eq!(&*ep.name, "a/10.0.0.1:4143");
        assert_eq!(&*ep.body, r#"{"address":"10.0.0.1:4143","weight":1,"zone":"z1","registered":true}"#);
        reg.disconnect(s);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(rx.borrow().services.contains_key("a"), "still there within the grace period");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(rx.borrow().services.is_empty(), "gone after it");
        assert!(!reg.proxies()[0].connected);
    }

    #[tokio::test(start_paused = true)]
    async fn reconnecting_within_the_grace_keeps_the_endpoint() {
        let reg = Arc::new(Registry::new(Duration::from_secs(10)));
        let rx = reg.subscribe();
        let s1 = reg.connect(sidecar("a-0", "a", "10.0.0.1:4143"));
        let v1 = rx.borrow().generation;
        reg.disconnect(s1);
        let _s2 = reg.connect(sidecar("a-0", "a", "10.0.0.1:4143"));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(rx.borrow().generation, v1, "same set, nothing republished");
        let proxies = reg.proxies();
        assert_eq!(proxies.len(), 1, "the stale entry was replaced");
        assert!(proxies[0].connected);
        // Another sidecar of the service: the first keeps its version.
        let _s3 = reg.connect(sidecar("a-1", "a", "10.0.0.2:4143"));
        let set = rx.borrow().services["a"].clone();
        assert_eq!((set["10.0.0.1:4143"].version, set["10.0.0.2:4143"].version), (v1, v1 + 1));
    }

    #[tokio::test]
    async fn a_sidecar_on_mtls_registers_with_its_identity() {
        let reg = Arc::new(Registry::new(Duration::from_secs(10)));
        let rx = reg.subscribe();
        let id = "spiffe://trellis.local/ns/default/sa/a";
        reg.connect(NodeInfo { identity: Some(id.into()), ..sidecar("a-0", "a", "10.0.0.1:4143") });
        let body = rx.borrow().services["a"]["10.0.0.1:4143"].body.clone();
        assert_eq!(
            &*body,
            r#"{"address":"10.0.0.1:4143","weight":1,"zone":"z1","registered":true,"identity":"spiffe://trellis.local/ns/default/sa/a"}"#
        );
    }

    #[tokio::test]
    async fn acks_and_nacks_are_recorded() {
        let reg = Arc::new(Registry::new(Duration::from_secs(10)));
        let s = reg.connect(NodeInfo { id: "gw".into(), ..Default::default() });
        let push = |version| Push { version, resources: 1, removed: 0, bytes: 10 };
        reg.sent(s, push(3));
        reg.acked(s, 3);
        reg.sent(s, push(4));
        reg.nacked(s, 4, "bad".into());
        let p = &reg.proxies()[0];
        assert_eq!((p.sent_version, p.acked_version, p.pushes, p.bytes_sent), (Some(4), Some(3), 2, 20));
        assert_eq!(p.last_push, Some(push(4)));
        assert_eq!(p.last_nack.as_ref().map(|n| (n.version, n.error.as_str())), Some((4, "bad")));
        assert!(reg.subscribe().borrow().services.is_empty(), "no inbound address, no endpoint");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_registry_writes_its_registrations_and_publishes_etcds() {
        let (reg, mut ops) = Registry::shared(Duration::from_secs(1));
        let reg = Arc::new(reg);
        let rx = reg.subscribe();
        let s = reg.connect(sidecar("a-0", "a", "10.0.0.1:4143"));
        let value = RegistrationValue { node: "a-0".into(), zone: Some("z1".into()), identity: None };
        let put = RegistrationOp::Put { service: "a".into(), address: "10.0.0.1:4143".into(), value: value.clone() };
        assert_eq!(ops.try_recv().unwrap(), put);
        assert!(rx.borrow().services.is_empty(), "published only once etcd has it");
        assert_eq!(reg.local_registrations(), vec![put]);

        // What etcd reports is what is published, versioned by mod revision.
        let bytes = serde_json::to_vec(&value).unwrap();
        let put_in_etcd = |address: &str, version| SharedChange::Put {
            service: "a".into(),
            address: address.into(),
            version,
            value: bytes.clone(),
        };
        assert!(
            reg.apply_shared(false, vec![put_in_etcd("10.0.0.1:4143", 40), put_in_etcd("10.0.0.2:4143", 41)])
                .is_empty()
        );
        let set = rx.borrow().services["a"].clone();
        assert_eq!((set["10.0.0.1:4143"].version, set["10.0.0.2:4143"].version), (40, 41));
        // A value that does not parse is refused; the last good one stays.
        let bad = SharedChange::Put {
            service: "a".into(),
            address: "10.0.0.2:4143".into(),
            version: 42,
            value: b"{".to_vec(),
        };
        assert_eq!(reg.apply_shared(false, vec![bad]).len(), 1);
        assert_eq!(rx.borrow().services["a"]["10.0.0.2:4143"].version, 41);
        // A listing replaces everything.
        reg.apply_shared(true, vec![put_in_etcd("10.0.0.2:4143", 41)]);
        assert_eq!(rx.borrow().services["a"].keys().collect::<Vec<_>>(), ["10.0.0.2:4143"]);

        // The stream ends: after the grace, a conditional delete goes to etcd.
        reg.disconnect(s);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            ops.try_recv().unwrap(),
            RegistrationOp::Delete { service: "a".into(), address: "10.0.0.1:4143".into() }
        );
        reg.apply_shared(false, vec![SharedChange::Delete { service: "a".into(), address: "10.0.0.2:4143".into() }]);
        assert!(rx.borrow().services.is_empty());
    }
}

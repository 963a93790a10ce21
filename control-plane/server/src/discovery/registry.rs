//! Who is connected, what each proxy was sent and acknowledged, and the sidecar endpoints
//! registered by discovery streams.
//!
//! A stream whose node has a `service` and an `inbound_address` registers that address as
//! an endpoint of the service. When the stream ends the endpoint stays for the grace period
//! (a restarting sidecar keeps its place), then leaves. Endpoint sets are published as an
//! immutable [`Endpoints`] value on a `watch` channel that every stream follows; each
//! endpoint carries its ENDPOINTS resource name and body, made once at registration.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;
use trellis_api::endpoints::{self, Body};

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
}

/// The registry. Share it in an `Arc`.
pub struct Registry {
    inner: Mutex<Inner>,
    endpoints: watch::Sender<Arc<Endpoints>>,
    grace: Duration,
}

impl Registry {
    /// A registry keeping endpoints of ended streams for `grace`.
    pub fn new(grace: Duration) -> Registry {
        let (endpoints, _) = watch::channel(Arc::new(Endpoints::default()));
        Registry { inner: Mutex::new(Inner::default()), endpoints, grace }
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
            if same.is_none() {
                self.changed(&mut inner, service);
            }
        }
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

    /// `push` went out on `stream`.
    pub fn sent(&self, stream: StreamId, push: Push) {
        if let Some(p) = self.lock().proxies.get_mut(&stream) {
            p.sent_version = Some(push.version);
            p.pushes += 1;
            p.bytes_sent += push.bytes as u64;
            p.last_push = Some(push);
        }
    }

    /// The proxy on `stream` applied the response with `version`.
    pub fn acked(&self, stream: StreamId, version: u64) {
        if let Some(p) = self.lock().proxies.get_mut(&stream) {
            p.acked_version = Some(version);
        }
    }

    /// The proxy on `stream` refused the response with `version`.
    pub fn nacked(&self, stream: StreamId, version: u64, error: String) {
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
        self.changed(&mut inner, service);
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

    /// Republishes the endpoints after `service`'s set changed: a new generation, that
    /// service's set rebuilt, the other services' sets shared with the previous value.
    fn changed(&self, inner: &mut Inner, service: &str) {
        inner.generation += 1;
        let mut next = Endpoints::clone(&self.endpoints.borrow());
        next.generation = inner.generation;
        match inner.registered.get(service) {
            Some(set) => {
                let set = set
                    .iter()
                    .map(|(address, r)| {
                        let body = Body {
                            address: address.clone(),
                            weight: 1,
                            zone: r.zone.clone(),
                            registered: true,
                            identity: r.identity.clone(),
                        };
                        // Plain data: serializing cannot fail.
                        let body = serde_json::to_string(&body).unwrap_or_default().into();
                        let name = endpoints::name(service, address).into();
                        (address.clone(), Registered { name, version: r.version, body })
                    })
                    .collect();
                next.services.insert(service.to_string(), Arc::new(set));
            }
            None => {
                next.services.remove(service);
            }
        }
        self.endpoints.send_replace(Arc::new(next));
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent; ignore poison.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
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
}

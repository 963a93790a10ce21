//! The control-plane client (DESIGN §5): one gRPC stream, subscribed to everything meant for
//! this node. Each response is a delta; it is applied to a copy of the dynamic resources,
//! merged with the static file, validated and built off the hot path, swapped in, and ACKed
//! — or NACKed with the error, the previous config left serving. The stream reconnects with
//! jittered exponential backoff, and the last good config serves while the control plane is
//! away. With several control-plane addresses (replicas sharing one etcd) the proxy starts
//! at a random one and moves to the next each time a stream fails.
//!
//! A reconnecting proxy resumes: its first request lists every resource it holds with a
//! digest of the body ([`Held`]), and the control plane sends only what differs — after a
//! fail-over to another replica, usually nothing. A control plane that answers with the
//! whole view instead (`resumed` false) replaces what the proxy held.
//!
//! Clusters arrive without their endpoints; each endpoint is an ENDPOINTS resource of its
//! own (`CLUSTER/ADDRESS`, see `trellis_api::endpoints`), and [`Dynamic::merge_into`] puts
//! every cluster back together, so a change to one endpoint of a large cluster is one small
//! resource on the wire.

use crate::reload::Reloader;
use crate::telemetry;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use trellis_api::digest::digest;
use trellis_api::discovery::{
    DiscoveryRequest, DiscoveryResponse, HeldResource, Node, ResourceType, discovery_client::DiscoveryClient,
    stats_client::StatsClient,
};
use trellis_api::endpoints::{self, NameError};
use trellis_api::{self as api, Bootstrap};

/// Why a control-plane response cannot be applied (the NACK's error).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{kind}[{name}]: {source}")]
    Parse { kind: String, name: String, source: api::ParseError },
    #[error("endpoints[{name}]: {source}")]
    EndpointName { name: String, source: NameError },
    #[error("endpoints[{name}]: no cluster named \"{cluster}\"")]
    UnknownCluster { name: String, cluster: String },
    #[error("resource {0} has no type")]
    NoType(String),
}

/// Resources delivered by the control plane, by name.
#[derive(Debug, Clone, Default)]
pub struct Dynamic {
    pub listeners: BTreeMap<String, api::Listener>,
    pub routes: BTreeMap<String, api::Route>,
    pub clusters: BTreeMap<String, api::Cluster>,
    pub policies: BTreeMap<String, api::Policy>,
    /// Telemetry resources (the control plane sends the one selecting this proxy).
    pub telemetry: BTreeMap<String, api::Telemetry>,
    /// Endpoints (ENDPOINTS resources) by cluster, then address.
    pub endpoints: BTreeMap<String, BTreeMap<String, endpoints::Body>>,
    pub system_version: String,
}

impl Dynamic {
    /// The static bootstrap plus these resources. Static resources win a name clash. A
    /// cluster gets its endpoints back: those its body lists (none, from a control plane
    /// that sends them apart), then its written ENDPOINTS, then the registered ones, each
    /// by address. A static cluster that wins a clash takes only the registered ones. A
    /// proxy without an identity cannot do mTLS: endpoints' identities are left out then.
    /// A telemetry resource's `tracing` (even none) replaces the file's.
    pub fn merge_into(&self, file: &Bootstrap) -> Bootstrap {
        let mut b = file.clone();
        if let Some(t) = self.telemetry_for(file.node.service.as_deref()) {
            b.tracing = t.tracing.clone();
        }
        let from_file: HashSet<&str> = file.clusters.iter().map(|c| c.name.as_str()).collect();
        fn add<T: Clone>(into: &mut Vec<T>, from: &BTreeMap<String, T>, name: impl Fn(&T) -> &str) {
            for (n, r) in from {
                if !into.iter().any(|x| name(x) == n) {
                    into.push(r.clone());
                }
            }
        }
        add(&mut b.listeners, &self.listeners, |l| &l.name);
        add(&mut b.routes, &self.routes, |r| &r.name);
        add(&mut b.clusters, &self.clusters, |c| &c.name);
        add(&mut b.policies, &self.policies, |p| &p.name);
        for c in &mut b.clusters {
            let Some(extra) = self.endpoints.get(&c.name) else { continue };
            let own = !from_file.contains(c.name.as_str());
            // A set, not a scan of the list: clusters of 10,000 endpoints are the point.
            let mut have: HashSet<String> = c.endpoints.iter().map(|e| e.address.clone()).collect();
            for registered in [false, true] {
                for e in extra.values().filter(|e| e.registered == registered && (own || registered)) {
                    if have.insert(e.address.clone()) {
                        let mut e = e.endpoint();
                        if file.identity.is_none() {
                            e.identity = None;
                        }
                        c.endpoints.push(e);
                    }
                }
            }
        }
        b
    }

    /// The telemetry resource that applies to a proxy of `service`: its service's, else
    /// the mesh-wide one (a control plane sends one; should it send more, the choice is
    /// the same one it would make).
    pub fn telemetry_for(&self, service: Option<&str>) -> Option<&api::Telemetry> {
        let own = self.telemetry.values().find(|t| t.service.is_some() && t.service.as_deref() == service);
        own.or_else(|| self.telemetry.values().find(|t| t.service.is_none()))
    }

    /// This plus one response's changes.
    fn with(&self, resp: &DiscoveryResponse) -> Result<Dynamic, UpdateError> {
        let mut next = self.clone();
        for r in &resp.resources {
            let kind = ResourceType::try_from(r.r#type).unwrap_or(ResourceType::Unspecified);
            let at = |source| UpdateError::Parse {
                kind: kind.as_str_name().to_ascii_lowercase(),
                name: r.name.clone(),
                source,
            };
            match kind {
                ResourceType::Listener => {
                    next.listeners.insert(r.name.clone(), api::parse::parse(&r.body).map_err(at)?);
                }
                ResourceType::Route => {
                    next.routes.insert(r.name.clone(), api::parse::parse(&r.body).map_err(at)?);
                }
                ResourceType::Cluster => {
                    next.clusters.insert(r.name.clone(), api::parse::parse(&r.body).map_err(at)?);
                }
                ResourceType::Policy => {
                    next.policies.insert(r.name.clone(), api::parse::parse(&r.body).map_err(at)?);
                }
                ResourceType::Telemetry => {
                    next.telemetry.insert(r.name.clone(), api::parse::parse(&r.body).map_err(at)?);
                }
                ResourceType::Endpoints => {
                    let body: endpoints::Body = api::parse::parse(&r.body).map_err(at)?;
                    let cluster = body
                        .cluster_of(&r.name)
                        .map_err(|source| UpdateError::EndpointName { name: r.name.clone(), source })?;
                    next.endpoints.entry(cluster.to_owned()).or_default().insert(body.address.clone(), body);
                }
                ResourceType::Unspecified => return Err(UpdateError::NoType(r.name.clone())),
            }
        }
        for gone in &resp.removed {
            match ResourceType::try_from(gone.r#type).unwrap_or(ResourceType::Unspecified) {
                ResourceType::Listener => next.listeners.remove(&gone.name).map(drop),
                ResourceType::Route => next.routes.remove(&gone.name).map(drop),
                ResourceType::Cluster => next.clusters.remove(&gone.name).map(drop),
                ResourceType::Policy => next.policies.remove(&gone.name).map(drop),
                ResourceType::Telemetry => next.telemetry.remove(&gone.name).map(drop),
                ResourceType::Endpoints => {
                    // A name that does not split was never added: nothing to remove.
                    endpoints::split_name(&gone.name).ok().and_then(|(cluster, address)| {
                        let set = next.endpoints.get_mut(cluster)?;
                        set.remove(address);
                        set.is_empty().then(|| next.endpoints.remove(cluster)).map(drop)
                    })
                }
                ResourceType::Unspecified => None,
            };
        }
        // A cluster and its endpoints come and go in the same response; endpoints left
        // without their cluster mean the two sides disagree about what this proxy holds.
        if let Some((cluster, set)) = next.endpoints.iter().find(|(c, _)| !next.clusters.contains_key(*c)) {
            let address = set.keys().next().map_or("", String::as_str);
            return Err(UpdateError::UnknownCluster {
                name: endpoints::name(cluster, address),
                cluster: cluster.clone(),
            });
        }
        next.system_version = resp.system_version.clone();
        Ok(next)
    }
}

/// What the admin server shows about discovery.
#[derive(Debug, Default)]
pub struct Status {
    pub connected: std::sync::atomic::AtomicBool,
    /// At least one response applied: the proxy is ready.
    pub applied: std::sync::atomic::AtomicBool,
    pub system_version: std::sync::Mutex<String>,
    pub last_error: std::sync::Mutex<Option<String>>,
}

/// The body digests of what the proxy holds (for resuming), by a digest of the resource's
/// type and name: 16 bytes a resource, where a 10,000-endpoint cluster is 10,000 resources.
#[derive(Debug, Default)]
pub struct Held(std::collections::HashMap<u64, u64>);

impl Held {
    fn key(kind: i32, name: &str) -> u64 {
        digest(name) ^ (kind as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// Records one applied response (`fresh`: it replaced everything held before).
    fn applied(&mut self, resp: &DiscoveryResponse, fresh: bool) {
        if fresh {
            self.0.clear();
        }
        for r in &resp.resources {
            self.0.insert(Self::key(r.r#type, &r.name), digest(&r.body));
        }
        for gone in &resp.removed {
            self.0.remove(&Self::key(gone.r#type, &gone.name));
        }
    }

    /// Every resource of `dynamic`, with the digest of the body it was sent with (0 if
    /// unknown: the control plane then sends it again).
    fn resources(&self, dynamic: &Dynamic) -> Vec<HeldResource> {
        let mut out = Vec::new();
        let mut add = |t: ResourceType, name: String| {
            let digest = self.0.get(&Self::key(t as i32, &name)).copied().unwrap_or(0);
            out.push(HeldResource { r#type: t as i32, name, digest });
        };
        dynamic.listeners.keys().for_each(|n| add(ResourceType::Listener, n.clone()));
        dynamic.routes.keys().for_each(|n| add(ResourceType::Route, n.clone()));
        dynamic.clusters.keys().for_each(|n| add(ResourceType::Cluster, n.clone()));
        dynamic.policies.keys().for_each(|n| add(ResourceType::Policy, n.clone()));
        dynamic.telemetry.keys().for_each(|n| add(ResourceType::Telemetry, n.clone()));
        for (cluster, set) in &dynamic.endpoints {
            set.keys().for_each(|address| add(ResourceType::Endpoints, endpoints::name(cluster, address)));
        }
        out
    }
}

/// Runs the client until the process ends. A `transparent` proxy (one intercepting its
/// pod's traffic) asks for every registered sidecar too (DESIGN §9).
pub async fn run(
    cp: api::ControlPlane,
    node: api::Node,
    transparent: bool,
    reloader: Arc<Reloader>,
    status: Arc<Status>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) {
    let token = cp.token_file.as_deref().and_then(|f| match std::fs::read_to_string(f) {
        Ok(t) => Some(t.trim().to_owned()),
        Err(e) => {
            tracing::error!(file = f, error = %e, "cannot read the control-plane token file");
            None
        }
    });
    let node = Node {
        id: node.id,
        service: node.service.unwrap_or_default(),
        zone: node.zone.unwrap_or_default(),
        inbound_address: cp.inbound_address.clone().unwrap_or_default(),
        transparent,
    };
    let mut dynamic = Dynamic::default();
    let mut held = Held::default();
    let addresses = cp.address.all().to_vec();
    // A random first address spreads a fleet over the replicas.
    let mut at = fastrand::usize(..addresses.len());
    let mut backoff = Duration::from_millis(250);
    let link = Link { cp, token, node, reloader, status: status.clone(), metrics };
    loop {
        let address = addresses[at].as_str();
        match link.session(address, &mut dynamic, &mut held).await {
            Ok(()) => tracing::warn!(address, "control-plane stream closed"),
            Err(e) => tracing::warn!(address, error = %e, "control-plane stream failed"),
        }
        status.connected.store(false, std::sync::atomic::Ordering::Release);
        if status.applied.load(std::sync::atomic::Ordering::Acquire) {
            // A stream that got far enough to apply something resets the backoff.
            backoff = backoff.min(Duration::from_secs(1));
        }
        // The next replica, if there are several.
        at = (at + 1) % addresses.len();
        // Full jitter: anywhere up to the current cap, so a fleet does not reconnect in step.
        let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// What a stream to any control-plane address needs.
struct Link {
    cp: api::ControlPlane,
    token: Option<String>,
    node: Node,
    reloader: Arc<Reloader>,
    status: Arc<Status>,
    /// Where the stats reports' counters come from ([`crate::stats_report`]); none: no reports.
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// Aborts its task when dropped: a stream's reporter ends with the stream.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Link {
    /// One stream to `address`, until it ends.
    async fn session(&self, address: &str, dynamic: &mut Dynamic, held: &mut Held) -> Result<(), String> {
        let (node, reloader, status) = (&self.node, &self.reloader, &self.status);
        // The identity in use now: a rotated certificate is presented from the next connection on.
        let identity = reloader.snapshot().mesh.clone();
        let channel = crate::tls::control::connect(&self.cp, address, identity.as_deref()).await?;
        let bearer: Option<tonic::metadata::MetadataValue<_>> = self
            .token
            .as_ref()
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| "the token is not a valid header value")?;
        let auth = move |mut req: tonic::Request<()>| {
            if let Some(b) = &bearer {
                req.metadata_mut().insert("authorization", b.clone());
            }
            Ok(req)
        };
        let stats = StatsClient::with_interceptor(channel.clone(), auth.clone());
        let mut client = DiscoveryClient::with_interceptor(channel, auth)
            // The first response carries the proxy's whole view; large meshes exceed tonic's 4 MiB.
            .max_decoding_message_size(256 << 20)
            // A resuming first request lists every resource held.
            .max_encoding_message_size(64 << 20);
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
        // What the proxy holds (from an earlier stream): the control plane sends what differs.
        let first = DiscoveryRequest {
            node: Some(node.clone()),
            r#type: ResourceType::Unspecified as i32,
            initial_resources: held.resources(dynamic),
            ..Default::default()
        };
        let resuming = first.initial_resources.len();
        tx.send(first).await.map_err(|_| "request channel closed")?;
        let requests = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut responses = client.stream(requests).await.map_err(|e| format!("open stream: {e}"))?.into_inner();
        status.connected.store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(address, node = %node.id, resuming, "connected to the control plane");
        let _reporter = self.metrics.clone().map(|m| {
            AbortOnDrop(tokio::spawn(crate::stats_report::report_forever(stats, node.id.clone(), m, reloader.clone())))
        });
        // The parts of a large response received so far (`more`): applied together, answered once.
        let mut parts: Option<DiscoveryResponse> = None;
        let mut first_response = true;
        while let Some(part) = responses.message().await.map_err(|e| format!("stream: {e}"))? {
            let resp = match parts.take() {
                Some(mut so_far) => {
                    so_far.resources.extend(part.resources);
                    so_far.removed.extend(part.removed);
                    DiscoveryResponse {
                        more: part.more,
                        nonce: part.nonce,
                        system_version: part.system_version,
                        ..so_far
                    }
                }
                None => part,
            };
            if resp.more {
                parts = Some(resp);
                continue;
            }
            // The first response is either a delta against what the proxy said it holds,
            // or the whole view, replacing it.
            let fresh = std::mem::take(&mut first_response) && !resp.resumed;
            let base = if fresh { &Dynamic::default() } else { &*dynamic };
            let result = base.with(&resp).map_err(|e| e.to_string()).and_then(|next| {
                match reloader.apply_dynamic(next.clone()) {
                    Ok(v) => Ok((next, v)),
                    Err(e) => Err(e.to_string()),
                }
            });
            let error = match result {
                Ok((next, version)) => {
                    *dynamic = next;
                    held.applied(&resp, fresh);
                    status.applied.store(true, std::sync::atomic::Ordering::Release);
                    *status.system_version.lock().unwrap_or_else(|p| p.into_inner()) = resp.system_version.clone();
                    let v = resp.system_version.parse::<f64>().unwrap_or(0.0);
                    for t in ["listener", "cluster", "route", "policy", "endpoints", "telemetry"] {
                        metrics::gauge!(telemetry::CONFIG_VERSION, "type" => t).set(v);
                    }
                    tracing::info!(system_version = %resp.system_version, version, resumed = resp.resumed, "applied control-plane update");
                    String::new()
                }
                Err(e) => {
                    if fresh {
                        // The control plane now counts what it sent as unknown here and
                        // sends it all again; what this proxy held before is not its base
                        // any more (the previous config keeps serving meanwhile).
                        *dynamic = Dynamic::default();
                        *held = Held::default();
                    }
                    tracing::error!(system_version = %resp.system_version, error = %e, "control-plane update refused (NACK); the previous config stays");
                    *status.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                    e
                }
            };
            let ack = DiscoveryRequest {
                node: Some(node.clone()),
                r#type: resp.r#type,
                response_nonce: resp.nonce.clone(),
                error,
                ..Default::default()
            };
            tx.send(ack).await.map_err(|_| "request channel closed")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::discovery::{RemovedResource, Resource};

    fn res(t: ResourceType, name: &str, body: &str) -> Resource {
        Resource { r#type: t as i32, name: name.into(), version: "1".into(), body: body.into() }
    }

    fn ep(name: &str, body: &str) -> Resource {
        res(ResourceType::Endpoints, name, body)
    }

    fn response(resources: Vec<Resource>, removed: &[(ResourceType, &str)]) -> DiscoveryResponse {
        let removed = removed.iter().map(|(t, n)| RemovedResource { r#type: *t as i32, name: (*n).into() }).collect();
        DiscoveryResponse { system_version: "1".into(), resources, removed, ..Default::default() }
    }

    fn addresses(b: &Bootstrap, cluster: &str) -> Vec<String> {
        let c = b.clusters.iter().find(|c| c.name == cluster).expect("cluster");
        c.endpoints.iter().map(|e| format!("{}*{}", e.address, e.weight)).collect()
    }

    /// A cluster `web` (body without endpoints) and three endpoints, one registered.
    fn web() -> Dynamic {
        let resp = response(
            vec![
                res(ResourceType::Cluster, "web", r#"{"name":"web","lb":"round_robin","endpoints":[]}"#),
                ep("web/10.0.0.2:80", r#"{"address":"10.0.0.2:80","weight":3}"#),
                ep("web/10.0.0.1:80", r#"{"address":"10.0.0.1:80"}"#),
                ep("web/10.0.0.0:4143", r#"{"address":"10.0.0.0:4143","registered":true}"#),
            ],
            &[],
        );
        Dynamic::default().with(&resp).expect("applies")
    }

    #[test]
    fn clusters_are_put_back_together_and_endpoints_change_one_by_one() {
        let d = web();
        let b = d.merge_into(&Bootstrap::default());
        assert_eq!(addresses(&b, "web"), ["10.0.0.1:80*1", "10.0.0.2:80*3", "10.0.0.0:4143*1"]);
        assert_eq!(b.clusters[0].lb, api::LbPolicy::RoundRobin);

        // One endpoint replaced by another: one resource and one removed name.
        let resp = response(
            vec![ep("web/10.0.0.3:80", r#"{"address":"10.0.0.3:80"}"#)],
            &[(ResourceType::Endpoints, "web/10.0.0.2:80")],
        );
        let d = d.with(&resp).expect("applies");
        assert_eq!(
            addresses(&d.merge_into(&Bootstrap::default()), "web"),
            ["10.0.0.1:80*1", "10.0.0.3:80*1", "10.0.0.0:4143*1"]
        );

        // The cluster and its endpoints leave together.
        let gone: Vec<(ResourceType, &str)> = vec![
            (ResourceType::Cluster, "web"),
            (ResourceType::Endpoints, "web/10.0.0.1:80"),
            (ResourceType::Endpoints, "web/10.0.0.3:80"),
            (ResourceType::Endpoints, "web/10.0.0.0:4143"),
        ];
        let d = d.with(&response(vec![], &gone)).expect("applies");
        assert!(d.clusters.is_empty() && d.endpoints.is_empty());
    }

    #[test]
    fn a_static_cluster_that_wins_a_clash_takes_only_registered_endpoints() {
        let file: Bootstrap =
            api::parse_bootstrap(r#"{"clusters":[{"name":"web","endpoints":[{"address":"10.9.9.9:80"}]}]}"#).unwrap();
        let b = web().merge_into(&file);
        assert_eq!(addresses(&b, "web"), ["10.9.9.9:80*1", "10.0.0.0:4143*1"]);
    }

    #[test]
    fn endpoint_identities_are_kept_only_by_a_proxy_with_an_identity() {
        let resp = response(
            vec![
                res(ResourceType::Cluster, "web", r#"{"name":"web","endpoints":[]}"#),
                ep(
                    "web/10.0.0.1:4143",
                    r#"{"address":"10.0.0.1:4143","registered":true,"identity":"spiffe://td/ns/a/sa/web"}"#,
                ),
            ],
            &[],
        );
        let d = Dynamic::default().with(&resp).expect("applies");
        let id = |b: &Bootstrap| b.clusters[0].endpoints[0].identity.clone();
        assert_eq!(id(&d.merge_into(&Bootstrap::default())), None, "no identity of its own: no mTLS");
        let with_identity: Bootstrap =
            api::parse_bootstrap("{identity: {cert: c.pem, key: c.key, trust_bundle: ca.pem}}").unwrap();
        assert_eq!(id(&d.merge_into(&with_identity)).as_deref(), Some("spiffe://td/ns/a/sa/web"));
    }

    #[test]
    fn bad_endpoints_are_refused_with_the_resource_named() {
        let d = web();
        let refuse = |r: Resource| d.with(&response(vec![r], &[])).expect_err("refused").to_string();
        assert_eq!(
            refuse(ep("api/10.0.0.1:80", r#"{"address":"10.0.0.1:80"}"#)),
            r#"endpoints[api/10.0.0.1:80]: no cluster named "api""#
        );
        assert!(
            refuse(ep("web/10.0.0.1:80", r#"{"address":"10.0.0.1:80","wieght":2}"#))
                .starts_with("endpoints[web/10.0.0.1:80]: wieght: unknown field")
        );
        assert!(refuse(ep("web/10.0.0.1:80", "[1, 2]")).starts_with("endpoints[web/10.0.0.1:80]: "));
        assert_eq!(
            refuse(ep("web/10.0.0.5:80", r#"{"address":"10.0.0.1:80"}"#)),
            r#"endpoints[web/10.0.0.5:80]: the name's address "10.0.0.5:80" differs from the body's "10.0.0.1:80""#
        );
        assert_eq!(refuse(ep("web", r#"{"address":"10.0.0.1:80"}"#)), "endpoints[web]: not CLUSTER/ADDRESS");
        // Removing the cluster but not its endpoints leaves them orphaned: refused too.
        let orphaned = d.with(&response(vec![], &[(ResourceType::Cluster, "web")])).expect_err("refused");
        assert!(matches!(orphaned, UpdateError::UnknownCluster { .. }), "{orphaned}");
    }

    #[test]
    fn telemetry_replaces_the_files_tracing_while_it_is_held() {
        let file: Bootstrap =
            api::parse_bootstrap("{node: {id: p, service: web}, tracing: {otlp: {endpoint: \"http://file:4317\"}}}")
                .unwrap();
        let endpoint = |b: &Bootstrap| b.tracing.as_ref().map(|t| t.otlp.endpoint.clone());
        let tel = |name: &str, body: &str| res(ResourceType::Telemetry, name, body);
        let mesh =
            tel("mesh", r#"{"name":"mesh","tracing":{"otlp":{"endpoint":"http://mesh:4317"},"sample_ratio":0.5}}"#);
        let d = Dynamic::default().with(&response(vec![mesh], &[])).expect("applies");
        let merged = d.merge_into(&file);
        assert_eq!(endpoint(&merged).as_deref(), Some("http://mesh:4317"));
        assert_eq!(merged.tracing.as_ref().and_then(|t| t.sample_ratio), Some(0.5));

        // The service's own wins over the mesh-wide one; one without tracing turns it off.
        let own = tel("web-off", r#"{"name":"web-off","service":"web"}"#);
        let d = d.with(&response(vec![own], &[])).expect("applies");
        assert_eq!(endpoint(&d.merge_into(&file)), None);
        let other: Bootstrap = api::parse_bootstrap("{node: {id: q, service: api}}").unwrap();
        assert_eq!(endpoint(&d.merge_into(&other)).as_deref(), Some("http://mesh:4317"));

        // Removed: the file's tracing again.
        let gone = [(ResourceType::Telemetry, "web-off"), (ResourceType::Telemetry, "mesh")];
        let d = d.with(&response(vec![], &gone)).expect("applies");
        assert_eq!(endpoint(&d.merge_into(&file)).as_deref(), Some("http://file:4317"));

        // A body that is not a telemetry resource is refused, naming it.
        let bad = tel("t", r#"{"name":"t","tracing":{"otlp":{"endpoint":"http://c:1","protcol":"http"}}}"#);
        let err = d.with(&response(vec![bad], &[])).expect_err("refused").to_string();
        assert!(err.starts_with("telemetry[t]: tracing.otlp.protcol: unknown field"), "{err}");
    }
}

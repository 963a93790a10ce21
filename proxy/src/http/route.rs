//! A compiled route: its matcher, weighted backends with their metric handles, timeouts,
//! header rules, and its lifetime across reloads (`Life`).

use crate::http::router::{Matcher, Routable};
use crate::resilience::rate_limit::Limiter;
use crate::resilience::retry::Retry;
use crate::telemetry::RouteMetrics;
use crate::upstream::Cluster;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use trellis_api as api;

/// A route as one listener uses it.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    matcher: Matcher,
    pub backends: Vec<Backend>,
    total_weight: u32,
    /// Whole-exchange deadline.
    pub timeout: Option<Duration>,
    /// Longest silence from the upstream (head or between body chunks).
    pub idle_timeout: Option<Duration>,
    /// Longest an upgraded stream or CONNECT tunnel stays open with no byte moving: the
    /// route's `idle_timeout`, or a longer default than a response's when it sets none.
    pub tunnel_idle_timeout: Option<Duration>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub retry: Option<Retry>,
    pub hedge: Option<api::HedgePolicy>,
    pub rate_limit: Option<Limiter>,
    pub fault: Option<api::Fault>,
    /// MCP-aware (DESIGN §13): bodies read and checked, policy per JSON-RPC call.
    pub mcp: Option<crate::mcp::McpRoute>,
    pub life: Arc<Life>,
}

/// One weighted destination.
#[derive(Debug)]
pub struct Backend {
    pub cluster: Arc<Cluster>,
    /// Running sum of weights up to and including this backend.
    cumulative: u32,
    pub metrics: RouteMetrics,
}

impl Routable for Route {
    fn matcher(&self) -> &Matcher {
        &self.matcher
    }
}

impl Route {
    /// Compiles a validated route for `listener`; `clusters` must hold every referenced one.
    pub fn build(
        listener: &str,
        spec: &api::Route,
        clusters: &HashMap<String, Arc<Cluster>>,
        life: Arc<Life>,
    ) -> Result<Self, String> {
        let mut total = 0u32;
        let mut backends = Vec::with_capacity(spec.backends.len());
        for (i, b) in spec.backends.iter().enumerate() {
            let cluster = clusters.get(&b.cluster).ok_or_else(|| {
                format!("routes[{}].backends[{i}].cluster: no cluster named \"{}\"", spec.name, b.cluster)
            })?;
            total = total.saturating_add(b.weight);
            backends.push(Backend {
                cluster: cluster.clone(),
                cumulative: total,
                metrics: RouteMetrics::new(listener, &spec.name, &b.cluster),
            });
        }
        let nonzero = |d: Option<api::Duration>| d.filter(|d| !d.is_zero()).map(api::Duration::get);
        Ok(Self {
            name: spec.name.as_str().into(),
            matcher: Matcher::new(&spec.matches).map_err(|e| format!("routes[{}].match: {e}", spec.name))?,
            backends,
            total_weight: total,
            timeout: nonzero(spec.timeout),
            idle_timeout: nonzero(Some(spec.idle_timeout.unwrap_or(api::DEFAULT_IDLE_TIMEOUT))),
            tunnel_idle_timeout: nonzero(Some(spec.idle_timeout.unwrap_or(api::DEFAULT_TUNNEL_IDLE_TIMEOUT))),
            request_headers: HeaderOps::new(&spec.headers)
                .map_err(|e| format!("routes[{}].headers: {e}", spec.name))?,
            response_headers: HeaderOps::new(&spec.response_headers)
                .map_err(|e| format!("routes[{}].response_headers: {e}", spec.name))?,
            retry: spec.retry.as_ref().map(Retry::new),
            hedge: spec.hedge.clone(),
            rate_limit: spec.rate_limit.as_ref().map(Limiter::new),
            fault: spec.fault.clone(),
            mcp: spec.mcp.as_deref().map(|m| crate::mcp::McpRoute::new(m, listener, &spec.name)),
            life,
        })
    }

    /// Picks a backend by weight.
    pub fn pick_backend(&self) -> (usize, &Backend) {
        let i = if self.backends.len() == 1 || self.total_weight == 0 {
            0
        } else {
            let x = fastrand::u32(..self.total_weight);
            self.backends.partition_point(|b| b.cumulative <= x).min(self.backends.len() - 1)
        };
        (i, &self.backends[i])
    }
}

/// Compiled header add/remove rules.
#[derive(Debug, Default)]
pub struct HeaderOps {
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    /// A rule names a field the proxy adds to requests (`headers::Forwarding`).
    names_forwarding: bool,
}

impl HeaderOps {
    fn new(rules: &api::HeaderRules) -> Result<Self, String> {
        let add = rules
            .add
            .iter()
            .map(|(k, v)| {
                Ok((
                    HeaderName::try_from(k.as_str()).map_err(|e| format!("{k}: {e}"))?,
                    HeaderValue::try_from(v.as_str()).map_err(|e| format!("{k}: {e}"))?,
                ))
            })
            .collect::<Result<_, String>>()?;
        let remove = rules
            .remove
            .iter()
            .map(|k| HeaderName::try_from(k.as_str()).map_err(|e| format!("{k}: {e}")))
            .collect::<Result<_, String>>()?;
        let mut ops = Self { add, remove, names_forwarding: false };
        ops.note_forwarding();
        Ok(ops)
    }

    /// Adds `name: value` to what is set (after the configured rules: it wins).
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.remove.retain(|n| n != name);
        self.add.retain(|(n, _)| n != name);
        self.add.push((name, value));
        self.note_forwarding();
    }

    fn note_forwarding(&mut self) {
        self.names_forwarding =
            self.remove.iter().chain(self.add.iter().map(|(n, _)| n)).any(crate::http::headers::is_forwarding);
    }

    /// Whether a rule names a field the proxy adds to requests (`headers::Forwarding`):
    /// the request's map must hold them before [`HeaderOps::apply`].
    pub fn names_forwarding(&self) -> bool {
        self.names_forwarding
    }

    /// Removes, then adds (replacing any existing value).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.add {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// How long a route lives. A route kept by a reload keeps its `Life`; a removed one is
/// retired: its streams may run on for the drain timeout, then they are cut.
#[derive(Debug, Default)]
pub struct Life {
    cut: CancellationToken,
}

impl Life {
    /// Cuts the route's remaining streams after `grace`.
    pub fn retire(self: &Arc<Self>, grace: Duration) {
        let life = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            life.cut.cancel();
        });
    }

    /// Resolves when the route's streams must end.
    pub fn cut(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.cut.clone().cancelled_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_header_wins_over_the_configured_rules() {
        let mut rules = api::HeaderRules::default();
        rules.add.insert("alt-svc".into(), "clear".into());
        rules.remove.push("alt-svc".into());
        let mut ops = HeaderOps::new(&rules).unwrap_or_default();
        ops.set(http::header::ALT_SVC, HeaderValue::from_static("h3=\":443\""));
        let mut h = HeaderMap::new();
        h.insert(http::header::ALT_SVC, HeaderValue::from_static("upstream's"));
        ops.apply(&mut h);
        assert_eq!(h.get_all(http::header::ALT_SVC).iter().collect::<Vec<_>>(), [&"h3=\":443\""]);
    }
}

//! Route selection: a pure function from a request's method, host, path and headers to the
//! first route whose match holds. No I/O, so it is table-tested without sockets.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::cell::Cell;
use std::sync::Arc;
use trellis_api as api;

/// A compiled `match` block.
#[derive(Debug, Clone)]
pub struct Matcher {
    host: HostMatch,
    path: PathMatch,
    headers: Vec<(HeaderName, HeaderValue)>,
    methods: Vec<Method>,
}

#[derive(Debug, Clone)]
enum HostMatch {
    Any,
    /// Lower-case host without port.
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
}

/// The parts of a request that routing looks at.
#[derive(Debug)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    uri: &'a http::Uri,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The host, worked out when a route first asks (most routes do not match on it).
    host: Cell<Option<&'a str>>,
}

impl<'a> RequestView<'a> {
    pub fn new(method: &'a Method, uri: &'a http::Uri, headers: &'a HeaderMap) -> Self {
        Self { method, uri, path: uri.path(), headers, host: Cell::new(None) }
    }

    /// Host without port (from `:authority` or `Host`).
    pub fn host(&self) -> &'a str {
        if let Some(h) = self.host.get() {
            return h;
        }
        let h = request_host(self.uri, self.headers);
        self.host.set(Some(h));
        h
    }
}

/// Something that carries a matcher (a compiled route).
pub trait Routable {
    fn matcher(&self) -> &Matcher;
}

impl Matcher {
    /// Compiles a validated `match` block.
    pub fn new(m: &api::RouteMatch) -> Result<Self, String> {
        let host = match m.host.as_deref() {
            None | Some("*") => HostMatch::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
                None => HostMatch::Exact(h.to_ascii_lowercase()),
            },
        };
        let path = match (&m.path, &m.path_prefix) {
            (Some(p), _) => PathMatch::Exact(p.clone()),
            (None, Some(p)) if p != "/" => PathMatch::Prefix(p.clone()),
            _ => PathMatch::Any,
        };
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::try_from(k.as_str()).map_err(|e| format!("header {k}: {e}"))?;
                let value = HeaderValue::try_from(v.as_str()).map_err(|e| format!("header {k}: {e}"))?;
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        let methods = m
            .methods
            .iter()
            .map(|s| Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|e| format!("method {s}: {e}")))
            .collect::<Result<_, String>>()?;
        Ok(Self { host, path, headers, methods })
    }

    /// Whether `req` satisfies every condition.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => req.host().eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                let host = req.host();
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        };
        host_ok
            && match &self.path {
                PathMatch::Any => true,
                PathMatch::Exact(p) => req.path == p,
                PathMatch::Prefix(p) => req.path.starts_with(p.as_str()),
            }
            && (self.methods.is_empty() || self.methods.contains(req.method))
            && self.headers.iter().all(|(k, v)| req.headers.get_all(k).iter().any(|have| have == v))
    }
}

/// The first route that matches, in configured order.
pub fn select<'r, R: Routable>(routes: &'r [Arc<R>], req: &RequestView<'_>) -> Option<&'r Arc<R>> {
    routes.iter().find(|r| r.matcher().matches(req))
}

/// The host a request is for, without port: `:authority` (h2, absolute-form) or `Host`.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> &'a str {
    let raw = uri.host().or_else(|| headers.get(http::header::HOST).and_then(|h| h.to_str().ok())).unwrap_or("");
    strip_port(raw)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port → [v6]
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests;

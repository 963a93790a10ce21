//! Whole-config validation: names unique, references resolve, values in range. Errors name
//! the resource and field path the way users read them: `routes[api].backends[0].cluster`.

use crate::{Bootstrap, LbPolicy, ListenerProtocol};
use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use thiserror::Error;

/// One problem in a config, with where it is.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// `kind[name].path.to.field`.
    pub field: String,
    pub reason: String,
}

struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, field: impl fmt::Display, reason: impl Into<String>) {
        self.0.push(ValidationError { field: field.to_string(), reason: reason.into() });
    }
}

/// Checks a whole config; returns every problem found, in document order.
pub fn validate(b: &Bootstrap) -> Result<(), Vec<ValidationError>> {
    let mut errs = Errors(Vec::new());
    let clusters = unique_names(&mut errs, "clusters", b.clusters.iter().map(|c| c.name.as_str()));
    let routes = unique_names(&mut errs, "routes", b.routes.iter().map(|r| r.name.as_str()));
    unique_names(&mut errs, "listeners", b.listeners.iter().map(|l| l.name.as_str()));

    if let Some(admin) = &b.admin
        && admin.address.parse::<SocketAddr>().is_err()
    {
        errs.push("admin.address", format!("\"{}\" is not an IP:PORT address", admin.address));
    }

    let mut bound = HashSet::new();
    for l in &b.listeners {
        let at = format!("listeners[{}]", l.name);
        match l.address.parse::<SocketAddr>() {
            Ok(addr) => {
                if !bound.insert(addr) {
                    errs.push(format!("{at}.address"), format!("{addr} is used by another listener"));
                }
            }
            Err(_) => errs.push(format!("{at}.address"), format!("\"{}\" is not an IP:PORT address", l.address)),
        }
        match l.protocol {
            ListenerProtocol::Tcp => {
                if !l.routes.is_empty() {
                    errs.push(format!("{at}.routes"), "a tcp listener has no routes; use `cluster`");
                }
                match &l.cluster {
                    None => errs.push(format!("{at}.cluster"), "a tcp listener needs a cluster"),
                    Some(c) if !clusters.contains(c.as_str()) => {
                        errs.push(format!("{at}.cluster"), format!("no cluster named \"{c}\""))
                    }
                    Some(_) => {}
                }
            }
            ListenerProtocol::Auto | ListenerProtocol::Http => {
                if l.cluster.is_some() {
                    errs.push(format!("{at}.cluster"), "only tcp listeners take a cluster; use routes");
                }
                for (i, r) in l.routes.iter().enumerate() {
                    if !routes.contains(r.as_str()) {
                        errs.push(format!("{at}.routes[{i}]"), format!("no route named \"{r}\""));
                    }
                }
            }
        }
        if let Some(n) = l.max_header_bytes
            && !(8192..=1 << 20).contains(&n)
        {
            errs.push(format!("{at}.max_header_bytes"), "must be between 8192 and 1048576");
        }
    }

    for r in &b.routes {
        let at = format!("routes[{}]", r.name);
        if r.backends.is_empty() {
            errs.push(format!("{at}.backends"), "a route needs at least one backend");
        }
        if !r.backends.is_empty() && r.backends.iter().all(|b| b.weight == 0) {
            errs.push(format!("{at}.backends"), "at least one backend needs a weight above 0");
        }
        for (i, be) in r.backends.iter().enumerate() {
            if !clusters.contains(be.cluster.as_str()) {
                errs.push(format!("{at}.backends[{i}].cluster"), format!("no cluster named \"{}\"", be.cluster));
            }
        }
        let m = &r.matches;
        if m.path.is_some() && m.path_prefix.is_some() {
            errs.push(format!("{at}.match"), "give either path or path_prefix, not both");
        }
        for (field, p) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
            if let Some(p) = p
                && !p.starts_with('/')
            {
                errs.push(format!("{at}.match.{field}"), format!("\"{p}\" must start with /"));
            }
        }
        if let Some(h) = &m.host {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if h != "*" && (bare.is_empty() || bare.contains('*')) {
                errs.push(format!("{at}.match.host"), format!("\"{h}\": use an exact host, *.suffix or *"));
            }
        }
        for name in m.headers.keys() {
            if !is_token(name) {
                errs.push(format!("{at}.match.headers.{name}"), "not a valid header name");
            }
        }
        for (i, meth) in m.methods.iter().enumerate() {
            if !is_token(meth) {
                errs.push(format!("{at}.match.methods[{i}]"), format!("\"{meth}\" is not a method"));
            }
        }
        for (kind, rules) in [("headers", &r.headers), ("response_headers", &r.response_headers)] {
            for (name, value) in &rules.add {
                if !is_token(name) {
                    errs.push(format!("{at}.{kind}.add.{name}"), "not a valid header name");
                }
                if value.bytes().any(|c| c == b'\r' || c == b'\n' || c == 0) {
                    errs.push(format!("{at}.{kind}.add.{name}"), "value has a control character");
                }
            }
            for (i, name) in rules.remove.iter().enumerate() {
                if !is_token(name) {
                    errs.push(format!("{at}.{kind}.remove[{i}]"), "not a valid header name");
                }
            }
        }
    }

    for c in &b.clusters {
        let at = format!("clusters[{}]", c.name);
        for (i, e) in c.endpoints.iter().enumerate() {
            if e.address.parse::<SocketAddr>().is_err() && !resolvable(&e.address) {
                errs.push(
                    format!("{at}.endpoints[{i}].address"),
                    format!("\"{}\" is not IP:PORT nor a resolvable HOST:PORT", e.address),
                );
            }
        }
        if let Some(h) = &c.hash_on {
            match (&h.header, h.source_ip) {
                (Some(_), true) | (None, false) => {
                    errs.push(format!("{at}.hash_on"), "give exactly one of header or source_ip: true")
                }
                (Some(name), false) if !is_token(name) => {
                    errs.push(format!("{at}.hash_on.header"), "not a valid header name")
                }
                _ => {}
            }
            if !matches!(c.lb, LbPolicy::RingHash | LbPolicy::Maglev) {
                errs.push(format!("{at}.hash_on"), "only ring_hash and maglev use hash_on");
            }
        }
        if c.max_streams_per_connection == Some(0) {
            errs.push(format!("{at}.max_streams_per_connection"), "must be at least 1");
        }
        if c.connect_timeout.is_some_and(|d| d.is_zero()) {
            errs.push(format!("{at}.connect_timeout"), "must be above 0");
        }
    }

    if errs.0.is_empty() { Ok(()) } else { Err(errs.0) }
}

fn unique_names<'a>(errs: &mut Errors, kind: &str, names: impl Iterator<Item = &'a str>) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if n.is_empty() {
            errs.push(format!("{kind}[{i}].name"), "must not be empty");
        } else if !seen.insert(n) {
            errs.push(format!("{kind}[{n}].name"), format!("\"{n}\" is defined twice"));
        }
    }
    seen
}

/// RFC 9110 token characters (header names, methods).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

fn resolvable(addr: &str) -> bool {
    addr.to_socket_addrs().map(|mut a| a.next().is_some()).unwrap_or(false)
}

#[cfg(test)]
mod tests;

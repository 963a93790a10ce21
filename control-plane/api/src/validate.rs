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

/// Checks a whole bootstrap; returns every problem found, in document order.
pub fn validate(b: &Bootstrap) -> Result<(), Vec<ValidationError>> {
    check(b, true, true)
}

/// Checks resources held by the control plane: like [`validate`], but without the checks
/// that belong to one proxy's bootstrap (a mesh listener or cluster needs that proxy's
/// `identity`, which the control plane does not have).
pub fn validate_resources(b: &Bootstrap) -> Result<(), Vec<ValidationError>> {
    check(b, false, true)
}

/// Like [`validate_resources`], without looking host names up: an endpoint `HOST:PORT`
/// only has to be well formed. For checking values another control plane already checked
/// (with its own resolver), so that two resolvers cannot disagree about one value.
pub fn validate_resources_offline(b: &Bootstrap) -> Result<(), Vec<ValidationError>> {
    check(b, false, false)
}

fn validate_issuer(errs: &mut Errors, issuer: &crate::Issuer) {
    let port =
        |rest: &str| rest.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    match issuer.server.strip_prefix("http://").or_else(|| issuer.server.strip_prefix("https://")) {
        Some(rest) if !rest.contains('/') && port(rest) => {}
        _ => errs.push(
            "identity.issuer.server",
            format!(
                "\"{}\" is not http://HOST:PORT or https://HOST:PORT (the control plane's REST API)",
                issuer.server
            ),
        ),
    }
    if !issuer.id.starts_with("spiffe://") || issuer.id.len() <= "spiffe://".len() {
        errs.push("identity.issuer.id", format!("\"{}\" is not a SPIFFE ID (spiffe://…)", issuer.id));
    }
    if issuer.ttl.is_some_and(|t| t.get().as_secs() < 3) {
        errs.push("identity.issuer.ttl", "must be at least 3s");
    }
}

/// `tracing` (at `at`: `tracing` in a bootstrap, `telemetry[NAME].tracing` on the control
/// plane). Whether `ca_file` can be read is the proxy's to say: it is a path on its host.
fn validate_tracing(errs: &mut Errors, at: &str, t: &crate::Tracing) {
    let endpoint = &t.otlp.endpoint;
    let (tls, rest) = match (endpoint.strip_prefix("http://"), endpoint.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => (false, ""),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if !host_port(rest) || rest.contains('/') {
        errs.push(
            format!("{at}.otlp.endpoint"),
            format!("\"{endpoint}\" is not http://HOST:PORT or https://HOST:PORT"),
        );
    }
    match &t.otlp.ca_file {
        Some(_) if !tls => errs.push(format!("{at}.otlp.ca_file"), "applies to https:// endpoints only"),
        Some(f) if f.trim().is_empty() => errs.push(format!("{at}.otlp.ca_file"), "must not be empty"),
        _ => {}
    }
    if t.sample_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        errs.push(format!("{at}.sample_ratio"), "must be between 0.0 and 1.0");
    }
    if t.max_queue == Some(0) {
        errs.push(format!("{at}.max_queue"), "must be at least 1");
    }
}

/// Telemetry resources: names, one per selector (a service, or mesh-wide), their tracing.
fn validate_telemetry(errs: &mut Errors, all: &[crate::Telemetry]) {
    unique_names(errs, "telemetry", all.iter().map(|t| t.name.as_str()));
    let mut selectors: std::collections::HashMap<Option<&str>, &str> = std::collections::HashMap::new();
    for t in all {
        let at = format!("telemetry[{}]", t.name);
        if let Some(s) = &t.service
            && s.trim().is_empty()
        {
            errs.push(format!("{at}.service"), "must not be empty (leave it out for every proxy)");
        }
        match selectors.insert(t.service.as_deref(), &t.name) {
            Some(other) if other != t.name => {
                let whom = match &t.service {
                    Some(s) => format!("service \"{s}\""),
                    None => "every proxy (no service)".to_owned(),
                };
                errs.push(format!("{at}.service"), format!("{whom} is already selected by telemetry[{other}]"));
            }
            _ => {}
        }
        if let Some(tracing) = &t.tracing {
            validate_tracing(errs, &format!("{at}.tracing"), tracing);
        }
    }
}

fn check(b: &Bootstrap, bootstrap: bool, resolve: bool) -> Result<(), Vec<ValidationError>> {
    let mut errs = Errors(Vec::new());
    let clusters = unique_names(&mut errs, "clusters", b.clusters.iter().map(|c| c.name.as_str()));
    let routes = unique_names(&mut errs, "routes", b.routes.iter().map(|r| r.name.as_str()));
    unique_names(&mut errs, "listeners", b.listeners.iter().map(|l| l.name.as_str()));
    let policies = unique_names(&mut errs, "policies", b.policies.iter().map(|p| p.name.as_str()));
    validate_tls(&mut errs, b, bootstrap);
    if let Some(t) = &b.tracing {
        validate_tracing(&mut errs, "tracing", t);
    }
    validate_telemetry(&mut errs, &b.telemetry);
    if let Some(cp) = &b.control_plane {
        let all = cp.address.all();
        for (i, address) in all.iter().enumerate() {
            let field = if all.len() == 1 {
                "control_plane.address".to_string()
            } else {
                format!("control_plane.address[{i}]")
            };
            if !(address.starts_with("http://") || address.starts_with("https://")) {
                errs.push(&field, format!("\"{address}\" is not http://HOST:PORT or https://HOST:PORT"));
            }
            if address.starts_with("https://") && b.identity.is_none() {
                errs.push(&field, "https:// (mTLS) needs the bootstrap's identity (cert, key, trust_bundle)");
            }
        }
        if let Some(id) = &cp.identity {
            if !id.starts_with("spiffe://") {
                errs.push("control_plane.identity", format!("\"{id}\" is not a SPIFFE ID (spiffe://…)"));
            } else if !all.iter().all(|a| a.starts_with("https://")) {
                errs.push("control_plane.identity", "only an https:// control plane presents an identity");
            }
        }
    }
    if let Some(issuer) = b.identity.as_ref().and_then(|i| i.issuer.as_ref()) {
        validate_issuer(&mut errs, issuer);
    }
    for p in &b.policies {
        for (i, rule) in p.rules.iter().enumerate() {
            for (j, from) in rule.from.iter().enumerate() {
                let id = from.strip_suffix('*').unwrap_or(from);
                if !id.starts_with("spiffe://") {
                    errs.push(
                        format!("policies[{}].rules[{i}].from[{j}]", p.name),
                        format!("\"{from}\" is not a SPIFFE ID (spiffe://…, optionally ending in *)"),
                    );
                }
            }
            for (j, path) in rule.paths.iter().enumerate() {
                if !path.starts_with('/') || path[..path.len().saturating_sub(1)].contains('*') {
                    errs.push(
                        format!("policies[{}].rules[{i}].paths[{j}]", p.name),
                        format!("\"{path}\": use /exact or /prefix/*"),
                    );
                }
            }
            for (j, m) in rule.methods.iter().enumerate() {
                if !is_token(m) {
                    errs.push(
                        format!("policies[{}].rules[{i}].methods[{j}]", p.name),
                        format!("\"{m}\" is not a method"),
                    );
                }
            }
            if let Some(mcp) = &rule.mcp {
                for (kind, names) in [("methods", &mcp.methods), ("tools", &mcp.tools)] {
                    for (j, n) in names.iter().enumerate() {
                        if !is_name_pattern(n) {
                            errs.push(
                                format!("policies[{}].rules[{i}].mcp.{kind}[{j}]", p.name),
                                format!("\"{}\": use an exact name or a prefix ending in *", n.escape_debug()),
                            );
                        }
                    }
                }
            }
        }
    }

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
                // Listeners for different services go to different proxies: on the control
                // plane they may share an address (every sidecar's inbound is 0.0.0.0:4143).
                // A listener without a service goes to every proxy and clashes with all.
                let scope = if bootstrap { None } else { l.service.as_deref() };
                let clash = !bound.insert((addr, scope))
                    || (!bootstrap
                        && match scope {
                            None => bound.iter().any(|(a, s)| *a == addr && s.is_some()),
                            Some(_) => bound.contains(&(addr, None)),
                        });
                if clash {
                    errs.push(format!("{at}.address"), format!("{addr} is used by another listener"));
                }
            }
            Err(_) => errs.push(format!("{at}.address"), format!("\"{}\" is not an IP:PORT address", l.address)),
        }
        if let Some(p) = &l.policy
            && !policies.contains(p.as_str())
        {
            errs.push(format!("{at}.policy"), format!("no policy named \"{p}\""));
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
        if l.max_hops.is_some_and(|n| !(1..=255).contains(&n)) {
            errs.push(format!("{at}.max_hops"), "must be 1–255");
        }
        validate_transparent(&mut errs, &at, l);
        if l.connect && (l.protocol == ListenerProtocol::Tcp || l.transparent) {
            errs.push(format!("{at}.connect"), "applies to HTTP listeners that are not transparent");
        }
        match &l.connect_ports {
            Some(_) if !l.connect => {
                errs.push(format!("{at}.connect_ports"), "applies with connect: true only");
            }
            Some(p) if p.is_empty() => errs.push(format!("{at}.connect_ports"), "must list at least one port"),
            Some(p) if p.contains(&0) => errs.push(format!("{at}.connect_ports"), "0 is not a port"),
            _ => {}
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
        validate_route_resilience(&mut errs, &at, r);
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
        let mut addresses = HashSet::new();
        for (i, e) in c.endpoints.iter().enumerate() {
            // Discovery names each endpoint `CLUSTER/ADDRESS` (crate::endpoints): an address
            // must be unique in its cluster and hold no `/`. Neither ever worked anyway: a
            // duplicate is better said with `weight`, and no host name holds a `/`.
            if !addresses.insert(e.address.as_str()) {
                errs.push(
                    format!("{at}.endpoints[{i}].address"),
                    format!("\"{}\" is listed twice (give it a weight instead)", e.address),
                );
            } else if e.address.contains(crate::endpoints::SEPARATOR) {
                errs.push(format!("{at}.endpoints[{i}].address"), format!("\"{}\" holds a `/`", e.address));
            } else if e.address.parse::<SocketAddr>().is_err()
                && !(if resolve { resolvable(&e.address) } else { host_port(&e.address) })
            {
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
        if let Some(o) = &c.outlier_detection {
            if o.max_ejection_percent > 100 {
                errs.push(format!("{at}.outlier_detection.max_ejection_percent"), "must be 0–100");
            }
            if o.base_ejection.is_zero() {
                errs.push(format!("{at}.outlier_detection.base_ejection"), "must be above 0");
            }
        }
        if let Some(h) = &c.health_check {
            if h.interval.is_zero() || h.timeout.is_zero() {
                errs.push(format!("{at}.health_check"), "interval and timeout must be above 0");
            }
            if h.healthy == 0 || h.unhealthy == 0 {
                errs.push(format!("{at}.health_check"), "healthy and unhealthy thresholds must be at least 1");
            }
            if h.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
                errs.push(format!("{at}.health_check.path"), "must start with /");
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

/// The fields of transparent interception (DESIGN §9).
fn validate_transparent(errs: &mut Errors, at: &str, l: &crate::Listener) {
    use crate::ListenerTlsMode as Mode;
    let mode = l.tls.as_ref().map_or(Mode::None, |t| t.mode);
    if l.transparent {
        if l.protocol == ListenerProtocol::Tcp {
            errs.push(
                format!("{at}.protocol"),
                "a transparent listener detects each connection's protocol: use auto (opaque_ports for ports that are not HTTP)",
            );
        }
        if mode == Mode::Terminate {
            errs.push(
                format!("{at}.tls.mode"),
                "a transparent listener is outbound (no tls) or inbound (mesh or permissive), not terminate",
            );
        }
    } else {
        for (field, set) in [("detect_timeout", l.detect_timeout.is_some()), ("opaque_ports", l.opaque_ports.is_some())]
        {
            if set {
                errs.push(format!("{at}.{field}"), "applies to transparent listeners only (transparent: true)");
            }
        }
    }
    if l.outbound_policy.is_some() && (!l.transparent || matches!(mode, Mode::Mesh | Mode::Permissive)) {
        errs.push(
            format!("{at}.outbound_policy"),
            "applies to transparent outbound listeners only (transparent: true, no tls)",
        );
    }
    if l.detect_timeout.is_some_and(|d| d.is_zero()) {
        errs.push(format!("{at}.detect_timeout"), "must be above 0");
    }
    if l.opaque_ports.as_ref().is_some_and(|p| p.contains(&0)) {
        errs.push(format!("{at}.opaque_ports"), "0 is not a port");
    }
    if mode == Mode::Permissive && l.protocol == ListenerProtocol::Tcp {
        errs.push(format!("{at}.tls.mode"), "permissive applies to HTTP listeners (protocol auto or http)");
    }
}

fn validate_tls(errs: &mut Errors, b: &Bootstrap, bootstrap: bool) {
    use crate::{ClusterTlsMode, ListenerTlsMode};
    let has_identity = b.identity.is_some() || !bootstrap;
    for l in &b.listeners {
        let Some(tls) = &l.tls else { continue };
        let at = format!("listeners[{}].tls", l.name);
        match tls.mode {
            ListenerTlsMode::Mesh | ListenerTlsMode::Permissive if !has_identity => errs.push(
                format!("{at}.mode"),
                "mesh and permissive need the bootstrap's identity (cert, key, trust_bundle)",
            ),
            ListenerTlsMode::Terminate if tls.certificates.is_empty() => {
                errs.push(format!("{at}.certificates"), "terminate needs at least one certificate")
            }
            _ => {}
        }
        if tls.mode != ListenerTlsMode::Terminate && (!tls.certificates.is_empty() || tls.min_version.is_some()) {
            errs.push(&at, "certificates and min_version apply to mode terminate only");
        }
        if let Some(v) = &tls.min_version
            && v != "1.2"
            && v != "1.3"
        {
            errs.push(format!("{at}.min_version"), format!("\"{v}\": use \"1.2\" or \"1.3\""));
        }
        if tls.http3 && tls.mode != ListenerTlsMode::Terminate {
            errs.push(format!("{at}.http3"), "HTTP/3 needs mode terminate");
        } else if tls.http3 && l.protocol == crate::ListenerProtocol::Tcp {
            errs.push(format!("{at}.http3"), "HTTP/3 needs an HTTP listener (protocol auto or http), not tcp");
        }
        if tls.early_data && !tls.http3 {
            errs.push(format!("{at}.early_data"), "early data (0-RTT) is offered over HTTP/3 only: set http3: true");
        }
        if let Some(n) = tls.http3_max_connections {
            if !tls.http3 {
                errs.push(format!("{at}.http3_max_connections"), "applies to HTTP/3 only: set http3: true");
            } else if !(1..=1_000_000).contains(&n) {
                errs.push(format!("{at}.http3_max_connections"), "must be 1–1000000");
            }
        }
    }
    for c in &b.clusters {
        for (i, e) in c.endpoints.iter().enumerate() {
            let Some(id) = &e.identity else { continue };
            let at = format!("clusters[{}].endpoints[{i}].identity", c.name);
            if !id.starts_with("spiffe://") || id.len() <= "spiffe://".len() {
                errs.push(&at, format!("\"{id}\" is not a SPIFFE ID (spiffe://…)"));
            } else if !has_identity {
                errs.push(&at, "a mesh endpoint needs the bootstrap's identity (cert, key, trust_bundle)");
            } else if c.tls.as_ref().is_some_and(|t| t.mode == ClusterTlsMode::Tls) {
                errs.push(&at, "identity makes the endpoint a mesh (mTLS) one; the cluster's tls mode is tls");
            }
        }
        let Some(tls) = &c.tls else { continue };
        let at = format!("clusters[{}].tls", c.name);
        match tls.mode {
            ClusterTlsMode::Mesh => {
                if !has_identity {
                    errs.push(format!("{at}.mode"), "mesh needs the bootstrap's identity (cert, key, trust_bundle)");
                }
                match &tls.identity {
                    None => errs.push(format!("{at}.identity"), "mesh needs the SPIFFE ID the endpoints must present"),
                    Some(id) if !id.starts_with("spiffe://") => {
                        errs.push(format!("{at}.identity"), format!("\"{id}\" is not a SPIFFE ID"))
                    }
                    Some(_) => {}
                }
            }
            ClusterTlsMode::Tls => {
                if tls.trust_bundle.is_none() {
                    errs.push(format!("{at}.trust_bundle"), "tls needs a trust bundle");
                }
                if tls.identity.is_some() {
                    errs.push(format!("{at}.identity"), "identity applies to mode mesh only");
                }
            }
        }
    }
}

fn validate_route_resilience(errs: &mut Errors, at: &str, r: &crate::Route) {
    if let Some(retry) = &r.retry {
        if retry.attempts == 0 || retry.attempts > 10 {
            errs.push(format!("{at}.retry.attempts"), "must be 1–10 (tries in total)");
        }
        if retry.budget.ratio < 0.0 || !retry.budget.ratio.is_finite() {
            errs.push(format!("{at}.retry.budget.ratio"), "must be 0 or more");
        }
        if retry.backoff.base > retry.backoff.max {
            errs.push(format!("{at}.retry.backoff"), "base must not exceed max");
        }
    }
    if let Some(h) = &r.hedge
        && (h.max == 0 || h.max > 4)
    {
        errs.push(format!("{at}.hedge.max"), "must be 1–4");
    }
    if let Some(rl) = &r.rate_limit {
        if rl.requests_per_second.is_nan() || rl.requests_per_second <= 0.0 || !rl.requests_per_second.is_finite() {
            errs.push(format!("{at}.rate_limit.requests_per_second"), "must be above 0");
        }
        if rl.burst == Some(0) {
            errs.push(format!("{at}.rate_limit.burst"), "must be at least 1");
        }
        if rl.per_header.is_some() && rl.per_source_ip {
            errs.push(format!("{at}.rate_limit"), "give at most one of per_header and per_source_ip");
        }
        if rl.per_mcp_tool && r.mcp.is_none() {
            errs.push(
                format!("{at}.rate_limit.per_mcp_tool"),
                "needs the route's mcp (tools are read from MCP bodies)",
            );
        }
    }
    if let Some(mcp) = &r.mcp {
        if mcp.max_body_bytes.is_some_and(|n| !(1024..=16 * 1024 * 1024).contains(&n)) {
            errs.push(format!("{at}.mcp.max_body_bytes"), "must be 1024–16777216 (16 MiB)");
        }
        if mcp.max_batch.is_some_and(|n| !(1..=1000).contains(&n)) {
            errs.push(format!("{at}.mcp.max_batch"), "must be 1–1000");
        }
        if mcp.max_sessions.is_some_and(|n| !(1..=1_000_000).contains(&n)) {
            errs.push(format!("{at}.mcp.max_sessions"), "must be 1–1000000");
        }
        if mcp.session_idle_timeout.is_some_and(crate::Duration::is_zero) {
            errs.push(format!("{at}.mcp.session_idle_timeout"), "must be more than 0");
        }
        for (j, n) in mcp.idempotent_tools.iter().enumerate() {
            if !is_name_pattern(n) {
                errs.push(
                    format!("{at}.mcp.idempotent_tools[{j}]"),
                    format!("\"{}\": use an exact name or a prefix ending in *", n.escape_debug()),
                );
            }
        }
    }
    if let Some(f) = &r.fault {
        for (field, p) in
            [("delay", f.delay.as_ref().map(|d| d.percent)), ("abort", f.abort.as_ref().map(|a| a.percent))]
        {
            if p.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                errs.push(format!("{at}.fault.{field}.percent"), "must be 0–100");
            }
        }
        if f.abort.as_ref().is_some_and(|a| !(200..600).contains(&a.status)) {
            errs.push(format!("{at}.fault.abort.status"), "must be an HTTP status 200–599");
        }
    }
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
/// An MCP method or tool name, exact or a prefix ending in `*`.
fn is_name_pattern(n: &str) -> bool {
    let stem = n.strip_suffix('*').unwrap_or(n);
    !n.is_empty() && !stem.contains('*') && !n.chars().any(char::is_control)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

fn resolvable(addr: &str) -> bool {
    addr.to_socket_addrs().map(|mut a| a.next().is_some()).unwrap_or(false)
}

/// `HOST:PORT` in form only.
fn host_port(addr: &str) -> bool {
    addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests;

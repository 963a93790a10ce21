//! Whose fault a failure is, as pingora's errors carry their source: the client's (a 4xx,
//! or nothing when it has gone), the upstream's (a 5xx, and the only kind that counts
//! against an endpoint in outlier detection and may be retried), or the proxy's own
//! (its configuration or limits: a 5xx that says nothing about any endpoint).

/// The side at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The downstream client: a malformed or cut request, a stall, a disallowed request.
    Client,
    /// The upstream endpoint: refused, reset, malformed or late response.
    Upstream,
    /// The proxy: no route target to try, a breaker or limit, draining, injected faults.
    Proxy,
}

//! MCP session affinity (DESIGN §13): which endpoint holds each `Mcp-Session-Id`, so every
//! request of a session goes where its `initialize` was answered. A session is learnt from
//! the answer that carries its id, forgotten on its DELETE, on a 404 for it (the server lost
//! it), after `session_idle_timeout` unused, or as the least recently used past
//! `max_sessions`. A request of an unknown session, or of one whose endpoint is gone or
//! ejected, is balanced as usual (Envoy's non-strict stateful sessions): a server sharing its
//! sessions answers it, a server that kept them in memory answers 404, on which MCP clients
//! start a new session.
//!
//! The table belongs to the listener's route and outlives reloads (tables are found again
//! by name); only routes with `mcp` have one.

use crate::http::route::Route;
use crate::upstream::Endpoint;
use http::HeaderMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The session header (MCP Streamable HTTP).
pub const SESSION_HEADER: http::HeaderName = http::HeaderName::from_static("mcp-session-id");

/// Longest session id remembered (the spec's ids are UUIDs or tokens; longer ones are
/// balanced as if unknown rather than stored).
pub const MAX_ID_BYTES: usize = 256;

const SHARDS: usize = 16;

/// Where sessions are, for one route.
#[derive(Debug)]
pub struct Sessions {
    shards: [Mutex<HashMap<Box<[u8]>, Pin>>; SHARDS],
    per_shard: usize,
    idle: Duration,
}

/// The endpoint of a session: by cluster and address, so it is found again after a reload
/// rebuilt the endpoint objects.
#[derive(Debug, Clone)]
struct Pin {
    cluster: Arc<str>,
    addr: SocketAddr,
    used: Instant,
}

impl Sessions {
    pub fn new(max: usize, idle: Duration) -> Self {
        Self { shards: std::array::from_fn(|_| Mutex::default()), per_shard: max.div_ceil(SHARDS).max(1), idle }
    }

    fn shard(&self, id: &[u8]) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Pin>> {
        let i = crate::upstream::balancer::hash64(id) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's cluster and endpoint address, when it is known and was used within
    /// the idle timeout (then it counts as used now).
    pub fn get(&self, id: &[u8], now: Instant) -> Option<(Arc<str>, SocketAddr)> {
        let mut shard = self.shard(id);
        let pin = shard.get_mut(id)?;
        if now.duration_since(pin.used) > self.idle {
            shard.remove(id);
            return None;
        }
        pin.used = now;
        Some((pin.cluster.clone(), pin.addr))
    }

    /// Remembers that `id` lives on `addr` of `cluster`.
    pub fn pin(&self, id: &[u8], cluster: &Arc<str>, addr: SocketAddr, now: Instant) {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return;
        }
        let mut shard = self.shard(id);
        if let Some(p) = shard.get_mut(id) {
            *p = Pin { cluster: cluster.clone(), addr, used: now };
            return;
        }
        if shard.len() >= self.per_shard {
            let idle = self.idle;
            shard.retain(|_, p| now.duration_since(p.used) <= idle);
        }
        if shard.len() >= self.per_shard
            && let Some(oldest) = shard.iter().min_by_key(|(_, p)| p.used).map(|(k, _)| k.clone())
        {
            shard.remove(&oldest);
        }
        shard.insert(id.into(), Pin { cluster: cluster.clone(), addr, used: now });
    }

    pub fn forget(&self, id: &[u8]) {
        self.shard(id).remove(id);
    }

    /// Sessions remembered (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The table of the route `listener`/`route`: the one it had before a reload when its size
/// settings are unchanged, else a new one.
pub fn table(listener: &str, route: &str, max: usize, idle: Duration) -> Arc<Sessions> {
    type Tables = Mutex<Vec<(String, usize, Duration, Weak<Sessions>)>>;
    static TABLES: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    let key = format!("{listener}\u{0}{route}");
    let mut tables = TABLES.get_or_init(Tables::default).lock().unwrap_or_else(|p| p.into_inner());
    tables.retain(|(_, _, _, t)| t.strong_count() > 0);
    if let Some(t) = tables.iter().find(|(k, m, i, _)| *k == key && *m == max && *i == idle).and_then(|e| e.3.upgrade())
    {
        return t;
    }
    let t = Arc::new(Sessions::new(max, idle));
    tables.retain(|(k, _, _, _)| *k != key);
    tables.push((key, max, idle, Arc::downgrade(&t)));
    t
}

/// Where a request of a known session goes.
#[derive(Debug)]
pub struct Pinned {
    /// The route backend whose cluster holds the endpoint.
    pub backend: usize,
    pub endpoint: Arc<Endpoint>,
}

/// The session a request belongs to, when it names one.
pub fn id_of(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(&SESSION_HEADER).map(http::HeaderValue::as_bytes).filter(|id| !id.is_empty())
}

/// The endpoint `id` is pinned to on `route`, when it is still in one of the route's
/// clusters and may take traffic.
pub fn lookup(sessions: &Sessions, route: &Route, id: &[u8]) -> Option<Pinned> {
    let (cluster, addr) = sessions.get(id, Instant::now())?;
    let (backend, b) = route.backends.iter().enumerate().find(|(_, b)| b.cluster.name == cluster)?;
    let endpoint = b.cluster.endpoints.iter().find(|e| e.addr == addr)?;
    if !endpoint.available() {
        tracing::debug!(route = %route.name, endpoint = %addr, "mcp session: its endpoint is not available, balanced anew");
        return None;
    }
    Some(Pinned { backend, endpoint: endpoint.clone() })
}

/// Learns from an answer: the session id it carries (an `initialize`'s answer) or the
/// request's (a session balanced anew and answered) now lives on `served`; a 404 for a
/// session, or a DELETE of it, forgets it.
pub fn learn(
    sessions: &Sessions,
    request: Option<&[u8]>,
    delete: bool,
    status: http::StatusCode,
    answer: &HeaderMap,
    cluster: &Arc<str>,
    served: &Endpoint,
) {
    if let Some(id) = request
        && (delete || status == http::StatusCode::NOT_FOUND)
    {
        sessions.forget(id);
        return;
    }
    if !status.is_success() {
        return;
    }
    if let Some(id) = id_of(answer).or(request) {
        sessions.pin(id, cluster, served.addr, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn sessions_expire_when_idle() {
        let s = Sessions::new(10, Duration::from_secs(60));
        let c: Arc<str> = "c".into();
        let t0 = Instant::now();
        s.pin(b"a", &c, addr(1), t0);
        assert_eq!(s.get(b"a", t0 + Duration::from_secs(59)).map(|p| p.1), Some(addr(1)));
        // Used at 59 s: alive until 119 s.
        assert!(s.get(b"a", t0 + Duration::from_secs(118)).is_some());
        assert!(s.get(b"a", t0 + Duration::from_secs(300)).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_least_recently_used() {
        let s = Sessions::new(SHARDS * 2, Duration::from_secs(60));
        let c: Arc<str> = "c".into();
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            s.pin(format!("s{i}").as_bytes(), &c, addr(1), t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(s.len() <= SHARDS * 2, "{}", s.len());
        // The newest survive.
        assert!(s.get(b"s9999", t0 + Duration::from_secs(11)).is_some());
        assert!(s.get(b"s0", t0 + Duration::from_secs(11)).is_none());
        // Too long an id is not stored; forgetting works.
        s.pin(&[b'x'; MAX_ID_BYTES + 1], &c, addr(2), t0);
        assert!(s.get(&[b'x'; MAX_ID_BYTES + 1], t0).is_none());
        s.forget(b"s9999");
        assert!(s.get(b"s9999", t0 + Duration::from_secs(11)).is_none());
    }

    #[test]
    fn answers_pin_and_forget_sessions() {
        let settings = crate::upstream::Settings {
            connect_timeout: Duration::from_secs(1),
            max_streams: 100,
            max_idle: 1,
            limits: None,
        };
        let ep = Endpoint::new(addr(7), 1, None, settings, 1);
        let s = Sessions::new(100, Duration::from_secs(60));
        let c: Arc<str> = "c".into();
        let mut answer = HeaderMap::new();
        answer.insert(SESSION_HEADER, http::HeaderValue::from_static("abc"));
        let ok = http::StatusCode::OK;
        // An initialize's answer brings the id; a failed one pins nothing.
        learn(&s, None, false, http::StatusCode::BAD_GATEWAY, &answer, &c, &ep);
        assert!(s.is_empty());
        learn(&s, None, false, ok, &answer, &c, &ep);
        assert_eq!(s.get(b"abc", Instant::now()).map(|p| p.1), Some(addr(7)));
        // A 404 for it (the server lost it) or its DELETE forgets it.
        learn(&s, Some(b"abc"), false, http::StatusCode::NOT_FOUND, &HeaderMap::new(), &c, &ep);
        assert!(s.is_empty());
        learn(&s, Some(b"abc"), false, ok, &HeaderMap::new(), &c, &ep);
        assert!(!s.is_empty(), "a session balanced anew and answered is pinned where it was answered");
        learn(&s, Some(b"abc"), true, ok, &HeaderMap::new(), &c, &ep);
        assert!(s.is_empty());
    }

    #[test]
    fn tables_outlive_a_reload_of_their_route() {
        let a = table("l", "r", 100, Duration::from_secs(1));
        a.pin(b"x", &"c".into(), addr(1), Instant::now());
        let b = table("l", "r", 100, Duration::from_secs(1));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &table("l", "other", 100, Duration::from_secs(1))));
        drop((a, b));
        assert!(table("l", "r", 100, Duration::from_secs(1)).is_empty());
    }
}

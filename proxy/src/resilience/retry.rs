//! Retry decisions: which outcomes a route retries, how long to back off (full jitter,
//! `Retry-After` honoured), and a budget that caps retries to a share of requests so a
//! failing upstream does not get a retry storm.

use crate::resilience::outlier::Outcome;
use http::{HeaderMap, Method};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use trellis_api::{RetryOn, RetryPolicy};

/// Window of the budget, in one-second slots.
const WINDOW: u64 = 10;
/// Longest `Retry-After` we wait for instead of giving up.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// A route's compiled retry policy.
#[derive(Debug)]
pub struct Retry {
    pub attempts: u32,
    on: Vec<RetryOn>,
    pub per_try_timeout: Option<Duration>,
    base: Duration,
    max: Duration,
    non_idempotent: bool,
    pub max_body: usize,
    pub budget: Budget,
}

impl Retry {
    pub fn new(p: &RetryPolicy) -> Self {
        Self {
            attempts: p.attempts.max(1),
            on: p.on.clone(),
            per_try_timeout: p.per_try_timeout.filter(|d| !d.is_zero()).map(|d| d.get()),
            base: p.backoff.base.get(),
            max: p.backoff.max.get(),
            non_idempotent: p.non_idempotent,
            max_body: p.max_body_bytes as usize,
            budget: Budget::new(p.budget.ratio, p.budget.min_per_second),
        }
    }

    /// Whether requests of `method` may be retried at all.
    pub fn allows_method(&self, method: &Method) -> bool {
        self.non_idempotent || is_idempotent(method)
    }

    /// Whether `o` is a condition this route retries on.
    pub fn retries_on(&self, o: Outcome) -> bool {
        self.on.iter().any(|c| match (c, o) {
            (RetryOn::ConnectFailure, Outcome::ConnectFailure) => true,
            (RetryOn::Reset, Outcome::Reset) => true,
            (RetryOn::GatewayError, Outcome::Status { code, .. }) => matches!(code, 502..=504),
            (RetryOn::GatewayError, Outcome::Timeout) => true,
            (RetryOn::ServerError, Outcome::Status { code, .. }) => code >= 500,
            (RetryOn::ServerError, Outcome::Timeout | Outcome::Reset) => true,
            // cancelled, deadline-exceeded, resource-exhausted, unavailable
            (RetryOn::RetriableGrpc, Outcome::Status { grpc: Some(g), .. }) => matches!(g, 1 | 4 | 8 | 14),
            (RetryOn::Status(want), Outcome::Status { code, .. }) => *want == code,
            _ => false,
        })
    }

    /// Backoff before try number `attempt` (2 = first retry): full jitter over an
    /// exponentially growing cap, or the upstream's `Retry-After` when it asks for longer.
    /// `None`: the upstream asked us to wait too long; do not retry.
    pub fn backoff(&self, attempt: u32, response: Option<&HeaderMap>) -> Option<Duration> {
        let exp = self.base.saturating_mul(1u32 << (attempt.saturating_sub(2)).min(16)).min(self.max);
        let jitter = exp.mul_f64(fastrand::f64());
        let asked = response
            .and_then(|h| h.get(http::header::RETRY_AFTER))
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        match asked {
            Some(a) if a > MAX_RETRY_AFTER => None,
            Some(a) => Some(a.max(jitter)),
            None => Some(jitter),
        }
    }
}

/// RFC 9110 idempotent methods.
pub fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

fn now_secs() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs()
}

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Retries allowed = `min_per_second × window + ratio × requests in the window`.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: u64,
    slots: [Slot; WINDOW as usize],
}

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self { ratio, min_per_second: u64::from(min_per_second), slots: Default::default() }
    }

    fn slot(&self, now: u64) -> &Slot {
        let s = &self.slots[(now % WINDOW) as usize];
        if s.second.load(Ordering::Relaxed) != now + 1 {
            // A slot from an older window: start it over (a lost update under a race is fine).
            s.second.store(now + 1, Ordering::Relaxed);
            s.requests.store(0, Ordering::Relaxed);
            s.retries.store(0, Ordering::Relaxed);
        }
        s
    }

    /// Counts a request (first tries only).
    pub fn deposit(&self) {
        self.slot(now_secs()).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry from the budget if one is left.
    pub fn withdraw(&self) -> bool {
        let now = now_secs();
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            let sec = s.second.load(Ordering::Relaxed);
            if sec != 0 && sec + WINDOW > now + 1 {
                requests += s.requests.load(Ordering::Relaxed);
                retries += s.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = self.min_per_second * WINDOW + (self.ratio * requests as f64) as u64;
        if retries >= allowed {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Retry {
        Retry::new(&trellis_api::parse::parse(yaml).unwrap())
    }

    #[test]
    fn conditions() {
        let r = policy("{ on: [connect_failure, gateway_error, 429, retriable_grpc] }");
        assert!(r.retries_on(Outcome::ConnectFailure));
        assert!(!r.retries_on(Outcome::Reset));
        assert!(r.retries_on(Outcome::Status { code: 503, grpc: None }));
        assert!(!r.retries_on(Outcome::Status { code: 500, grpc: None }));
        assert!(r.retries_on(Outcome::Status { code: 429, grpc: None }));
        assert!(r.retries_on(Outcome::Status { code: 200, grpc: Some(14) }));
        assert!(!r.retries_on(Outcome::Status { code: 200, grpc: Some(0) }));
        assert!(r.allows_method(&Method::GET) && !r.allows_method(&Method::POST));
    }

    #[test]
    fn backoff_is_jittered_capped_and_honours_retry_after() {
        let r = policy("{ backoff: { base: 10ms, max: 40ms } }");
        for attempt in 2..10 {
            assert!(r.backoff(attempt, None).unwrap() <= Duration::from_millis(40));
        }
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "1".parse().unwrap());
        assert_eq!(r.backoff(2, Some(&h)), Some(Duration::from_secs(1)));
        h.insert(http::header::RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(r.backoff(2, Some(&h)), None);
    }

    #[test]
    fn budget_caps_retries() {
        let b = Budget::new(0.5, 0);
        for _ in 0..10 {
            b.deposit();
        }
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 5);
        let floor = Budget::new(0.0, 2);
        assert_eq!((0..100).filter(|_| floor.withdraw()).count(), 20);
    }
}

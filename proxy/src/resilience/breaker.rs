//! Envoy-style circuit breaking: counters per cluster, shared by its endpoints and kept
//! across reloads; a request over a threshold is refused at once (503 `overloaded`).

use crate::telemetry;
use std::sync::atomic::{AtomicU32, Ordering};
use trellis_api::CircuitBreaker;

/// Which threshold refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    MaxConnections,
    MaxPending,
    MaxRequests,
    MaxRetries,
}

impl Threshold {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxPending => "max_pending",
            Self::MaxRequests => "max_requests",
            Self::MaxRetries => "max_retries",
        }
    }
}

/// Live counts of one cluster.
#[derive(Debug, Default)]
pub struct Counts {
    pub connections: AtomicU32,
    pub pending: AtomicU32,
    pub requests: AtomicU32,
    pub retries: AtomicU32,
}

impl Counts {
    fn counter(&self, t: Threshold) -> &AtomicU32 {
        match t {
            Threshold::MaxConnections => &self.connections,
            Threshold::MaxPending => &self.pending,
            Threshold::MaxRequests => &self.requests,
            Threshold::MaxRetries => &self.retries,
        }
    }

    /// Takes one unit of `t` unless `limits` say it is full. Without limits it only counts.
    pub fn acquire(&self, t: Threshold, limits: Option<&CircuitBreaker>, cluster: &str) -> Result<(), Threshold> {
        let counter = self.counter(t);
        let prev = counter.fetch_add(1, Ordering::AcqRel);
        let limit = limits.map(|l| match t {
            Threshold::MaxConnections => l.max_connections,
            Threshold::MaxPending => l.max_pending,
            Threshold::MaxRequests => l.max_requests,
            Threshold::MaxRetries => l.max_retries,
        });
        if limit.is_some_and(|l| prev >= l) {
            counter.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(telemetry::CIRCUIT_BREAKER_REJECTIONS_TOTAL,
                "cluster" => cluster.to_owned(), "threshold" => t.as_str())
            .increment(1);
            return Err(t);
        }
        Ok(())
    }

    /// Gives back one unit of `t`.
    pub fn release(&self, t: Threshold) {
        self.counter(t).fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_at_the_limit_and_recovers() {
        let c = Counts::default();
        let limits = CircuitBreaker { max_connections: 1, max_pending: 1, max_requests: 2, max_retries: 0 };
        assert!(c.acquire(Threshold::MaxRequests, Some(&limits), "x").is_ok());
        assert!(c.acquire(Threshold::MaxRequests, Some(&limits), "x").is_ok());
        assert_eq!(c.acquire(Threshold::MaxRequests, Some(&limits), "x"), Err(Threshold::MaxRequests));
        c.release(Threshold::MaxRequests);
        assert!(c.acquire(Threshold::MaxRequests, Some(&limits), "x").is_ok());
        assert_eq!(c.acquire(Threshold::MaxRetries, Some(&limits), "x"), Err(Threshold::MaxRetries));
        // Without limits: counted, never refused.
        for _ in 0..10 {
            assert!(c.acquire(Threshold::MaxRetries, None, "x").is_ok());
        }
        assert_eq!(c.retries.load(Ordering::Relaxed), 10);
    }
}

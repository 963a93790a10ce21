//! Passive health per endpoint: consecutive 5xx / gateway errors eject it for
//! `base_ejection × times ejected`; it returns by itself when the time is up, and is ejected
//! again sooner (for longer) if it still fails. `max_ejection_percent` is enforced by the
//! cluster, which sees all its endpoints.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// How one try went, as outlier detection and retries see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response head with this status (and grpc-status when present in the head).
    Status {
        code: u16,
        grpc: Option<u32>,
    },
    ConnectFailure,
    Reset,
    /// No response within the per-try or idle timeout.
    Timeout,
}

impl Outcome {
    fn is_gateway_error(self) -> bool {
        match self {
            Self::Status { code, .. } => matches!(code, 502..=504),
            Self::ConnectFailure | Self::Reset | Self::Timeout => true,
        }
    }
    fn is_5xx(self) -> bool {
        match self {
            Self::Status { code, .. } => code >= 500,
            _ => true,
        }
    }
}

/// One endpoint's outlier state.
#[derive(Debug, Default)]
pub struct Outlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejected: AtomicBool,
    until_ns: AtomicU64,
    times: AtomicU32,
}

/// What recording an outcome asks of the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Thresholds crossed: eject, if the cluster's ejection cap allows.
    Eject,
}

impl Outlier {
    /// Updates the counters with `o` under `cfg`.
    pub fn record(&self, o: Outcome, cfg: &trellis_api::OutlierDetection) -> Verdict {
        if !o.is_5xx() {
            // Writes only when there is something to reset: the success path stays read-only.
            if self.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
            }
            if self.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                self.consecutive_gateway.store(0, Ordering::Relaxed);
            }
            self.forgive(cfg);
            return Verdict::Keep;
        }
        let n5 = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let ngw = if o.is_gateway_error() {
            self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let tripped = (cfg.consecutive_5xx > 0 && n5 >= cfg.consecutive_5xx)
            || (cfg.consecutive_gateway_errors > 0 && ngw >= cfg.consecutive_gateway_errors);
        if tripped && !self.is_ejected() { Verdict::Eject } else { Verdict::Keep }
    }

    /// Ejects for `base × times` (times counted up first).
    pub fn eject(&self, base: Duration) -> Duration {
        let times = self.times.fetch_add(1, Ordering::Relaxed) + 1;
        let d = base * times.min(32);
        self.until_ns.store(now_ns() + d.as_nanos() as u64, Ordering::Relaxed);
        self.ejected.store(true, Ordering::Release);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        d
    }

    /// Ejected right now (returns the endpoint once its time is up).
    pub fn is_ejected(&self) -> bool {
        if !self.ejected.load(Ordering::Acquire) {
            return false;
        }
        if now_ns() >= self.until_ns.load(Ordering::Relaxed) {
            self.ejected.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// Times ejected (decays while the endpoint behaves).
    pub fn times_ejected(&self) -> u32 {
        self.times.load(Ordering::Relaxed)
    }

    /// After a healthy `interval` past the last ejection, the multiplier steps down.
    fn forgive(&self, cfg: &trellis_api::OutlierDetection) {
        let times = self.times.load(Ordering::Relaxed);
        if times == 0 {
            return;
        }
        let since = now_ns().saturating_sub(self.until_ns.load(Ordering::Relaxed));
        if since >= cfg.interval.get().as_nanos() as u64 {
            self.times.store(times - 1, Ordering::Relaxed);
            // Restart the clock so each step needs another quiet interval.
            self.until_ns.store(now_ns(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> trellis_api::OutlierDetection {
        trellis_api::parse::parse(
            "{ consecutive_5xx: 3, consecutive_gateway_errors: 2, base_ejection: 50ms, interval: 10ms }",
        )
        .unwrap()
    }

    #[test]
    fn consecutive_errors_eject_and_time_returns() {
        let o = Outlier::default();
        let c = cfg();
        let e500 = Outcome::Status { code: 500, grpc: None };
        assert_eq!(o.record(e500, &c), Verdict::Keep);
        assert_eq!(o.record(Outcome::Status { code: 200, grpc: None }, &c), Verdict::Keep);
        assert_eq!(o.record(e500, &c), Verdict::Keep);
        assert_eq!(o.record(e500, &c), Verdict::Keep);
        assert_eq!(o.record(e500, &c), Verdict::Eject);
        assert_eq!(o.eject(c.base_ejection.get()), Duration::from_millis(50));
        assert!(o.is_ejected());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!o.is_ejected());
        // Gateway errors trip at 2; the second ejection lasts twice as long.
        assert_eq!(o.record(Outcome::ConnectFailure, &c), Verdict::Keep);
        assert_eq!(o.record(Outcome::Reset, &c), Verdict::Eject);
        assert_eq!(o.eject(c.base_ejection.get()), Duration::from_millis(100));
        assert_eq!(o.times_ejected(), 2);
    }
}

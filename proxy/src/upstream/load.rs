//! Per-endpoint load signals for balancing: a peak-sensitive EWMA of response latency
//! (Linkerd's peak-EWMA). Lock-free: racing updates may lose one sample, never corrupt.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Time constant of the decay: samples older than this weigh ~1/e.
const DECAY: Duration = Duration::from_secs(10);
/// Estimate for an endpoint that has no sample yet.
const DEFAULT_RTT: Duration = Duration::from_millis(30);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Peak-EWMA latency estimate.
#[derive(Debug)]
pub struct PeakEwma {
    /// f64 nanoseconds, as bits.
    rtt_ns: AtomicU64,
    /// Nanoseconds since `epoch()` of the last update.
    stamp_ns: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self { rtt_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()), stamp_ns: AtomicU64::new(0) }
    }
}

impl PeakEwma {
    /// Records a latency sample taken `now`.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let now_ns = now.saturating_duration_since(epoch()).as_nanos() as u64;
        let rtt = rtt.as_nanos() as f64;
        let prev = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let next = if rtt > prev {
            // Peak: a slow response counts at once.
            rtt
        } else {
            let elapsed = now_ns.saturating_sub(self.stamp_ns.load(Ordering::Relaxed)) as f64;
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            prev * w + rtt * (1.0 - w)
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.stamp_ns.store(now_ns, Ordering::Relaxed);
    }

    /// The estimate in nanoseconds as of the last sample.
    pub fn estimate_ns(&self) -> f64 {
        f64::from_bits(self.rtt_ns.load(Ordering::Relaxed))
    }

    /// The estimate as balancing sees it at `now`: it decays while no sample arrives, so an
    /// endpoint avoided after a slow spell is tried again and can prove itself.
    pub fn estimate_ns_at(&self, now: Instant) -> f64 {
        let now_ns = now.saturating_duration_since(epoch()).as_nanos() as u64;
        let elapsed = now_ns.saturating_sub(self.stamp_ns.load(Ordering::Relaxed)) as f64;
        self.estimate_ns() * (-elapsed / DECAY.as_nanos() as f64).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_jump_and_decay_slowly() {
        let e = PeakEwma::default();
        let t0 = epoch() + Duration::from_secs(1);
        e.observe(Duration::from_millis(100), t0);
        assert_eq!(e.estimate_ns(), 100e6);
        // One fast sample right after barely moves it…
        e.observe(Duration::from_millis(1), t0 + Duration::from_millis(10));
        assert!(e.estimate_ns() > 99e6);
        // …but after a long quiet spell the fast sample dominates.
        e.observe(Duration::from_millis(1), t0 + Duration::from_secs(60));
        assert!(e.estimate_ns() < 2e6, "{}", e.estimate_ns());
    }
}

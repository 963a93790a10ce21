//! Endpoint selection. Every policy honours endpoint weights; all are lock-free on the hot
//! path (an atomic cursor or a random draw).

use crate::upstream::Endpoint;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use trellis_api::LbPolicy;

/// Longest precomputed round-robin schedule; weights are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;

#[derive(Debug)]
pub(crate) enum Balancer {
    /// Smooth weighted round robin, precomputed into a schedule walked by an atomic cursor.
    RoundRobin { schedule: Vec<u32>, cursor: AtomicUsize },
    /// Power of two choices on in-flight requests divided by weight.
    LeastRequest,
    /// Weighted random over cumulative weights.
    Random { cumulative: Vec<u64> },
}

impl Balancer {
    pub(crate) fn new(policy: LbPolicy, endpoints: &[Arc<Endpoint>]) -> Self {
        let weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.weight)).collect();
        match policy {
            LbPolicy::RoundRobin => Self::RoundRobin {
                schedule: smooth_schedule(&weights),
                cursor: AtomicUsize::new(fastrand::usize(..usize::MAX / 2)),
            },
            LbPolicy::LeastRequest => Self::LeastRequest,
            LbPolicy::Random => Self::Random {
                cumulative: weights
                    .iter()
                    .scan(0u64, |acc, w| {
                        *acc += w;
                        Some(*acc)
                    })
                    .collect(),
            },
        }
    }

    pub(crate) fn pick<'a>(&self, endpoints: &'a [Arc<Endpoint>]) -> Option<&'a Arc<Endpoint>> {
        match endpoints.len() {
            0 => return None,
            1 => return endpoints.first(),
            _ => {}
        }
        match self {
            Self::RoundRobin { schedule, cursor } => {
                if schedule.is_empty() {
                    return None;
                }
                let i = cursor.fetch_add(1, Ordering::Relaxed) % schedule.len();
                endpoints.get(schedule[i] as usize)
            }
            Self::LeastRequest => {
                let a = &endpoints[fastrand::usize(..endpoints.len())];
                let b = &endpoints[fastrand::usize(..endpoints.len())];
                // Compare in-flight/weight without division: a.load * b.w vs b.load * a.w.
                let la = (a.in_flight() + 1) * u64::from(b.weight.max(1));
                let lb = (b.in_flight() + 1) * u64::from(a.weight.max(1));
                Some(if la <= lb { a } else { b })
            }
            Self::Random { cumulative } => {
                let total = *cumulative.last()?;
                if total == 0 {
                    return None;
                }
                let x = fastrand::u64(..total);
                let i = cumulative.partition_point(|&c| c <= x);
                endpoints.get(i)
            }
        }
    }
}

/// The order nginx's smooth weighted round robin would visit endpoints in, one full cycle.
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| if w == 0 { 0 } else { (w / scale).max(1) as i64 }).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
        assert_eq!(smooth_schedule(&[0, 2]), vec![1, 1]);
        let big = smooth_schedule(&[1_000_000, 3_000_000]);
        assert!(big.len() <= MAX_SCHEDULE as usize + 2);
        let ones = big.iter().filter(|&&i| i == 1).count() as f64 / big.len() as f64;
        assert!((ones - 0.75).abs() < 0.01, "{ones}");
    }
}

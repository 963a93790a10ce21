//! Endpoint selection. Every policy honours endpoint weights and is lock-free on the hot
//! path: an atomic cursor (round robin), two random draws compared on load (least request,
//! peak EWMA), or a lookup in a table built when the config is applied (ring hash, maglev).

use crate::upstream::Endpoint;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use trellis_api::LbPolicy;

/// Longest precomputed round-robin schedule; weights are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;
/// Maglev lookup table size (prime, ≫ endpoints, as the paper recommends).
const MAGLEV_SIZE: usize = 65537;
/// Points on the hash ring per unit of normalised weight.
const RING_POINTS_PER_ENDPOINT: u64 = 160;

#[derive(Debug)]
pub(crate) enum Balancer {
    RoundRobin {
        schedule: Vec<u32>,
        cursor: AtomicUsize,
    },
    /// P2C; the two candidates are drawn in proportion to weight (`cumulative`), then
    /// compared on load, so weights hold at low load and load wins under pressure.
    LeastRequest {
        cumulative: Vec<u64>,
    },
    PeakEwma {
        cumulative: Vec<u64>,
    },
    Random {
        cumulative: Vec<u64>,
    },
    RingHash {
        ring: Vec<(u64, u32)>,
        fallback: Box<Balancer>,
    },
    Maglev {
        table: Vec<u32>,
        fallback: Box<Balancer>,
    },
}

impl Balancer {
    pub(crate) fn new(policy: LbPolicy, endpoints: &[Arc<Endpoint>]) -> Self {
        let weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.weight)).collect();
        let cumulative: Vec<u64> = weights
            .iter()
            .scan(0u64, |acc, w| {
                *acc += w;
                Some(*acc)
            })
            .collect();
        let random = || Self::Random { cumulative: cumulative.clone() };
        let keys: Vec<String> = endpoints.iter().map(|e| e.addr.to_string()).collect();
        match policy {
            LbPolicy::RoundRobin => Self::RoundRobin {
                schedule: smooth_schedule(&weights),
                cursor: AtomicUsize::new(fastrand::usize(..usize::MAX / 2)),
            },
            LbPolicy::LeastRequest => Self::LeastRequest { cumulative: cumulative.clone() },
            LbPolicy::PeakEwma => Self::PeakEwma { cumulative: cumulative.clone() },
            LbPolicy::Random => random(),
            LbPolicy::RingHash => Self::RingHash { ring: ring(&keys, &weights), fallback: Box::new(random()) },
            LbPolicy::Maglev => Self::Maglev { table: maglev(&keys, &weights), fallback: Box::new(random()) },
        }
    }

    /// Picks an endpoint; `key` is the request's hash key for consistent-hash policies.
    pub(crate) fn pick<'a>(&self, endpoints: &'a [Arc<Endpoint>], key: Option<u64>) -> Option<&'a Arc<Endpoint>> {
        match endpoints.len() {
            0 => return None,
            1 => return endpoints.first(),
            _ => {}
        }
        match self {
            Self::RoundRobin { schedule, cursor } => {
                let i = cursor.fetch_add(1, Ordering::Relaxed) % schedule.len().max(1);
                endpoints.get(*schedule.get(i)? as usize)
            }
            Self::LeastRequest { cumulative } => p2c(endpoints, cumulative, |e| (e.in_flight() + 1) as f64),
            Self::PeakEwma { cumulative } => {
                let now = std::time::Instant::now();
                p2c(endpoints, cumulative, |e| e.load.estimate_ns_at(now) * (e.in_flight() + 1) as f64)
            }
            Self::Random { cumulative } => weighted(endpoints, cumulative),
            Self::RingHash { ring, fallback } => match key {
                Some(k) if !ring.is_empty() => {
                    let i = ring.partition_point(|&(h, _)| h < k) % ring.len();
                    endpoints.get(ring[i].1 as usize)
                }
                _ => fallback.pick(endpoints, None),
            },
            Self::Maglev { table, fallback } => match key {
                Some(k) if !table.is_empty() => endpoints.get(table[(k % table.len() as u64) as usize] as usize),
                _ => fallback.pick(endpoints, None),
            },
        }
    }
}

/// One endpoint drawn in proportion to weight.
fn weighted<'a>(endpoints: &'a [Arc<Endpoint>], cumulative: &[u64]) -> Option<&'a Arc<Endpoint>> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let x = fastrand::u64(..total);
    endpoints.get(cumulative.partition_point(|&c| c <= x))
}

/// Power of two choices: two endpoints drawn by weight; the second wins only if clearly less loaded.
fn p2c<'a>(
    endpoints: &'a [Arc<Endpoint>],
    cumulative: &[u64],
    cost: impl Fn(&Endpoint) -> f64,
) -> Option<&'a Arc<Endpoint>> {
    let a = weighted(endpoints, cumulative)?;
    let mut b = weighted(endpoints, cumulative)?;
    if Arc::ptr_eq(a, b) {
        // A second draw landing on the same endpoint: take another one at random, so two
        // different endpoints are compared whenever there are two.
        let i = endpoints.iter().position(|e| Arc::ptr_eq(e, a)).unwrap_or(0);
        let j = (i + 1 + fastrand::usize(..endpoints.len() - 1)) % endpoints.len();
        b = &endpoints[j];
    }
    // The first draw (made by weight) keeps the request unless the other is clearly less
    // loaded: near-equal costs then split traffic by weight, real differences by load.
    Some(if cost(b) * 1.25 < cost(a) { b } else { a })
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

/// A stable 64-bit hash (FNV-1a, then a murmur3 finaliser for spread), the same in every
/// proxy so replicas agree on where a key goes.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Ketama-style ring: points per endpoint in proportion to its weight.
fn ring(keys: &[String], weights: &[u64]) -> Vec<(u64, u32)> {
    let max = weights.iter().copied().max().unwrap_or(0).max(1);
    let mut ring = Vec::new();
    for (i, (key, &w)) in keys.iter().zip(weights).enumerate() {
        let points = (RING_POINTS_PER_ENDPOINT * w).div_ceil(max);
        for p in 0..points {
            ring.push((hash64(format!("{key}-{p}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// Weighted Maglev table (Eisenbud et al. 2016; weights as in Envoy: an endpoint takes a
/// turn only while its share of filled slots is below its share of weight).
fn maglev(keys: &[String], weights: &[u64]) -> Vec<u32> {
    let n = keys.len();
    let max = weights.iter().copied().max().unwrap_or(0);
    if n == 0 || max == 0 {
        return Vec::new();
    }
    let m = MAGLEV_SIZE as u64;
    let perm: Vec<(u64, u64)> = keys
        .iter()
        .map(|k| {
            let offset = hash64(k.as_bytes()) % m;
            let skip = hash64(format!("{k}#skip").as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let norm: Vec<f64> = weights.iter().map(|&w| w as f64 / max as f64).collect();
    let mut next = vec![0u64; n];
    let mut filled_by = vec![0u64; n];
    let mut table = vec![u32::MAX; MAGLEV_SIZE];
    let mut filled = 0;
    let mut iteration = 1u64;
    while filled < MAGLEV_SIZE {
        for i in 0..n {
            if norm[i] == 0.0 || (iteration as f64 * norm[i]) < filled_by[i] as f64 + 1.0 {
                continue;
            }
            let (offset, skip) = perm[i];
            loop {
                let slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = i as u32;
                    filled_by[i] += 1;
                    filled += 1;
                    break;
                }
            }
            if filled == MAGLEV_SIZE {
                break;
            }
        }
        iteration += 1;
    }
    table
}

#[cfg(test)]
mod tests;

use super::*;
use crate::upstream::{Endpoint, Settings};
use std::time::Duration;

fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
    let settings = Settings { connect_timeout: Duration::from_secs(1), max_streams: 100, max_idle: 8, limits: None };
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Arc::new(Endpoint::new(format!("10.0.0.{i}:80").parse().unwrap(), w, None, settings, 1)))
        .collect()
}

fn shares(policy: LbPolicy, weights: &[u32], n: usize) -> Vec<f64> {
    let eps = endpoints(weights);
    let b = Balancer::new(policy, &eps);
    let mut counts = vec![0usize; eps.len()];
    for k in 0..n {
        let e = b.pick(&eps, Some(hash64(&k.to_le_bytes()))).unwrap();
        counts[eps.iter().position(|x| Arc::ptr_eq(x, e)).unwrap()] += 1;
    }
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

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

#[test]
fn every_policy_honours_weights() {
    // Load-based policies with no load draw their candidates by weight: weights decide.
    for policy in [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::RingHash,
        LbPolicy::Maglev,
        LbPolicy::LeastRequest,
        LbPolicy::PeakEwma,
    ] {
        let s = shares(policy, &[1, 3], 40_000);
        assert!((s[1] - 0.75).abs() < 0.05, "{policy:?}: {s:?}");
    }
}

#[test]
fn peak_ewma_avoids_the_slow_endpoint() {
    let eps = endpoints(&[1, 1, 1]);
    let now = std::time::Instant::now();
    eps[0].load.observe(Duration::from_millis(100), now);
    eps[1].load.observe(Duration::from_millis(10), now);
    eps[2].load.observe(Duration::from_millis(10), now);
    let b = Balancer::new(LbPolicy::PeakEwma, &eps);
    let slow = (0..3000).filter(|_| Arc::ptr_eq(b.pick(&eps, None).unwrap(), &eps[0])).count();
    // P2C: the slow one wins only when both draws are it — never, since draws are distinct.
    assert_eq!(slow, 0);
}

#[test]
fn consistent_hash_moves_about_a_tenth_when_one_of_ten_goes() {
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let ten = endpoints(&[1; 10]);
        let nine: Vec<_> = ten[..9].to_vec();
        let (b10, b9) = (Balancer::new(policy, &ten), Balancer::new(policy, &nine));
        let keys = 20_000u64;
        let moved = (0..keys)
            .filter(|k| {
                let k = hash64(&k.to_le_bytes());
                b10.pick(&ten, Some(k)).unwrap().addr != b9.pick(&nine, Some(k)).unwrap().addr
            })
            .count() as f64
            / keys as f64;
        assert!(moved > 0.07 && moved < 0.16, "{policy:?} moved {moved}");
        // The same key always lands on the same endpoint.
        let k = Some(hash64(b"session-42"));
        assert_eq!(b10.pick(&ten, k).unwrap().addr, b10.pick(&ten, k).unwrap().addr);
    }
}

#[test]
fn zone_aware_prefers_local_and_spills_over() {
    use std::sync::atomic::Ordering;
    let spec: trellis_api::Cluster = trellis_api::parse::parse(
        "{ name: c, lb: round_robin, endpoints: [{ address: '10.0.0.1:80', zone: a }, { address: '10.0.0.2:80', zone: b }, { address: '10.0.0.3:80', zone: b }] }",
    )
    .unwrap();
    let addrs = spec.endpoints.iter().map(|e| (e.address.parse().unwrap(), e, None)).collect();
    let c = crate::upstream::Cluster::build(&spec, addrs, None, 1, Some("a"), None);
    let local = c.endpoints[0].clone();
    assert!((0..100).all(|_| Arc::ptr_eq(c.pick(None, None).unwrap(), &local)));
    // Overloaded local endpoint: traffic spills to the other zone.
    local.active.store(100, Ordering::Relaxed);
    assert!((0..100).all(|_| !Arc::ptr_eq(c.pick(None, None).unwrap(), &local)));
    local.active.store(0, Ordering::Relaxed);
    // Ejected local endpoint: spills too.
    local.outlier.eject(Duration::from_secs(5));
    assert!((0..100).all(|_| !Arc::ptr_eq(c.pick(None, None).unwrap(), &local)));
}

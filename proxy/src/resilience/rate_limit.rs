//! Local rate limiting per route: a token bucket, one shared or one per key (a header's
//! value or the client IP, and on MCP routes the tool called). Over the limit → 429 with
//! `Retry-After`.

use http::HeaderMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use trellis_api::RateLimit;

/// Buckets past this many keys are pruned (the full ones first) to bound memory.
const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A route's limiter.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    burst: f64,
    per_header: Option<http::HeaderName>,
    per_ip: bool,
    per_tool: bool,
    shared: Mutex<Bucket>,
    keyed: Mutex<HashMap<Vec<u8>, Bucket>>,
}

impl Limiter {
    pub fn new(cfg: &RateLimit) -> Self {
        let burst = f64::from(cfg.burst.unwrap_or_else(|| cfg.requests_per_second.ceil().max(1.0) as u32));
        Self {
            rate: cfg.requests_per_second,
            burst,
            per_header: cfg.per_header.as_deref().and_then(|h| http::HeaderName::try_from(h).ok()),
            per_ip: cfg.per_source_ip,
            per_tool: cfg.per_mcp_tool,
            shared: Mutex::new(Bucket { tokens: burst, at: Instant::now() }),
            keyed: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token, or says how long until one is free.
    pub fn check(&self, headers: &HeaderMap, ip: IpAddr) -> Result<(), Duration> {
        self.check_tools(headers, ip, &[])
    }

    /// [`Limiter::check`] for an MCP request calling `tools`: with `per_mcp_tool`, a token
    /// from each tool's bucket.
    pub fn check_tools(&self, headers: &HeaderMap, ip: IpAddr, tools: &[&str]) -> Result<(), Duration> {
        let now = Instant::now();
        let key: Option<Vec<u8>> = match (&self.per_header, self.per_ip) {
            (Some(h), _) => headers.get(h).map(|v| v.as_bytes().to_vec()),
            (None, true) => Some(ip.to_string().into_bytes()),
            (None, false) => None,
        };
        if self.per_tool && !tools.is_empty() {
            // The tool's bucket within the key's: "KEY\0tool:NAME".
            for tool in tools {
                let mut k = key.clone().unwrap_or_default();
                k.extend_from_slice(b"\0tool:");
                k.extend_from_slice(tool.as_bytes());
                self.take_keyed(k, now)?;
            }
            return Ok(());
        }
        match key {
            None => self.take(&mut self.shared.lock().unwrap_or_else(|p| p.into_inner()), now),
            Some(k) => self.take_keyed(k, now),
        }
    }

    fn take_keyed(&self, k: Vec<u8>, now: Instant) -> Result<(), Duration> {
        let mut map = self.keyed.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS && !map.contains_key(&k) {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = map.entry(k).or_insert(Bucket { tokens: self.burst, at: now });
        self.take(b, now)
    }

    fn take(&self, b: &mut Bucket, now: Instant) -> Result<(), Duration> {
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let l = Limiter::new(&trellis_api::parse::parse("{ requests_per_second: 10, burst: 3 }").unwrap());
        let h = HeaderMap::new();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(&h, ip).is_ok());
        }
        let wait = l.check(&h, ip).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        std::thread::sleep(Duration::from_millis(120));
        assert!(l.check(&h, ip).is_ok());
    }

    #[test]
    fn one_bucket_per_tool() {
        let l = Limiter::new(
            &trellis_api::parse::parse("{ requests_per_second: 1, burst: 1, per_mcp_tool: true }").unwrap(),
        );
        let (h, ip) = (HeaderMap::new(), "127.0.0.1".parse().unwrap());
        assert!(l.check_tools(&h, ip, &["search"]).is_ok());
        assert!(l.check_tools(&h, ip, &["search"]).is_err());
        assert!(l.check_tools(&h, ip, &["add"]).is_ok());
        // Calling no tool: the shared bucket.
        assert!(l.check_tools(&h, ip, &[]).is_ok());
        assert!(l.check(&h, ip).is_err());
    }

    #[test]
    fn keyed_buckets_are_separate() {
        let l = Limiter::new(
            &trellis_api::parse::parse("{ requests_per_second: 1, burst: 1, per_header: x-agent }").unwrap(),
        );
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut a = HeaderMap::new();
        a.insert("x-agent", "a".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert("x-agent", "b".parse().unwrap());
        assert!(l.check(&a, ip).is_ok());
        assert!(l.check(&a, ip).is_err());
        assert!(l.check(&b, ip).is_ok());
    }
}

//! Connection limits: the global `max_connections` and a per-source-IP token bucket
//! (`connect_rate_per_ip` / `connect_burst_per_ip`) that protects brokers from reconnect storms.
//! Buckets live in sharded maps; full, idle buckets are swept so memory follows active sources.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Per-IP token buckets.
#[derive(Debug)]
pub struct PerIpLimiter {
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl Default for PerIpLimiter {
    fn default() -> Self {
        PerIpLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl PerIpLimiter {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Bucket>> {
        let h = match ip {
            IpAddr::V4(v) => u32::from(*v) as usize,
            IpAddr::V6(v) => (u128::from(*v) as usize) ^ ((u128::from(*v) >> 64) as usize),
        };
        &self.shards[h.wrapping_mul(0x9E37_79B9) % SHARDS]
    }

    /// Takes a token for `ip`; false when it has none (rate 0 = unlimited).
    pub fn allow(&self, ip: IpAddr, rate: u32, burst: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let Ok(mut m) = self.shard(&ip).lock() else {
            return true;
        };
        let burst = f64::from(burst.max(1));
        let b = m.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * f64::from(rate)).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops buckets that have refilled completely (their source has been quiet).
    pub fn sweep(&self, rate: u32, burst: u32, now: Instant) {
        let burst = f64::from(burst.max(1));
        for s in &self.shards {
            if let Ok(mut m) = s.lock() {
                m.retain(|_, b| {
                    let dt = now.saturating_duration_since(b.last).as_secs_f64();
                    rate > 0 && b.tokens + dt * f64::from(rate) < burst
                });
            }
        }
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let l = PerIpLimiter::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let t0 = Instant::now();
        let ok = (0..10).filter(|_| l.allow(ip, 2, 5, t0)).count();
        assert_eq!(ok, 5, "burst of 5");
        assert!(!l.allow(ip, 2, 5, t0 + Duration::from_millis(100)));
        assert!(
            l.allow(ip, 2, 5, t0 + Duration::from_millis(600)),
            "refilled one token at 2/s"
        );
        // another IP has its own bucket
        assert!(l.allow("127.0.0.10".parse().unwrap(), 2, 5, t0));
        // rate 0 = off
        assert!((0..100).all(|_| l.allow(ip, 0, 1, t0)));
        l.sweep(2, 5, t0 + Duration::from_secs(10));
        assert!(l.is_empty());
    }
}

//! Connection limits: the global `max_connections` and a per-source-IP token bucket
//! (`connect_rate_per_ip` / `connect_burst_per_ip`) that protects brokers from reconnect storms.
//! Buckets live in sharded maps; full, idle buckets are swept so memory follows active sources.
//! A source is an IPv4 address or an IPv6 /64 (one site's allocation: a host picks any address
//! in its /64, so per-/128 buckets would let it take a fresh one per connection).

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

/// The bucket key of `ip`: IPv4 as is (also when IPv4-mapped), IPv6 with its low 64 bits
/// cleared.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
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

    /// Takes a token for `ip`'s source (its IPv6 /64); false when it has none (rate 0 =
    /// unlimited).
    pub fn allow(&self, ip: IpAddr, rate: u32, burst: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let ip = source_key(ip);
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

    #[test]
    fn ipv6_shares_a_bucket_per_64_and_mapped_ipv4_is_ipv4() {
        let l = PerIpLimiter::default();
        let t0 = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(l.allow(ip("2001:db8:1:2::1"), 1, 1, t0));
        assert!(
            !l.allow(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 1, 1, t0),
            "same /64"
        );
        assert!(l.allow(ip("2001:db8:1:3::1"), 1, 1, t0), "next /64");
        assert!(l.allow(ip("192.0.2.1"), 1, 1, t0));
        assert!(!l.allow(ip("::ffff:192.0.2.1"), 1, 1, t0), "mapped = IPv4");
        assert!(
            l.allow(ip("::ffff:192.0.2.2"), 1, 1, t0),
            "not one bucket for all of IPv4"
        );
        assert_eq!(l.len(), 4);
    }
}

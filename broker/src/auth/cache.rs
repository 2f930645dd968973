//! A bounded cache of answers with a time to live, shared by the external checks
//! (`[auth.http_acl]`, `[auth.postgres]`): keyed by a 64-bit hash the caller computes with a
//! per-process random key, split in shards so connections on other threads do not meet on one
//! lock. A hit is a lock of one shard and a map lookup; nothing awaits.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shards: a power of two, so a hash picks one with a mask.
const SHARDS: usize = 16;

type Shard<V> = HashMap<u64, (Instant, V)>;

/// At most `size` entries (each shard its part), each fresh for `ttl`.
pub struct TtlCache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    per_shard: usize,
    ttl: Duration,
}

impl<V: Clone> TtlCache<V> {
    /// A cache of `size` entries for `ttl`; either 0 turns it off.
    pub fn new(size: usize, ttl: Duration) -> TtlCache<V> {
        TtlCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: if ttl.is_zero() {
                0
            } else {
                size.div_ceil(SHARDS)
            },
            ttl,
        }
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard<V>> {
        let m = &self.shards[(key as usize) & (SHARDS - 1)];
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value under `key`, while it is fresh.
    pub fn get(&self, key: u64) -> Option<V> {
        if self.per_shard == 0 {
            return None;
        }
        match self.shard(key).get(&key) {
            Some((until, v)) if *until > Instant::now() => Some(v.clone()),
            _ => None,
        }
    }

    /// Remembers `v` under `key`; a full shard drops its expired entries first, then any one.
    pub fn put(&self, key: u64, v: V) {
        if self.per_shard == 0 {
            return;
        }
        let now = Instant::now();
        let mut shard = self.shard(key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, (until, _)| *until > now);
            if shard.len() >= self.per_shard {
                if let Some(k) = shard.keys().next().copied() {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(key, (now + self.ttl, v));
    }

    /// Entries held now, over all shards.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i as u64).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_fresh() {
        let c = TtlCache::new(64, Duration::from_secs(60));
        for k in 0..10_000u64 {
            c.put(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), k);
        }
        assert!(c.len() <= 64, "{} entries", c.len());
        c.put(7, 1);
        assert_eq!(c.get(7), Some(1));
        let off = TtlCache::new(64, Duration::ZERO);
        off.put(7, 1);
        assert_eq!(off.get(7), None);
        assert_eq!(off.len(), 0);
    }
}

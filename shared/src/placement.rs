//! Where a client id lives: the stable hash and the weighted rendezvous score that the LB's
//! hashed strategies order backends by (`mqedge_lb::balance::hash_order`), shared with the
//! broker so that a leaving node hands each session to the node the LB will pick next for that
//! client (its `[node] name` is the LB backend's `name`). Pure; changing it moves every hashed
//! client, so it is a wire format.

/// FNV-1a 64-bit offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// MurmurHash3 `fmix64` finalizer: spreads every input bit over the whole output.
#[inline]
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Stable 64-bit hash (deterministic across processes and platforms; no random seed). Pure function.
///
/// Every LB instance must agree on placement, so the std `RandomState` hasher will not do.
/// This is FNV-1a 64 followed by the MurmurHash3 `fmix64` finalizer (FNV alone mixes its
/// last bytes poorly). Changing it moves every hashed client, so treat it as a wire format.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

/// 2^-53, the spacing of the 53-bit grid `unit_interval` maps onto.
const TWO_POW_NEG_53: f64 = 1.0 / (1u64 << 53) as f64;

/// Maps a 64-bit hash to a float strictly inside (0, 1).
///
/// Takes the top 53 bits and forces the lowest of them to 1, so the value is an odd multiple
/// of 2^-53: exactly representable, never 0 (ln would be -inf) and never 1 (ln would be 0).
#[inline]
fn unit_interval(h: u64) -> f64 {
    ((h >> 11) | 1) as f64 * TWO_POW_NEG_53
}

/// Rendezvous score of one backend for one key; higher wins.
///
/// `-weight / ln(u)` with `u` uniform in (0, 1) makes the probability of winning proportional
/// to the weight (the weighted rendezvous hashing of Schindelhauer and Schomaker). The result
/// is finite and positive for `weight > 0`.
#[inline]
pub fn score(key_hash: u64, name: &str, weight: u32) -> f64 {
    // Rotate the key hash so that a key equal to a backend name does not cancel to 0.
    let u = unit_interval(fmix64(
        stable_hash(name.as_bytes()) ^ key_hash.rotate_left(29),
    ));
    -f64::from(weight) / u.ln()
}

/// The name the LB's rendezvous order puts first for `key` among `names`, all of equal weight
/// (the LB's `hash_order` with weight 1 everywhere, ties broken by name as there).
pub fn rendezvous_first<'a>(key: &[u8], names: &[&'a str]) -> Option<&'a str> {
    let h = stable_hash(key);
    names
        .iter()
        .map(|n| (score(h, n, 1), *n))
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, n)| n)
}

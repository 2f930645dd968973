//! Where a client id lives: the stable hash, the weighted rendezvous score and the order
//! ([`weighted_order`]) that the LB's hashed strategies try backends in
//! (`mqedge_lb::balance::hash_order` is this function), shared with the broker so that a node
//! places a session where the LB sends its client: the first live name of
//! [`rendezvous_order`] is the node the LB picks, the next one its pick when that node is gone
//! (docs/cluster.md, "Placement"). It agrees with the LB only if each LB backend's `name` is
//! the broker node's `[node] name` (`mqedge check --broker` compares them). Pure; changing it
//! moves every hashed client, so it is a wire format.

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

/// Something the rendezvous order ranks: a name (the identity hashed) and a weight.
///
/// The LB ranks its backends (name and configured weight), the broker its live peers' node
/// names (weight 1); one trait lets both go through [`weighted_order`], so the rule is written
/// once.
pub trait Ranked {
    /// The name hashed with the key: an LB backend's `name`, a broker's `[node] name`.
    fn rank_name(&self) -> &str;
    /// Relative share; 0 means never picked.
    fn rank_weight(&self) -> u32 {
        1
    }
}

impl Ranked for &str {
    fn rank_name(&self) -> &str {
        self
    }
}

/// The rendezvous order for `key`: indices into `items`, best first, every item of weight
/// above 0 exactly once (weight 0 is left out). This is the order the LB tries its backends in
/// for a hashed client, and the order the broker places that client's session by: the holder
/// is the first live name, the next pick the second.
///
/// Deterministic: the same key and the same set of (name, weight) give the same order,
/// whatever the slice order and in every process. Equal scores (only duplicate or colliding
/// names) are broken by name, then by index.
pub fn weighted_order<T: Ranked>(key: &[u8], items: &[T]) -> Vec<usize> {
    let key_hash = stable_hash(key);
    let mut scored: Vec<(u64, usize)> = Vec::with_capacity(items.len());
    scored.extend(
        items
            .iter()
            .enumerate()
            .filter(|(_, c)| c.rank_weight() > 0)
            .map(|(i, c)| {
                (
                    !score(key_hash, c.rank_name(), c.rank_weight()).to_bits(),
                    i,
                )
            }),
    );
    sort_best_first(&mut scored, items);
    scored.into_iter().map(|(_, i)| i).collect()
}

/// Sorts `(inverted score bits, index)` pairs best first, equal scores by name.
///
/// Scores are finite and positive, so their IEEE bits order like the floats and `!bits`
/// orders best first: the sort compares plain integers, about 20% off a pick over
/// 100 backends. Equal scores only come from duplicate or colliding names; those short runs are
/// re-sorted by name (then index) afterwards.
fn sort_best_first<T: Ranked>(scored: &mut [(u64, usize)], items: &[T]) {
    scored.sort_unstable();
    for run in scored.chunk_by_mut(|a, b| a.0 == b.0) {
        if run.len() > 1 {
            run.sort_unstable_by(|&(_, ia), &(_, ib)| {
                items[ia]
                    .rank_name()
                    .cmp(items[ib].rank_name())
                    .then(ia.cmp(&ib))
            });
        }
    }
}

/// The full rendezvous order of `names` (all of equal weight) for the client id `key`: the
/// LB's `hash_order` with weight 1 everywhere. Given the live nodes' names, the first is the
/// node the LB sends that client to, the second the one it tries next when the first is gone.
pub fn rendezvous_order<'a>(key: &[u8], names: &[&'a str]) -> Vec<&'a str> {
    weighted_order(key, names)
        .into_iter()
        .map(|i| names[i])
        .collect()
}

/// The name the LB's rendezvous order puts first for `key` among `names`, all of equal weight:
/// the first of [`rendezvous_order`].
pub fn rendezvous_first<'a>(key: &[u8], names: &[&'a str]) -> Option<&'a str> {
    rendezvous_order(key, names).first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a seeded stream of test inputs, so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn name(&mut self) -> String {
            let len = 1 + self.below(12) as usize;
            (0..len)
                .map(|_| char::from(b"abcdefgh-0123456789."[self.below(20) as usize]))
                .collect()
        }
    }

    struct W(String, u32);

    impl Ranked for W {
        fn rank_name(&self) -> &str {
            &self.0
        }
        fn rank_weight(&self) -> u32 {
            self.1
        }
    }

    /// The definition the integer sort must equal: scores as floats, highest first, equal
    /// scores by name then index.
    fn by_definition(key: &[u8], items: &[W]) -> Vec<usize> {
        let h = stable_hash(key);
        let mut v: Vec<(f64, usize)> = items
            .iter()
            .enumerate()
            .filter(|(_, w)| w.1 > 0)
            .map(|(i, w)| (score(h, &w.0, w.1), i))
            .collect();
        v.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| items[a.1].0.cmp(&items[b.1].0))
                .then(a.1.cmp(&b.1))
        });
        v.into_iter().map(|(_, i)| i).collect()
    }

    #[test]
    fn the_order_is_the_scores_highest_first_for_random_ids_names_and_weights() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..3_000 {
            let n = r.below(9) as usize;
            let items: Vec<W> = (0..n).map(|_| W(r.name(), r.below(4) as u32)).collect();
            let key = r.name();
            assert_eq!(
                weighted_order(key.as_bytes(), &items),
                by_definition(key.as_bytes(), &items),
                "case {case}: key {key:?}"
            );
        }
    }

    #[test]
    fn rendezvous_first_is_the_first_of_the_order() {
        let mut r = Rng(7);
        for _ in 0..3_000 {
            let owned: Vec<String> = (0..r.below(8)).map(|_| r.name()).collect();
            let names: Vec<&str> = owned.iter().map(String::as_str).collect();
            let key = r.name();
            let order = rendezvous_order(key.as_bytes(), &names);
            assert_eq!(order.len(), names.len(), "every name once");
            assert_eq!(
                rendezvous_first(key.as_bytes(), &names),
                order.first().copied()
            );
        }
        assert_eq!(rendezvous_first(b"dev-1", &[]), None);
    }

    #[test]
    fn the_next_pick_is_the_first_once_the_holder_is_gone() {
        // holder = first live, next pick = first of the others: removing the holder promotes
        // the second, and leaves the rest of the order as it was
        let mut r = Rng(42);
        for _ in 0..2_000 {
            let owned: Vec<String> = (0..2 + r.below(6)).map(|i| format!("node{i}")).collect();
            let names: Vec<&str> = owned.iter().map(String::as_str).collect();
            let key = r.name();
            let order = rendezvous_order(key.as_bytes(), &names);
            let rest: Vec<&str> = names.iter().copied().filter(|n| *n != order[0]).collect();
            assert_eq!(rendezvous_order(key.as_bytes(), &rest), order[1..]);
        }
    }

    #[test]
    fn equal_scores_break_by_name() {
        let items = ["c", "b", "a", "d"];
        // c, b, a share the best score; d is worse.
        let mut scored = vec![(5, 0), (9, 3), (5, 1), (5, 2)];
        sort_best_first(&mut scored, &items);
        let order: Vec<usize> = scored.into_iter().map(|(_, i)| i).collect();
        assert_eq!(order, vec![2, 1, 0, 3]);
    }
}

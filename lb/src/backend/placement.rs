//! Where the cluster says a client's session is, when that is not its hash home: the bounded
//! table of **exceptions** the placement feeds fill (`control::placement` polls them and swaps a
//! new [`Snapshot`] in whole), and the rule a pick applies it by ([`prefer`]). Pure: no I/O, no
//! clock.
//!
//! Staleness is safe by construction: an entry only moves a backend that is up to the front of
//! the hash order, so a wrong entry costs the client one session takeover by the cluster
//! (Session Present = 1 all the same), never its session; and a feed that fails drops its
//! entries at the next round.

use std::collections::HashMap;
use std::sync::Arc;

/// One feed as the last round saw it, for `/api/placement`.
#[derive(Debug, Clone, Default)]
pub struct FeedStatus {
    /// The backend it speaks for.
    pub backend: String,
    /// Its broker's admin address.
    pub admin: String,
    /// Whether the last poll answered.
    pub ok: bool,
    /// Entries of it in the table now.
    pub entries: usize,
    /// The broker left entries out (its cap or our `limit`).
    pub truncated: bool,
    /// The live nodes it named (at most [`MAX_MEMBERS`]).
    pub members: Vec<String>,
    /// Why the last poll failed.
    pub error: Option<String>,
    /// When a poll last answered, ms since the Unix epoch.
    pub last_ok_unix_ms: Option<u64>,
}

/// Most member names kept per feed for the status (a feed's list is shown, not used).
pub const MAX_MEMBERS: usize = 256;

/// The exceptions in force: client id → the backend holding its session.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Client id → index into `nodes`.
    map: HashMap<Box<str>, u32>,
    /// The backends the entries point at (few: one per feed).
    nodes: Vec<Arc<str>>,
    /// Per feed, in config order.
    feeds: Vec<FeedStatus>,
    /// Entries were left out: a feed's own cap, or this table's `max_entries`.
    truncated: bool,
}

impl Snapshot {
    /// The backend holding `client_id`'s session, when it is an exception.
    #[inline]
    pub fn lookup(&self, client_id: &str) -> Option<&str> {
        let i = *self.map.get(client_id)?;
        self.nodes.get(i as usize).map(|n| &**n)
    }

    /// Entries in the table.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The feeds as the last round saw them.
    pub fn feeds(&self) -> &[FeedStatus] {
        &self.feeds
    }

    /// Whether entries were left out.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

/// Builds one [`Snapshot`] from a round's answers, never past `max_entries` entries.
pub struct Builder {
    /// The snapshot being filled.
    snap: Snapshot,
    /// Its bound.
    max_entries: usize,
}

impl Builder {
    /// An empty table of at most `max_entries` entries.
    pub fn new(max_entries: usize) -> Builder {
        Builder {
            snap: Snapshot::default(),
            max_entries,
        }
    }

    /// Adds the client ids whose sessions `node` holds; returns how many it took. An id already
    /// in the table (an earlier feed listed it: a session between two nodes) keeps its first
    /// entry; once the table is full the rest are left out and the table says `truncated`.
    pub fn add<'a>(&mut self, node: &str, ids: impl IntoIterator<Item = &'a str>) -> usize {
        let at = match self.snap.nodes.iter().position(|n| &**n == node) {
            Some(i) => i,
            None => {
                self.snap.nodes.push(Arc::from(node));
                self.snap.nodes.len() - 1
            }
        };
        let Ok(at) = u32::try_from(at) else {
            return 0;
        };
        let mut took = 0;
        for id in ids {
            if self.snap.map.contains_key(id) {
                continue;
            }
            if self.snap.map.len() >= self.max_entries {
                self.snap.truncated = true;
                break;
            }
            self.snap.map.insert(Box::from(id), at);
            took += 1;
        }
        took
    }

    /// Marks the table as missing entries (a feed said it left some out).
    pub fn mark_truncated(&mut self) {
        self.snap.truncated = true;
    }

    /// The finished table, with the round's feed statuses.
    pub fn finish(mut self, feeds: Vec<FeedStatus>) -> Snapshot {
        self.snap.map.shrink_to_fit();
        self.snap.feeds = feeds;
        self.snap
    }
}

/// Puts candidate `i` first in a pick `order` (indices of the usable candidates, best first),
/// keeping the rest in their order; false, and `order` unchanged, when `i` is not in it (a
/// weight 0 backend, say).
pub fn prefer(order: &mut [usize], i: usize) -> bool {
    match order.iter().position(|&j| j == i) {
        Some(pos) => {
            order[..=pos].rotate_right(1);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_never_holds_more_than_its_bound_and_says_when_it_left_some_out() {
        let ids: Vec<String> = (0..1_000).map(|i| format!("dev-{i}")).collect();
        let mut b = Builder::new(600);
        assert_eq!(b.add("node2", ids[..400].iter().map(String::as_str)), 400);
        assert_eq!(b.add("node3", ids[400..].iter().map(String::as_str)), 200);
        let s = b.finish(Vec::new());
        assert_eq!(s.len(), 600);
        assert!(s.truncated());
        assert_eq!(s.lookup("dev-0"), Some("node2"));
        assert_eq!(s.lookup("dev-599"), Some("node3"));
        assert_eq!(s.lookup("dev-600"), None, "left out: goes by the hash");
        assert_eq!(s.lookup("other"), None);

        let mut b = Builder::new(600);
        b.add("node2", ids[..600].iter().map(String::as_str));
        assert!(!b.finish(Vec::new()).truncated(), "exactly full is whole");
    }

    #[test]
    fn an_id_two_feeds_list_keeps_its_first_entry() {
        let mut b = Builder::new(10);
        assert_eq!(b.add("node1", ["a", "b"]), 2);
        assert_eq!(b.add("node2", ["b", "c", "c"]), 1);
        assert_eq!(b.add("node1", ["d"]), 1, "a node's index is reused");
        let s = b.finish(Vec::new());
        assert_eq!(
            ["a", "b", "c", "d"].map(|i| s.lookup(i)),
            [Some("node1"), Some("node1"), Some("node2"), Some("node1")]
        );
        assert_eq!(s.len(), 4);
        assert!(!s.truncated());
    }

    #[test]
    fn prefer_moves_one_candidate_to_the_front_and_keeps_the_rest_in_order() {
        let mut o = vec![3, 1, 0, 2];
        assert!(prefer(&mut o, 0));
        assert_eq!(o, [0, 3, 1, 2]);
        assert!(prefer(&mut o, 0));
        assert_eq!(o, [0, 3, 1, 2], "already first");
        assert!(!prefer(&mut o, 7));
        assert_eq!(o, [0, 3, 1, 2]);
        let mut empty: Vec<usize> = Vec::new();
        assert!(!prefer(&mut empty, 0));
    }
}

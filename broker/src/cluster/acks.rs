//! Forward acknowledgements in batches. The receiving node collects the ids of the copies that
//! became durable while it read (one read of the channel carries hundreds of forwards) and
//! answers them with one [`Frame::ForwardAcks`] of id ranges per batch, instead of one
//! [`Frame::ForwardAck`] per copy; a peer that does not announce
//! [`ACK_RANGES_KEY`](super::frame::ACK_RANGES_KEY) in gossip (an older release) gets the
//! single frames, queued in one go. The origin resolves every waiter of a batch under one lock.
//! A forward nobody acknowledges fails after [`FORWARD_ACK_TIMEOUT`]: one sweep a membership
//! round, not one timer per message.

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Instant;

use super::frame::{Frame, MAX_RANGE_ACKS};
use super::node::{lock, Cluster};
use super::FORWARD_ACK_TIMEOUT;

/// Sorts `ids` and folds them into `(first, count)` ranges, split into frames of at most
/// [`MAX_RANGE_ACKS`] ids each.
pub(crate) fn ranges(ids: &mut [u64]) -> Vec<Vec<(u64, u32)>> {
    ids.sort_unstable();
    let mut frames: Vec<Vec<(u64, u32)>> = Vec::new();
    let mut cur: Vec<(u64, u32)> = Vec::new();
    let mut in_frame = 0u64;
    for &id in ids.iter() {
        if in_frame == MAX_RANGE_ACKS {
            frames.push(std::mem::take(&mut cur));
            in_frame = 0;
        }
        in_frame += 1;
        // the last id of the open range (a range never reaches past `u64::MAX`)
        let last = cur
            .last()
            .map(|&(first, count)| first + u64::from(count - 1));
        match (last, cur.last_mut()) {
            // a duplicate id (never sent twice, but harmless): already covered
            (Some(end), _) if id <= end => in_frame -= 1,
            (Some(end), Some((_, count)))
                if Some(id) == end.checked_add(1) && *count < u32::MAX =>
            {
                *count += 1
            }
            _ => cur.push((id, 1)),
        }
    }
    if !cur.is_empty() {
        frames.push(cur);
    }
    frames
}

impl Cluster {
    /// Acknowledges the forwards (and replication ops) of peer `n` whose ids are in `ids`
    /// (emptied): ranges for a peer that reads them, single acks for one that does not.
    pub(super) fn send_acks(&self, n: &str, ids: &mut Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        let frames: Vec<Frame> = if self.reads_ack_ranges(n) {
            ranges(ids)
                .into_iter()
                .map(|ranges| Frame::ForwardAcks { ranges })
                .collect()
        } else {
            ids.iter().map(|&id| Frame::ForwardAck { id }).collect()
        };
        ids.clear();
        let peers = lock(&self.peers);
        if let Some(p) = peers.get(n) {
            for f in frames {
                if p.send(f).is_err() {
                    // the channel is gone: the origin fails what waits on it
                    break;
                }
                self.counters.ack_frames.inc();
            }
        }
    }

    /// Whether peer `n` announced in gossip that it reads [`Frame::ForwardAcks`].
    fn reads_ack_ranges(&self, n: &str) -> bool {
        lock(&self.ack_ranges).contains(n)
    }

    /// The gossip state of the live peers: which of them read range acks (each membership
    /// round).
    pub(super) fn note_ack_ranges<'a>(&self, peers: impl Iterator<Item = (&'a str, bool)>) {
        let mut set = lock(&self.ack_ranges);
        set.clear();
        set.extend(peers.filter(|(_, reads)| *reads).map(|(n, _)| Arc::from(n)));
    }

    /// A [`Frame::ForwardAcks`] from peer `n`: every waiter it names is resolved, under one lock.
    pub(super) fn on_forward_acks(&self, n: &str, ranges: &[(u64, u32)]) {
        let mut done = Vec::new();
        {
            let mut waiting = lock(&self.waiting);
            for &(first, count) in ranges {
                // the decoder bounds the ids of one frame (`MAX_RANGE_ACKS`)
                for id in first..=first.saturating_add(u64::from(count) - 1) {
                    // only the peer it was sent to answers for it
                    if let Entry::Occupied(e) = waiting.entry(id) {
                        if *e.get().peer == *n {
                            done.push((id, e.remove()));
                        }
                    }
                }
            }
        }
        for (id, w) in done {
            let _ = w.tx.send(Frame::ForwardAck { id });
        }
    }

    /// Fails the forwards whose ack has not come within [`FORWARD_ACK_TIMEOUT`] (their
    /// publishers get no PUBACK); one sweep a membership round.
    pub(super) fn expire_forwards(&self) {
        let now = Instant::now();
        let mut expired = 0u64;
        lock(&self.waiting).retain(|_, w| {
            let keep = w
                .sent
                .is_none_or(|t| now.duration_since(t) < FORWARD_ACK_TIMEOUT);
            expired += u64::from(!keep);
            keep
        });
        if expired > 0 {
            tracing::warn!(node = %self.node, forwards = expired, timeout = ?FORWARD_ACK_TIMEOUT, "cluster: forwards not acknowledged in time fail (no PUBACK)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::peer::Peer;
    use crate::cluster::ClusterCounters;

    /// A cluster with one peer `p` whose queued frames the test reads.
    fn with_peer() -> (Arc<Cluster>, tokio::sync::mpsc::UnboundedReceiver<Frame>) {
        let src = "[node]\nname = \"n1\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[cluster]\nbind = \"127.0.0.1:1\"\n";
        let cfg = crate::config::Config::parse(std::path::Path::new("b.toml"), src).unwrap();
        let cfg = cfg.cluster.expect("[cluster]");
        let c = Cluster::new("n1", &cfg, ClusterCounters::default());
        let (p, rx) = Peer::new("127.0.0.1:2".parse().unwrap(), 1, true);
        lock(&c.peers).insert(Arc::from("p"), p);
        (c, rx)
    }

    #[test]
    fn a_peer_that_announces_ranges_gets_them_and_an_older_one_single_acks() {
        let (c, mut rx) = with_peer();
        // no gossip key (an older release): one ForwardAck per id, the same ids
        c.send_acks("p", &mut vec![3, 1, 2]);
        let mut got = Vec::new();
        while let Ok(f) = rx.try_recv() {
            got.push(f);
        }
        let ids: Vec<Frame> = [3, 1, 2].map(|id| Frame::ForwardAck { id }).into();
        assert_eq!(got, ids);
        assert_eq!(c.counters.ack_frames.get(), 3);
        // it announces `ack_ranges`: one frame for the batch
        c.note_ack_ranges([("p", true)].into_iter());
        c.send_acks("p", &mut vec![3, 1, 2, 7]);
        assert_eq!(
            rx.try_recv().ok(),
            Some(Frame::ForwardAcks {
                ranges: vec![(1, 3), (7, 1)]
            })
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(c.counters.ack_frames.get(), 4);
    }

    #[test]
    fn contiguous_ids_fold_into_one_range() {
        let mut ids: Vec<u64> = (10..1010).rev().collect();
        assert_eq!(ranges(&mut ids), vec![vec![(10, 1000)]]);
    }

    #[test]
    fn gaps_and_duplicates_make_ranges_that_cover_exactly_the_ids() {
        let mut ids = vec![5, 1, 2, 3, 9, 9, 10, u64::MAX];
        assert_eq!(
            ranges(&mut ids),
            vec![vec![(1, 3), (5, 1), (9, 2), (u64::MAX, 1)]]
        );
    }

    #[test]
    fn a_batch_over_the_frame_bound_goes_in_several_frames() {
        let mut ids: Vec<u64> = (1..=MAX_RANGE_ACKS * 2 + 3).collect();
        let frames = ranges(&mut ids);
        assert_eq!(frames.len(), 3);
        let per: Vec<u64> = frames
            .iter()
            .map(|f| f.iter().map(|r| u64::from(r.1)).sum())
            .collect();
        assert_eq!(per, [MAX_RANGE_ACKS, MAX_RANGE_ACKS, 3]);
        assert_eq!(frames[1], vec![(MAX_RANGE_ACKS + 1, MAX_RANGE_ACKS as u32)]);
    }
}

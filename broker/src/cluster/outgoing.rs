//! What the cluster sends to its peers: opening (and replacing) a peer's channel with its
//! snapshot, queuing frames to one peer or all, and what a heartbeat answer or a failed
//! channel changes. The channel itself is [`super::peer`].

use std::net::SocketAddr;
use std::sync::Arc;

use super::chunks::{self, CHUNK_SIZE, MAX_TRANSFER};
use super::frame::Frame;
use super::node::{lock, Cluster};
use super::peer::{write_loop, Dial, Peer, Unsent};
use super::Gate;
use crate::routing::retained_versions::encode_record;

impl Cluster {
    /// Opens (or replaces) the outgoing channel to a peer: Hello, then a snapshot of our routes
    /// and retained messages, then whatever is queued later (deltas, forwards, replies).
    pub(super) fn connect_peer(self: &Arc<Self>, n: Arc<str>, addr: SocketAddr, generation: u64) {
        // snapshot and registration under the local-routes lock: no delta can slip between
        let (link, data, rx) = {
            let local = lock(&self.local);
            let mut peers = lock(&self.peers);
            // a peer that missed its heartbeat stays unreachable until it answers one
            let reachable = peers
                .get(&n)
                .is_none_or(|p| p.generation() != generation || p.link.is_reachable());
            let (p, rx) = Peer::new(addr, generation, reachable);
            let _ = p.send(Frame::Hello {
                node: self.node.to_string(),
                epoch: self.epoch,
                to_epoch: generation,
            });
            let _ = chunks::send(
                &p,
                Frame::RoutesReset {
                    filters: local.keys().cloned().collect(),
                },
            );
            let out = (p.link.clone(), p.data.clone(), rx);
            if let Some(b) = self.core() {
                // values and tombstones (no $SYS), versioned: the peer keeps what is newer
                let msgs: Vec<Vec<u8>> = b
                    .retained()
                    .iter()
                    .map(|(m, v)| encode_record(m, v))
                    .collect();
                if !msgs.is_empty() {
                    let _ = chunks::send(&p, Frame::Retained { msgs });
                }
            }
            peers.insert(n.clone(), p);
            out
        };
        if let Some(b) = self.core() {
            b.replica_link(&n);
        }
        let me = self.clone();
        let dial = Dial {
            node: self.node.clone(),
            bind: self.bind,
            addr,
            peer: n.clone(),
            tls: self.tls.clone(),
            auth: self.counters.auth_failures.clone(),
            transport: self.wiring.transport.clone(),
            timing: self.wiring.timing,
        };
        tokio::spawn(async move {
            let r = write_loop(dial, rx, data, link.clone()).await;
            link.lost();
            let current = lock(&me.peers)
                .get(&n)
                .is_some_and(|p| Arc::ptr_eq(&p.link, &link));
            if let Err(e) = r {
                if current {
                    tracing::warn!(node = %me.node, peer = %n, error = %e, "cluster: peer unreachable (its channel failed while gossip calls it live); forwards to it fail until it answers");
                    // what was queued behind the failure never went out: fail what waits on it
                    me.release_waiters(&n);
                } else {
                    tracing::debug!(node = %me.node, peer = %n, error = %e, "cluster: replaced channel to peer closed");
                }
            }
        });
    }

    /// A `Pong` from incarnation `epoch` of peer `n`: the round trip is alive.
    pub(super) fn on_pong(&self, n: &str, epoch: u64) {
        if let Some(p) = lock(&self.peers).get(n) {
            if p.generation() == epoch && p.link.heard() {
                tracing::info!(node = %self.node, peer = %n, "cluster: peer reachable again");
            }
        }
    }

    pub(super) fn send_to(&self, n: &str, f: Frame) -> bool {
        self.send_gated(n, f).is_ok()
    }

    /// Queues a frame to a peer; for forwards, the peer's gate when it is congested. Forwards
    /// to a peer that is not reachable fail at once.
    pub(super) fn send_gated(&self, n: &str, f: Frame) -> Result<Option<Arc<Gate>>, Unsent> {
        let forward = matches!(f, Frame::Forward { .. } | Frame::Replicate { .. });
        let too_large = |e: Unsent| {
            if e == Unsent::TooLarge {
                tracing::error!(node = %self.node, peer = %n, max = MAX_TRANSFER, "cluster: frame over the size cap not sent");
            }
        };
        // a large frame is encoded and split before the lock: other senders do not wait on it
        let pieces = chunks::split(f, CHUNK_SIZE).map_err(|_| Unsent::TooLarge);
        let pieces = pieces.inspect_err(|&e| too_large(e))?;
        let peers = lock(&self.peers);
        let p = peers.get(n).ok_or(Unsent::NoChannel)?;
        if forward && !p.reachable() {
            return Err(Unsent::Unreachable);
        }
        for piece in pieces {
            p.send(piece).inspect_err(|&e| too_large(e))?;
        }
        Ok((forward && p.data.congested()).then(|| p.data.clone()))
    }

    /// Queues a frame to every peer (callers hold `local` when order with snapshots matters).
    pub(super) fn broadcast_locked(&self, f: Frame) {
        for p in lock(&self.peers).values() {
            let _ = chunks::send(p, f.clone());
        }
    }
}

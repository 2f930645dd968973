//! Draining a node (docs/cluster.md, "Draining a node"): once an LB acknowledged the drain (or
//! at once when no LB health check reaches this node, or after `drain_ack_timeout`), every
//! client and persistent session moves at `drain_rate` per second. A persistent session goes
//! first, with the graceful leave's push (freeze → send → confirm, to the node the LB's hash
//! picks next for its client id), and its connection is told DISCONNECT `0x9C` Use another
//! server (3.1.1: closed) as it is exported; a client without a persistent session is only told
//! to go. The node is empty when no client is connected, no session is left or unconfirmed, and
//! every LB that acknowledged reports no connection to it; or `drain_timeout` passed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::node::Cluster;
use crate::config::ClusterConfig;
use crate::drain::{Drain, Phase};
use crate::protocol::reason;

/// How often the mover counts what is left.
const ROUND: Duration = Duration::from_millis(50);
/// A session or client whose move did not take (its push was refused or not confirmed, or its
/// connection was closing) is tried this many times, then no longer holds the exit back.
const MAX_TRIES: u8 = 3;
/// The pacer may run this far ahead of the rate (one sleep per burst, not per client).
const BURST: Duration = Duration::from_millis(10);

/// Spaces moves `1 / rate` apart on average.
struct Pace {
    every: Duration,
    next: Instant,
}

impl Pace {
    fn new(rate: u32) -> Pace {
        Pace {
            every: Duration::from_secs(1) / rate.max(1),
            next: Instant::now(),
        }
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        self.next = self.next.max(now) + self.every;
        let ahead = self.next - now;
        if ahead > BURST {
            tokio::time::sleep(ahead - BURST).await;
        }
    }
}

impl Cluster {
    /// Runs a started drain (`d`) to its end: waits for an LB's acknowledgement, moves every
    /// client and session, waits until the node is empty (or `drain_timeout`), then ends the
    /// moved sessions' linger. Returns (sessions pushed, not confirmed at the end).
    pub async fn drain(self: &Arc<Self>, d: &Drain, cfg: &ClusterConfig) -> (usize, usize) {
        let Some(b) = self.core() else { return (0, 0) };
        let started = Instant::now();
        let deadline = started + cfg.drain_timeout;
        self.announce_draining().await;
        if let Some(wait) = d.ack_wait(cfg.drain_ack_timeout) {
            let until = (started + wait).min(deadline);
            // (no peer to move to: nothing to wait for; the loop below ends the drain)
            while !d.acked() && Instant::now() < until && !self.targets().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !d.acked() && !self.targets().is_empty() {
                tracing::warn!(node = %self.node, waited = ?started.elapsed(), "drain: no LB acknowledged; moving clients anyway");
            }
        }
        d.set_phase(Phase::Moving);
        tracing::info!(node = %self.node, rate = cfg.drain_rate, "drain: moving clients and sessions to the other nodes");
        let mut pace = Pace::new(cfg.drain_rate);
        let mut tries: HashMap<Arc<str>, u8> = HashMap::new();
        let mut pushed = 0;
        loop {
            let live = self.targets();
            let todo: Vec<(Arc<str>, bool)> = b
                .drain_candidates()
                .into_iter()
                .filter(|(c, _)| tries.get(c).copied().unwrap_or(0) < MAX_TRIES)
                .collect();
            let (conns, pending) = (b.client_connections(), b.frozen_pending());
            d.set_left(conns, todo.len() + pending);
            if todo.is_empty() && pending == 0 && conns == 0 && d.lbs_empty() {
                tracing::info!(node = %self.node, sessions = pushed, elapsed = ?started.elapsed(), "drain: empty");
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(node = %self.node, connections = conns, sessions = todo.len() + pending, timeout = ?cfg.drain_timeout, "drain: drain_timeout reached; stopping with what is left");
                break;
            }
            if live.is_empty() {
                tracing::warn!(node = %self.node, sessions = todo.len(), connections = conns, "drain: no live peer that does not drain to move clients to; stopping (sessions stay in data_dir)");
                break;
            }
            let names: Vec<&str> = live.iter().map(|n| &**n).collect();
            for (client_id, persistent) in todo {
                if Instant::now() >= deadline {
                    break;
                }
                pace.tick().await;
                *tries.entry(client_id.clone()).or_default() += 1;
                let moved = if persistent {
                    let to =
                        mqedge_shared::placement::rendezvous_first(client_id.as_bytes(), &names);
                    let to: Option<Arc<str>> = to.map(Arc::from);
                    let sent = to.is_some_and(|to| {
                        self.push_one(&b, &to, &client_id, |b, c, t| b.export_for_drain(c, t))
                    });
                    pushed += usize::from(sent);
                    sent
                } else {
                    b.kick(&client_id, reason::USE_ANOTHER_SERVER)
                };
                if moved {
                    d.moved(1);
                }
            }
            tokio::time::sleep(ROUND).await;
        }
        let left = b.frozen_pending();
        for (client_id, (to, _), queued) in b.finish_all_moves() {
            self.append_to(&to, &client_id, queued);
        }
        (pushed, left)
    }
}

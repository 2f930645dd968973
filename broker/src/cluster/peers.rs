//! [`Peers`] for the real cluster: route announcements, forwards with acks, session takeover
//! requests and the status `/api/cluster` shows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::frame::Frame;
use super::node::{lock, Cluster, Waiter};
use super::peer::Unsent;
use super::{Ack, BoxFuture, Forwarded, Handover, PeerStatus, Peers, SessionExport};
use crate::message::Message;
use crate::routing::retained_versions::{encode_record, Version};
use crate::routing::Matches;

impl Cluster {
    /// Registers request `id` to peer `n`; the receiver gets its answer (or a "gone" answer when
    /// the peer goes down first).
    pub(super) fn await_reply(
        &self,
        id: u64,
        n: &Arc<str>,
        forward: bool,
    ) -> oneshot::Receiver<Frame> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(
            id,
            Waiter {
                peer: n.clone(),
                forward,
                sent: forward.then(std::time::Instant::now),
                tx,
            },
        );
        rx
    }
}

impl Peers for Cluster {
    fn local_add(&self, filter: &str) {
        let mut local = lock(&self.local);
        let c = local.entry(filter.to_string()).or_insert(0);
        *c += 1;
        if *c == 1 {
            self.broadcast_locked(Frame::RouteAdd {
                filter: filter.to_string(),
            });
        }
    }

    fn local_del(&self, filter: &str) {
        let mut local = lock(&self.local);
        if let Some(c) = local.get_mut(filter) {
            *c -= 1;
            if *c == 0 {
                local.remove(filter);
                self.broadcast_locked(Frame::RouteDel {
                    filter: filter.to_string(),
                });
            }
        }
    }

    fn broadcast_retained(&self, m: &Message, v: &Version) {
        let f = Frame::Retained {
            msgs: vec![encode_record(m, v)],
        };
        self.broadcast_locked(f);
    }

    fn remote_matches(&self, topic: &str) -> Matches<Arc<str>> {
        let mut m = Matches::default();
        self.routes.matches(topic, &mut m);
        m
    }

    fn forward(
        &self,
        n: &Arc<str>,
        direct: bool,
        shared: Vec<(String, String)>,
        msg: Bytes,
        want_ack: bool,
    ) -> Forwarded {
        let id = if want_ack {
            self.next_id.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let ack = want_ack.then(|| Ack::reply(self.await_reply(id, n, true)));
        let bytes = msg.len() as u64;
        let sent = self.send_gated(
            n,
            Frame::Forward {
                id,
                direct,
                shared,
                msg,
            },
        );
        if sent.is_err() {
            lock(&self.waiting).remove(&id);
        }
        match sent {
            Ok(gate) => {
                self.counters.forwarded.inc();
                self.counters.forwarded_bytes.inc_by(bytes);
                Forwarded { ack, gate }
            }
            // we hold routes of a node that has no channel: it is down (crashed, paused, cut
            // off) and they are kept for its return: a QoS 1/2 publisher is not acknowledged
            Err(Unsent::NoChannel) => {
                self.counters.failed_down.inc();
                tracing::debug!(node = %self.node, peer = %n, "cluster: message not forwarded (peer down, routes held)");
                Forwarded {
                    ack: want_ack.then(|| Ack::new(std::future::ready(false))),
                    gate: None,
                }
            }
            Err(why) => {
                // a member we cannot reach (crashed, paused, cut off; not yet declared down) or
                // whose queue is far over its bound: a QoS 1/2 publisher must not be
                // acknowledged (its ack fails at once); QoS 0 is dropped, as under overload
                let reason = match why {
                    Unsent::QueueFull => {
                        self.counters.failed_queue_full.inc();
                        "queue full"
                    }
                    Unsent::TooLarge => "frame too large",
                    _ => {
                        self.counters.failed_unreachable.inc();
                        "peer unreachable"
                    }
                };
                tracing::warn!(node = %self.node, peer = %n, reason, "cluster: message not forwarded");
                Forwarded {
                    ack: want_ack.then(|| Ack::new(std::future::ready(false))),
                    gate: None,
                }
            }
        }
    }

    fn take_session<'a>(
        &'a self,
        client_id: &'a str,
        clean_start: bool,
    ) -> BoxFuture<'a, Option<(SessionExport, Handover)>> {
        Box::pin(self.take_session_now(client_id, clean_start))
    }

    fn settle_handover(&self, h: Handover, taken: bool) {
        self.settle_now(h, taken);
    }

    fn remote_routes(&self) -> usize {
        self.routes.subscription_count()
    }

    fn peers(&self) -> Vec<(Arc<str>, PeerStatus, usize)> {
        let filters = lock(&self.node_filters);
        let links = lock(&self.peers);
        let mut v: Vec<_> = lock(&self.status)
            .iter()
            .map(|(n, s)| {
                let mut s = s.clone();
                s.unreachable = s.up && !links.get(n).is_some_and(|p| p.reachable());
                s.held = !s.up && filters.contains_key(n);
                (n.clone(), s, filters.get(n).map(|f| f.len()).unwrap_or(0))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn local_routes(&self) -> usize {
        lock(&self.local).len()
    }

    fn replicate(
        &self,
        n: &Arc<str>,
        ops: Vec<u8>,
        want_ack: bool,
    ) -> Result<Option<Ack>, super::NotSent> {
        self.replicate_now(n, ops, want_ack)
    }

    fn promoted(&self, of: &str) {
        self.promoted_here(of);
    }

    fn push_sessions(&self, n: &Arc<str>, client_ids: Vec<String>) -> usize {
        match self.me.upgrade() {
            Some(me) => me.push_to(n, client_ids).len(),
            None => 0,
        }
    }

    fn held_by_peers(
        &self,
        client_ids: Vec<String>,
        timeout: std::time::Duration,
    ) -> super::BoxFuture<'_, std::collections::HashSet<String>> {
        Box::pin(async move {
            self.ask_holds(client_ids, timeout)
                .await
                .into_iter()
                .flat_map(|(_, held)| held)
                .collect()
        })
    }

    fn move_sessions(&self, to: &str, client_ids: Vec<String>) -> Option<Vec<(String, bool)>> {
        self.me.upgrade()?.move_to(to, client_ids)
    }

    fn reachable(&self, n: &str) -> bool {
        self.is_member(n) && lock(&self.peers).get(n).is_some_and(|p| p.reachable())
    }
}

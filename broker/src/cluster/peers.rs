//! [`Peers`] for the real cluster: route announcements, forwards with acks, session takeover
//! requests and the status `/api/cluster` shows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::frame::Frame;
use super::node::{lock, Cluster, Waiter};
use super::{Ack, BoxFuture, Forwarded, Handover, PeerStatus, Peers, SessionExport};
use crate::message::Message;
use crate::routing::Matches;

impl Cluster {
    /// Registers request `id` to peer `n`; the receiver gets its answer (or a "gone" answer when
    /// the peer goes down first).
    pub(super) fn await_reply(&self, id: u64, n: &Arc<str>) -> oneshot::Receiver<Frame> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(
            id,
            Waiter {
                peer: n.clone(),
                tx,
            },
        );
        rx
    }

    /// Sends to every peer (callers hold `local` when order with snapshots matters).
    pub(super) fn broadcast_locked(&self, f: Frame) {
        for p in lock(&self.peers).values() {
            let _ = p.tx.send(f.clone());
        }
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

    fn broadcast_retained(&self, m: &Message) {
        let f = Frame::Retained {
            msgs: vec![m.encode()],
        };
        for p in lock(&self.peers).values() {
            let _ = p.tx.send(f.clone());
        }
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
        msg: &[u8],
        want_ack: bool,
    ) -> Forwarded {
        let id = if want_ack {
            self.next_id.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let ack = want_ack.then(|| {
            let rx = self.await_reply(id, n);
            Ack::new(async move { rx.await.is_ok() })
        });
        let (sent, gate) = self.send_gated(
            n,
            Frame::Forward {
                id,
                direct,
                shared,
                msg: msg.to_vec(),
            },
        );
        if sent {
            self.forwarded.inc();
            self.forwarded_bytes.inc_by(msg.len() as u64);
            Forwarded { ack, gate }
        } else {
            lock(&self.waiting).remove(&id);
            let channel = lock(&self.peers).get(&**n).map(|p| p.tx.is_closed());
            if let Some(closed) = channel {
                // the peer is a member but its channel is gone (it crashed or is unreachable,
                // not yet declared down) or its queue is full: a QoS 1/2 publisher must not be
                // acknowledged (its receiver fails at once); QoS 0 is dropped, as under overload
                let why = if closed {
                    "peer channel closed (crashed or unreachable)"
                } else {
                    "forward queue full"
                };
                tracing::warn!(node = %self.node, peer = %n, "cluster: message not forwarded: {why}");
                Forwarded {
                    ack: want_ack.then(|| Ack::new(std::future::ready(false))),
                    gate: None,
                }
            } else {
                // no channel: the node is down or not yet connected; its routes go with it
                Forwarded::default()
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
        let mut v: Vec<_> = lock(&self.status)
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.clone(),
                    filters.get(n).map(|f| f.len()).unwrap_or(0),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn local_routes(&self) -> usize {
        lock(&self.local).len()
    }
}

//! The inbound side of the node-to-node channel: the accept and read loops, and what a
//! received [`Frame`] does here (the outgoing side is [`super::peer`]). The read loop only
//! decodes and dispatches: a forwarded copy is made at once, in frame order, and only its ack
//! waits (for the store, for a slow subscriber) without holding up the frames behind it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::frame::{decode, Frame};
use super::node::{lock, Cluster};
use super::peer::HEARTBEAT_DEADLINE;
use super::BoxFuture;
use crate::message::Message;
use crate::routing::retained_versions::decode_record;
use crate::routing::SubOptions;

/// Forwarded copies whose ack may wait at once per inbound channel.
const MAX_PENDING_ACKS: usize = 16_384;
/// An inbound channel silent this long is closed (the peer pings every [`super::HEARTBEAT`]).
const READ_DEADLINE: Duration = Duration::from_secs(HEARTBEAT_DEADLINE.as_secs() * 2);

impl Cluster {
    pub(super) async fn accept_loop(
        self: Arc<Self>,
        l: TcpListener,
        mut stop: watch::Receiver<bool>,
    ) {
        while let Some((s, peer)) = mqedge_shared::net::accept(&l, &mut stop, "cluster").await {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.read_loop(s).await {
                    tracing::debug!(peer = %peer, error = %e, "cluster: inbound channel closed");
                }
            });
        }
    }

    async fn read_loop(self: Arc<Self>, mut s: TcpStream) -> Result<(), String> {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut from: Option<(Arc<str>, u64)> = None;
        // acks of forwarded copies still waiting to be durable (bounded: past it, reading
        // waits, and the sender's queue and then its publishers' gate feel it)
        let mut acks: FuturesUnordered<BoxFuture<'static, Option<u64>>> = FuturesUnordered::new();
        loop {
            let mut off = 0;
            while let Some((f, used)) = decode(&buf[off..]).map_err(|e| e.to_string())? {
                off += used;
                match (&from, f) {
                    (None, Frame::Hello { to_epoch, .. }) if to_epoch != self.epoch => {
                        // dialed for an incarnation of this node that is gone: what it queued
                        // (handover requests, forwards) was meant for that one
                        return Err(format!(
                            "Hello for incarnation {to_epoch}, this node is {}",
                            self.epoch
                        ));
                    }
                    (None, Frame::Hello { node, epoch, .. }) => {
                        tracing::debug!(node = %self.node, peer = %node, epoch, "cluster: inbound channel from peer");
                        // a peer that (re)connects may have dropped our routes (it thought we were
                        // down, or it restarted): send it our snapshot again
                        self.resend_snapshot(&node);
                        from = Some((Arc::from(node.as_str()), epoch));
                    }
                    (None, _) => return Err("first frame is not Hello".into()),
                    (Some((n, epoch)), f) => {
                        if let Some(ack) = self.handle(n.clone(), *epoch, f) {
                            acks.push(ack);
                        }
                    }
                }
            }
            buf.drain(..off);
            let n = from.as_ref().map(|f| f.0.clone());
            if acks.len() >= MAX_PENDING_ACKS {
                if let Some(id) = acks.next().await {
                    self.ack(n.as_deref(), id);
                }
                continue;
            }
            buf.reserve(64 * 1024);
            tokio::select! {
                r = tokio::time::timeout(READ_DEADLINE, s.read_buf(&mut buf)) => {
                    match r {
                        Err(_) => return Err(format!("nothing read for {READ_DEADLINE:?}")),
                        Ok(Err(e)) => return Err(e.to_string()),
                        Ok(Ok(0)) => break,
                        Ok(Ok(_)) => {}
                    }
                }
                Some(id) = acks.next(), if !acks.is_empty() => self.ack(n.as_deref(), id),
            }
        }
        // the peer closed: the copies it sent are still acked once durable
        let n = from.map(|f| f.0);
        while let Some(id) = acks.next().await {
            self.ack(n.as_deref(), id);
        }
        Ok(())
    }

    /// Acknowledges a forwarded copy that is durable here (`None`: not taken, no ack).
    fn ack(&self, n: Option<&str>, id: Option<u64>) {
        if let (Some(n), Some(id)) = (n, id) {
            self.send_to(n, Frame::ForwardAck { id });
        }
    }

    /// Applies one frame from peer `n` (incarnation `epoch`); for a forward that wants an ack,
    /// the future that resolves to its id once the copy is durable here.
    fn handle(
        self: &Arc<Self>,
        n: Arc<str>,
        epoch: u64,
        f: Frame,
    ) -> Option<BoxFuture<'static, Option<u64>>> {
        match f {
            Frame::Hello { .. } => {}
            Frame::Ping { at } => {
                self.send_to(&n, Frame::Pong { at });
            }
            Frame::Pong { .. } => self.on_pong(&n, epoch),
            Frame::RoutesReset { filters } => {
                self.drop_routes(&n);
                let mut set = HashSet::with_capacity(filters.len());
                for x in filters {
                    self.routes.subscribe(&n, &x, SubOptions::default());
                    set.insert(x);
                }
                tracing::debug!(node = %self.node, peer = %n, routes = set.len(), "cluster: routes snapshot");
                lock(&self.node_filters).insert(n, set);
            }
            Frame::RouteAdd { filter } => {
                self.routes.subscribe(&n, &filter, SubOptions::default());
                lock(&self.node_filters)
                    .entry(n)
                    .or_default()
                    .insert(filter);
            }
            Frame::RouteDel { filter } => {
                self.routes.unsubscribe(&n, &filter);
                if let Some(s) = lock(&self.node_filters).get_mut(&n) {
                    s.remove(&filter);
                }
            }
            Frame::Forward {
                id,
                direct,
                shared,
                msg,
            } => {
                // the copies are made now, in frame order; only the ack waits
                let durable = match (self.core(), Message::decode(&msg)) {
                    (Some(b), Some(m)) => b.deliver_forwarded(Arc::new(m), direct, &shared),
                    _ => return None,
                };
                // no ack for a copy that is not durable here: the origin's publisher gets no
                // PUBACK and sends it again
                return (id != 0).then(|| -> BoxFuture<'static, Option<u64>> {
                    Box::pin(async move { durable.await.then_some(id) })
                });
            }
            f @ (Frame::ForwardAck { .. } | Frame::Session { .. } | Frame::Held { .. }) => {
                let id = match &f {
                    Frame::ForwardAck { id }
                    | Frame::Session { id, .. }
                    | Frame::Held { id, .. } => *id,
                    _ => 0,
                };
                let w = lock(&self.waiting).remove(&id);
                // an answer nobody waits for any more (or whose waiter just gave up)
                let late = match w {
                    Some(w) => w.tx.send(f).err(),
                    None => Some(f),
                };
                if let Some(f) = late {
                    self.late_answer(n, f);
                }
            }
            Frame::Retained { msgs } => {
                if let Some(b) = self.core() {
                    for m in msgs {
                        if let Some((m, version)) = decode_record(&m) {
                            b.set_retained(Arc::new(m), version);
                        }
                    }
                }
            }
            Frame::TakeSession {
                id,
                client_id,
                clean_start,
            } => self.on_take_session(n, id, client_id, clean_start),
            Frame::SessionDone {
                id,
                client_id,
                keep,
            } => self.on_session_done(n, id, client_id, keep),
            Frame::SessionAppend { client_id, queued } => {
                self.on_session_append(&client_id, &queued)
            }
            Frame::Leave => self.node_down(&n, "left gracefully", false),
            Frame::Holds { id, client_ids } => {
                let client_ids = self
                    .core()
                    .map(|b| b.holds(&client_ids))
                    .unwrap_or_default();
                self.send_to(&n, Frame::Held { id, client_ids });
            }
        }
        None
    }

    /// Sends our complete route list to one peer (in order with later deltas).
    fn resend_snapshot(&self, n: &str) {
        let local = lock(&self.local);
        self.send_to(
            n,
            Frame::RoutesReset {
                filters: local.keys().cloned().collect(),
            },
        );
    }
}

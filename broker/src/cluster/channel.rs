//! The node-to-node channel over TCP: one outgoing connection per peer (Hello, snapshot, then
//! deltas, forwards and replies, batched), the inbound accept and read loops, and what a
//! received [`Frame`] does here.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use super::frame::{decode, encode, Frame};
use super::node::{lock, Cluster, Peer};
use super::{Gate, PEER_QUEUE};
use crate::message::Message;
use crate::routing::SubOptions;

impl Cluster {
    /// Opens (or replaces) the outgoing channel to a peer: Hello, then a snapshot of our routes
    /// and retained messages, then whatever is queued later (deltas, forwards, replies).
    pub(super) fn connect_peer(self: &Arc<Self>, n: Arc<str>, addr: SocketAddr, generation: u64) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued_forwards = Arc::new(Gate::default());
        // snapshot and registration under the local-routes lock: no delta can slip between
        {
            let local = lock(&self.local);
            let _ = tx.send(Frame::Hello {
                node: self.node.to_string(),
                epoch: self.epoch,
                to_epoch: generation,
            });
            let _ = tx.send(Frame::RoutesReset {
                filters: local.keys().cloned().collect(),
            });
            lock(&self.peers).insert(
                n.clone(),
                Peer {
                    tx: tx.clone(),
                    queued_forwards: queued_forwards.clone(),
                    addr,
                    generation,
                },
            );
        }
        if let Some(b) = self.core() {
            let msgs: Vec<Vec<u8>> = b
                .retained()
                .into_iter()
                .filter(|m| !m.topic.starts_with("$SYS"))
                .map(|m| m.encode())
                .collect();
            if !msgs.is_empty() {
                let _ = tx.send(Frame::Retained { msgs });
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.clone().write_loop(addr, rx, queued_forwards).await {
                tracing::debug!(node = %me.node, peer = %n, error = %e, "cluster: channel to peer closed");
            }
        });
    }

    async fn write_loop(
        self: Arc<Self>,
        addr: SocketAddr,
        mut rx: mpsc::UnboundedReceiver<Frame>,
        queued_forwards: Arc<Gate>,
    ) -> std::io::Result<()> {
        let mut s = None;
        for i in 0..20 {
            match tokio::time::timeout(Duration::from_secs(1), self.dial(addr)).await {
                Ok(Ok(c)) => {
                    s = Some(c);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100 * (i + 1).min(10))).await,
            }
        }
        let Some(mut s) = s else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "peer unreachable",
            ));
        };
        let _ = s.set_nodelay(true);
        let mut buf = Vec::with_capacity(64 * 1024);
        let count = |f: &Frame| usize::from(matches!(f, Frame::Forward { .. }));
        while let Some(f) = rx.recv().await {
            buf.clear();
            let mut forwards = count(&f);
            encode(&f, &mut buf);
            // batch whatever else is queued (up to ~1 MiB per write)
            while buf.len() < (1 << 20) {
                match rx.try_recv() {
                    Ok(f) => {
                        forwards += count(&f);
                        encode(&f, &mut buf);
                    }
                    Err(_) => break,
                }
            }
            s.write_all(&buf).await?;
            let left = queued_forwards
                .queued
                .fetch_sub(forwards, Ordering::Relaxed)
                - forwards;
            if forwards > 0 && left < PEER_QUEUE / 2 {
                queued_forwards.space.notify_waiters();
            }
        }
        Ok(())
    }

    /// Dials a peer from the cluster bind address (on a multi-homed host, the source peers know).
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let s = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if self.bind.is_ipv4() == addr.is_ipv4() && !self.bind.ip().is_unspecified() {
            s.bind(SocketAddr::new(self.bind.ip(), 0))?;
        }
        s.connect(addr).await
    }

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
        let mut from: Option<Arc<str>> = None;
        loop {
            while let Some((f, used)) = decode(&buf).map_err(|e| e.to_string())? {
                buf.drain(..used);
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
                        from = Some(Arc::from(node.as_str()));
                    }
                    (None, _) => return Err("first frame is not Hello".into()),
                    (Some(n), f) => self.handle(n.clone(), f).await,
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub(super) fn send_to(&self, n: &str, f: Frame) -> bool {
        self.send_gated(n, f).0
    }

    /// Sends a frame; for forwards also returns the peer's gate when it is congested.
    pub(super) fn send_gated(&self, n: &str, f: Frame) -> (bool, Option<Arc<Gate>>) {
        let peers = lock(&self.peers);
        let Some(p) = peers.get(n) else {
            return (false, None);
        };
        if matches!(f, Frame::Forward { .. }) {
            let before = p.queued_forwards.queued.fetch_add(1, Ordering::Relaxed);
            // far past the soft limit (publishers not waiting, e.g. wills): drop
            if before >= PEER_QUEUE * 4 || p.tx.send(f).is_err() {
                p.queued_forwards.queued.fetch_sub(1, Ordering::Relaxed);
                return (false, None);
            }
            let gate = (before + 1 >= PEER_QUEUE).then(|| p.queued_forwards.clone());
            return (true, gate);
        }
        (p.tx.send(f).is_ok(), None)
    }

    async fn handle(self: &Arc<Self>, n: Arc<str>, f: Frame) {
        match f {
            Frame::Hello { .. } => {}
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
                let taken = match (self.core(), Message::decode(&msg)) {
                    (Some(b), Some(m)) => b.deliver_forwarded(Arc::new(m), direct, &shared).await,
                    _ => false,
                };
                // no ack for a copy that is not durable here: the origin's publisher gets no
                // PUBACK and sends it again
                if id != 0 && taken {
                    self.send_to(&n, Frame::ForwardAck { id });
                }
            }
            f @ (Frame::ForwardAck { .. } | Frame::Session { .. }) => {
                let id = match &f {
                    Frame::ForwardAck { id } | Frame::Session { id, .. } => *id,
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
                        if let Some(m) = Message::decode(&m) {
                            b.set_retained(Arc::new(m));
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
            Frame::Leave => self.node_down(&n, "left gracefully"),
        }
    }

    /// Sends our complete route list to one peer (in order with later deltas).
    fn resend_snapshot(&self, n: &str) {
        let local = lock(&self.local);
        if let Some(p) = lock(&self.peers).get(n) {
            let _ = p.tx.send(Frame::RoutesReset {
                filters: local.keys().cloned().collect(),
            });
        }
    }
}

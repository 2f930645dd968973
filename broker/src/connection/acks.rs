//! The QoS 1/2 acknowledgements (PUBACK, PUBREC, PUBCOMP) and the PUBRELs a connection owes
//! its client, in arrival order (MQTT-4.6.0-2). A publish is acknowledged only once it is
//! durable and every cluster peer it was forwarded to took it, a PUBREL or PUBCOMP only once
//! the QoS 2 state it moves to is durable; that wait runs beside the connection, which goes on
//! reading, and one still waiting holds back those after it. Pure bookkeeping: it writes into
//! the connection's output buffer, the connection does the I/O.

use std::collections::VecDeque;

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::BytesMut;

use crate::cluster::Ack;
use crate::protocol::{encode, AckProperties, Packet, PubAck, QoS, Version};

/// Which packet is owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the MQTT packet names
pub enum AckKind {
    /// For a QoS 1 publish.
    PubAck,
    /// For a QoS 2 publish.
    PubRec,
    /// For a PUBREC of a QoS 2 delivery of ours.
    PubRel,
    /// For a PUBREL.
    PubComp,
}

impl AckKind {
    /// What a publish of `qos` gets (QoS 1 PUBACK, QoS 2 PUBREC).
    pub fn for_publish(qos: QoS) -> AckKind {
        match qos {
            QoS::ExactlyOnce => AckKind::PubRec,
            _ => AckKind::PubAck,
        }
    }
}

/// What an acknowledgement waits for (the store commit, the cluster peers' acks): a future
/// polled by the connection while it is the oldest one owed, not a task of its own. Every part
/// of it resolves without being polled in between (the store writer and the cluster answer
/// channels; a forward that is never acknowledged is failed by the cluster's own deadline).
pub struct Wait(Mutex<Waiting>);

/// A publish forwarded to one peer, with no store write, waits on that peer's ack alone (the
/// common cross-node QoS 1 case: no boxed future per message); anything else is boxed.
enum Waiting {
    Peer(Ack),
    Boxed(Pin<Box<dyn Future<Output = bool> + Send>>),
}

impl Wait {
    /// A wait for `f`.
    pub fn new(f: impl Future<Output = bool> + Send + 'static) -> Wait {
        Wait(Mutex::new(Waiting::Boxed(Box::pin(f))))
    }

    /// A wait for one peer's ack.
    pub fn ack(a: Ack) -> Wait {
        Wait(Mutex::new(Waiting::Peer(a)))
    }
}

impl Future for Wait {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        // the lock only makes the connection `Sync`: polling has it exclusively (`&mut`)
        let f = self.get_mut().0.get_mut();
        match f.unwrap_or_else(|p| p.into_inner()) {
            Waiting::Peer(a) => Pin::new(a).poll(cx),
            Waiting::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

/// One acknowledgement owed.
pub struct PendingAck {
    /// The packet.
    pub kind: AckKind,
    /// The publish's packet identifier.
    pub pid: u16,
    /// The reason code (0, or why the publish was refused).
    pub code: u8,
    /// Durability and cluster acks still awaited (true when all went well).
    pub wait: Option<Wait>,
}

/// The acknowledgements owed, oldest first.
#[derive(Default)]
pub struct Acks {
    q: VecDeque<PendingAck>,
}

impl Acks {
    /// Owes one more, after all those owed already.
    pub fn push(&mut self, a: PendingAck) {
        self.q.push_back(a);
    }

    /// How many are owed.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether the oldest one waits for its publish (the main loop then awaits it).
    pub fn front_waiting(&self) -> bool {
        self.q.front().is_some_and(|a| a.wait.is_some())
    }

    /// Awaits the oldest one's durability/cluster wait, and takes every later one whose wait
    /// is over by then too (a batch of cluster acks resolves many at once: their PUBACKs then
    /// leave in one write, not one each); true when they went well (or there was nothing to
    /// await). A failed one after some that went well fails at the next call, so those are
    /// still acknowledged first, in order.
    pub async fn await_front(&mut self) -> bool {
        std::future::poll_fn(|cx| self.poll_settled(cx)).await
    }

    /// [`Acks::await_front`] as a poll (the main loop's `select!` keeps a closure, not a
    /// future, per connection).
    pub fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.q.front().is_none_or(|a| a.wait.is_none()) {
            return Poll::Ready(true);
        }
        let mut settled = false;
        for a in self.q.iter_mut() {
            let Some(w) = a.wait.as_mut() else { continue };
            match Pin::new(w).poll(cx) {
                Poll::Pending => break,
                Poll::Ready(true) => {
                    a.wait = None;
                    settled = true;
                }
                Poll::Ready(false) if settled => {
                    // kept for the next call: the ones before it are written first
                    a.wait = Some(Wait::new(std::future::ready(false)));
                    break;
                }
                Poll::Ready(false) => {
                    a.wait = None;
                    return Poll::Ready(false);
                }
            }
        }
        if settled {
            Poll::Ready(true)
        } else {
            Poll::Pending
        }
    }

    /// Writes, in order, every acknowledgement up to the first whose wait is not over (a wait
    /// that is over is read by [`Acks::await_front`] first).
    pub fn flush(&mut self, out: &mut BytesMut, v: Version) {
        while let Some(front) = self.q.front() {
            if front.wait.is_some() {
                return;
            }
            let Some(a) = self.q.pop_front() else {
                break;
            };
            let ack = PubAck {
                packet_id: a.pid,
                code: a.code,
                properties: AckProperties::default(),
            };
            let p = match a.kind {
                AckKind::PubAck => Packet::PubAck(ack),
                AckKind::PubRec => Packet::PubRec(ack),
                AckKind::PubRel => Packet::PubRel(ack),
                AckKind::PubComp => Packet::PubComp(ack),
            };
            encode(&p, v, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode;

    fn ack(pid: u16, wait: Option<Wait>) -> PendingAck {
        PendingAck {
            kind: AckKind::PubAck,
            pid,
            code: 0,
            wait,
        }
    }

    fn written(out: &mut BytesMut) -> Vec<u16> {
        let mut pids = Vec::new();
        while let Ok(Some(Packet::PubAck(a))) = decode(out, Some(Version::V5), 1 << 20) {
            pids.push(a.packet_id);
        }
        pids
    }

    #[tokio::test]
    async fn an_ack_still_waiting_holds_back_those_after_it() {
        let mut acks = Acks::default();
        let mut out = BytesMut::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
        acks.push(ack(1, None));
        acks.push(ack(2, Some(Wait::new(async { rx.await.unwrap_or(false) }))));
        acks.push(ack(3, None));
        acks.flush(&mut out, Version::V5);
        assert_eq!(written(&mut out), [1]);
        assert!(acks.front_waiting());
        let _ = tx.send(true);
        assert!(acks.await_front().await);
        assert!(!acks.front_waiting());
        acks.flush(&mut out, Version::V5);
        assert_eq!(written(&mut out), [2, 3]);
        assert_eq!(acks.len(), 0);
        assert!(acks.await_front().await, "nothing owed: nothing to fail");
    }

    #[tokio::test]
    async fn waits_over_together_are_written_together_and_a_failure_after_them_waits_its_turn() {
        let mut acks = Acks::default();
        let mut out = BytesMut::new();
        let done = |ok: bool| Some(Wait::new(std::future::ready(ok)));
        let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
        acks.push(ack(1, done(true)));
        acks.push(ack(2, None));
        acks.push(ack(3, done(true)));
        acks.push(ack(4, done(false)));
        acks.push(ack(5, Some(Wait::new(async { rx.await.unwrap_or(false) }))));
        // one call settles 1 to 3 (a batch of cluster acks): one write for their PUBACKs
        assert!(acks.await_front().await);
        acks.flush(&mut out, Version::V5);
        assert_eq!(written(&mut out), [1, 2, 3]);
        // then the failure: 4 gets no PUBACK (the connection closes), 5 is untouched
        assert!(!acks.await_front().await);
        drop(tx);
    }
}

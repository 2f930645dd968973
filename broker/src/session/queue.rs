//! A session's queue: a delivery goes in bounded in count and bytes. A connected session that
//! falls behind holds its publishers back for a short bounded time ([`Session::wait_for_space`],
//! `publisher_hold`); past it only that session pays: QoS 0 is not queued for it, QoS 1/2 are
//! up to its bound, then `slow_consumer_policy` (drop the oldest, or disconnect it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backlog::Backlog;
use super::record::{
    decode_handover, encode_queued, message_key, queued_put, record_put, released_put,
};
use super::{Await, Outgoing, Session, State};
use crate::auth::{Access, Acl};
use crate::config::{FlowConfig, SlowConsumerPolicy};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::protocol::{reason, QoS};
use crate::routing::SubOptions;
use crate::store::{Op, Store, StoreError, Table};

/// How far past `max_offline_messages` a connected session's backlog may grow (within
/// `max_queued_bytes`) before `slow_consumer_policy` applies.
pub const OVERFLOW_FACTOR: usize = 4;

/// The commit of writes queued to the store already.
type Commit = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// The store writes a publish makes. A delivery's own write is queued to the store under its
/// session's lock, before the delivery can be seen by the session's connection: the
/// subscriber's acknowledgement, which deletes it, is queued after it and can never be applied
/// first (that would bring the message back at the next restart). The rest (retained
/// messages, the deletes of dropped ones) the caller queues.
#[derive(Default)]
pub struct Writes {
    /// Still to be queued.
    pub ops: Vec<Op>,
    /// Queued already: their commits, awaited before the publish is acknowledged.
    queued: Vec<Commit>,
}

impl Writes {
    /// Whether the publish wrote nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.queued.is_empty()
    }

    /// Queues `ops` now (e.g. under the lock of the state they record, so that records of
    /// one session reach the store in the order they were taken); awaited with the rest.
    pub fn submit_now(&mut self, store: &Store, ops: Vec<Op>) {
        self.queued.push(Box::pin(store.submit(ops)));
    }

    /// Queues what is left now; the future resolves once every write of the publish is
    /// durable (the first failure otherwise).
    pub fn submit(
        self,
        store: &Store,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let Writes { ops, mut queued } = self;
        if !ops.is_empty() {
            queued.push(Box::pin(store.submit(ops)));
        }
        async move {
            for commit in queued {
                commit.await?;
            }
            Ok(())
        }
    }

    /// Queues what is left, waiting for nothing (a will, requeued retained messages).
    pub fn submit_nowait(self, store: &Store) {
        if !self.ops.is_empty() {
            store.write_nowait(self.ops);
        }
    }
}

/// What queueing a delivery takes from the node: the same for every session.
pub struct QueueRules<'a> {
    /// Read access, checked per delivery against the session's username.
    pub acl: Option<&'a Acl>,
    /// Where QoS 1/2 deliveries of a persistent session are stored (`data_dir` is set).
    pub store: Option<&'a Store>,
    /// `max_offline_messages`, at least 1.
    pub limit: usize,
    /// `max_queued_bytes`, and what a connected subscriber at its bound gets.
    pub flow: FlowConfig,
    /// Where drops are counted.
    pub metrics: &'a Metrics,
}

impl QueueRules<'_> {
    /// Whether a connected session's backlog is congested: `max_offline_messages` queued, or
    /// half of `max_queued_bytes`.
    fn congests(&self, q: &Backlog) -> bool {
        q.len() >= self.limit || q.bytes() >= self.flow.max_queued_bytes / 2
    }

    /// Whether a backlog is past its bound: for a connected session
    /// [`OVERFLOW_FACTOR`] × `max_offline_messages` or `max_queued_bytes`; for one without a
    /// live connection `max_offline_messages` or `max_queued_bytes`. One message is always
    /// kept, however large.
    fn over(&self, q: &Backlog, online: bool) -> bool {
        let len = if online {
            self.limit.saturating_mul(OVERFLOW_FACTOR)
        } else {
            self.limit
        };
        q.len() > 1 && (q.len() > len || q.bytes() > self.flow.max_queued_bytes)
    }
}

impl Session {
    /// Queues one message (bounded in count and bytes); `as_retained` marks a delivery of a
    /// retained message at subscribe time (RETAIN flag set). Returns the session when it is
    /// connected, congested, and its publishers' hold has not run out: the publisher waits
    /// for it ([`Session::wait_for_space`]). Past the hold the subscriber pays: a QoS 0
    /// delivery is not queued, QoS 1/2 are, up to the bound, then `slow_consumer_policy`.
    pub fn enqueue(
        self: &Arc<Self>,
        msg: &Arc<Message>,
        opts: &SubOptions,
        as_retained: bool,
        rules: &QueueRules<'_>,
        writes: &mut Writes,
    ) -> Option<Arc<Session>> {
        let client = &*self.client_id;
        let qos = opts.delivery_qos(msg.qos);
        let mut st = self.lock();
        if let Some(acl) = rules.acl {
            if !acl.check(st.username.as_deref(), client, &msg.topic, Access::Read) {
                return None;
            }
        }
        // a connection already told to close (taken over, slow, shutdown) takes nothing more
        let online = st.conn.as_ref().is_some_and(|c| c.kick.is_some());
        if !online && (!st.persistent() || qos == QoS::AtMostOnce) {
            return None;
        }
        let now = Instant::now();
        let hold = rules.flow.publisher_hold;
        if online {
            let (past, first) = st.queue.past_hold(now, hold);
            if first {
                rules.metrics.slow_consumer("hold_expired");
                tracing::debug!(client_id = %client, queued = st.queue.len(), bytes = st.queue.bytes(), "slow consumer: publishers no longer held back for it");
            }
            if past && qos == QoS::AtMostOnce {
                rules.metrics.dropped("slow_consumer");
                return None;
            }
        }
        let mut seq = 0;
        if qos != QoS::AtMostOnce && st.persistent() && rules.store.is_some() {
            seq = st.next_seq;
            st.next_seq += 1;
        }
        let out = Outgoing {
            msg: msg.clone(),
            qos,
            retain: if as_retained {
                true
            } else {
                opts.retain_as_published && msg.retain
            },
            sub_ids: opts.ids().collect(),
            seq,
        };
        if let (Some(store), true) = (rules.store, seq != 0) {
            // queued before the delivery is visible (see `Writes`)
            writes.submit_now(store, vec![queued_put(client, &out)]);
        }
        st.queue.push_back(out);
        if let Some(f) = st.frozen.as_mut() {
            f.appended += 1;
        }
        if online && rules.congests(&st.queue) {
            st.queue.congested(now);
        }
        let mut online_bound = online;
        let disconnect = rules.flow.slow_consumer_policy == SlowConsumerPolicy::Disconnect;
        if online && disconnect && rules.over(&st.queue, true) {
            if let Some(kick) = st.conn.as_mut().and_then(|c| c.kick.take()) {
                let _ = kick.send(reason::QUOTA_EXCEEDED);
                rules.metrics.slow_consumer("disconnect");
                tracing::info!(client_id = %client, queued = st.queue.len(), bytes = st.queue.bytes(), "slow consumer disconnected: its queue reached its bound (slow_consumer_policy = \"disconnect\")");
            }
            // what it keeps is what a session without a connection keeps
            online_bound = false;
        }
        let mut dropped = 0;
        while rules.over(&st.queue, online_bound) {
            let Some(old) = st.queue.pop_front() else {
                break;
            };
            dropped += 1;
            if old.seq != 0 {
                writes.ops.push(Op::Delete {
                    table: Table::Messages,
                    key: message_key(client, old.seq),
                });
            }
        }
        if dropped > 0 {
            rules.metrics.dropped_many("queue_full", dropped);
            if online_bound {
                rules.metrics.slow_consumers_many("drop_oldest", dropped);
            }
        }
        let wait =
            online && online_bound && st.queue.hold_until(hold).is_some_and(|until| now < until);
        let waker = if online {
            st.conn.as_mut().and_then(|c| c.bell.ring())
        } else {
            None
        };
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        wait.then(|| self.clone())
    }

    /// Waits while this connected session is congested, until it is relieved or its
    /// publishers' hold (`hold`, counted from when it became congested) runs out: however
    /// many publishes wait for it, together they wait at most `hold` per congestion.
    pub async fn wait_for_space(&self, hold: Duration) {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            let until = {
                let st = self.lock();
                match st.conn {
                    Some(_) => st.queue.hold_until(hold),
                    None => None,
                }
            };
            let Some(until) = until else { break };
            let until = tokio::time::Instant::from_std(until);
            if until <= tokio::time::Instant::now() {
                break;
            }
            if tokio::time::timeout_at(until, space).await.is_err() {
                break;
            }
        }
    }
}

/// The messages queued into a frozen session since the export (or the confirm), as entries;
/// the count starts again.
pub(super) fn take_appended(st: &mut State) -> Vec<Vec<u8>> {
    let Some(f) = st.frozen.as_mut() else {
        return Vec::new();
    };
    let n = std::mem::take(&mut f.appended).min(st.queue.len());
    let skip = st.queue.len() - n;
    st.queue.iter().skip(skip).map(encode_queued).collect()
}

/// Appends entries to a session's queue, and queues the store writes that make them (and the
/// record) durable before they can be delivered (see [`Writes`]). An entry past PUBREC keeps
/// its packet id (the client holds it and expects the PUBREL) unless this session uses that id
/// already; every other one is queued as new.
pub(super) fn push_entries(s: &Session, queued: &[Vec<u8>], store: Option<&Store>) {
    let durable = store.is_some();
    let mut ops = Vec::new();
    let mut st = s.lock();
    for q in queued {
        let Some((pid, state, mut o)) = decode_handover(q) else {
            continue;
        };
        let released =
            state == Some(Await::PubComp) && !st.inflight.iter().any(|(p, _, _)| *p == pid);
        if durable && o.qos != QoS::AtMostOnce && st.persistent() {
            o.seq = st.next_seq;
            st.next_seq += 1;
            ops.push(if released {
                released_put(&s.client_id, pid, &o)
            } else {
                queued_put(&s.client_id, &o)
            });
        }
        if released {
            st.inflight.push_back((pid, Await::PubComp, o));
        } else {
            st.queue.push_back(o);
        }
    }
    if durable && st.persistent() {
        ops.push(record_put(&s.client_id, st.encode()));
    }
    if let (Some(store), false) = (store, ops.is_empty()) {
        store.write_nowait(ops);
    }
}

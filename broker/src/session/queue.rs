//! A session's queue: a delivery goes in bounded (the oldest are dropped past the limit), and
//! a connected session that falls behind holds its publishers back instead (server-side flow
//! control, [`Session::wait_for_space`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::record::{
    decode_handover, encode_queued, message_key, queued_put, record_put, released_put,
};
use super::{Await, Outgoing, Session, State};
use crate::auth::{Access, Acl};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::protocol::QoS;
use crate::routing::SubOptions;
use crate::store::{Op, Store, StoreError, Table};

/// How far past `max_offline_messages` a connected session's backlog may grow while its
/// publishers are held back, before the oldest messages are dropped.
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
    /// Where drops are counted.
    pub metrics: &'a Metrics,
}

impl Session {
    /// Queues one message (bounded queue, drop oldest); `as_retained` marks a delivery of a
    /// retained message at subscribe time (RETAIN flag set). Returns the session when it is
    /// connected and its backlog is over the limit: the publisher waits for it.
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
        let online = st.conn.is_some();
        if !online && (!st.persistent() || qos == QoS::AtMostOnce) {
            return None;
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
        let limit = rules.limit;
        // a connected subscriber that falls behind holds its publishers back (they wait for
        // `space` before reading more) instead of losing messages; only far past the limit, or
        // for an offline session, the oldest are dropped
        let hard = if online {
            limit.saturating_mul(OVERFLOW_FACTOR)
        } else {
            limit
        };
        let congested = online && st.queue.len() >= limit;
        while st.queue.len() > hard {
            if let Some(old) = st.queue.pop_front() {
                rules.metrics.dropped("queue_full");
                if old.seq != 0 {
                    writes.ops.push(Op::Delete {
                        table: Table::Messages,
                        key: message_key(client, old.seq),
                    });
                }
            }
        }
        drop(st);
        if online {
            self.notify.notify_one();
        }
        congested.then(|| self.clone())
    }

    /// Waits (bounded) until a connected session's backlog fell to half its limit.
    pub async fn wait_for_space(&self, limit: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            let backlog = {
                let st = self.lock();
                if st.conn.is_some() {
                    st.queue.len()
                } else {
                    0
                }
            };
            if backlog < limit / 2 + 1 {
                break;
            }
            if tokio::time::timeout_at(deadline, space).await.is_err() {
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

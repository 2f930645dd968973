//! The replica's side: standby copies of other nodes' sessions in the `standby` table (rows
//! under a kind byte, see [`super::ops`]), who holds each, and promotion: a standby copy
//! becomes a session of this node (an export, taken in as a handed-over session is) when its
//! holder is down, or when its client connects here while the holder does not answer.

use std::sync::Arc;

use super::ops::{self, MESSAGE, OWNER, RECORD, SUB};
use super::{lock, Replication};
use crate::cluster::{BoxFuture, SessionExport};
use crate::metrics::Reason;
use crate::session::record::decode_sub_row;
use crate::session::State;
use crate::store::{Op, Table};

/// The deletes of every standby row of `client`.
fn clear_rows(client: &str) -> Vec<Op> {
    let c = client.as_bytes();
    let prefix = |code: u8| {
        let mut p = ops::standby_key(code, c);
        p.push(0);
        p
    };
    vec![
        Op::Delete {
            table: Table::Standby,
            key: ops::standby_key(OWNER, c),
        },
        Op::Delete {
            table: Table::Standby,
            key: ops::standby_key(RECORD, c),
        },
        Op::DeletePrefix {
            table: Table::Standby,
            prefix: prefix(SUB),
        },
        Op::DeletePrefix {
            table: Table::Standby,
            prefix: prefix(MESSAGE),
        },
    ]
}

/// Whether the batch puts a row of `client` (so its sender holds the session).
fn has_put(wire: &[ops::Wire], client: &str) -> bool {
    wire.iter()
        .any(|w| w.kind == 1 && w.client() == Some(client.as_bytes()))
}

/// First byte of a stored delivery past PUBREC (`session::record`): its packet id follows.
const RELEASED: u8 = 0xFE;

impl Replication {
    /// The standby copies kept from the last run (their holders, from the owner rows).
    pub(super) fn restore_standby(&self) {
        let rows = match self.store.scan_prefix(Table::Standby, &[OWNER]) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "replication: standby copies unreadable");
                return;
            }
        };
        let mut idx = lock(&self.standby);
        for (k, v) in rows {
            if let (Ok(c), Ok(h)) = (std::str::from_utf8(&k[1..]), std::str::from_utf8(&v)) {
                idx.insert(Arc::from(c), Arc::from(h));
            }
        }
        self.metrics.replica.standby.set(idx.len() as i64);
        if !idx.is_empty() {
            tracing::info!(node = %self.node, copies = idx.len(), "replication: standby copies of other nodes' sessions restored");
        }
    }

    /// Ops from holder `from`: queued to the store now (frames apply in order); true once
    /// durable. A malformed batch is refused (no ack: the holder's write is not acknowledged).
    pub fn apply(&self, from: &Arc<str>, bytes: &[u8]) -> BoxFuture<'static, bool> {
        let Some(wire) = ops::decode(bytes) else {
            tracing::warn!(node = %self.node, peer = %from, "replication: malformed batch refused");
            return Box::pin(std::future::ready(false));
        };
        let mut store_ops = Vec::with_capacity(wire.len() + 1);
        {
            let mut idx = lock(&self.standby);
            for w in &wire {
                let Some(c) = w.client().and_then(|c| std::str::from_utf8(c).ok()) else {
                    continue;
                };
                let owner = ops::standby_key(OWNER, c.as_bytes());
                // another node's copy is deleted only by its holder (two nodes may both think
                // they hold a session for a while: one must not erase the other's copy); a put
                // takes the copy over (its sender copies the session whole first)
                if idx.get(c).is_some_and(|h| h != from) && !has_put(&wire, c) {
                    continue;
                }
                if w.code == RECORD && w.kind == 2 {
                    // the session is gone at its holder
                    idx.remove(c);
                    store_ops.push(Op::Delete {
                        table: Table::Standby,
                        key: owner,
                    });
                } else if w.kind == 1 && idx.get(c) != Some(from) {
                    idx.insert(Arc::from(c), from.clone());
                    store_ops.push(Op::Put {
                        table: Table::Standby,
                        key: owner,
                        value: from.as_bytes().to_vec(),
                    });
                }
                store_ops.push(w.standby_op());
            }
            self.metrics.replica.standby.set(idx.len() as i64);
        }
        let commit = self.store.submit_local(store_ops);
        Box::pin(async move { commit.await.is_ok() })
    }

    /// The holder of the standby copy of `client` kept here.
    pub fn standby_holder(&self, client: &str) -> Option<Arc<str>> {
        lock(&self.standby).get(client).cloned()
    }

    /// Takes the standby copy of `client` out (its rows deleted) as a session export.
    pub async fn take_standby(&self, client: &str) -> Option<SessionExport> {
        lock(&self.standby).remove(client)?;
        // what the holder sent last may still be on its way to the disk
        let _ = self.store.flush_local().await;
        let c = client.as_bytes();
        let mut sub_prefix = ops::standby_key(SUB, c);
        sub_prefix.push(0);
        let mut msg_prefix = ops::standby_key(MESSAGE, c);
        msg_prefix.push(0);
        let record_key = ops::standby_key(RECORD, c);
        let record = self
            .store
            .scan_prefix(Table::Standby, &record_key)
            .ok()?
            .into_iter()
            .find(|(k, _)| *k == record_key)
            .map(|(_, v)| v);
        let subs = self.store.scan_prefix(Table::Standby, &sub_prefix).ok()?;
        let msgs = self.store.scan_prefix(Table::Standby, &msg_prefix).ok()?;
        self.store.write_nowait(clear_rows(client));
        self.metrics
            .replica
            .standby
            .set(lock(&self.standby).len() as i64);
        let mut st = State::decode(&record?)?;
        for (k, v) in subs {
            if let Some((_, f, s)) = decode_sub_row(&k[1..], &v) {
                st.subs.insert(f, s);
            }
        }
        // stored rows as handover entries: `[kind][packet id][delivery]`, kind 3 past PUBREC
        let queued = msgs
            .into_iter()
            .map(|(_, v)| match v.as_slice() {
                [RELEASED, hi, lo, rest @ ..] => [&[3, *hi, *lo][..], rest].concat(),
                _ => [&[0, 0, 0][..], &v].concat(),
            })
            .collect();
        Some((st.encode_export(), queued))
    }

    /// Drops the standby copy of `client` (this node took the session itself from its holder).
    pub fn discard_standby(&self, client: &str) {
        if lock(&self.standby).remove(client).is_none() {
            return;
        }
        self.store.write_nowait(clear_rows(client));
        self.metrics
            .replica
            .standby
            .set(lock(&self.standby).len() as i64);
    }

    /// Counts a promotion.
    pub fn promoted(&self, trigger: &str) {
        self.metrics
            .replica
            .promotions
            .get_or_create(&Reason {
                reason: trigger.to_string(),
            })
            .inc();
    }

    /// Makes the standby copy of `client` (held by `holder`) a session of this node; false
    /// when there was none.
    async fn promote(&self, client: &Arc<str>, holder: &Arc<str>, trigger: &str) -> bool {
        let Some(export) = self.take_standby(client).await else {
            return false;
        };
        if !self.registry.adopt_session(client, export) {
            return false;
        }
        self.promoted(trigger);
        lock(&self.promoted_from).insert(client.clone(), holder.clone());
        true
    }

    /// At start, before serving (after the peers' routes are in): the standby copies restored
    /// from `data_dir` whose holder is not reachable. Their holder died while this node was
    /// away, so no "down" is ever seen here for it. A copy some live peer holds a session of
    /// (the copy was promoted there, or its client went there) is dropped; the others are
    /// promoted as [`Replication::holder_down`] does. Without this they would sit here
    /// unrouted, and what is published to them would be dropped until their client came.
    /// `timeout`: how long the peers' answers are awaited. Returns how many were promoted.
    pub async fn promote_orphans(self: &Arc<Self>, timeout: std::time::Duration) -> usize {
        let Some(p) = self.peers.get().cloned() else {
            return 0;
        };
        let orphans: Vec<(Arc<str>, Arc<str>)> = lock(&self.standby)
            .iter()
            .filter(|(_, h)| ***h != *self.node && !p.reachable(h))
            .map(|(c, h)| (c.clone(), h.clone()))
            .collect();
        if orphans.is_empty() {
            return 0;
        }
        let ids = orphans.iter().map(|(c, _)| c.to_string()).collect();
        let held = p.held_by_peers(ids, timeout).await;
        let mut promoted = 0;
        let mut holders = std::collections::BTreeSet::new();
        for (c, h) in orphans {
            if held.contains(&*c) {
                self.discard_standby(&c);
            } else if self.promote(&c, &h, "restored").await {
                promoted += 1;
                holders.insert(h);
            }
        }
        let _ = self.store.flush_local().await;
        tracing::warn!(node = %self.node, promoted, holders = ?holders, "replication: standby copies restored from data_dir whose holder is gone are sessions of this node now");
        if self.holder {
            for h in &holders {
                p.promoted(h);
            }
        }
        promoted
    }

    /// Holder `n` is down: every standby copy it has here becomes a session of this node
    /// (routes announced), then the peers are told ([`crate::cluster::Peers::promoted`]).
    pub fn holder_down(self: &Arc<Self>, n: &Arc<str>) {
        let me = self.clone();
        let n = n.clone();
        tokio::spawn(async move {
            tokio::time::sleep(super::PROMOTE_GRACE).await;
            if me.peers.get().is_some_and(|p| p.reachable(&n)) {
                tracing::info!(node = %me.node, holder = %n, "replication: holder back within the grace; its sessions' copies stay copies");
                return;
            }
            let mine: Vec<Arc<str>> = lock(&me.standby)
                .iter()
                .filter(|(_, h)| **h == n)
                .map(|(c, _)| c.clone())
                .collect();
            let mut promoted = 0;
            for c in &mine {
                promoted += usize::from(me.promote(c, &n, "holder_down").await);
            }
            // the sessions are routed from here before the peers hear it
            let _ = me.store.flush_local().await;
            if !mine.is_empty() {
                tracing::warn!(node = %me.node, holder = %n, promoted, "replication: holder down; its sessions' copies here are sessions of this node now");
            }
            // held routes may go early only where every session has a copy (all nodes run
            // `session_replicas = 2`); with one copy they wait for the node or `dead_after`
            if let (true, Some(p)) = (me.holder, me.peers.get()) {
                p.promoted(&n);
            }
        });
    }

    /// Holder `n` is up again. Back from a pause or a cut (the same incarnation, which still
    /// has the sessions), the ones promoted here whose client did not come go back to it
    /// (merged there: duplicates, no loss). Restarted, it pushes its own restored copies here
    /// instead (`cluster::handover`), so nothing is sent back.
    pub fn holder_up(&self, n: &Arc<str>, restarted: bool) {
        let ids: Vec<Arc<str>> = {
            let mut p = lock(&self.promoted_from);
            let ids = p
                .iter()
                .filter(|(_, h)| *h == n)
                .map(|(c, _)| c.clone())
                .collect::<Vec<_>>();
            for c in &ids {
                p.remove(c);
            }
            ids
        };
        if restarted || ids.is_empty() {
            return;
        }
        let back: Vec<String> = ids
            .iter()
            .filter(|c| {
                self.registry
                    .get(c)
                    .is_some_and(|s| s.lock().conn.is_none())
            })
            .map(|c| c.to_string())
            .collect();
        if let Some(p) = self.peers.get() {
            let sent = p.push_sessions(n, back);
            tracing::info!(node = %self.node, holder = %n, sent, "replication: holder back; sessions promoted here while it was away go back to it");
        }
    }
}

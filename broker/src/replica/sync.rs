//! Whole copies: a session is copied to its replica in one batch (its rows there replaced in
//! one transaction) when the replica has no complete copy (a new or restored session, a new
//! replica after a membership change, a new channel). Taken under the session's lock, so no
//! write of the session can come between the copy and the writes that follow it on the same
//! ordered channel. At most `replica_sync_rate` sessions a second.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::{lock, ops, replica_of, Replication};
use crate::session::record::{forget, queued_put, record_put, released_put, sub_put};
use crate::session::{Await, State};
use crate::store::Op;

/// How often the copy loop takes its next share.
const TICK: Duration = Duration::from_millis(50);

/// The copy loop: ends when `stop` fires or the replication is gone.
pub(super) async fn run(me: Weak<Replication>, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(r) = me.upgrade() else { return };
        let per_tick = (r.rate as usize / 20).max(1);
        let batch: Vec<_> = {
            let mut p = lock(&r.pending);
            let n = per_tick.min(p.queue.len());
            let batch: Vec<_> = p.queue.drain(..n).collect();
            r.metrics.replica.sync_pending.set(p.queue.len() as i64);
            batch
        };
        if batch.is_empty() {
            tokio::select! {
                _ = r.wake.notified() => {}
                _ = stop.changed() => return,
                // a lost wake-up costs at most this
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        for c in batch {
            r.copy_whole(c);
        }
        drop(r);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Every store row of a persistent session, after the deletes that clear an older copy.
fn snapshot(client: &str, st: Option<&State>) -> Vec<Op> {
    let mut v = forget(client);
    let Some(st) = st.filter(|s| s.persistent()) else {
        return v;
    };
    v.push(record_put(client, st.encode()));
    v.extend(st.subs.iter().map(|(f, s)| sub_put(client, f, s)));
    for (pid, state, o) in &st.inflight {
        if o.seq == 0 {
            continue;
        }
        v.push(match state {
            Await::PubComp => released_put(client, *pid, o),
            _ => queued_put(client, o),
        });
    }
    v.extend(
        st.queue
            .iter()
            .filter(|o| o.seq != 0)
            .map(|o| queued_put(client, o)),
    );
    v
}

impl Replication {
    /// Copies one session whole to its replica and tells who waits for it once durable there.
    fn copy_whole(self: &Arc<Self>, client: Arc<str>) {
        let (was, waiters) = lock(&self.pending)
            .waiters
            .remove(&client)
            .unwrap_or_default();
        let Some(peers) = self.peers.get() else {
            return;
        };
        let up = self.up();
        let Some(target) = replica_of(&client, &self.node, &up) else {
            // no other live node: nothing to copy to (the writes go unprotected)
            for w in waiters {
                let _ = w.send(true);
            }
            return;
        };
        let session = self.registry.get(&client);
        let guard = session.as_ref().map(|s| s.lock());
        let rows = snapshot(&client, guard.as_deref());
        let persistent = guard.as_deref().is_some_and(State::persistent);
        let mut bytes = Vec::new();
        ops::encode(&rows, &mut bytes);
        let sent = peers.replicate(&target, bytes, true);
        if let (Ok(_), true) = (&sent, persistent) {
            lock(&self.synced).insert(client.clone(), target.clone());
        }
        drop(guard);
        self.metrics.replica.syncs.inc();
        let ack = match sent {
            Ok(Some(a)) => a,
            _ => {
                self.fail("unreachable");
                for w in waiters {
                    let _ = w.send(false);
                }
                return;
            }
        };
        let me = self.clone();
        tokio::spawn(async move {
            let ok = ack.await;
            if !ok {
                me.fail("not_acknowledged");
                let mut s = lock(&me.synced);
                if s.get(&client) == Some(&target) {
                    s.remove(&client);
                }
            }
            if ok {
                me.clear_unprotected(&client);
            }
            for w in waiters {
                let _ = w.send(ok);
            }
            // the copy on the node that had it before is stale now: dropped there
            if let (true, Some(was)) = (ok, was.filter(|w| *w != target)) {
                if me.up().contains(&was) {
                    let mut bytes = Vec::new();
                    ops::encode(&forget(&client), &mut bytes);
                    if let Some(p) = me.peers.get() {
                        let _ = p.replicate(&was, bytes, false);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_clears_first_and_skips_what_is_not_stored() {
        let mut st = State::decode(&{
            let mut s = crate::session::Session::new(Arc::from("c")).lock().encode();
            s[2..6].copy_from_slice(&60u32.to_be_bytes());
            s
        })
        .unwrap();
        assert!(st.persistent());
        st.subs.insert(
            "a/#".into(),
            crate::session::Sub {
                qos: crate::protocol::QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: crate::protocol::RetainHandling::SendAtSubscribe,
                id: None,
            },
        );
        let rows = snapshot("c", Some(&st));
        assert_eq!(rows[..3], forget("c")[..]);
        assert_eq!(
            rows.len(),
            5,
            "record and one subscription after the deletes"
        );
        assert_eq!(snapshot("c", None), forget("c"));
    }
}

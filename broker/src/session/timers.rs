//! The will-delay and session-expiry timers of offline sessions, armed per client id: when the
//! client comes back (a new attach) or a session's connection ends again, the timers armed for
//! the session before stand down (their tasks are aborted, not left sleeping out the expiry).
//! So a client that connects and disconnects a million times leaves no timer behind, where
//! it left one task per disconnect, each holding its session, for up to the expiry interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::task::AbortHandle;

use super::Session;

/// The timers of one client id, all armed for the same attach (`generation`).
struct Armed {
    /// The session's generation when they were armed: a newer one replaces them all.
    generation: u64,
    /// Each timer's number (to take itself out when it is done) and its task.
    tasks: Vec<(u64, AbortHandle)>,
}

/// Every armed timer of the node's sessions, by client id.
pub(super) struct Timers {
    /// Shared with the timer tasks, each of which takes itself out when it ends.
    armed: Arc<Mutex<HashMap<Arc<str>, Armed>>>,
    /// Numbers timers, so a task finds its own entry.
    seq: std::sync::atomic::AtomicU64,
    /// `mqedge_broker_session_timers`: the tasks in `armed`, kept under its lock.
    gauge: Gauge,
}

fn lock(m: &Mutex<HashMap<Arc<str>, Armed>>) -> MutexGuard<'_, HashMap<Arc<str>, Armed>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Timers {
    /// No timer armed; `gauge` follows how many are.
    pub(super) fn new(gauge: Gauge) -> Timers {
        Timers {
            armed: Arc::default(),
            seq: Default::default(),
            gauge,
        }
    }

    /// Runs `f` after `secs` unless the session was attached again meanwhile (its generation
    /// moved on) or is connected (MQTT-3.1.2-8). Timers armed for an older generation of the
    /// same client id are aborted.
    pub(super) fn after(
        &self,
        s: Arc<Session>,
        generation: u64,
        secs: u32,
        f: impl FnOnce() + Send + 'static,
    ) {
        let id = s.client_id.clone();
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (armed, gauge) = (self.armed.clone(), self.gauge.clone());
        // under the lock: the task cannot take itself out before it is put in
        let mut map = lock(&self.armed);
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(secs))).await;
            let still = {
                let st = s.lock();
                st.generation == generation && st.conn.is_none()
            };
            if still {
                f();
            }
            let mut map = lock(&armed);
            if let Some(a) = map.get_mut(&s.client_id) {
                let before = a.tasks.len();
                a.tasks.retain(|(m, _)| *m != n);
                gauge.dec_by((before - a.tasks.len()) as i64);
                if a.tasks.is_empty() {
                    map.remove(&s.client_id);
                }
            }
        });
        let a = map.entry(id).or_insert_with(|| Armed {
            generation,
            tasks: Vec::new(),
        });
        if a.generation != generation {
            for (_, t) in a.tasks.drain(..) {
                t.abort();
                self.gauge.dec();
            }
            a.generation = generation;
        }
        a.tasks.push((n, task.abort_handle()));
        self.gauge.inc();
    }

    /// Stands down every timer of `id`: its client is back.
    pub(super) fn cancel(&self, id: &str) {
        let mut map = lock(&self.armed);
        if let Some(a) = map.remove(id) {
            for (_, t) in a.tasks {
                t.abort();
                self.gauge.dec();
            }
        }
    }
}

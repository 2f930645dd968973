//! Draining a backend: entering `draining` (operator drain, or removed by a reload) starts a
//! drain cycle whose timer closes the leftover connections after `drain_timeout`; leaving it
//! (`ready`, or re-added) ends the cycle. The state of the cycle, `DrainCtl`, sits behind
//! the backend's lock; every change of `state` into or out of `draining` is made under it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use super::{Backend, DrainCtl, State};
use crate::signal::{Signal, Subscription};

impl Backend {
    /// Forces a state; returns the previous one. Only under the drain lock: entering and
    /// leaving `draining` goes through [`Backend::start_drain`] and [`Backend::end_drain`].
    fn set_state(&self, _drain: &DrainCtl, s: State) -> State {
        let prev = State::from_u8(self.state.swap(s as u8, Ordering::Relaxed));
        self.counters.up.set(i64::from(s == State::Up));
        if s != prev {
            self.streak.store(0, Ordering::Relaxed);
        }
        prev
    }

    fn drain_lock(&self) -> MutexGuard<'_, DrainCtl> {
        self.drain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the backend in `draining` (operator drain, or removed by a reload) and closes the
    /// connections still open `after` from now, unless [`Backend::end_drain`] comes first.
    /// Returns the previous state; a backend that was already draining keeps its first timer.
    pub fn start_drain(self: &Arc<Self>, after: Duration) -> State {
        let mut d = self.drain_lock();
        let prev = self.set_state(&d, State::Draining);
        if prev == State::Draining {
            return prev;
        }
        d.epoch += 1;
        let epoch = d.epoch;
        drop(d);
        let b = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            b.drain_timeout_passed(epoch);
        });
        prev
    }

    /// The timer of drain cycle `epoch`: closes the leftovers if that cycle is still on.
    fn drain_timeout_passed(&self, epoch: u64) {
        let d = self.drain_lock();
        if d.epoch != epoch || self.state() != State::Draining {
            return;
        }
        if self.active() > 0 {
            tracing::info!(backend = %self.name, connections = self.active(), "drain_timeout reached: closing leftover connections");
        }
        // stays fired while the backend drains: a connection set up in a race closes at once
        d.close.fire();
    }

    /// Leaves `draining` for `checking` (operator `ready`, or re-added by a reload): the next
    /// check decides. A drain whose timeout has not passed is cancelled, so the connections
    /// still open stay open; if it has passed, connections from now on get a fresh close
    /// signal. Returns false (and does nothing) when the backend was not draining.
    pub fn end_drain(&self) -> bool {
        let mut d = self.drain_lock();
        if self.state() != State::Draining {
            return false;
        }
        d.epoch += 1;
        if d.close.is_fired() {
            d.close = Signal::new();
        }
        self.set_state(&d, State::Checking);
        true
    }

    /// Draining, with its leftovers' close still to come.
    pub fn close_pending(&self) -> bool {
        let d = self.drain_lock();
        self.state() == State::Draining && !d.close.is_fired()
    }

    /// What a connection opened now waits on: fires when a drain of the backend (or its
    /// removal) reaches `drain_timeout`.
    pub fn close_signal(&self) -> Subscription {
        self.drain_lock().close.subscribe()
    }
}

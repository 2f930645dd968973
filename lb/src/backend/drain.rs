//! Draining a backend: entering `draining` (operator drain, or removed by a reload) starts a
//! drain cycle whose timer closes the leftover connections after `drain_timeout`; leaving it
//! (`ready`, or re-added) ends the cycle. A broker that says it drains (its health check's
//! CONNACK `0x9C`) enters a cycle without a timer: it moves its clients itself; its checks end
//! that cycle when the broker leaves or serves again. The state of the cycle, `DrainCtl`, sits behind
//! the backend's lock; every change of `state` into or out of `draining` is made under it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use super::{Backend, DrainCause, DrainCtl, State};
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
        // a broker's own drain has no timer: an operator's drain on top of it starts one
        if prev == State::Draining && d.cause != Some(DrainCause::Backend) {
            return prev;
        }
        d.cause = Some(DrainCause::Operator);
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
        self.leave_drain(&mut d, State::Checking);
        true
    }

    /// Ends a drain cycle into `next` (under the drain lock).
    fn leave_drain(&self, d: &mut DrainCtl, next: State) {
        d.epoch += 1;
        d.cause = None;
        if d.close.is_fired() {
            d.close = Signal::new();
        }
        self.set_state(d, next);
    }

    /// The broker's health check answered "draining": the backend takes no new connections
    /// from now on, and its open ones stay (the broker moves them at its own pace). Returns
    /// true when that changed the state (a backend an operator drains stays so).
    pub fn backend_drain(&self) -> bool {
        let mut d = self.drain_lock();
        if self.state() == State::Draining {
            return false;
        }
        d.epoch += 1;
        d.cause = Some(DrainCause::Backend);
        self.set_state(&d, State::Draining);
        true
    }

    /// A check of a backend that drains by its own word answered otherwise: it left (the check
    /// failed: `down` at once) or serves again (`checking`, which the caller's record of the
    /// passing check makes `up`). Returns the new state; `None` when the backend was not in a
    /// drain of its own.
    pub fn end_backend_drain(&self, passed: bool) -> Option<State> {
        let mut d = self.drain_lock();
        if self.state() != State::Draining || d.cause != Some(DrainCause::Backend) {
            return None;
        }
        let next = if passed { State::Checking } else { State::Down };
        self.leave_drain(&mut d, next);
        Some(next)
    }

    /// Why the backend drains; `None` when it does not.
    pub fn drain_cause(&self) -> Option<DrainCause> {
        let d = self.drain_lock();
        d.cause.filter(|_| self.state() == State::Draining)
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

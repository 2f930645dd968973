//! A backend's health bookkeeping: the outcome streak that rise/fall reads (active checks and
//! failed forward connects both feed it), the last check's outcome for `/api/backends`, and the
//! ticket that keeps one checker task per backend.

use super::{Backend, LastCheck, State, CHECK_HISTORY};
use crate::config::HealthConfig;
use std::sync::atomic::Ordering;

impl Backend {
    /// Records one health check outcome and applies rise/fall; returns the new state when it
    /// changed. A draining backend stays draining whatever the checks say.
    pub fn record_check(&self, ok: bool, hc: &HealthConfig) -> Option<State> {
        let streak = if ok {
            self.streak
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(if s > 0 { s + 1 } else { 1 })
                })
                .map(|s| if s > 0 { s + 1 } else { 1 })
        } else {
            self.counters.check_failures.inc();
            self.streak
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(if s < 0 { s - 1 } else { -1 })
                })
                .map(|s| if s < 0 { s - 1 } else { -1 })
        }
        .unwrap_or(0);
        let cur = self.state();
        let next = match (cur, ok) {
            (State::Draining, _) => return None,
            // the first check decides at once: traffic only after one success
            (State::Checking, true) => State::Up,
            (State::Checking, false) => State::Down,
            (State::Down, true) if streak >= i64::from(hc.rise) => State::Up,
            (State::Up, false) if -streak >= i64::from(hc.fall) => State::Down,
            _ => return None,
        };
        // only move if nobody (operator drain) changed it meanwhile
        if self
            .state
            .compare_exchange(cur as u8, next as u8, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.counters.up.set(i64::from(next == State::Up));
            Some(next)
        } else {
            None
        }
    }

    /// The last health check's outcome; `None` before the first.
    pub fn last_check(&self) -> Option<LastCheck> {
        self.last_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .cloned()
    }

    /// The last [`CHECK_HISTORY`] health checks, oldest first (the status page's history).
    pub fn check_history(&self) -> Vec<LastCheck> {
        let h = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
        h.iter().cloned().collect()
    }

    /// Stores the last health check's outcome (the oldest of a full history goes).
    pub fn set_last_check(&self, c: LastCheck) {
        let mut h = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() >= CHECK_HISTORY {
            h.pop_front();
        }
        h.push_back(c);
    }

    /// Makes the caller the backend's only checker and returns its ticket. A backend re-added
    /// by a reload gets a new checker at once, while the old one may still sleep out its
    /// interval; the old one sees that its ticket is stale and stops.
    pub fn claim_checker(&self) -> u64 {
        self.checker.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether `ticket` (from [`Backend::claim_checker`]) is still the current checker.
    pub fn is_checker(&self, ticket: u64) -> bool {
        self.checker.load(Ordering::Relaxed) == ticket
    }
}

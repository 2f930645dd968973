//! The rebalance's progress (`GET /api/rebalance`, the `rebalance_*` metrics) and the clients it
//! moved, shared by the mover (`control::rebalance`) and the pick (`conn::connect`). Pure
//! bookkeeping: no I/O.
//!
//! A moved client's placement exception (its session was on the node it left) is ignored for
//! [`EXCEPTION_HOLD`] after the move: the feed that listed it is read every `[placement]
//! interval`, and until its next round it would send the client straight back (a run that
//! starts meanwhile keeps the hold). And while a run goes on, and for [`EXCEPTION_HOLD`] after
//! it, every pick goes by the hash: in a fleet of LBs the other LBs move their clients at the
//! same time, and a client one of them moved may come back through this one before this one's
//! feed round drops its old node's entry (it would take its session straight back, off its
//! hash home again). A pick by the hash is what the rebalance aims at; where the feed was right
//! it costs one takeover towards the home, never a loss.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::RebalanceMetrics;

/// How long a moved client goes by its hash even when a feed still places it elsewhere.
pub const EXCEPTION_HOLD: Duration = Duration::from_secs(30);

/// Where a rebalance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// None ran since the LB started.
    Idle,
    /// Moving clients.
    Running,
    /// The last one ended.
    Done,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Running => "running",
            Phase::Done => "done",
        }
    }
}

#[derive(Debug)]
struct Progress {
    phase: Phase,
    /// What started it (`api`, `auto`).
    cause: &'static str,
    planned: u64,
    moved: u64,
    failed: u64,
    rate: u32,
    started_unix_ms: Option<u64>,
    finished_unix_ms: Option<u64>,
    /// When the last run ended (picks go by the hash until [`EXCEPTION_HOLD`] after it).
    finished: Option<Instant>,
    /// Moved clients and when (see [`EXCEPTION_HOLD`]); the expired ones are dropped at each
    /// start (bounded by the clients moved within the hold).
    recent: HashMap<Arc<str>, Instant>,
}

/// One LB's rebalance state.
#[derive(Debug)]
pub struct Rebalance {
    inner: Mutex<Progress>,
    /// An `auto` start is scheduled: further triggers join it (it plans when it starts).
    auto_pending: std::sync::atomic::AtomicBool,
    /// Its series in the LB's registry.
    metrics: RebalanceMetrics,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Rebalance {
    /// Idle, counting into `metrics`.
    pub fn new(metrics: RebalanceMetrics) -> Rebalance {
        Rebalance {
            inner: Mutex::new(Progress {
                phase: Phase::Idle,
                cause: "",
                planned: 0,
                moved: 0,
                failed: 0,
                rate: 0,
                started_unix_ms: None,
                finished_unix_ms: None,
                finished: None,
                recent: HashMap::new(),
            }),
            auto_pending: Default::default(),
            metrics,
        }
    }

    /// Schedules an `auto` start; false when one is scheduled already.
    pub fn schedule_auto(&self) -> bool {
        !self
            .auto_pending
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// The scheduled `auto` start is about to plan: later triggers schedule a new one.
    pub fn auto_due(&self) {
        self.auto_pending
            .store(false, std::sync::atomic::Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts one of `planned` clients at `rate`; false when one runs already.
    pub fn start(&self, cause: &'static str, planned: usize, rate: u32) -> bool {
        let mut p = self.lock();
        if p.phase == Phase::Running {
            return false;
        }
        // the clients an earlier run moved keep their hold; only expired ones go
        let mut recent = std::mem::take(&mut p.recent);
        recent.retain(|_, t| t.elapsed() < EXCEPTION_HOLD);
        *p = Progress {
            phase: Phase::Running,
            cause,
            planned: planned as u64,
            moved: 0,
            failed: 0,
            rate,
            started_unix_ms: Some(now_ms()),
            finished_unix_ms: None,
            finished: None,
            recent,
        };
        self.metrics.pending.set(planned as i64);
        true
    }

    /// `client_id` was moved (`ok`) or its move failed.
    pub fn record(&self, client_id: &Arc<str>, ok: bool) {
        let mut p = self.lock();
        if ok {
            p.moved += 1;
            p.recent.insert(client_id.clone(), Instant::now());
            self.metrics.moved.inc();
        } else {
            p.failed += 1;
            self.metrics.failed.inc();
        }
        let left = p.planned.saturating_sub(p.moved + p.failed);
        self.metrics.pending.set(left as i64);
    }

    /// The run ended (what was not recorded is not pending any more).
    pub fn finish(&self) {
        let mut p = self.lock();
        p.phase = Phase::Done;
        p.finished_unix_ms = Some(now_ms());
        p.finished = Some(Instant::now());
        self.metrics.pending.set(0);
    }

    /// Whether the pick of `client_id` ignores a placement exception: it was moved less than
    /// [`EXCEPTION_HOLD`] ago, or a run goes on or ended less than that ago (see the module).
    pub fn ignores_exception(&self, client_id: &str) -> bool {
        let p = self.lock();
        p.phase == Phase::Running
            || p.finished.is_some_and(|t| t.elapsed() < EXCEPTION_HOLD)
            || p.recent
                .get(client_id)
                .is_some_and(|t| t.elapsed() < EXCEPTION_HOLD)
    }

    /// Whether one runs now.
    pub fn running(&self) -> bool {
        self.lock().phase == Phase::Running
    }

    /// `GET /api/rebalance`.
    pub fn json(&self) -> serde_json::Value {
        let p = self.lock();
        serde_json::json!({
            "state": p.phase.as_str(),
            "cause": if p.cause.is_empty() { None } else { Some(p.cause) },
            "planned": p.planned,
            "moved": p.moved,
            "failed": p.failed,
            "pending": if p.phase == Phase::Running { p.planned.saturating_sub(p.moved + p.failed) } else { 0 },
            "rate": p.rate,
            "started_unix_ms": p.started_unix_ms,
            "finished_unix_ms": p.finished_unix_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_and_a_second_start_waits_for_the_first() {
        let r = Rebalance::new(RebalanceMetrics::default());
        assert!(r.start("api", 2, 10));
        assert!(!r.start("api", 5, 10));
        let a: Arc<str> = Arc::from("a");
        r.record(&a, true);
        r.record(&Arc::from("b"), false);
        let recent = |id: &str| r.lock().recent.contains_key(id);
        assert!(recent("a") && !recent("b"));
        // while it runs (and for the hold after it) every pick goes by the hash
        assert!(r.ignores_exception("a") && r.ignores_exception("b"));
        let j = r.json();
        assert_eq!(
            (j["moved"].as_u64(), j["failed"].as_u64()),
            (Some(1), Some(1))
        );
        r.finish();
        assert_eq!(r.json()["state"], "done");
        // a later run keeps the hold of the clients moved just before
        assert!(r.start("api", 0, 10));
        assert!(recent("a"));
    }
}

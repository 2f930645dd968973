//! The drain handshake's state on a broker node (docs/cluster.md, "Draining a node"): entered by
//! `POST /api/drain` or SIGTERM (clustered nodes), it makes every new CONNECT, the LB's health
//! check included, answer "use another server" (v5 `0x9C`; 3.1.1: return code 3). An LB's health
//! check that has seen the answer acknowledges it on its next CONNECT (user properties
//! [`ACK`] = its name, [`LB_CONNECTIONS`] = its connections to this node); the node then moves its
//! clients (`cluster::drain`) and exits once it, its peers and every LB that acknowledged say it
//! is empty.
//!
//! Only state and its JSON here: the moving is the cluster's, the refusal the CONNECT phase's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use mqedge_shared::drain::{ACK, LB_CONNECTIONS};
use prometheus_client::metrics::counter::Counter;
use serde_json::{json, Value};
use tokio::sync::watch;

/// How recently an LB health check (client id `mqedge-hc-...`) must have connected for a drain
/// to wait for an LB's acknowledgement before it moves clients; without one it moves at once.
pub const LB_SEEN_WITHIN: Duration = Duration::from_secs(30);
/// An LB whose last report is older than this (it stopped checking: gone, or reconfigured) no
/// longer holds the exit back.
pub const LB_REPORT_STALE: Duration = Duration::from_secs(30);
/// At most this many LBs are remembered (reports from more are ignored: bounded memory for what
/// any client can send while the node drains).
const MAX_LBS: usize = 64;
/// LB names longer than this are cut.
const MAX_LB_NAME: usize = 128;

/// Where a drain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Serving clients.
    Serving = 0,
    /// Refusing new clients, waiting for an LB to acknowledge.
    Draining = 1,
    /// Moving clients and sessions to the other nodes.
    Moving = 2,
    /// Empty: the node is stopping.
    Done = 3,
}

impl Phase {
    /// The name in `GET /api/drain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Moving => "moving",
            Phase::Done => "done",
        }
    }
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Draining,
            2 => Phase::Moving,
            3 => Phase::Done,
            _ => Phase::Serving,
        }
    }
}

/// One LB's last acknowledgement.
#[derive(Debug, Clone, Copy)]
struct Report {
    /// Its connections to this node then (`None`: it did not say).
    connections: Option<u64>,
    at: Instant,
}

/// What the drain knows besides its phase.
#[derive(Debug, Default)]
struct Info {
    /// What started it: `api` or `SIGTERM`.
    cause: &'static str,
    started: Option<Instant>,
    /// Unix ms, for the API.
    started_at_ms: u64,
    /// When the first LB acknowledged.
    acked: Option<Instant>,
    lbs: BTreeMap<String, Report>,
    /// LB health checkers by client id: when each last connected (before the drain) and the
    /// time between its last two checks.
    checks: HashMap<String, (Instant, Duration)>,
    /// Client connections and sessions still here (the mover's last count).
    left: (usize, usize),
    /// Sessions and clients moved so far.
    moved: u64,
    /// How long it took to become empty.
    took: Option<Duration>,
}

/// A node's drain: its phase (read on every CONNECT, so an atomic) and the rest behind a lock.
#[derive(Debug)]
pub struct Drain {
    /// [`Phase`] as u8.
    phase: AtomicU8,
    info: Mutex<Info>,
    /// Set once the drain starts: the mover waits on it.
    started: watch::Sender<bool>,
    /// `mqedge_broker_drain_moved_total`.
    moved_total: Counter,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Drain {
    /// A node that serves; `moved_total` counts what its drain moves.
    pub fn new(moved_total: Counter) -> Drain {
        Drain {
            phase: AtomicU8::new(Phase::Serving as u8),
            info: Mutex::new(Info::default()),
            started: watch::channel(false).0,
            moved_total,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Info> {
        self.info.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Whether new clients are refused (any phase but serving).
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.phase.load(Ordering::Relaxed) != Phase::Serving as u8
    }

    /// Starts the drain (`cause`: `api`, `SIGTERM`); false when it had started already.
    pub fn start(&self, cause: &'static str) -> bool {
        let mut i = self.lock();
        if self
            .phase
            .compare_exchange(
                Phase::Serving as u8,
                Phase::Draining as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        i.cause = cause;
        i.started = Some(Instant::now());
        i.started_at_ms = unix_ms();
        drop(i);
        self.started.send_replace(true);
        true
    }

    /// Resolves once the drain has started.
    pub async fn wait_started(&self) {
        let mut rx = self.started.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Moves to `p` (the mover's steps).
    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
        if p == Phase::Done {
            let mut i = self.lock();
            i.took = i.started.map(|s| s.elapsed());
        }
    }

    /// An LB health check (client id `mqedge-hc-<lb>-<backend>-<pid>`) connected: remembered, so
    /// that a drain knows to wait for an LB's acknowledgement, and about how long (the spacing
    /// of that LB's checks). At most [`MAX_LBS`] checkers are remembered.
    pub fn check_seen(&self, client_id: &str) {
        let mut i = self.lock();
        let now = Instant::now();
        if let Some((last, gap)) = i.checks.get_mut(client_id) {
            *gap = now - *last;
            *last = now;
        } else if i.checks.len() < MAX_LBS {
            let id: String = client_id.chars().take(MAX_LB_NAME).collect();
            i.checks.insert(id, (now, Duration::ZERO));
        }
    }

    /// How long a drain waits for an LB's acknowledgement: nothing (`None`) when no LB health
    /// check connected within [`LB_SEEN_WITHIN`]; else three spacings of the slowest checker
    /// (an LB acknowledges at its second check after the drain began), at least 1 s, at most
    /// `max`.
    pub fn ack_wait(&self, max: Duration) -> Option<Duration> {
        let i = self.lock();
        let gap = i
            .checks
            .values()
            .filter(|(last, _)| last.elapsed() < LB_SEEN_WITHIN)
            .map(|(_, gap)| *gap)
            .max()?;
        Some((gap * 3).max(Duration::from_secs(1)).min(max))
    }

    /// A CONNECT during the drain carried an acknowledgement from LB `lb`, which has
    /// `connections` to this node (bounded: at most [`MAX_LBS`] LBs, names cut).
    pub fn ack(&self, lb: &str, connections: Option<u64>) {
        let mut i = self.lock();
        let name: String = lb.chars().take(MAX_LB_NAME).collect();
        if i.lbs.len() >= MAX_LBS && !i.lbs.contains_key(&name) {
            return;
        }
        let now = Instant::now();
        if i.acked.is_none() {
            i.acked = Some(now);
            tracing::info!(lb = %name, connections, "drain: acknowledged by the LB");
        }
        i.lbs.insert(
            name,
            Report {
                connections,
                at: now,
            },
        );
    }

    /// Whether an LB acknowledged the drain.
    pub fn acked(&self) -> bool {
        self.lock().acked.is_some()
    }

    /// Whether every LB that acknowledged (and still reports) has no connection to this node.
    pub fn lbs_empty(&self) -> bool {
        self.lock()
            .lbs
            .values()
            .filter(|r| r.at.elapsed() < LB_REPORT_STALE)
            .all(|r| r.connections.unwrap_or(0) == 0)
    }

    /// The mover's last count of client connections and sessions still here.
    pub fn set_left(&self, connections: usize, sessions: usize) {
        self.lock().left = (connections, sessions);
    }

    /// `n` more sessions or clients moved.
    pub fn moved(&self, n: u64) {
        self.lock().moved += n;
        self.moved_total.inc_by(n);
    }

    /// `GET /api/drain`.
    pub fn json(&self) -> Value {
        let phase = self.phase();
        let i = self.lock();
        let lbs: BTreeMap<&String, Value> = i
            .lbs
            .iter()
            .map(|(n, r)| {
                (
                    n,
                    json!({
                        "connections": r.connections,
                        "seen_ms_ago": r.at.elapsed().as_millis() as u64,
                    }),
                )
            })
            .collect();
        json!({
            "state": phase.as_str(),
            "cause": (phase != Phase::Serving).then_some(i.cause),
            "started_at": i.started.map(|_| i.started_at_ms),
            "elapsed_ms": i.started.map(|s| s.elapsed().as_millis() as u64),
            "acknowledged": i.acked.is_some(),
            "lbs": lbs,
            "connections_left": i.left.0,
            "sessions_left": i.left.1,
            "moved": i.moved,
            "took_ms": i.took.map(|d| d.as_millis() as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_once_and_counts_lbs_bounded() {
        let d = Drain::new(Counter::default());
        assert!(!d.is_draining());
        assert!(d.lbs_empty());
        assert!(d.start("api"));
        assert!(!d.start("SIGTERM"));
        assert!(d.is_draining() && !d.acked());
        d.ack("lb1", Some(3));
        assert!(d.acked() && !d.lbs_empty());
        d.ack("lb1", Some(0));
        assert!(d.lbs_empty());
        for k in 0..200 {
            d.ack(&format!("x{k}"), Some(1));
        }
        assert_eq!(d.lock().lbs.len(), MAX_LBS);
        d.ack(&"n".repeat(10_000), None);
        assert!(d.lock().lbs.keys().all(|k| k.len() <= MAX_LB_NAME));
        let v = d.json();
        assert_eq!(v["state"], "draining");
        assert_eq!(v["cause"], "api");
    }
}

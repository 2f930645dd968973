//! Versions and tombstones of retained messages, so every node converges to the newest value of
//! each topic whatever order sets, clears and snapshots reach it in.
//!
//! A retained message carries a [`Version`]: when it was set (ms since the Unix epoch on the
//! node that took the publish) and that node's name, the tie-break. A clear leaves a tombstone
//! with its version for `ttl`, so an older copy coming back (a node restarted from its
//! `data_dir`, the other side of a healed partition) loses to it. There is one rule, for live
//! replication and snapshots alike: a change is applied only when its version is newer than
//! what the topic has (value or tombstone). A local publish is always newer: it is stamped after
//! the topic's current version even when this node's clock is behind the one that set it.
//!
//! Records (in the store's `retained` table and in the node channel's `Retained` frame):
//! `[u8 2][u64 ms][str node][Message::encode]`, a clear being a message with an empty payload.
//! A record of format 1 (a bare [`Message::encode`], written before versions) reads as having
//! no version: from the store that is version 0, older than anything versioned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;

use super::retained::Retained;
use crate::limits::Bite;
use crate::message::{put, Message, Rd};
use crate::metrics::{Limit, Metrics};
use crate::protocol::QoS;
use crate::store::{Op, Rows, Store, Table};

/// Format byte of a versioned record (a bare message starts with 1).
const RECORD_FORMAT: u8 = 2;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// When and where a retained message was set or cleared; the greater one wins everywhere.
///
/// Why: nodes receive the same topic's changes in different orders (two publishers on two
/// nodes, a snapshot from a node that was away); comparing versions makes them all keep the
/// same one. Ordered by `ms`, then by `node`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Publish time on the node that took it, ms since the Unix epoch.
    pub ms: u64,
    /// That node's name: orders two changes of the same millisecond the same way everywhere.
    pub node: Arc<str>,
}

impl Version {
    /// The version of a record written before versions existed: older than any other.
    pub fn legacy() -> Version {
        Version {
            ms: 0,
            node: Arc::from(""),
        }
    }
}

/// A retained message with its version, as the trie holds it.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// The message as published.
    pub msg: Arc<Message>,
    /// Its version.
    pub version: Version,
}

/// The record of a retained change: `[2][u64 ms][str node][Message::encode]`.
pub fn encode_record(msg: &Message, v: &Version) -> Vec<u8> {
    let m = msg.encode();
    let mut o = Vec::with_capacity(13 + v.node.len() + m.len());
    o.push(RECORD_FORMAT);
    o.extend_from_slice(&v.ms.to_be_bytes());
    put(&mut o, v.node.as_bytes());
    o.extend_from_slice(&m);
    o
}

/// Reads a record: the message and its version (`None` for a bare message of format 1);
/// `None` for a corrupt record.
pub fn decode_record(b: &[u8]) -> Option<(Message, Option<Version>)> {
    match b.first()? {
        &RECORD_FORMAT => {
            let mut r = Rd(&b[1..]);
            let ms = r.u64()?;
            let node: Arc<str> = Arc::from(r.string()?);
            Some((Message::decode(r.0)?, Some(Version { ms, node })))
        }
        _ => Some((Message::decode(b)?, None)),
    }
}

/// The retained messages of a node, versioned, with the tombstones of recent clears.
///
/// Why: a returning node must not bring back a value cleared (or replaced) while it was away;
/// see the module docs for the rule.
pub struct RetainedSet {
    /// The live values, found by filter for new subscriptions.
    live: Retained<Stamped>,
    /// Cleared topics and the version of their clear, kept `ttl`. Its lock is also the one
    /// every change takes, so comparing and replacing a topic's version is one step.
    tombstones: Mutex<HashMap<Arc<str>, Version>>,
    /// This node's name, stamped on local publishes.
    node: Arc<str>,
    /// How long a tombstone is kept; zero keeps none (a node alone needs none).
    ttl: Duration,
    /// `[limits] max_retained_messages` and `max_retained_bytes` (0 = no cap): past them a new
    /// value is not stored (the publish is still delivered), so one client cannot fill the
    /// node's memory and store with retained topics.
    caps: (usize, usize),
    /// Live values and their bytes (topic + payload), `$SYS` (the broker's own) left out:
    /// what the caps count. Changed under the tombstone lock.
    held: AtomicUsize,
    bytes: AtomicUsize,
    /// The `limit_hits_total` counters of the two caps, when wired to the metrics.
    hits: Option<(Counter, Counter)>,
}

/// Bytes a retained value counts against `max_retained_bytes`.
fn weight(msg: &Message) -> usize {
    msg.topic.len() + msg.payload.len()
}

impl RetainedSet {
    /// An empty set for node `node`, keeping tombstones `ttl`.
    pub fn new(node: &str, ttl: Duration) -> RetainedSet {
        RetainedSet {
            live: Retained::new(),
            tombstones: Mutex::new(HashMap::new()),
            node: Arc::from(node),
            ttl,
            caps: (0, 0),
            held: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            hits: None,
        }
    }

    /// The same set, holding at most `count` topics and `bytes` bytes (0 = no cap), counting
    /// refusals in `metrics`.
    pub fn with_caps(self, count: usize, bytes: usize, metrics: &Metrics) -> RetainedSet {
        let counter = |b: Bite| {
            metrics
                .limit_hits
                .get_or_create(&Limit {
                    limit: b.key().to_string(),
                })
                .clone()
        };
        RetainedSet {
            caps: (count, bytes),
            hits: Some((
                counter(Bite::RetainedMessages),
                counter(Bite::RetainedBytes),
            )),
            ..self
        }
    }

    /// Bytes (topic + payload) of the retained values held, `$SYS` left out.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether a value of `new` bytes may replace one of `old` (`None`: a new topic); counts
    /// a refusal. `$SYS` (the broker's own) is never refused.
    fn admits(&self, topic: &str, old: Option<usize>, new: usize) -> bool {
        let (count, bytes) = self.caps;
        if topic.starts_with("$SYS") {
            return true;
        }
        let held = self.bytes() - old.unwrap_or(0);
        let full = self.held.load(Ordering::Relaxed) >= count;
        let bite = if old.is_none() && count != 0 && full {
            Some(0)
        } else if bytes != 0 && held + new > bytes {
            Some(1)
        } else {
            None
        };
        match (bite, &self.hits) {
            (None, _) => true,
            (Some(0), Some((c, _))) | (Some(_), Some((_, c))) => {
                c.inc();
                false
            }
            (Some(_), None) => false,
        }
    }

    /// Counts a value replaced (`old`) by another (`new`) in `held` and `bytes`.
    fn account(&self, old: Option<&Stamped>, new: Option<&Message>) {
        let sys = |m: &Message| m.topic.starts_with("$SYS");
        if let Some(o) = old.filter(|o| !sys(&o.msg)) {
            self.held.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(weight(&o.msg), Ordering::Relaxed);
        }
        if let Some(n) = new.filter(|n| !sys(n)) {
            self.held.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(weight(n), Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Version>> {
        // nothing panics while it is held; should it, the map is still consistent
        self.tombstones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of retained topics (tombstones not counted).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Number of tombstones held, for the metric.
    pub fn tombstones(&self) -> usize {
        self.lock().len()
    }

    /// How long tombstones are kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The retained messages whose topic matches `filter` (what a new subscription is sent).
    pub fn matching_messages(&self, filter: &str) -> Vec<Arc<Message>> {
        self.live.matching_map(filter, |s| s.msg.clone())
    }

    /// The retained message of exactly `topic` and its version.
    pub fn get(&self, topic: &str) -> Option<Stamped> {
        self.live.get(topic)
    }

    /// Applies a publish with RETAIN taken by this node: applied (unless over a cap, see
    /// [`RetainedSet::with_caps`]), stamped newer than the topic's current version. Pushes the
    /// store ops when `durable`; returns the version to send to the other nodes.
    pub fn set_local(&self, msg: &Arc<Message>, durable: bool, ops: &mut Vec<Op>) -> Version {
        let mut tombs = self.lock();
        let now = unix_ms();
        let ms = match self.current(&tombs, &msg.topic) {
            Some(cur) => now.max(cur.ms.saturating_add(1)),
            None => now,
        };
        let v = Version {
            ms,
            node: self.node.clone(),
        };
        self.apply(&mut tombs, msg, v.clone(), durable, ops);
        v
    }

    /// Applies a change another node sent (live or in its snapshot) when `v` is newer than what
    /// the topic has; returns whether the set changed (a value over the caps is not stored,
    /// but the older one it would have replaced goes).
    pub fn merge(&self, msg: &Arc<Message>, v: Version, durable: bool, ops: &mut Vec<Op>) -> bool {
        let mut tombs = self.lock();
        if self.current(&tombs, &msg.topic).is_some_and(|cur| cur >= v) {
            return false;
        }
        self.apply(&mut tombs, msg, v, durable, ops)
    }

    /// The topic's version: its value's, or its tombstone's.
    fn current(&self, tombs: &HashMap<Arc<str>, Version>, topic: &str) -> Option<Version> {
        self.live
            .get(topic)
            .map(|s| s.version)
            .or_else(|| tombs.get(topic).cloned())
    }

    /// Applies a change under the tombstone lock; returns whether the set changed.
    fn apply(
        &self,
        tombs: &mut HashMap<Arc<str>, Version>,
        msg: &Arc<Message>,
        v: Version,
        durable: bool,
        ops: &mut Vec<Op>,
    ) -> bool {
        let topic = &msg.topic;
        // $SYS stays on its node and is refreshed, never persisted or remembered
        let sys = topic.starts_with("$SYS");
        let persist = durable && !sys;
        let key = || topic.as_bytes().to_vec();
        if msg.payload.is_empty() {
            let old = self.live.set(topic, None);
            self.account(old.as_ref(), None);
            let removed = old.is_some();
            if !self.ttl.is_zero() && !sys {
                if persist {
                    ops.push(Op::Put {
                        table: Table::Retained,
                        key: key(),
                        value: encode_record(msg, &v),
                    });
                }
                tombs.insert(topic.clone(), v);
            } else if removed && durable {
                ops.push(Op::Delete {
                    table: Table::Retained,
                    key: key(),
                });
            }
        } else {
            let old = self.live.get(topic).map(|s| weight(&s.msg));
            if !self.admits(topic, old, weight(msg)) {
                // not stored; an older value of the topic goes: a subscriber must not be sent
                // one older than the last publish
                if old.is_some() {
                    let gone = self.live.set(topic, None);
                    self.account(gone.as_ref(), None);
                    if durable {
                        ops.push(Op::Delete {
                            table: Table::Retained,
                            key: key(),
                        });
                    }
                }
                // changed only when an older value went (its delete is in `ops`)
                return old.is_some();
            }
            tombs.remove(topic);
            if persist {
                ops.push(Op::Put {
                    table: Table::Retained,
                    key: key(),
                    value: encode_record(msg, &v),
                });
            }
            let old = self.live.set(
                topic,
                Some(Stamped {
                    msg: msg.clone(),
                    version: v,
                }),
            );
            self.account(old.as_ref(), Some(msg));
        }
        true
    }

    /// Every value and tombstone (a tombstone as an empty-payload message), `$SYS` left out:
    /// the snapshot a peer is sent when its channel opens.
    pub fn snapshot(&self) -> Vec<(Arc<Message>, Version)> {
        let tombs = self.lock();
        let mut out: Vec<(Arc<Message>, Version)> = self
            .live
            .all()
            .into_iter()
            .filter(|(t, _)| !t.starts_with("$SYS"))
            .map(|(_, s)| (s.msg, s.version))
            .collect();
        out.extend(
            tombs
                .iter()
                .map(|(t, v)| (Arc::new(tombstone(t, v)), v.clone())),
        );
        out
    }

    /// Loads the store's records (`now_ms`: the clock); returns the deletes of tombstones that
    /// expired meanwhile (or that a node without tombstones does not keep).
    pub fn restore(&self, rows: Rows, now_ms: u64) -> Vec<Op> {
        let mut expired = Vec::new();
        let mut tombs = self.lock();
        for (k, v) in rows {
            let Some((m, version)) = decode_record(&v) else {
                continue;
            };
            let version = version.unwrap_or_else(Version::legacy);
            if m.payload.is_empty() {
                if self.expired(&version, now_ms) {
                    expired.push(Op::Delete {
                        table: Table::Retained,
                        key: k,
                    });
                } else {
                    tombs.insert(m.topic.clone(), version);
                }
            } else {
                let topic = m.topic.clone();
                let m = Arc::new(m);
                let stamped = Stamped {
                    msg: m.clone(),
                    version,
                };
                let old = self.live.set(&topic, Some(stamped));
                self.account(old.as_ref(), Some(&m));
            }
        }
        expired
    }

    fn expired(&self, v: &Version, now_ms: u64) -> bool {
        self.ttl.is_zero() || now_ms.saturating_sub(v.ms) >= self.ttl.as_millis() as u64
    }

    /// Forgets the tombstones older than `ttl`; their records are deleted from `store` (queued
    /// under the lock, so a value set right after cannot be deleted by it). Returns how many.
    pub fn purge(&self, now_ms: u64, store: Option<&Store>) -> usize {
        let mut tombs = self.lock();
        let mut ops = Vec::new();
        tombs.retain(|t, v| {
            let keep = !self.expired(v, now_ms);
            if !keep {
                ops.push(Op::Delete {
                    table: Table::Retained,
                    key: t.as_bytes().to_vec(),
                });
            }
            keep
        });
        let n = ops.len();
        if let (Some(s), false) = (store, ops.is_empty()) {
            s.write_nowait(ops);
        }
        n
    }
}

/// The message a tombstone travels as: its topic, an empty payload.
fn tombstone(topic: &Arc<str>, v: &Version) -> Message {
    let mut m = Message::plain(topic, Bytes::new(), QoS::AtMostOnce, true, v.node.clone());
    m.topic = topic.clone();
    m
}

#[cfg(test)]
#[path = "retained_versions_tests.rs"]
mod tests;

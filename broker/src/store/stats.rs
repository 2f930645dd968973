//! How well group commit works: commits and ops counted by the writer thread, read by the
//! metrics endpoint. Imports nothing of the store.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for metrics: how well group commit works is `ops / commits`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    /// Write transactions committed (each one fsync).
    pub commits: u64,
    /// Ops written by those commits.
    pub ops: u64,
    /// Bytes (keys and values) those ops carried: what a change costs the disk.
    pub bytes: u64,
    /// Write transactions that failed (a batch retried call by call counts once, and once
    /// more for each call that failed alone).
    pub commit_failures: u64,
    /// Failed commits since the last one that succeeded: what `/healthz` judges the disk by.
    pub consecutive_failures: u64,
}

/// The live counters behind [`StoreStats`], shared by the writer thread and every handle.
#[derive(Default)]
pub(super) struct Counters {
    commits: AtomicU64,
    ops: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
    /// Reset by every successful commit.
    consecutive: AtomicU64,
}

impl Counters {
    /// One durable commit of `ops` ops carrying `bytes`.
    pub(super) fn committed(&self, ops: usize, bytes: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// One commit that failed.
    pub(super) fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(super) fn snapshot(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            commit_failures: self.failures.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
        }
    }
}

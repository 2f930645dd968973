//! The broker's durable key-value store: four keyspaces of byte keys → byte values in one redb
//! file, `data_dir/mqedge.redb`, written by one thread that group-commits.
//!
//! Why one writer thread: redb runs one write transaction at a time and every durable commit
//! costs an fsync. Funnelling all changes through one queue lets the writer take everything that
//! arrived while the previous commit was syncing and commit it together, so N concurrent
//! publishers cost one fsync instead of N. Reads do not queue behind the writer: they open read
//! transactions on the shared `Database` and see the last commit.
//!
//! The store knows nothing about MQTT. The broker serializes sessions, queued and retained
//! messages itself and chooses the keys; keys sort as bytes, so a key that starts with a client
//! id lets `scan_prefix` and `Op::DeletePrefix` address "everything of one client".
//!
//! Guarantees: the ops of one `write`/`write_nowait` call are applied in order and in one
//! transaction (a call is never split across commits); calls are applied in the order they were
//! queued; `write` resolves only after the commit holding its ops was fsync'd.
//!
//! This file is the handle (`Store`: open, scan, write, close); `writer` is the thread that
//! batches and commits; `table` the keyspaces, ops and prefix ranges; `error` and `stats` the
//! leaves both use. The writer never imports the handle.

use std::fmt;
use std::future::Future;
use std::ops::Bound;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;

use redb::{Database, DatabaseError};
use tokio::sync::{mpsc, oneshot, watch};

mod error;
mod meta;
mod stats;
mod table;
mod writer;

pub use error::StoreError;
pub use stats::StoreStats;
pub use table::{Op, Table};

use error::{db_err, message};
use stats::Counters;
use table::prefix_end;
use writer::{open_file, Msg, Pending, Shared};

/// File name inside the data directory.
const FILE_NAME: &str = "mqedge.redb";

/// Failed commits in a row after which the node reports itself unhealthy (`/healthz` 503): one
/// failure can be a single oversized call, this many means the disk refuses writes.
pub const UNHEALTHY_AFTER_FAILURES: u64 = 3;

/// Rows of a scan: (key, value) pairs in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// What a [`Tap`] hands back: resolves once the ops it saw are safe where it copies them.
pub type TapWait = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Sees every write in the order the writer gets it (session replication copies a node's
/// session rows to another node). Called with the store's order lock held: it only queues.
pub trait Tap: Send + Sync {
    /// `ops` were just queued; `wait`: someone awaits them (the returned future, resolved once
    /// they are durable where the tap copies them; `None`: nothing to wait for).
    fn tap(&self, ops: &[Op], wait: bool) -> Option<TapWait>;
    /// A flush (an empty write): resolves once everything tapped before is durable there.
    fn flush(&self) -> Option<TapWait>;
}

/// Handle to the open store; cheap to clone (an `Arc` inside) so every session task can hold one.
/// Writes go to one writer thread that commits them in batches; reads run on the caller's thread.
///
/// Dropping the last handle without `close` still commits what was queued and waits for the
/// writer thread to finish (a short block), so the file is free to reopen afterwards.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` after `close`, so the file is released once in-flight scans finish (and while
    /// the writer opens it again after an I/O error).
    db: Shared,
    queue: mpsc::UnboundedSender<Msg>,
    /// Becomes `true` when the writer has committed its last batch and released the database.
    stopped: watch::Receiver<bool>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    /// Set once when session replication is on.
    tap: OnceLock<Arc<dyn Tap>>,
    /// Held while a write is queued and tapped, so the tap sees the writer's order.
    order: Mutex<()>,
}

impl Store {
    /// Opens or creates `dir/mqedge.redb`, creating `dir`, and starts the writer thread. A
    /// database held by another process (or another `Store` in this one) is refused with
    /// `StoreError::Open` rather than risking two writers; a file left by a crash is repaired.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.to_path_buf(),
            what: format!("cannot create data directory: {e}"),
        })?;
        let path = dir.join(FILE_NAME);
        let open_err = |what: String| StoreError::Open {
            path: path.clone(),
            what,
        };
        let db = open_file(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => open_err(
                "already in use by another process (another broker with the same data_dir?)"
                    .to_string(),
            ),
            other => open_err(other.to_string()),
        })?;
        create_tables(&db).map_err(open_err)?;

        let db: Shared = Arc::new(RwLock::new(Some(Arc::new(db))));
        let counters = Arc::new(Counters::default());
        let (queue, rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped) = watch::channel(false);
        let writer = writer::spawn(
            Arc::clone(&db),
            rx,
            Arc::clone(&counters),
            path.clone(),
            stopped_tx,
        )
        .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                queue,
                stopped,
                writer: Some(writer),
                counters,
                tap: OnceLock::new(),
                order: Mutex::new(()),
            }),
        })
    }

    /// Every (key, value) of a table in key order: what the broker reloads at startup. Runs a
    /// read transaction on the caller's thread (blocking; the writer is not involved).
    pub fn scan(&self, table: Table) -> Result<Rows, StoreError> {
        self.read_range(table, Bound::Unbounded, Bound::Unbounded)
    }

    /// Every (key, value) whose key starts with `prefix`, in key order, e.g. one client's queue.
    pub fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Rows, StoreError> {
        match prefix_end(prefix) {
            Some(end) => self.read_range(table, Bound::Included(prefix), Bound::Excluded(&end)),
            None => self.read_range(table, Bound::Included(prefix), Bound::Unbounded),
        }
    }

    /// Queues `ops` and resolves once they are durably committed (fsync'd), e.g. before a QoS 1
    /// PUBACK. The ops of one call apply in order, in one transaction; calls made concurrently
    /// share one commit. An empty `ops` is a flush: it resolves when everything queued before it
    /// is durable. Dropping the future does not cancel the write.
    pub async fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.submit(ops).await
    }

    /// Like [`Store::write`], but the ops are queued before it returns (in call order with
    /// every other write); the future only waits for their commit.
    pub fn submit(
        &self,
        ops: Vec<Op>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let (done, answer) = oneshot::channel();
        let (queued, tapped) = self.enqueue(ops, Some(done));
        async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            match answer.await {
                Ok(result) => result?,
                // The writer went away without answering: it stopped before reaching these ops.
                Err(_) => return Err(StoreError::Closed),
            }
            match tapped {
                Some(t) => t.await.map_err(StoreError::Replica),
                None => Ok(()),
            }
        }
    }

    /// Like [`Store::submit`], but the tap does not see these ops (what a replica writes for
    /// the copies it keeps; an empty `ops` is a flush of this store only).
    pub fn submit_local(
        &self,
        ops: Vec<Op>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let (done, answer) = oneshot::channel();
        let queued = self
            .inner
            .queue
            .send(Msg::Write(Pending::new(ops, Some(done))))
            .is_ok();
        async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            answer.await.unwrap_or(Err(StoreError::Closed))
        }
    }

    /// Resolves once everything queued before is durable here (the tap is not asked).
    pub async fn flush_local(&self) -> Result<(), StoreError> {
        self.submit_local(Vec::new()).await
    }

    /// Copies every later write to `tap` (once; a second tap is ignored).
    pub fn set_tap(&self, tap: Arc<dyn Tap>) {
        let _ = self.inner.tap.set(tap);
    }

    /// Queues one call's ops (and shows them to the tap, in the same order).
    fn enqueue(
        &self,
        ops: Vec<Op>,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) -> (bool, Option<TapWait>) {
        let Some(tap) = self.inner.tap.get() else {
            let queued = self.inner.queue.send(Msg::Write(Pending::new(ops, done)));
            return (queued.is_ok(), None);
        };
        let wait = done.is_some();
        let _order = self
            .inner
            .order
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tapped = if ops.is_empty() {
            wait.then(|| tap.flush()).flatten()
        } else {
            tap.tap(&ops, wait)
        };
        let queued = self.inner.queue.send(Msg::Write(Pending::new(ops, done)));
        (queued.is_ok(), tapped)
    }

    /// Queues `ops` without waiting, for changes that may be lost in a crash (e.g. QoS 0 state).
    /// They stay ordered with every later call and are durable at the next commit; a later
    /// `write` resolving means these are durable too. Failures are only logged.
    pub fn write_nowait(&self, ops: Vec<Op>) {
        let n = ops.len();
        if !self.enqueue(ops, None).0 {
            tracing::warn!(ops = n, "store is closed: write dropped");
        }
    }

    /// Graceful shutdown: commits everything queued so far, stops the writer and releases the
    /// database file (once in-flight scans finish). Afterwards writes and scans fail with
    /// `StoreError::Closed` on every clone of this handle. Calling it twice is harmless.
    pub async fn close(&self) {
        let _ = self.inner.queue.send(Msg::Close);
        let mut stopped = self.inner.stopped.clone();
        // An error means the writer thread is gone (it panicked): nothing is left to wait for.
        let _ = stopped.wait_for(|stopped| *stopped).await;
        self.inner
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Commits done and ops written since open, for the metrics endpoint.
    pub fn stats(&self) -> StoreStats {
        self.inner.counters.snapshot()
    }

    /// Why the store cannot be trusted to take writes now (the last
    /// [`UNHEALTHY_AFTER_FAILURES`] commits or more failed), or `None` while it can.
    pub fn failing(&self) -> Option<String> {
        let n = self.stats().consecutive_failures;
        (n >= UNHEALTHY_AFTER_FAILURES)
            .then(|| format!("store: the last {n} commits failed (see the log for the error)"))
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.inner
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Closed)
    }

    fn read_range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Result<Rows, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(table.def()).map_err(db_err)?;
        let mut rows = Vec::new();
        for row in t.range::<&[u8]>((start, end)).map_err(db_err)? {
            let (key, value) = row.map_err(db_err)?;
            rows.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(rows)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: let the writer commit what is queued, then wait for it so
        // the file lock is released when the drop returns.
        let _ = self.queue.send(Msg::Close);
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

/// Creates the tables up front so a scan of a fresh store returns nothing instead of failing.
fn create_tables(db: &Database) -> Result<(), String> {
    let txn = db.begin_write().map_err(message)?;
    for table in Table::ALL {
        txn.open_table(table.def()).map_err(message)?;
    }
    txn.commit().map_err(message)
}

#[cfg(test)]
mod tests;

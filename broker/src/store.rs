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

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::{fmt, thread};

use redb::{Database, DatabaseError, Durability, RepairSession, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch};

/// File name inside the data directory.
const FILE_NAME: &str = "mqedge.redb";
/// A batch stops growing past this many ops, so one commit (and the waiters it holds) stays short.
const MAX_BATCH_OPS: usize = 10_000;
/// A batch stops growing past this many key/value bytes, for the same reason.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// redb's page cache. Reads are one recovery scan at startup, so the 1 GiB default would mostly
/// buy resident memory on an edge node; a tenth of this is redb's write buffer.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Which keyspace. Each is its own redb table, so a key means different things in each and a
/// scan of one never walks the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Persistent sessions (subscriptions, expiry), keyed by client id.
    Sessions,
    /// Messages queued for offline or in-flight persistent sessions.
    Messages,
    /// Retained messages, keyed by topic.
    Retained,
    /// Node-level bookkeeping (format versions, counters) the broker wants to survive restarts.
    Meta,
}

impl Table {
    const ALL: [Table; 4] = [
        Table::Sessions,
        Table::Messages,
        Table::Retained,
        Table::Meta,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Messages => "messages",
            Table::Retained => "retained",
            Table::Meta => "meta",
        }
    }

    fn index(self) -> usize {
        match self {
            Table::Sessions => 0,
            Table::Messages => 1,
            Table::Retained => 2,
            Table::Meta => 3,
        }
    }

    fn def(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// One change. A `Vec<Op>` is the unit the broker hands over, so a session and its queue can
/// change together in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace `key`.
    Put {
        /// Keyspace.
        table: Table,
        /// Key.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
    },
    /// Remove `key`; removing an absent key is not an error.
    Delete {
        /// Keyspace.
        table: Table,
        /// Key.
        key: Vec<u8>,
    },
    /// Remove every key that starts with `prefix` (an empty prefix empties the table), e.g. all
    /// queued messages of one client.
    DeletePrefix {
        /// Keyspace.
        table: Table,
        /// Key prefix.
        prefix: Vec<u8>,
    },
}

impl Op {
    fn table(&self) -> Table {
        match self {
            Op::Put { table, .. } | Op::Delete { table, .. } | Op::DeletePrefix { table, .. } => {
                *table
            }
        }
    }

    /// Bytes this op carries, for the batch size cap.
    fn size(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
            Op::DeletePrefix { prefix, .. } => prefix.len(),
        }
    }
}

/// What can go wrong, so the broker can tell "bad data_dir at startup" (exit 1 with the path)
/// from "disk failed while serving" and from "used after shutdown".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened: unusable directory, corrupt file, or held by another
    /// process.
    #[error("{path}: {what}")]
    Open {
        /// The directory or file that failed.
        path: PathBuf,
        /// What went wrong, for a one-line message.
        what: String,
    },
    /// redb failed while reading or committing (I/O error, disk full, ...).
    #[error("store: {0}")]
    Db(String),
    /// The store was closed (or its writer stopped) before the operation could run.
    #[error("store is closed")]
    Closed,
}

/// Rows of a scan: (key, value) pairs in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Counters for metrics: how well group commit works is `ops / commits`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    /// Write transactions committed (each one fsync).
    pub commits: u64,
    /// Ops written by those commits.
    pub ops: u64,
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
    /// `None` after `close`, so the file is released once in-flight scans finish.
    db: RwLock<Option<Arc<Database>>>,
    queue: mpsc::UnboundedSender<Msg>,
    /// Becomes `true` when the writer has committed its last batch and released the database.
    stopped: watch::Receiver<bool>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    ops: AtomicU64,
}

enum Msg {
    Write(Pending),
    /// Commit what is queued, refuse new writes, stop.
    Close,
}

/// One `write`/`write_nowait` call waiting in the queue.
struct Pending {
    ops: Vec<Op>,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
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
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_repair_callback(log_repair)
            .create(&path)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => open_err(
                    "already in use by another process (another broker with the same data_dir?)"
                        .to_string(),
                ),
                other => open_err(other.to_string()),
            })?;
        create_tables(&db).map_err(open_err)?;

        let db = Arc::new(db);
        let counters = Arc::new(Counters::default());
        let (queue, rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped) = watch::channel(false);
        let writer = {
            let db = Arc::clone(&db);
            let counters = Arc::clone(&counters);
            let path = path.clone();
            thread::Builder::new()
                .name("mqedge-store".to_string())
                .spawn(move || {
                    run_writer(&db, rx, &counters, &path);
                    // Release the file before anyone waiting in `close` is told we stopped.
                    drop(db);
                    let _ = stopped_tx.send(true);
                })
                .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?
        };
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(db)),
                queue,
                stopped,
                writer: Some(writer),
                counters,
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
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            ops,
            done: Some(done),
        };
        if self.inner.queue.send(Msg::Write(pending)).is_err() {
            return Err(StoreError::Closed);
        }
        match answer.await {
            Ok(result) => result,
            // The writer went away without answering: it stopped before reaching these ops.
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Queues `ops` without waiting, for changes that may be lost in a crash (e.g. QoS 0 state).
    /// They stay ordered with every later call and are durable at the next commit; a later
    /// `write` resolving means these are durable too. Failures are only logged.
    pub fn write_nowait(&self, ops: Vec<Op>) {
        let n = ops.len();
        let pending = Pending { ops, done: None };
        if self.inner.queue.send(Msg::Write(pending)).is_err() {
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
        StoreStats {
            commits: self.inner.counters.commits.load(Ordering::Relaxed),
            ops: self.inner.counters.ops.load(Ordering::Relaxed),
        }
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

/// The writer thread: block for the first queued call, take whatever else is already queued (up
/// to the batch caps), commit it all in one durable transaction, answer every waiter, repeat.
/// Returns when the queue is closed and drained.
fn run_writer(
    db: &Database,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    counters: &Counters,
    path: &Path,
) {
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(pending) => pending,
            None => match rx.blocking_recv() {
                Some(Msg::Write(pending)) => pending,
                Some(Msg::Close) => {
                    // Later sends fail; what is already queued is still received and committed.
                    rx.close();
                    continue;
                }
                None => return,
            },
        };
        // The first call is taken whole even over the caps: a call is never split.
        let mut n_ops = first.ops.len();
        let mut n_bytes: usize = first.ops.iter().map(Op::size).sum();
        let mut batch = vec![first];
        while n_ops < MAX_BATCH_OPS && n_bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(Msg::Write(pending)) => {
                    let ops = pending.ops.len();
                    let bytes: usize = pending.ops.iter().map(Op::size).sum();
                    if n_ops + ops > MAX_BATCH_OPS || n_bytes + bytes > MAX_BATCH_BYTES {
                        carry = Some(pending);
                        break;
                    }
                    n_ops += ops;
                    n_bytes += bytes;
                    batch.push(pending);
                }
                Ok(Msg::Close) => rx.close(),
                Err(_) => break,
            }
        }

        let result = commit(db, &batch);
        match &result {
            Ok(()) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters.ops.fetch_add(n_ops as u64, Ordering::Relaxed);
                tracing::trace!(calls = batch.len(), ops = n_ops, "store commit");
            }
            Err(e) => {
                let unwaited: usize = batch
                    .iter()
                    .filter(|p| p.done.is_none())
                    .map(|p| p.ops.len())
                    .sum();
                tracing::error!(
                    path = %path.display(),
                    error = %e,
                    ops = n_ops,
                    unacknowledged_ops_lost = unwaited,
                    "store commit failed"
                );
            }
        }
        for pending in batch {
            if let Some(done) = pending.done {
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StoreError::Db(e.clone())),
                };
                // The caller may have stopped waiting; the ops are committed regardless.
                let _ = done.send(answer);
            }
        }
    }
}

/// Applies every op of the batch, in order, in one write transaction and commits it durably.
/// On any error the transaction is dropped (aborted), so the batch applies entirely or not at all.
fn commit(db: &Database, batch: &[Pending]) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(message)?;
    txn.set_durability(Durability::Immediate);
    {
        let mut tables: [Option<redb::Table<&[u8], &[u8]>>; 4] = [None, None, None, None];
        for op in batch.iter().flat_map(|pending| &pending.ops) {
            let slot = &mut tables[op.table().index()];
            if slot.is_none() {
                *slot = Some(txn.open_table(op.table().def()).map_err(message)?);
            }
            if let Some(table) = slot {
                apply(table, op).map_err(message)?;
            }
        }
    }
    txn.commit().map_err(message)
}

fn apply(table: &mut redb::Table<&[u8], &[u8]>, op: &Op) -> Result<(), redb::StorageError> {
    match op {
        Op::Put { key, value, .. } => {
            table.insert(key.as_slice(), value.as_slice())?;
        }
        Op::Delete { key, .. } => {
            table.remove(key.as_slice())?;
        }
        Op::DeletePrefix { prefix, .. } => match prefix_end(prefix) {
            Some(end) => {
                table.retain_in::<&[u8], _>(prefix.as_slice()..end.as_slice(), |_, _| false)?
            }
            None => table.retain_in::<&[u8], _>(prefix.as_slice().., |_, _| false)?,
        },
    }
    Ok(())
}

/// The smallest key greater than every key starting with `prefix`: the prefix with its last
/// byte below 0xFF incremented and what follows dropped. `None` when there is none (the prefix
/// is empty or all 0xFF): the range then runs to the end of the table.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Creates the tables up front so a scan of a fresh store returns nothing instead of failing.
fn create_tables(db: &Database) -> Result<(), String> {
    let txn = db.begin_write().map_err(message)?;
    for table in Table::ALL {
        txn.open_table(table.def()).map_err(message)?;
    }
    txn.commit().map_err(message)
}

fn log_repair(session: &mut RepairSession) {
    tracing::warn!(
        progress = format_args!("{:.0}%", session.progress() * 100.0),
        "store was not closed cleanly: repairing"
    );
}

fn message(e: impl Into<redb::Error>) -> String {
    e.into().to_string()
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(message(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("mqedge-store-{}-{name}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn put(table: Table, key: &[u8], value: &[u8]) -> Op {
        Op::Put {
            table,
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn del(table: Table, key: &[u8]) -> Op {
        Op::Delete {
            table,
            key: key.to_vec(),
        }
    }

    fn del_prefix(table: Table, prefix: &[u8]) -> Op {
        Op::DeletePrefix {
            table,
            prefix: prefix.to_vec(),
        }
    }

    fn keys(rows: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
        rows.iter().map(|(k, _)| k.clone()).collect()
    }

    #[test]
    fn store_is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Store>();
    }

    #[tokio::test]
    async fn put_then_scan_returns_rows_in_key_order() {
        let dir = TempDir::new("put");
        let store = Store::open(&dir.0).unwrap();
        assert!(store.scan(Table::Sessions).unwrap().is_empty());
        store
            .write(vec![
                put(Table::Sessions, b"b", b"2"),
                put(Table::Sessions, b"a", b"1"),
                put(Table::Sessions, b"c", b"3"),
                put(Table::Sessions, b"a", b"1bis"),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.scan(Table::Sessions).unwrap(),
            vec![
                (b"a".to_vec(), b"1bis".to_vec()),
                (b"b".to_vec(), b"2".to_vec()),
                (b"c".to_vec(), b"3".to_vec()),
            ]
        );
        let stats = store.stats();
        assert_eq!(stats.ops, 4);
        assert_eq!(stats.commits, 1);
    }

    #[tokio::test]
    async fn tables_are_separate_keyspaces() {
        let dir = TempDir::new("tables");
        let store = Store::open(&dir.0).unwrap();
        store
            .write(vec![
                put(Table::Sessions, b"k", b"session"),
                put(Table::Retained, b"k", b"retained"),
                put(Table::Meta, b"m", b"meta"),
            ])
            .await
            .unwrap();
        store.write(vec![del(Table::Sessions, b"k")]).await.unwrap();
        assert!(store.scan(Table::Sessions).unwrap().is_empty());
        assert!(store.scan(Table::Messages).unwrap().is_empty());
        assert_eq!(
            store.scan(Table::Retained).unwrap(),
            vec![(b"k".to_vec(), b"retained".to_vec())]
        );
        assert_eq!(
            store.scan(Table::Meta).unwrap(),
            vec![(b"m".to_vec(), b"meta".to_vec())]
        );
    }

    #[tokio::test]
    async fn delete_removes_only_that_key() {
        let dir = TempDir::new("delete");
        let store = Store::open(&dir.0).unwrap();
        store
            .write(vec![
                put(Table::Retained, b"a/b", b"1"),
                put(Table::Retained, b"a/bc", b"2"),
                put(Table::Retained, b"a", b"3"),
            ])
            .await
            .unwrap();
        store
            .write(vec![
                del(Table::Retained, b"a/b"),
                del(Table::Retained, b"never-there"),
            ])
            .await
            .unwrap();
        assert_eq!(
            keys(&store.scan(Table::Retained).unwrap()),
            vec![b"a".to_vec(), b"a/bc".to_vec()]
        );
    }

    #[tokio::test]
    async fn ops_of_one_call_apply_in_order() {
        let dir = TempDir::new("order");
        let store = Store::open(&dir.0).unwrap();
        store
            .write(vec![
                put(Table::Messages, b"k", b"first"),
                del(Table::Messages, b"k"),
                put(Table::Messages, b"k", b"last"),
                put(Table::Messages, b"j1", b"x"),
                del_prefix(Table::Messages, b"j"),
                put(Table::Messages, b"j2", b"y"),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.scan(Table::Messages).unwrap(),
            vec![
                (b"j2".to_vec(), b"y".to_vec()),
                (b"k".to_vec(), b"last".to_vec())
            ]
        );
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix_range() {
        assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[1, 0xFF, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(&[]), None);
    }

    #[tokio::test]
    async fn delete_prefix_removes_only_that_prefix() {
        let dir = TempDir::new("prefix");
        let store = Store::open(&dir.0).unwrap();
        let all: Vec<&[u8]> = vec![
            &[0],
            &[0, 0xFF],
            &[1],
            &[1, 0],
            &[1, 0xFF],
            &[1, 0xFF, 0xFF],
            &[2],
            &[0xFF],
            &[0xFF, 0],
        ];
        let mut ops: Vec<Op> = all.iter().map(|k| put(Table::Messages, k, b"v")).collect();
        ops.push(put(Table::Sessions, &[1, 7], b"other table"));
        store.write(ops).await.unwrap();

        store
            .write(vec![del_prefix(Table::Messages, &[1, 0xFF])])
            .await
            .unwrap();
        assert_eq!(
            keys(&store.scan(Table::Messages).unwrap()),
            vec![
                vec![0],
                vec![0, 0xFF],
                vec![1],
                vec![1, 0],
                vec![2],
                vec![0xFF],
                vec![0xFF, 0]
            ]
        );

        store
            .write(vec![del_prefix(Table::Messages, &[1])])
            .await
            .unwrap();
        assert_eq!(
            keys(&store.scan(Table::Messages).unwrap()),
            vec![vec![0], vec![0, 0xFF], vec![2], vec![0xFF], vec![0xFF, 0]]
        );

        store
            .write(vec![del_prefix(Table::Messages, &[0xFF])])
            .await
            .unwrap();
        assert_eq!(
            keys(&store.scan(Table::Messages).unwrap()),
            vec![vec![0], vec![0, 0xFF], vec![2]]
        );
        assert_eq!(store.scan(Table::Sessions).unwrap().len(), 1);

        store
            .write(vec![del_prefix(Table::Messages, &[])])
            .await
            .unwrap();
        assert!(store.scan(Table::Messages).unwrap().is_empty());
        assert_eq!(store.scan(Table::Sessions).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn scan_prefix_returns_only_that_prefix() {
        let dir = TempDir::new("scanprefix");
        let store = Store::open(&dir.0).unwrap();
        store
            .write(vec![
                put(Table::Messages, b"client1/0001", b"a"),
                put(Table::Messages, b"client1/0002", b"b"),
                put(Table::Messages, b"client10/0001", b"c"),
                put(Table::Messages, b"client2/0001", b"d"),
                put(Table::Messages, &[0xFF, 0xFF, 1], b"e"),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.scan_prefix(Table::Messages, b"client1/").unwrap(),
            vec![
                (b"client1/0001".to_vec(), b"a".to_vec()),
                (b"client1/0002".to_vec(), b"b".to_vec())
            ]
        );
        assert_eq!(
            keys(&store.scan_prefix(Table::Messages, &[0xFF, 0xFF]).unwrap()),
            vec![vec![0xFF, 0xFF, 1]]
        );
        assert_eq!(store.scan_prefix(Table::Messages, b"").unwrap().len(), 5);
        assert!(store
            .scan_prefix(Table::Messages, b"nobody")
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn write_is_durable_across_drop_without_close() {
        let dir = TempDir::new("durable");
        {
            let store = Store::open(&dir.0).unwrap();
            let clone = store.clone();
            store
                .write(vec![put(Table::Sessions, b"client", b"state")])
                .await
                .unwrap();
            drop(store);
            clone
                .write(vec![put(Table::Retained, b"t", b"r")])
                .await
                .unwrap();
        }
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(
            store.scan(Table::Sessions).unwrap(),
            vec![(b"client".to_vec(), b"state".to_vec())]
        );
        assert_eq!(
            store.scan(Table::Retained).unwrap(),
            vec![(b"t".to_vec(), b"r".to_vec())]
        );
    }

    #[tokio::test]
    async fn queued_nowait_writes_are_committed_on_drop() {
        let dir = TempDir::new("dropflush");
        {
            let store = Store::open(&dir.0).unwrap();
            for i in 0..100u32 {
                store.write_nowait(vec![put(Table::Messages, &i.to_be_bytes(), b"v")]);
            }
        }
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(store.scan(Table::Messages).unwrap().len(), 100);
    }

    #[tokio::test]
    async fn second_open_of_the_same_dir_is_refused() {
        let dir = TempDir::new("lock");
        let store = Store::open(&dir.0).unwrap();
        match Store::open(&dir.0) {
            Err(StoreError::Open { path, what }) => {
                assert_eq!(path, dir.0.join(FILE_NAME));
                assert!(what.contains("already in use"), "{what}");
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a second open of a held store succeeded"),
        }
        drop(store);
        Store::open(&dir.0).unwrap();
    }

    #[tokio::test]
    async fn open_reports_an_unusable_dir() {
        let dir = TempDir::new("notadir");
        std::fs::create_dir_all(&dir.0).unwrap();
        let file = dir.0.join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file).unwrap_err();
        assert!(matches!(err, StoreError::Open { ref path, .. } if *path == file));
        assert!(err.to_string().starts_with(&file.display().to_string()));
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits() {
        let dir = TempDir::new("group");
        let store = Store::open(&dir.0).unwrap();
        let before = store.stats();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..1000u32 {
            let store = store.clone();
            tasks.spawn(async move {
                store
                    .write(vec![put(Table::Messages, &i.to_be_bytes(), b"payload")])
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let after = store.stats();
        let commits = after.commits - before.commits;
        assert!(
            commits < 200,
            "1000 concurrent writes took {commits} commits"
        );
        assert_eq!(after.ops - before.ops, 1000);
        let rows = store.scan(Table::Messages).unwrap();
        assert_eq!(rows.len(), 1000);
        for (i, (key, _)) in rows.iter().enumerate() {
            assert_eq!(key, &(i as u32).to_be_bytes());
        }
    }

    #[tokio::test]
    async fn one_large_call_is_one_commit() {
        let dir = TempDir::new("large");
        let store = Store::open(&dir.0).unwrap();
        let before = store.stats();
        let ops = (0..3 * MAX_BATCH_OPS as u32)
            .map(|i| put(Table::Messages, &i.to_be_bytes(), b"v"))
            .collect();
        store.write(ops).await.unwrap();
        let after = store.stats();
        assert_eq!(after.commits - before.commits, 1);
        assert_eq!(
            store.scan(Table::Messages).unwrap().len(),
            3 * MAX_BATCH_OPS
        );
    }

    #[tokio::test]
    async fn nowait_then_write_is_ordered_and_durable() {
        let dir = TempDir::new("nowait");
        {
            let store = Store::open(&dir.0).unwrap();
            store.write_nowait(vec![put(Table::Sessions, b"gone", b"v")]);
            store.write_nowait(vec![put(Table::Sessions, b"kept", b"v")]);
            store
                .write(vec![del(Table::Sessions, b"gone")])
                .await
                .unwrap();
            assert_eq!(
                keys(&store.scan(Table::Sessions).unwrap()),
                vec![b"kept".to_vec()]
            );
            // An empty write is a flush for what write_nowait queued.
            store.write_nowait(vec![put(Table::Meta, b"flushed", b"v")]);
            store.write(Vec::new()).await.unwrap();
            assert_eq!(store.scan(Table::Meta).unwrap().len(), 1);
        }
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(
            keys(&store.scan(Table::Sessions).unwrap()),
            vec![b"kept".to_vec()]
        );
        assert_eq!(
            keys(&store.scan(Table::Meta).unwrap()),
            vec![b"flushed".to_vec()]
        );
    }

    #[tokio::test]
    async fn close_commits_queued_writes_then_refuses() {
        let dir = TempDir::new("close");
        let store = Store::open(&dir.0).unwrap();
        let clone = store.clone();
        store.write_nowait(vec![put(Table::Retained, b"queued", b"v")]);
        store.close().await;

        assert!(matches!(
            store.write(vec![put(Table::Retained, b"late", b"v")]).await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(
            clone.write(Vec::new()).await,
            Err(StoreError::Closed)
        ));
        clone.write_nowait(vec![put(Table::Retained, b"late-nowait", b"v")]);
        assert!(matches!(
            store.scan(Table::Retained),
            Err(StoreError::Closed)
        ));
        clone.close().await;

        // Closing released the file while handles still exist.
        let reopened = Store::open(&dir.0).unwrap();
        assert_eq!(
            keys(&reopened.scan(Table::Retained).unwrap()),
            vec![b"queued".to_vec()]
        );
    }

    const CRASH_DIR_ENV: &str = "MQEDGE_STORE_CRASH_DIR";
    const CRASH_ACKS: u32 = 300;

    /// Run as a child process by `kill9_keeps_every_acknowledged_write`: writes numbered keys
    /// and prints each one after `write` resolves, until it is killed.
    #[tokio::test]
    #[ignore = "helper process for kill9_keeps_every_acknowledged_write"]
    async fn crash_child_writer() {
        let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
            return;
        };
        let store = Store::open(Path::new(&dir)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i: u32 = 0;
        while Instant::now() < deadline {
            // Unacknowledged traffic alongside, so the kill lands in a busy writer.
            store.write_nowait(vec![put(Table::Retained, &i.to_be_bytes(), &[7; 512])]);
            store
                .write(vec![put(Table::Messages, &i.to_be_bytes(), &[1; 512])])
                .await
                .unwrap();
            println!("acked {i}");
            i += 1;
        }
    }

    #[test]
    fn kill9_keeps_every_acknowledged_write() {
        let dir = TempDir::new("kill9");
        let module = module_path!();
        let module = module.split_once("::").map_or(module, |(_, rest)| rest);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{module}::crash_child_writer")])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CRASH_DIR_ENV, &dir.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut last_acked = None;
        let stdout = BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("acked ") {
                let n: u32 = n.parse().unwrap();
                last_acked = Some(n);
                if n >= CRASH_ACKS {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let last_acked = last_acked.expect("the child process acknowledged no write");
        assert!(last_acked >= CRASH_ACKS, "child stopped at {last_acked}");

        let store = Store::open(&dir.0).unwrap();
        let rows = store.scan(Table::Messages).unwrap();
        assert!(rows.len() as u64 > u64::from(last_acked));
        for i in 0..=last_acked {
            assert_eq!(
                rows[i as usize].0,
                i.to_be_bytes(),
                "acknowledged key {i} lost"
            );
            assert_eq!(rows[i as usize].1, vec![1; 512]);
        }
        // The store still takes writes after recovery.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(store.write(vec![del_prefix(Table::Messages, &[])]))
            .unwrap();
        assert!(store.scan(Table::Messages).unwrap().is_empty());
    }
}

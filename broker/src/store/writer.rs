//! The writer thread: the only place that writes to the database. It blocks for the first queued
//! call, takes whatever else is already queued (up to the batch caps), commits it all in one
//! durable transaction, answers every waiter, and repeats until the queue is closed and drained.
//! A batch that fails is tried again call by call, so one call's failure is not another's; after
//! an I/O error (redb then refuses every write until the file is opened again) the writer opens
//! the file again, before the retries and at each batch until it succeeds.
//! Imports the store's leaf modules (`table`, `error`, `stats`), never the store's handle.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError, Durability, RepairSession, StorageError, TransactionError};
use tokio::sync::{mpsc, oneshot, watch};

use super::error::{message, StoreError};
use super::stats::Counters;
use super::table::{prefix_end, Op};

/// A batch stops growing past this many ops, so one commit (and the waiters it holds) stays short.
pub(super) const MAX_BATCH_OPS: usize = 10_000;
/// A batch stops growing past this many key/value bytes, for the same reason.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// redb's page cache. Reads are one recovery scan at startup, so the 1 GiB default would mostly
/// buy resident memory on an edge node; a tenth of this is redb's write buffer.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Longest the writer waits for scans to let go of a failed database before opening it again.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// The open database, shared by the handle (scans) and the writer (which replaces it after an
/// I/O error); `None` once closed, or while it could not be opened again.
pub(super) type Shared = Arc<RwLock<Option<Arc<Database>>>>;

/// Opens (or creates) the database file, repairing a file left by a crash.
pub(super) fn open_file(path: &Path) -> Result<Database, DatabaseError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .set_repair_callback(log_repair)
        .create(path)
}

fn log_repair(session: &mut RepairSession) {
    tracing::warn!(
        progress = format_args!("{:.0}%", session.progress() * 100.0),
        "store was not closed cleanly: repairing"
    );
}

/// What a handle sends the writer.
pub(super) enum Msg {
    /// Ops of one `write`/`write_nowait` call.
    Write(Pending),
    /// Commit what is queued, refuse new writes, stop.
    Close,
}

/// One `write`/`write_nowait` call waiting in the queue.
pub(super) struct Pending {
    ops: Vec<Op>,
    /// `None` for `write_nowait`: nobody waits for the commit.
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

impl Pending {
    /// A call's ops, and who to tell once they are durable (if anyone waits).
    pub(super) fn new(ops: Vec<Op>, done: Option<oneshot::Sender<Result<(), StoreError>>>) -> Self {
        Pending { ops, done }
    }

    fn bytes(&self) -> usize {
        self.ops.iter().map(Op::size).sum()
    }
}

/// Starts the writer thread on the database in `shared`. When it has committed its last batch
/// it releases the database and only then sets `stopped`, so whoever waits on it may reopen
/// the file.
pub(super) fn spawn(
    shared: Shared,
    rx: mpsc::UnboundedReceiver<Msg>,
    counters: Arc<Counters>,
    path: PathBuf,
    stopped: watch::Sender<bool>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("mqedge-store".to_string())
        .spawn(move || {
            let mut db = current(&shared);
            run(&mut db, &shared, rx, &counters, &path);
            // Release the file before anyone waiting in `close` is told we stopped.
            drop(db);
            let _ = stopped.send(true);
        })
}

fn current(shared: &Shared) -> Option<Arc<Database>> {
    shared
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The writer loop. Returns when the queue is closed and drained.
fn run(
    db: &mut Option<Arc<Database>>,
    shared: &Shared,
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
        let (batch, n_ops) = gather(first, &mut rx, &mut carry);
        if db.is_none() {
            *db = reopen(shared, path);
        }
        let result = commit_on(db.as_deref(), &batch);
        report(&result, &batch, n_ops, counters, path);
        if result.is_err() && db.as_deref().is_some_and(refuses_writes) {
            release(db, shared);
            *db = reopen(shared, path);
        }
        match result {
            Ok(()) => answer(batch, &Ok(())),
            // one call's failure must not take the others of its batch with it: each is
            // tried again in its own transaction and answered for itself
            Err(_) if batch.len() > 1 => {
                for pending in batch {
                    let one = std::slice::from_ref(&pending);
                    let result = commit_on(db.as_deref(), one);
                    report(&result, one, pending.ops.len(), counters, path);
                    answer(vec![pending], &result);
                }
            }
            Err(e) => answer(batch, &Err(e)),
        }
    }
}

fn commit_on(db: Option<&Database>, batch: &[Pending]) -> Result<(), String> {
    match db {
        Some(db) => commit(db, batch),
        None => Err("cannot open the database again after an I/O error".to_string()),
    }
}

/// Whether redb refuses every write from now on (it does after an I/O error, until the file is
/// opened again).
fn refuses_writes(db: &Database) -> bool {
    matches!(
        db.begin_write(),
        Err(TransactionError::Storage(StorageError::PreviousIo))
    )
}

/// Lets go of a failed database: takes it from the handle and waits (bounded) for running
/// scans to drop their copies, so that the file is closed and may be opened again.
fn release(db: &mut Option<Arc<Database>>, shared: &Shared) {
    shared
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(mut last) = db.take() else {
        return;
    };
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        match Arc::try_unwrap(last) {
            Ok(file) => return drop(file),
            Err(still) if Instant::now() < deadline => {
                last = still;
                thread::sleep(Duration::from_millis(5));
            }
            // a scan still holds it: opening again fails until it finishes, and is retried
            Err(_) => return,
        }
    }
}

/// Opens the database file again (repairing it) and hands it to the handle too; `None` while
/// that fails (retried at the next batch).
fn reopen(shared: &Shared, path: &Path) -> Option<Arc<Database>> {
    match open_file(path) {
        Ok(file) => {
            let file = Arc::new(file);
            *shared.write().unwrap_or_else(PoisonError::into_inner) = Some(file.clone());
            tracing::warn!(path = %path.display(), "store opened again after an I/O error");
            Some(file)
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "store cannot be opened again");
            None
        }
    }
}

/// The batch that starts with `first`: every call already queued, up to the caps. The first call
/// is taken whole even over the caps (a call is never split); a call that would push the batch
/// over them is left in `carry` to start the next one. Returns the batch and its op count.
fn gather(
    first: Pending,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    carry: &mut Option<Pending>,
) -> (Vec<Pending>, usize) {
    let mut n_ops = first.ops.len();
    let mut n_bytes = first.bytes();
    let mut batch = vec![first];
    while n_ops < MAX_BATCH_OPS && n_bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(Msg::Write(pending)) => {
                let ops = pending.ops.len();
                let bytes = pending.bytes();
                if n_ops + ops > MAX_BATCH_OPS || n_bytes + bytes > MAX_BATCH_BYTES {
                    *carry = Some(pending);
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
    (batch, n_ops)
}

/// Counts a commit, or counts and logs a failed one with how many unacknowledged ops it held.
fn report(
    result: &Result<(), String>,
    batch: &[Pending],
    n_ops: usize,
    counters: &Counters,
    path: &Path,
) {
    match result {
        Ok(()) => {
            let bytes = batch.iter().flat_map(|p| &p.ops).map(Op::size).sum();
            counters.committed(n_ops, bytes);
            tracing::trace!(calls = batch.len(), ops = n_ops, "store commit");
        }
        Err(e) => {
            counters.failed();
            let unwaited: usize = batch
                .iter()
                .filter(|p| p.done.is_none())
                .map(|p| p.ops.len())
                .sum();
            tracing::error!(
                path = %path.display(),
                error = %e,
                ops = n_ops,
                unacknowledged_ops = unwaited,
                "store commit failed"
            );
        }
    }
}

/// Tells every waiter of the batch how its commit went.
fn answer(batch: Vec<Pending>, result: &Result<(), String>) {
    for pending in batch {
        if let Some(done) = pending.done {
            let answer = match result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Db(e.clone())),
            };
            // The caller may have stopped waiting; the ops are committed regardless.
            let _ = done.send(answer);
        }
    }
}

/// Which ops of the batch (in order) a later put or delete of the same key in the same batch
/// overwrites: they need not be applied, since nothing reads between them. The common case
/// is a message row stored for a subscriber and deleted by its acknowledgement within one
/// commit (and the same rows on a session's replica).
fn overwritten<'a>(ops: impl DoubleEndedIterator<Item = &'a Op>, n: usize) -> Vec<bool> {
    let mut dead = vec![false; n];
    let mut later: std::collections::HashSet<(usize, &[u8])> =
        std::collections::HashSet::with_capacity(n);
    for (i, op) in ops.rev().enumerate() {
        match op {
            Op::Put { table, key, .. } | Op::Delete { table, key } => {
                if !later.insert((table.index(), key.as_slice())) {
                    dead[n - 1 - i] = true;
                }
            }
            // what a prefix delete removes depends on every write before it
            Op::DeletePrefix { .. } => later.clear(),
        }
    }
    dead
}

/// Applies every op of the batch, in order, in one write transaction and commits it durably
/// (an op a later one of the batch overwrites is skipped). On any error the transaction is
/// dropped (aborted), so the batch applies entirely or not at all.
fn commit(db: &Database, batch: &[Pending]) -> Result<(), String> {
    let n: usize = batch.iter().map(|p| p.ops.len()).sum();
    let dead = overwritten(batch.iter().flat_map(|pending| &pending.ops), n);
    let mut txn = db.begin_write().map_err(message)?;
    txn.set_durability(Durability::Immediate);
    {
        let mut tables: [Option<redb::Table<&[u8], &[u8]>>; 6] = Default::default();
        let ops = batch.iter().flat_map(|pending| &pending.ops);
        for (op, _) in ops.zip(&dead).filter(|(_, dead)| !**dead) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Table;

    fn put(k: &[u8]) -> Op {
        Op::Put {
            table: Table::Messages,
            key: k.to_vec(),
            value: b"v".to_vec(),
        }
    }

    fn del(k: &[u8]) -> Op {
        Op::Delete {
            table: Table::Messages,
            key: k.to_vec(),
        }
    }

    #[test]
    fn a_write_a_later_one_of_the_same_key_overwrites_is_skipped() {
        let other_table = Op::Put {
            table: Table::Sessions,
            key: b"a".to_vec(),
            value: Vec::new(),
        };
        let ops = [
            put(b"a"),
            put(b"b"),
            del(b"a"),
            other_table,
            put(b"a"),
            del(b"c"),
        ];
        let dead = overwritten(ops.iter(), ops.len());
        assert_eq!(dead, [true, false, true, false, false, false]);
        // a prefix delete: nothing before it is skipped for what comes after it
        let ops = [
            put(b"a"),
            Op::DeletePrefix {
                table: Table::Messages,
                prefix: Vec::new(),
            },
            del(b"a"),
        ];
        assert_eq!(overwritten(ops.iter(), 3), [false, false, false]);
    }
}

#[cfg(test)]
mod model {
    use super::*;
    use crate::store::Table;
    use crate::test_rng::Rng;
    use std::collections::BTreeMap;

    type Model = BTreeMap<(usize, Vec<u8>), Vec<u8>>;

    fn apply_all<'a>(m: &mut Model, ops: impl Iterator<Item = &'a Op>) {
        for op in ops {
            match op {
                Op::Put { table, key, value } => {
                    m.insert((table.index(), key.clone()), value.clone());
                }
                Op::Delete { table, key } => {
                    m.remove(&(table.index(), key.clone()));
                }
                Op::DeletePrefix { table, prefix } => {
                    m.retain(|(t, k), _| !(*t == table.index() && k.starts_with(prefix)))
                }
            }
        }
    }

    /// Skipping the overwritten ops leaves every table as applying them all does, from any
    /// start: random batches over a few keys of two tables, with prefix deletes.
    #[test]
    fn skipping_overwritten_ops_changes_no_outcome() {
        let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
        let tables = [Table::Messages, Table::Subscriptions];
        let keys: [&[u8]; 5] = [b"a", b"ab", b"b", b"ba", b"c"];
        for _ in 0..2000 {
            let mut start = Model::new();
            for k in keys {
                if rng.below(2) == 0 {
                    start.insert((tables[0].index(), k.to_vec()), b"old".to_vec());
                }
            }
            let n = 1 + rng.below(12);
            let ops: Vec<Op> = (0..n)
                .map(|i| {
                    let table = tables[rng.below(2)];
                    let key = keys[rng.below(keys.len())].to_vec();
                    match rng.below(7) {
                        0 => Op::DeletePrefix {
                            table,
                            prefix: key[..1].to_vec(),
                        },
                        1..=3 => Op::Delete { table, key },
                        _ => Op::Put {
                            table,
                            key,
                            value: vec![i as u8],
                        },
                    }
                })
                .collect();
            let dead = overwritten(ops.iter(), ops.len());
            let mut all = start.clone();
            apply_all(&mut all, ops.iter());
            let mut kept = start;
            apply_all(
                &mut kept,
                ops.iter().zip(&dead).filter(|(_, d)| !**d).map(|(o, _)| o),
            );
            assert_eq!(all, kept, "{ops:?}");
        }
    }
}

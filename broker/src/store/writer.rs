//! The writer thread: the only place that writes to the database. It blocks for the first queued
//! call, takes whatever else is already queued (up to the batch caps), commits it all in one
//! durable transaction, answers every waiter, and repeats until the queue is closed and drained.
//! Imports the store's leaf modules (`table`, `error`, `stats`), never the store's handle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use redb::{Database, Durability};
use tokio::sync::{mpsc, oneshot, watch};

use super::error::{message, StoreError};
use super::stats::Counters;
use super::table::{prefix_end, Op};

/// A batch stops growing past this many ops, so one commit (and the waiters it holds) stays short.
pub(super) const MAX_BATCH_OPS: usize = 10_000;
/// A batch stops growing past this many key/value bytes, for the same reason.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

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

/// Starts the writer thread on `db`. When it has committed its last batch it releases the
/// database and only then sets `stopped`, so whoever waits on it may reopen the file.
pub(super) fn spawn(
    db: Arc<Database>,
    rx: mpsc::UnboundedReceiver<Msg>,
    counters: Arc<Counters>,
    path: PathBuf,
    stopped: watch::Sender<bool>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("mqedge-store".to_string())
        .spawn(move || {
            run(&db, rx, &counters, &path);
            // Release the file before anyone waiting in `close` is told we stopped.
            drop(db);
            let _ = stopped.send(true);
        })
}

/// The writer loop. Returns when the queue is closed and drained.
fn run(db: &Database, mut rx: mpsc::UnboundedReceiver<Msg>, counters: &Counters, path: &Path) {
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
        let result = commit(db, &batch);
        report(&result, &batch, n_ops, counters, path);
        match result {
            Ok(()) => answer(batch, &Ok(())),
            // one call's failure must not take the others of its batch with it: each is
            // tried again in its own transaction and answered for itself
            Err(_) if batch.len() > 1 => {
                for pending in batch {
                    let one = std::slice::from_ref(&pending);
                    let result = commit(db, one);
                    report(&result, one, pending.ops.len(), counters, path);
                    answer(vec![pending], &result);
                }
            }
            Err(e) => answer(batch, &Err(e)),
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
            counters.committed(n_ops);
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

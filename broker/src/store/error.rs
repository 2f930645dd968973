//! What the store can fail with, and the conversion of redb's errors into it. Imports nothing
//! of the store.

use std::path::PathBuf;

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
    /// Committed here, but not confirmed durable where the store's [`super::Tap`] copies it
    /// (the session's replica on another node): not to be acknowledged.
    #[error("replica: {0}")]
    Replica(String),
}

/// redb's error as one line: the writer hands the same text to every waiter of a failed commit.
pub(super) fn message(e: impl Into<redb::Error>) -> String {
    e.into().to_string()
}

/// A redb failure on a read or a commit.
pub(super) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(message(e))
}

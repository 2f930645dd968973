//! The one error type of auth, and the helpers that pin a problem to its file and line. A leaf:
//! `passwd` and `acl` both import it.

use std::fs;
use std::path::{Path, PathBuf};

use mqedge_shared::config::Located;

/// Errors, each pinned to the file and line like every mqedge config error.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A malformed line (or argument), as `file:line: what`.
    #[error("{0}")]
    Config(Located),
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file as the operator named it.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The argon2 hasher or the OS random source failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

impl AuthError {
    /// The error as one config problem, so a broken password or ACL file is reported with the
    /// config's other problems, in the same `file:line: what` (or `file: what`) form; `file`
    /// names the file being loaded (an `Io` error names its own path, the same one).
    pub fn into_located(self, file: &Path) -> Located {
        match self {
            AuthError::Config(l) => l,
            AuthError::Io { path, source } => Located {
                file: path.display().to_string(),
                line: None,
                message: source.to_string(),
            },
            AuthError::Hash(_) => Located {
                file: file.display().to_string(),
                line: None,
                message: self.to_string(),
            },
        }
    }
}

/// A `file:line: what` error (`line` is `None` for a problem with an argument, not a line).
pub(super) fn located(file: &str, line: Option<usize>, message: impl Into<String>) -> AuthError {
    AuthError::Config(Located {
        file: file.to_string(),
        line,
        message: message.into(),
    })
}

/// The whole file, or an `Io` error naming the path as the operator gave it.
pub(super) fn read_file(path: &Path) -> Result<String, AuthError> {
    fs::read_to_string(path).map_err(|source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    })
}

//! Who may connect and what they may touch: the `[auth]` password file (`user:hash` lines with
//! argon2 PHC hashes, written by `mqedge passwd`) and the mosquitto-format ACL file.
//!
//! Both are parsed up front into plain values, so a bad line is a `file:line: what` config error
//! at load or reload time, never a surprise on a client's CONNECT. Checks are pure functions of
//! those values and never panic on anything a client sends. The password file is in `passwd`;
//! the ACL in [`acl`], and the filter relations it needs on SUBSCRIBE in `filters`; `error` is
//! the leaf they share; [`hook`] asks the external service of `[auth.http]`, [`acl_hook`] the one of `[auth.http_acl]`; [`postgres`] reads users and ACL rows from `[auth.postgres]`; `state` holds them for the running node with the gate on password
//! checks. This file only declares them and re-exports their public items.

mod cache;
mod error;
mod filters;
mod passwd;
mod state;

pub mod acl;
pub mod acl_hook;
pub mod hook;
pub mod postgres;

pub use acl::{Access, Acl};
pub use error::AuthError;
pub use passwd::{hash_password, set_user, PasswordFile};
pub use state::{Auth, CheckError, Stored, CHECK_WAIT};

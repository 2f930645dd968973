//! Who may connect and what they may touch: the `[auth]` password file (`user:hash` lines with
//! argon2 PHC hashes, written by `mqedge passwd`) and the mosquitto-format ACL file.
//!
//! Both are parsed up front into plain values, so a bad line is a `file:line: what` config error
//! at load or reload time, never a surprise on a client's CONNECT. Checks are pure functions of
//! those values and never panic on anything a client sends. The password file is in `passwd`;
//! the ACL in [`acl`], and the filter relations it needs on SUBSCRIBE in `filters`; `error` is
//! the leaf they share; `state` holds them for the running node with the gate on password
//! checks. This file only declares them and re-exports their public items.

mod error;
mod filters;
mod passwd;
mod state;

pub mod acl;

pub use acl::{Access, Acl};
pub use error::AuthError;
pub use passwd::{hash_password, set_user, PasswordFile};
pub use state::{Auth, CheckError, CHECK_WAIT};

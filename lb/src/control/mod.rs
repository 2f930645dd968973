//! Tasks that steer the LB from outside a connection's path: active health checks
//! ([`health`]), reload by diff ([`reload`]), the placement feeds' poller ([`placement`], its
//! HTTP client [`feed`]) and the admin HTTP API ([`admin`]). Each runs in its own task, started
//! by `run_with` in `lib.rs`.
//!
//! May use `conn` (the listener registry, for certificate rotation), `state`, `backend`,
//! `config`, `metrics`; nothing imports `control` but the crate root.

pub mod admin;
pub mod feed;
pub mod health;
pub mod placement;
pub mod rebalance;
pub mod reload;
pub mod status;

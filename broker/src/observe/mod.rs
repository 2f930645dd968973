//! How an operator sees a running node: the admin HTTP API ([`admin`]) and the `$SYS` topics
//! ([`sys`]). Both read the broker; nothing imports them but the crate root, which starts them.
//! (The metrics registry they read is [`crate::metrics`], a leaf every module may count into.)

pub mod admin;
pub mod drain_api;
pub mod move_api;
pub mod placement;
pub mod status;
pub mod sys;

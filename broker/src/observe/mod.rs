//! How an operator sees a running node: the admin HTTP API ([`admin`]), the Prometheus
//! registry with its handles ([`metrics`]), and the `$SYS` topics ([`sys`]). `metrics` is a leaf
//! that everything may import; `admin` and `sys` read the broker and nothing imports them but
//! the crate root, which starts them.

pub mod admin;
pub mod metrics;
pub mod sys;

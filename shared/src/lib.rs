//! Pieces both mqedge roles need and that must behave identically in each: config primitives
//! (durations, sizes, addresses with `file:line` errors), TLS/PEM loading and client-certificate
//! facts, the PROXY protocol (v2 out with HAProxy-compatible SSL TLVs, v1/v2 in), the accept
//! loop's error handling, the admin HTTP skeleton, dev certificate generation, and MQTT over WebSocket (`ws`). (The MQTT
//! wire rules, the CONNECT peek included, are `mqedge-protocol`'s.)
#![forbid(unsafe_code)]

pub mod admin;
pub mod certs;
pub mod config;
pub mod drain;
pub mod io;
pub mod net;
pub mod placement;
pub mod proxy;
pub mod status;
pub mod tls;
pub mod ws;

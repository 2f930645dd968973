//! The MQTT 3.1.1 / 5.0 codec: [`decode`] turns the front of a read buffer into a [`Packet`] (or
//! says it needs more bytes), [`encode`] appends a packet's bytes. Pure — no I/O, no clock — so it
//! is unit-tested, fuzzed (a seeded random-input test in `tests/fuzz.rs`, and the cargo-fuzz
//! targets `codec_decode` and `peek_connect` in `fuzz/`, see docs/reliability.md) and
//! benchmarked alone.
//!
//! Decoding enforces the normative statements that concern one packet in isolation, each cited as
//! `MQTT-x.y.z-n` where it is checked (3.1.1 numbering unless marked v5). Statements that need
//! session or configuration state — topic name and filter syntax, topic aliases, packet
//! identifiers in flight, authentication — belong to the broker. PUBLISH payloads and other binary
//! fields are slices of the read buffer, never copies. Each v5 property set is declared once (see
//! `properties!`), and both directions are derived from that declaration.
//!
//! Files by phase: [`error`] (why decoding failed), `reader` (the packet cursor), `decode` (one
//! function per packet), `encode`, `properties` (the v5 property sets, both directions). They
//! all stand on the crate's wire primitives (`wire.rs`), as the CONNECT peek does.

mod decode;
mod encode;
mod error;
mod properties;
mod reader;

pub use decode::decode;
pub use encode::{encode, encoded_len};
pub use error::DecodeError;

#[cfg(test)]
mod tests;

//! mqedge-protocol: the one implementation of the MQTT wire rules (3.1, 3.1.1 and 5.0) that the
//! broker, the LB and the bench share. Packet types ([`packets`]) and a pure codec ([`codec`]):
//! bytes in, packets out (or `Incomplete`), packets in, bytes out; the LB's allocation-free
//! CONNECT [`peek`]; the topic name and filter rules ([`topic`]); the reason codes and their
//! names ([`reason`]). No I/O here, so all of it is unit-tested, fuzzed (seeded random-input
//! tests, and cargo-fuzz targets for the codec and the peek in `fuzz/`) and benchmarked alone.
//!
//! Why our own codec rather than `mqttbytes` 0.6: that crate does not validate SUBSCRIBE's fixed
//! header flags (MQTT-3.8.1-1), the reserved subscription option bits (MQTT-3.8.3-4/5) or an
//! empty filter list (MQTT-3.8.3-3), has no AUTH packet, no MQTT 3.1, and is unmaintained; the
//! independent conformance suite this broker is measured with checks exactly those statements.
#![forbid(unsafe_code)]

pub mod codec;
pub mod packets;
pub mod peek;
pub mod reason;
pub mod topic;
mod wire;

pub use codec::*;
pub use packets::*;

//! MQTT 3.1.1 and 5.0 wire protocol: packet types ([`packets`]) and a pure codec ([`codec`]):
//! bytes in, packets out (or `Incomplete`), packets in, bytes out. No I/O here, so the codec is
//! unit-tested (plus a seeded random-input test; no cargo-fuzz yet) and benchmarked alone.
//!
//! Why our own codec rather than `mqttbytes` 0.6: that crate does not validate SUBSCRIBE's fixed
//! header flags (MQTT-3.8.1-1), the reserved subscription option bits (MQTT-3.8.3-4/5) or an
//! empty filter list (MQTT-3.8.3-3), has no AUTH packet, no MQTT 3.1, and is unmaintained; the
//! independent conformance suite this broker is measured with checks exactly those statements.

pub mod codec;
pub mod packets;

pub use codec::*;
pub use packets::*;

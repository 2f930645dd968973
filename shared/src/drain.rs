//! The drain handshake between an LB and a broker node (docs/cluster.md, "Draining a node"): a
//! draining node answers every CONNECT with CONNACK "use another server" (MQTT 5 `0x9C`), and
//! the LB, having put that backend in `draining`, says so in its next health check's CONNECT
//! with these user properties. Both roles name them from here.

/// User property of an LB health check's CONNECT: the LB stopped sending new clients to this
/// backend because it answered "draining". The value is the LB's `[lb] name`.
pub const ACK: &str = "mqedge-drain-ack";
/// User property next to [`ACK`]: the LB's forwarded connections to this backend now (decimal).
pub const LB_CONNECTIONS: &str = "mqedge-lb-connections";

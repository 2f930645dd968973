//! What publisher and subscriber loops share: the live counters, the set of packet identifiers
//! in flight, the acknowledgements QoS 1/2 need, the answer to the server's PUBREL and
//! DISCONNECT, and the keep-alive timer.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::BytesMut;
use mqedge_protocol::{encode, Packet, PubAck, Publish, QoS, Version};
use tokio::time::Instant;

use super::client::{ClientError, Conn};

/// Live counters, read by the progress bar and the coordinator.
#[derive(Default)]
pub struct Counters {
    /// PUBLISH packets encoded for sending.
    pub sent: AtomicU64,
    /// Successful PUBACK / PUBCOMP.
    pub acked: AtomicU64,
    /// Deliveries to subscribers.
    pub received: AtomicU64,
    /// Lost connections, failure codes, acks that never came.
    pub errors: AtomicU64,
}

/// 65,536 bits: which packet identifiers are in use.
pub struct IdSet(Box<[u64; 1024]>);

impl IdSet {
    /// An empty set.
    pub fn new() -> IdSet {
        IdSet(Box::new([0; 1024]))
    }
    /// Whether `id` is in use.
    pub fn contains(&self, id: u16) -> bool {
        self.0[usize::from(id >> 6)] & (1 << (id & 63)) != 0
    }
    /// Inserts; false when it was there.
    pub fn insert(&mut self, id: u16) -> bool {
        let had = self.contains(id);
        self.0[usize::from(id >> 6)] |= 1 << (id & 63);
        !had
    }
    /// Removes; false when it was not there.
    pub fn remove(&mut self, id: u16) -> bool {
        let had = self.contains(id);
        self.0[usize::from(id >> 6)] &= !(1 << (id & 63));
        had
    }
}

/// An acknowledgement packet (PUBACK, PUBREC, PUBREL, PUBCOMP) with success code.
pub fn ack(kind: fn(PubAck) -> Packet, id: u16) -> Packet {
    kind(PubAck {
        packet_id: id,
        code: 0,
        properties: Default::default(),
    })
}

/// Queues the acknowledgement a received PUBLISH needs; true when it is a new message (not a
/// QoS 2 retransmission of one still awaiting PUBREL).
pub fn ack_publish(p: &Publish, v: Version, q2: &mut IdSet, wbuf: &mut BytesMut) -> bool {
    match (p.qos, p.packet_id) {
        (QoS::AtLeastOnce, Some(id)) => {
            encode(&ack(Packet::PubAck, id), v, wbuf);
            true
        }
        (QoS::ExactlyOnce, Some(id)) => {
            encode(&ack(Packet::PubRec, id), v, wbuf);
            q2.insert(id)
        }
        _ => true,
    }
}

/// Handles what both loops answer alike once their own packets are matched: a PUBREL
/// completes a QoS 2 delivery from the server, a DISCONNECT from the server ends the loop,
/// anything else is ignored.
pub fn answer_server(conn: &mut Conn, p: Packet, q2: &mut IdSet) -> Result<(), ClientError> {
    match p {
        Packet::PubRel(r) => {
            q2.remove(r.packet_id);
            encode(
                &ack(Packet::PubComp, r.packet_id),
                conn.version,
                &mut conn.wbuf,
            );
            Ok(())
        }
        Packet::Disconnect(d) => Err(ClientError::Protocol {
            addr: conn.addr,
            what: format!("DISCONNECT from the server (0x{:02X})", d.code),
        }),
        _ => Ok(()),
    }
}

/// PINGREQ every keep-alive interval (never, for 0).
pub fn keepalive_timer(keep_alive: u16) -> tokio::time::Interval {
    let every = match keep_alive {
        0 => Duration::from_secs(86_400 * 365),
        k => Duration::from_secs(u64::from(k)),
    };
    let mut t = tokio::time::interval_at(Instant::now() + every, every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_set() {
        let mut s = IdSet::new();
        assert!(s.insert(1) && s.insert(65535) && !s.insert(1));
        assert!(s.contains(65535) && s.remove(65535) && !s.remove(65535));
        assert!(s.contains(1) && !s.contains(2));
    }
}

//! One publishing connection's event loop: PUBLISH at `--rate` (or as fast as the QoS 1/2
//! window allows) with the send time in the first 8 payload bytes, acks read concurrently
//! (PUBACK; PUBREC → PUBREL → PUBCOMP), then a wait for outstanding acks before DISCONNECT.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use mqedge_protocol::{encode, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::client::{ClientError, Conn};
use super::flow::{ack, ack_publish, keepalive_timer, Counters, IdSet};
use super::setup::Clock;

/// Encoded bytes a publisher buffers before it waits for the socket.
const HIGH_WATER: usize = 64 * 1024;
/// How long publishers wait for outstanding acks after their last send.
const ACK_DRAIN: Duration = Duration::from_secs(10);

/// What one publisher did.
#[derive(Default)]
pub struct PubOutcome {
    /// PUBLISH packets sent.
    pub sent: u64,
    /// Successful PUBACK / PUBCOMP.
    pub acked: u64,
    /// Connection lost, failure codes, acks that never came.
    pub errors: u64,
    /// The last ack (QoS 1/2) or the end of sending (QoS 0).
    pub last: Option<Instant>,
}

/// One publishing connection's event loop.
pub struct Publisher {
    /// The connection.
    pub conn: Conn,
    /// The PUBLISH to send (topic, QoS, payload); its packet id changes per message.
    pub template: Packet,
    /// Payload bytes (the tail of each encoded packet).
    pub size: usize,
    /// QoS.
    pub qos: QoS,
    /// QoS 1/2 messages awaiting acks at most.
    pub window: usize,
    /// Time between sends (`None`: as fast as possible).
    pub interval: Option<Duration>,
    /// When the first send is due.
    pub first: Instant,
    /// Messages to send.
    pub count: Option<u64>,
    /// When sending stops.
    pub end: Option<Instant>,
    /// Timestamp source.
    pub clock: Clock,
    /// Shared live counters.
    pub counters: Arc<Counters>,
    /// Ctrl-C.
    pub stop: watch::Receiver<bool>,
    /// PINGREQ interval, seconds.
    pub keep_alive: u16,
}

impl Publisher {
    pub async fn run(mut self) -> PubOutcome {
        let mut out = PubOutcome::default();
        let mut in_flight = IdSet::new();
        let mut released = IdSet::new(); // QoS 2: PUBREL sent, waiting for PUBCOMP
        let mut incoming_q2 = IdSet::new();
        let mut outstanding = 0usize;
        let mut next_id: u16 = 0;
        let mut next_at = self.first;
        let mut done = false;
        let mut drain_until: Option<Instant> = None;
        let mut ping = keepalive_timer(self.keep_alive);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let now = Instant::now();
            if !done
                && (self.count.is_some_and(|c| out.sent >= c)
                    || self.end.is_some_and(|e| now >= e)
                    || *self.stop.borrow())
            {
                done = true;
                drain_until = Some(now + ACK_DRAIN);
            }
            if done && outstanding == 0 && self.conn.wbuf.is_empty() {
                break;
            }
            // with --rate, a send scheduled at or after the end is not due
            let may_send = !done
                && self.conn.wbuf.len() < HIGH_WATER
                && (self.qos == QoS::AtMostOnce || outstanding < self.window)
                && (self.interval.is_none() || self.end.is_none_or(|e| next_at < e));
            let c = &mut self.conn;
            tokio::select! {
                biased;
                r = c.rd.read_buf(&mut c.rbuf) => {
                    let res = c.check_read(r).and_then(|()| {
                        self.handle_incoming(
                            &mut out, &mut in_flight, &mut released, &mut incoming_q2,
                            &mut outstanding,
                        )
                    });
                    if res.is_err() {
                        out.errors += 1 + outstanding as u64;
                        self.counters.errors.fetch_add(1 + outstanding as u64, Relaxed);
                        return out;
                    }
                }
                r = c.wr.write_buf(&mut c.wbuf), if !c.wbuf.is_empty() => {
                    if !matches!(r, Ok(n) if n > 0) {
                        out.errors += 1 + outstanding as u64;
                        self.counters.errors.fetch_add(1 + outstanding as u64, Relaxed);
                        return out;
                    }
                }
                _ = sleep_until(next_at), if may_send && self.interval.is_some() => {
                    self.put_publish(&mut next_id, &mut in_flight, &mut outstanding);
                    out.sent += 1;
                    self.counters.sent.fetch_add(1, Relaxed);
                    next_at += self.interval.unwrap_or_default();
                }
                _ = std::future::ready(()), if may_send && self.interval.is_none() => {
                    let mut n = 0;
                    while self.conn.wbuf.len() < HIGH_WATER
                        && (self.qos == QoS::AtMostOnce || outstanding < self.window)
                        && self.count.is_none_or(|c| out.sent + n < c)
                    {
                        self.put_publish(&mut next_id, &mut in_flight, &mut outstanding);
                        n += 1;
                    }
                    out.sent += n;
                    self.counters.sent.fetch_add(n, Relaxed);
                }
                _ = sleep_until(self.end.unwrap_or(far)), if !done && self.end.is_some() => {}
                _ = self.stop.changed(), if !done => {}
                _ = sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => {
                    // acks that never came
                    out.errors += outstanding as u64;
                    self.counters.errors.fetch_add(outstanding as u64, Relaxed);
                    break;
                }
                _ = ping.tick() => encode(&Packet::PingReq, self.conn.version, &mut self.conn.wbuf),
            }
        }
        if self.qos == QoS::AtMostOnce {
            out.last = Some(Instant::now());
        }
        self.conn.close().await;
        out
    }

    /// Appends one PUBLISH with the send time in its first 8 payload bytes.
    fn put_publish(&mut self, next_id: &mut u16, in_flight: &mut IdSet, outstanding: &mut usize) {
        let id = if self.qos == QoS::AtMostOnce {
            None
        } else {
            // outstanding < window <= 65,535, so a free identifier exists
            loop {
                *next_id = next_id.wrapping_add(1).max(1);
                if in_flight.insert(*next_id) {
                    break;
                }
            }
            *outstanding += 1;
            Some(*next_id)
        };
        if let Packet::Publish(p) = &mut self.template {
            p.packet_id = id;
        }
        let wbuf = &mut self.conn.wbuf;
        encode(&self.template, self.conn.version, wbuf);
        // the payload is the tail of the encoded packet
        let at = wbuf.len() - self.size;
        wbuf[at..at + 8].copy_from_slice(&self.clock.now_ns().to_be_bytes());
    }

    /// Handles every complete packet in the read buffer: acks release the window.
    fn handle_incoming(
        &mut self,
        out: &mut PubOutcome,
        in_flight: &mut IdSet,
        released: &mut IdSet,
        incoming_q2: &mut IdSet,
        outstanding: &mut usize,
    ) -> Result<(), ClientError> {
        let (mut acked, mut failed) = (0u64, 0u64);
        while let Some(p) = self.conn.decode()? {
            let v = self.conn.version;
            match p {
                // the guards take the identifier out of flight: an unknown one is ignored
                Packet::PubAck(a)
                    if self.qos == QoS::AtLeastOnce && in_flight.remove(a.packet_id) =>
                {
                    *outstanding -= 1;
                    if a.code >= 0x80 {
                        failed += 1;
                    } else {
                        acked += 1;
                    }
                }
                Packet::PubRec(a) if self.qos == QoS::ExactlyOnce => {
                    if !in_flight.contains(a.packet_id) {
                        continue;
                    }
                    if a.code >= 0x80 {
                        in_flight.remove(a.packet_id);
                        released.remove(a.packet_id);
                        *outstanding -= 1;
                        failed += 1;
                    } else {
                        released.insert(a.packet_id);
                        encode(&ack(Packet::PubRel, a.packet_id), v, &mut self.conn.wbuf);
                    }
                }
                Packet::PubComp(a)
                    if self.qos == QoS::ExactlyOnce
                        && released.remove(a.packet_id)
                        && in_flight.remove(a.packet_id) =>
                {
                    *outstanding -= 1;
                    acked += 1;
                }
                Packet::Publish(p) => {
                    ack_publish(&p, v, incoming_q2, &mut self.conn.wbuf);
                }
                Packet::PubRel(r) => {
                    incoming_q2.remove(r.packet_id);
                    encode(&ack(Packet::PubComp, r.packet_id), v, &mut self.conn.wbuf);
                }
                Packet::Disconnect(d) => {
                    return Err(ClientError::Protocol {
                        addr: self.conn.addr,
                        what: format!("DISCONNECT from the server (0x{:02X})", d.code),
                    })
                }
                _ => {}
            }
        }
        if acked + failed > 0 {
            out.last = Some(Instant::now());
        }
        out.acked += acked;
        out.errors += failed;
        self.counters.acked.fetch_add(acked, Relaxed);
        self.counters.errors.fetch_add(failed, Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use mqedge_protocol::{Publish, Version};

    use super::*;

    #[test]
    fn timestamp_lands_in_the_payload() {
        let clock = Clock::new();
        let mut wbuf = BytesMut::new();
        let tpl = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: Some(7),
            properties: Default::default(),
            payload: Bytes::from(vec![b'x'; 16]),
        });
        encode(&tpl, Version::V311, &mut wbuf);
        let at = wbuf.len() - 16;
        let ts = clock.now_ns();
        wbuf[at..at + 8].copy_from_slice(&ts.to_be_bytes());
        let p = mqedge_protocol::decode(&mut wbuf, Some(Version::V311), 1 << 20)
            .unwrap()
            .unwrap();
        let Packet::Publish(p) = p else { panic!() };
        assert_eq!(&p.payload[..8], &ts.to_be_bytes());
        assert_eq!(&p.payload[8..], b"xxxxxxxx");
    }
}

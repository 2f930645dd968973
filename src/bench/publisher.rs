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
use super::flow::{ack, ack_publish, answer_server, keepalive_timer, Counters, IdSet};
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

/// The identifier and window state of one publisher's messages.
struct Flight {
    /// QoS 1/2: sent, not yet acked.
    in_flight: IdSet,
    /// QoS 2: PUBREL sent, waiting for PUBCOMP.
    released: IdSet,
    /// QoS 2 deliveries from the server awaiting its PUBREL.
    incoming_q2: IdSet,
    /// Messages awaiting acks (the window in use).
    outstanding: usize,
    /// The last packet identifier handed out.
    next_id: u16,
}

impl Flight {
    fn new() -> Flight {
        Flight {
            in_flight: IdSet::new(),
            released: IdSet::new(),
            incoming_q2: IdSet::new(),
            outstanding: 0,
            next_id: 0,
        }
    }
}

impl Publisher {
    pub async fn run(mut self) -> PubOutcome {
        let mut out = PubOutcome::default();
        if !self.exchange(&mut out).await {
            return out;
        }
        if self.qos == QoS::AtMostOnce {
            out.last = Some(Instant::now());
        }
        self.conn.close().await;
        out
    }

    /// Sends and reads acks until sending is over and every ack came or the drain timed out
    /// (true), or until the connection is lost (false; counted as errors with what was in
    /// flight).
    async fn exchange(&mut self, out: &mut PubOutcome) -> bool {
        let mut f = Flight::new();
        let mut next_at = self.first;
        // set when sending is over: how long outstanding acks may still take
        let mut drain_until: Option<Instant> = None;
        let mut ping = keepalive_timer(self.keep_alive);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let now = Instant::now();
            if drain_until.is_none() && self.sending_over(out.sent, now) {
                drain_until = Some(now + ACK_DRAIN);
            }
            let done = drain_until.is_some();
            if done && f.outstanding == 0 && self.conn.wbuf.is_empty() {
                return true;
            }
            // with --rate, a send scheduled at or after the end is not due
            let may_send = !done
                && self.has_room(f.outstanding)
                && (self.interval.is_none() || self.end.is_none_or(|e| next_at < e));
            let c = &mut self.conn;
            tokio::select! {
                biased;
                r = c.rd.read_buf(&mut c.rbuf) => {
                    let res = c.check_read(r).and_then(|()| self.handle_incoming(out, &mut f));
                    if res.is_err() {
                        self.count_errors(out, 1 + f.outstanding as u64);
                        return false;
                    }
                }
                r = c.wr.write_buf(&mut c.wbuf), if !c.wbuf.is_empty() => {
                    if !matches!(r, Ok(n) if n > 0) {
                        self.count_errors(out, 1 + f.outstanding as u64);
                        return false;
                    }
                }
                _ = sleep_until(next_at), if may_send && self.interval.is_some() => {
                    self.put_publish(&mut f);
                    out.sent += 1;
                    self.counters.sent.fetch_add(1, Relaxed);
                    next_at += self.interval.unwrap_or_default();
                }
                _ = std::future::ready(()), if may_send && self.interval.is_none() => {
                    let n = self.put_burst(&mut f, out.sent);
                    out.sent += n;
                    self.counters.sent.fetch_add(n, Relaxed);
                }
                _ = sleep_until(self.end.unwrap_or(far)), if !done && self.end.is_some() => {}
                _ = self.stop.changed(), if !done => {}
                _ = sleep_until(drain_until.unwrap_or(far)), if done => {
                    // acks that never came
                    self.count_errors(out, f.outstanding as u64);
                    return true;
                }
                _ = ping.tick() => encode(&Packet::PingReq, self.conn.version, &mut self.conn.wbuf),
            }
        }
    }

    /// Whether the run's end came: `--count` sent, `--duration` over, or Ctrl-C.
    fn sending_over(&self, sent: u64, now: Instant) -> bool {
        self.count.is_some_and(|c| sent >= c)
            || self.end.is_some_and(|e| now >= e)
            || *self.stop.borrow()
    }

    /// Whether one more PUBLISH fits: the write buffer under its high water and, for QoS 1/2,
    /// the window not full.
    fn has_room(&self, outstanding: usize) -> bool {
        self.conn.wbuf.len() < HIGH_WATER
            && (self.qos == QoS::AtMostOnce || outstanding < self.window)
    }

    /// As fast as possible: appends PUBLISH packets while they fit and `--count` allows;
    /// returns how many.
    fn put_burst(&mut self, f: &mut Flight, sent: u64) -> u64 {
        let mut n = 0;
        while self.has_room(f.outstanding) && self.count.is_none_or(|c| sent + n < c) {
            self.put_publish(f);
            n += 1;
        }
        n
    }

    fn count_errors(&self, out: &mut PubOutcome, n: u64) {
        out.errors += n;
        self.counters.errors.fetch_add(n, Relaxed);
    }

    /// Appends one PUBLISH with the send time in its first 8 payload bytes.
    fn put_publish(&mut self, f: &mut Flight) {
        let id = if self.qos == QoS::AtMostOnce {
            None
        } else {
            // outstanding < window <= 65,535, so a free identifier exists
            loop {
                f.next_id = f.next_id.wrapping_add(1).max(1);
                if f.in_flight.insert(f.next_id) {
                    break;
                }
            }
            f.outstanding += 1;
            Some(f.next_id)
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
    fn handle_incoming(&mut self, out: &mut PubOutcome, f: &mut Flight) -> Result<(), ClientError> {
        let (mut acked, mut failed) = (0u64, 0u64);
        while let Some(p) = self.conn.decode()? {
            let v = self.conn.version;
            match p {
                // the guards take the identifier out of flight: an unknown one is ignored
                Packet::PubAck(a)
                    if self.qos == QoS::AtLeastOnce && f.in_flight.remove(a.packet_id) =>
                {
                    f.outstanding -= 1;
                    if a.code >= 0x80 {
                        failed += 1;
                    } else {
                        acked += 1;
                    }
                }
                Packet::PubRec(a) if self.qos == QoS::ExactlyOnce => {
                    if !f.in_flight.contains(a.packet_id) {
                        continue;
                    }
                    if a.code >= 0x80 {
                        f.in_flight.remove(a.packet_id);
                        f.released.remove(a.packet_id);
                        f.outstanding -= 1;
                        failed += 1;
                    } else {
                        f.released.insert(a.packet_id);
                        encode(&ack(Packet::PubRel, a.packet_id), v, &mut self.conn.wbuf);
                    }
                }
                Packet::PubComp(a)
                    if self.qos == QoS::ExactlyOnce
                        && f.released.remove(a.packet_id)
                        && f.in_flight.remove(a.packet_id) =>
                {
                    f.outstanding -= 1;
                    acked += 1;
                }
                Packet::Publish(p) => {
                    ack_publish(&p, v, &mut f.incoming_q2, &mut self.conn.wbuf);
                }
                other => answer_server(&mut self.conn, other, &mut f.incoming_q2)?,
            }
        }
        if acked + failed > 0 {
            out.last = Some(Instant::now());
        }
        out.acked += acked;
        self.counters.acked.fetch_add(acked, Relaxed);
        self.count_errors(out, failed);
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

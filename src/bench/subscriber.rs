//! One subscribing connection's event loop: counts deliveries (a QoS 2 retransmission once),
//! acknowledges as QoS 1/2 require, and records publish-to-delivery latency from the send time
//! in the first 8 payload bytes into its own histogram.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hdrhistogram::Histogram;
use mqedge_protocol::{encode, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{ClientError, Conn};
use super::flow::{ack_publish, answer_server, keepalive_timer, Counters, IdSet};
use super::report::new_histogram;
use super::setup::Clock;

/// A timestamp further from now than this is not ours: no latency sample.
const MAX_PLAUSIBLE_NS: u64 = 3_600 * 1_000_000_000;

/// What one subscriber got.
pub struct SubOutcome {
    /// Deliveries (QoS 2 retransmissions not counted).
    pub received: u64,
    /// Connection lost.
    pub errors: u64,
    /// First delivery.
    pub first: Option<Instant>,
    /// Last delivery.
    pub last: Option<Instant>,
    /// Publish-to-delivery latency, µs.
    pub hist: Histogram<u64>,
}

/// One subscribing connection's event loop.
pub struct Subscriber {
    /// The connection, subscribed.
    pub conn: Conn,
    /// Timestamp source.
    pub clock: Clock,
    /// Shared live counters.
    pub counters: Arc<Counters>,
    /// Raised when the coordinator ends the run.
    pub stop: watch::Receiver<bool>,
    /// Stop after this many deliveries.
    pub count: Option<u64>,
    /// PINGREQ interval, seconds.
    pub keep_alive: u16,
}

impl Subscriber {
    pub async fn run(mut self) -> SubOutcome {
        let mut out = SubOutcome {
            received: 0,
            errors: 0,
            first: None,
            last: None,
            hist: new_histogram(),
        };
        let mut q2 = IdSet::new();
        let mut ping = keepalive_timer(self.keep_alive);
        loop {
            if *self.stop.borrow() || self.count.is_some_and(|c| out.received >= c) {
                break;
            }
            let c = &mut self.conn;
            tokio::select! {
                biased;
                r = c.rd.read_buf(&mut c.rbuf) => {
                    if c.check_read(r).and_then(|()| self.handle_incoming(&mut out, &mut q2)).is_err() {
                        out.errors += 1;
                        self.counters.errors.fetch_add(1, Relaxed);
                        return out;
                    }
                }
                r = c.wr.write_buf(&mut c.wbuf), if !c.wbuf.is_empty() => {
                    if !matches!(r, Ok(n) if n > 0) {
                        out.errors += 1;
                        self.counters.errors.fetch_add(1, Relaxed);
                        return out;
                    }
                }
                _ = ping.tick() => encode(&Packet::PingReq, self.conn.version, &mut self.conn.wbuf),
                _ = self.stop.changed() => {}
            }
        }
        let _ = self.conn.wr.write_all_buf(&mut self.conn.wbuf).await;
        self.conn.close().await;
        out
    }

    fn handle_incoming(&mut self, out: &mut SubOutcome, q2: &mut IdSet) -> Result<(), ClientError> {
        let mut n = 0u64;
        while let Some(p) = self.conn.decode()? {
            let v = self.conn.version;
            match p {
                Packet::Publish(p) => {
                    if !ack_publish(&p, v, q2, &mut self.conn.wbuf) {
                        continue;
                    }
                    n += 1;
                    let now = self.clock.now_ns();
                    if let Some(ts) = p.payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                        let ts = u64::from_be_bytes(ts);
                        // a send time up to 1 ms ahead is clock skew between processes
                        let d = now
                            .checked_sub(ts)
                            .or_else(|| (ts - now < 1_000_000).then_some(0));
                        if let Some(d) = d.filter(|d| *d < MAX_PLAUSIBLE_NS) {
                            out.hist.saturating_record(d / 1_000);
                        }
                    }
                }
                other => answer_server(&mut self.conn, other, q2)?,
            }
        }
        if n > 0 {
            let now = Instant::now();
            out.first.get_or_insert(now);
            out.last = Some(now);
            out.received += n;
            self.counters.received.fetch_add(n, Relaxed);
        }
        Ok(())
    }
}

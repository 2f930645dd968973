//! Bandwidth limits of a forwarded connection: a token bucket per direction, refilled at the
//! listener's live rate (`bandwidth_in`/`bandwidth_out`), that caps how much the pump may read
//! before it waits. Reading less is the whole mechanism: the unread bytes stay in the kernel,
//! the TCP window closes and the sender slows down; nothing is buffered here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Sleep;

use crate::config::ListenerNet;

/// The most a direction reads at once (the pump's stack buffer).
pub const CHUNK: usize = 16 * 1024;
/// A throttled direction waits until it may read at least this much (or its whole bucket,
/// if smaller), so a slow rate means fewer, larger reads rather than many one-byte ones.
const MIN_GRANT: u64 = 4096;

/// One direction's bucket; boxed in the pump only on a shaped listener.
pub struct Bucket {
    /// The listener's live settings: a reload's new rate applies at the next refill.
    live: Arc<ArcSwap<ListenerNet>>,
    /// Client → backend (`bandwidth_in`) or backend → client (`bandwidth_out`).
    up: bool,
    tokens: f64,
    last: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    /// `mqedge_lb_bandwidth_waits_total` for this listener and direction.
    waits: Counter,
}

impl Bucket {
    /// A full bucket.
    pub fn new(live: Arc<ArcSwap<ListenerNet>>, up: bool, waits: Counter) -> Bucket {
        let tokens = live.load().limit(up).map_or(0.0, |(_, burst)| burst as f64);
        Bucket {
            live,
            up,
            tokens,
            last: Instant::now(),
            sleep: None,
            waits,
        }
    }

    /// How many bytes the direction may read now; `Pending` (with a timer armed) when the
    /// bucket is empty.
    pub fn poll_grant(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        loop {
            let Some((rate, burst)) = self.live.load().limit(self.up) else {
                self.sleep = None;
                return Poll::Ready(CHUNK);
            };
            let now = Instant::now();
            let refill = rate as f64 * now.saturating_duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + refill).min(burst as f64);
            self.last = now;
            if self.tokens >= 1.0 {
                self.sleep = None;
                return Poll::Ready((self.tokens as usize).min(CHUNK));
            }
            if self.sleep.is_none() {
                let want = MIN_GRANT.min(burst) as f64 - self.tokens;
                let wait = Duration::from_secs_f64(want / rate as f64);
                self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
                self.waits.inc();
            }
            let sleep = self.sleep.as_mut().map(|s| s.as_mut().poll(cx));
            match sleep {
                Some(Poll::Ready(())) => self.sleep = None,
                _ => return Poll::Pending,
            }
        }
    }

    /// Takes what was read.
    pub fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// Both directions' buckets of a connection on a shaped listener, and their counters.
pub struct Shaping {
    /// Client → backend.
    pub up: Bucket,
    /// Backend → client.
    pub down: Bucket,
}

impl Shaping {
    /// Buckets for a connection of a listener with `live` settings; `None` when neither
    /// direction is limited at connect time (the connection then stays unshaped).
    pub fn for_listener(
        live: Arc<ArcSwap<ListenerNet>>,
        waits: [Counter; 2],
    ) -> Option<Box<Shaping>> {
        if !live.load().shaped() {
            return None;
        }
        let [w_in, w_out] = waits;
        Some(Box::new(Shaping {
            up: Bucket::new(live.clone(), true, w_in),
            down: Bucket::new(live, false, w_out),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(rate: u64, burst: Option<u64>) -> Arc<ArcSwap<ListenerNet>> {
        Arc::new(ArcSwap::from_pointee(ListenerNet {
            bandwidth_in: Some(rate),
            bandwidth_out: None,
            bandwidth_burst: burst,
            ..ListenerNet::default()
        }))
    }

    #[tokio::test]
    async fn a_bucket_grants_its_burst_then_its_rate() {
        let l = live(64 * 1024, Some(16 * 1024));
        let mut b = Bucket::new(l.clone(), true, Counter::default());
        let start = Instant::now();
        let mut got = 0usize;
        while got < 16 * 1024 + 64 * 1024 {
            let n = std::future::poll_fn(|cx| b.poll_grant(cx)).await;
            b.take(n);
            got += n;
        }
        // 16 KiB at once, then 64 KiB at 64 KiB/s
        let secs = start.elapsed().as_secs_f64();
        assert!((0.9..1.5).contains(&secs), "took {secs} s");
        // the other direction has no limit
        let mut down = Bucket::new(l, false, Counter::default());
        let n = std::future::poll_fn(|cx| down.poll_grant(cx)).await;
        assert_eq!(n, CHUNK);
    }

    #[tokio::test]
    async fn a_new_rate_applies_to_an_open_bucket() {
        let l = live(2 * 1024, Some(4 * 1024));
        let mut b = Bucket::new(l.clone(), true, Counter::default());
        let n = std::future::poll_fn(|cx| b.poll_grant(cx)).await;
        b.take(n);
        // empty at 2 KiB/s: the next 4 KiB would take 2 s; a reload lifts the limit
        l.store(Arc::new(ListenerNet::default()));
        let start = Instant::now();
        let n = std::future::poll_fn(|cx| b.poll_grant(cx)).await;
        assert_eq!(n, CHUNK);
        assert!(start.elapsed() < Duration::from_millis(100));
    }
}

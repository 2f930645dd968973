//! A session's queue of messages waiting to be sent, with what it costs in bytes and whether
//! its subscriber is congested (and since when): the state the slow-consumer policy reads
//! (docs/operations.md, "Slow consumers"). The queue's rules are in [`super::queue`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Outgoing;

/// What one queued delivery is charged beside its topic, payload and properties: the
/// `Outgoing` itself, its `Arc` and the queue slot.
const ENTRY_OVERHEAD: usize = 64;

/// The bytes one queued delivery is charged: the whole message it keeps alive (shared with
/// other subscribers, but this queue alone may be what keeps it) and the entry.
pub fn cost(o: &Outgoing) -> usize {
    let m = &o.msg;
    let props = m.content_type.as_ref().map_or(0, |s| s.len())
        + m.response_topic.as_ref().map_or(0, |s| s.len())
        + m.correlation_data.as_ref().map_or(0, |d| d.len())
        + m.user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    ENTRY_OVERHEAD + m.topic.len() + m.payload.len() + props + 4 * o.sub_ids.len()
}

/// The queue, its byte count and its congestion.
#[derive(Debug, Default)]
pub struct Backlog {
    /// In delivery order.
    items: VecDeque<Outgoing>,
    /// The sum of [`cost`] over `items`.
    bytes: usize,
    /// When the connected subscriber's backlog passed the congestion mark (publishers are held
    /// back for it from then, for at most `publisher_hold`); cleared once it is relieved.
    congested_since: Option<Instant>,
    /// The hold ran out while congested: the subscriber pays from now on (counted once).
    slow: bool,
}

impl Backlog {
    /// Appends a delivery.
    pub fn push_back(&mut self, o: Outgoing) {
        self.bytes += cost(&o);
        self.items.push_back(o);
    }

    /// Takes the oldest delivery.
    pub fn pop_front(&mut self) -> Option<Outgoing> {
        let o = self.items.pop_front()?;
        self.bytes = self.bytes.saturating_sub(cost(&o));
        Some(o)
    }

    /// The oldest delivery.
    pub fn front(&self) -> Option<&Outgoing> {
        self.items.front()
    }

    /// The deliveries, oldest first.
    pub fn iter(&self) -> std::collections::vec_deque::Iter<'_, Outgoing> {
        self.items.iter()
    }

    /// How many are queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes queued (see [`cost`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Empties the queue; nothing is congested any more.
    pub fn clear(&mut self) {
        *self = Backlog::default();
    }

    /// Notes that the backlog is at or past the congestion mark now (the first time starts
    /// the publishers' hold).
    pub fn congested(&mut self, now: Instant) {
        self.congested_since.get_or_insert(now);
    }

    /// Until when publishers are held back for this subscriber, given `hold`: `None` when it
    /// is not congested.
    pub fn hold_until(&self, hold: Duration) -> Option<Instant> {
        self.congested_since.map(|t| t + hold)
    }

    /// Whether the subscriber is congested and its publishers' hold has run out at `now`;
    /// the first call that finds so returns `(true, true)` (to count and log it once).
    pub fn past_hold(&mut self, now: Instant, hold: Duration) -> (bool, bool) {
        match self.hold_until(hold) {
            Some(until) if now >= until => {
                let first = !self.slow;
                self.slow = true;
                (true, first)
            }
            _ => (false, false),
        }
    }

    /// Whether the subscriber is held to be slow (its hold ran out and it was not relieved).
    pub fn is_slow(&self) -> bool {
        self.slow
    }

    /// Ends the congestion (the backlog fell low enough): publishers are held back again, for
    /// at most one more hold, the next time it fills.
    pub fn relieved(&mut self) {
        self.congested_since = None;
        self.slow = false;
    }

    /// Whether the backlog is congested now.
    pub fn is_congested(&self) -> bool {
        self.congested_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::protocol::QoS;
    use std::sync::Arc;

    fn out(payload: usize) -> Outgoing {
        Outgoing {
            msg: Arc::new(Message {
                topic: Arc::from("t/1"),
                payload: vec![0u8; payload].into(),
                qos: QoS::AtLeastOnce,
                retain: false,
                publisher: Arc::from("p"),
                expires_at: None,
                payload_format_indicator: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: vec![],
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: vec![],
            seq: 0,
        }
    }

    #[test]
    fn bytes_follow_pushes_and_pops() {
        let mut b = Backlog::default();
        b.push_back(out(100));
        b.push_back(out(1000));
        assert_eq!(b.bytes(), 2 * (ENTRY_OVERHEAD + 3) + 1100);
        b.pop_front();
        assert_eq!(b.bytes(), ENTRY_OVERHEAD + 3 + 1000);
        b.pop_front();
        assert_eq!((b.bytes(), b.len()), (0, 0));
    }

    #[test]
    fn the_hold_runs_once_per_congestion() {
        let mut b = Backlog::default();
        let t = Instant::now();
        let hold = Duration::from_millis(100);
        assert_eq!(b.hold_until(hold), None);
        b.congested(t);
        b.congested(t + hold);
        assert_eq!(b.hold_until(hold), Some(t + hold), "the first mark counts");
        assert_eq!(b.past_hold(t, hold), (false, false));
        assert_eq!(b.past_hold(t + hold, hold), (true, true));
        assert_eq!(b.past_hold(t + 2 * hold, hold), (true, false));
        assert!(b.is_slow());
        b.relieved();
        assert!(!b.is_slow() && !b.is_congested());
    }
}

//! The retained messages that new subscriptions of one connection still have to receive.
//!
//! A SUBSCRIBE takes a snapshot of the matching retained messages (shared `Arc`s: the retained
//! store already holds them, the snapshot adds a pointer each) and the connection streams it
//! under its own flow control — the client's Receive Maximum window and the write backlog —
//! the way it drains its session queue. Putting them in the session queue instead would cut
//! them at `max_offline_messages`, a limit meant for offline sessions: a new `#` subscriber
//! would get a few thousand of 100,000 retained messages.
//!
//! Order: a subscription's retained messages go out after what was queued for the session
//! before the SUBSCRIBE, and before what was queued after it, so a subscriber never sees a
//! topic's retained (older) value after a newer one. Each snapshot remembers how many queued
//! messages were ahead of it.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::message::Message;
use crate::protocol::QoS;
use crate::routing::trie::SubOptions;

/// One subscription's snapshot, partly sent.
#[derive(Debug)]
struct Part {
    msgs: std::vec::IntoIter<Arc<Message>>,
    opts: SubOptions,
    /// Queued messages still to be sent before this part may start.
    ahead: usize,
}

/// Retained messages waiting to be sent, per subscription, in SUBSCRIBE order.
#[derive(Debug, Default)]
pub struct Feed {
    parts: VecDeque<Part>,
}

impl Feed {
    /// Adds a subscription's snapshot, to be sent after the `ahead` messages queued now.
    pub fn push(&mut self, msgs: Vec<Arc<Message>>, opts: SubOptions, ahead: usize) {
        if !msgs.is_empty() {
            self.parts.push_back(Part {
                msgs: msgs.into_iter(),
                opts,
                ahead,
            });
        }
    }

    /// Messages still to send.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.msgs.len()).sum()
    }

    /// Whether everything was sent.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Whether the next message comes from here rather than the session queue: the messages
    /// queued before its SUBSCRIBE went out (or the queue is empty: some were dropped).
    pub fn ready(&self, queue_empty: bool) -> bool {
        self.parts
            .front()
            .is_some_and(|p| p.ahead == 0 || queue_empty)
    }

    /// The delivery QoS of the next message (the smaller of published and granted).
    pub fn next_qos(&self) -> Option<QoS> {
        let p = self.parts.front()?;
        let m = p.msgs.as_slice().first()?;
        Some(p.opts.delivery_qos(m.qos))
    }

    /// Takes the next message and its subscription's options.
    pub fn pop(&mut self) -> Option<(Arc<Message>, SubOptions)> {
        let p = self.parts.front_mut()?;
        let next = p.msgs.next().map(|m| (m, p.opts));
        if p.msgs.len() == 0 {
            self.parts.pop_front();
        }
        next
    }

    /// One message of the session queue was sent: the snapshots waiting for it come closer.
    pub fn queued_sent(&mut self) {
        for p in &mut self.parts {
            p.ahead = p.ahead.saturating_sub(1);
        }
    }

    /// What was not sent, in order (when the connection ends).
    pub fn into_rest(self) -> impl Iterator<Item = (Arc<Message>, SubOptions)> {
        self.parts
            .into_iter()
            .flat_map(|p| p.msgs.map(move |m| (m, p.opts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            topic: Arc::from(topic),
            payload: Default::default(),
            qos,
            retain: true,
            publisher: Arc::from("p"),
            expires_at: None,
            payload_format_indicator: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        })
    }

    fn opts(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            ..Default::default()
        }
    }

    #[test]
    fn parts_go_in_order_after_what_was_queued_before_them() {
        let mut f = Feed::default();
        assert!(!f.ready(true));
        f.push(vec![], opts(1), 0);
        assert!(f.is_empty(), "an empty snapshot adds nothing");
        f.push(
            vec![msg("a", QoS::AtLeastOnce), msg("b", QoS::AtMostOnce)],
            opts(1),
            2,
        );
        f.push(vec![msg("c", QoS::ExactlyOnce)], opts(1), 3);
        assert_eq!(f.len(), 3);
        assert!(!f.ready(false), "two queued messages are ahead");
        assert!(f.ready(true), "an empty queue holds nothing back");
        f.queued_sent();
        f.queued_sent();
        assert!(f.ready(false));
        assert_eq!(f.next_qos(), Some(QoS::AtLeastOnce));
        assert_eq!(f.pop().map(|(m, _)| m.topic.to_string()), Some("a".into()));
        assert_eq!(f.next_qos(), Some(QoS::AtMostOnce));
        assert_eq!(f.pop().map(|(m, _)| m.topic.to_string()), Some("b".into()));
        assert!(!f.ready(false), "the second part waits for one more");
        assert_eq!(
            f.next_qos(),
            Some(QoS::AtLeastOnce),
            "granted QoS 1 caps QoS 2"
        );
        f.queued_sent();
        assert!(f.ready(false));
        let rest: Vec<String> = f.into_rest().map(|(m, _)| m.topic.to_string()).collect();
        assert_eq!(rest, ["c"]);
    }
}

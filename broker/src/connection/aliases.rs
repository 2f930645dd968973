//! Topic aliases, both ways. [`InAliases`]: those a v5 client sets on its PUBLISHes to us (up
//! to [`TOPIC_ALIAS_MAX`], announced in CONNACK, and at most `[limits] max_topic_alias_bytes`
//! of topic names: 1024 aliases of 64 KiB topics would be 64 MiB per connection). [`OutAliases`]: ours on the broker's own
//! PUBLISHes to a v5 client that allowed them (Topic Alias Maximum > 0 in its CONNECT), so
//! that a repeated topic travels as two bytes instead of its name.
//!
//! Outgoing, per connection, up to the smaller of the client's maximum and
//! [`OUT_TOPIC_ALIAS_MAX`] aliases, reassigned least recently used first. The first PUBLISH of
//! a topic carries its name and the alias (which sets the client's mapping); later ones carry
//! an empty name and the alias. When all aliases are taken, the least recently used one is
//! given to the new topic by sending name and alias again. Aliases belong to one connection
//! (MQTT 5 §3.3.2.3.4): a new connection starts without any, and messages resent after a
//! reconnect carry their full topic. Pure: no I/O, the connection asks and then confirms.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::CloseReason;

/// Topic aliases a v5 client may use towards us.
pub const TOPIC_ALIAS_MAX: u16 = 1024;

/// Most aliases the broker uses towards one client, whatever the client allows: bounds the
/// memory of a connection (a few KiB at most).
pub const OUT_TOPIC_ALIAS_MAX: u16 = 64;

/// How a PUBLISH names its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alias {
    /// The client knows this alias for the topic: send an empty topic name and the alias.
    Known(u16),
    /// Send the topic name and this alias (a new or reassigned mapping).
    Assign(u16),
}

/// The aliases of one connection.
#[derive(Debug)]
pub struct OutAliases {
    max: u16,
    by_topic: HashMap<Arc<str>, u16>,
    /// Alias `i + 1`: its topic and when it was last used.
    slots: Vec<(Arc<str>, u64)>,
    clock: u64,
}

impl OutAliases {
    /// Aliases for a client that allows `client_max` of them; `None` when it allows none.
    pub fn new(client_max: u16) -> Option<OutAliases> {
        let max = client_max.min(OUT_TOPIC_ALIAS_MAX);
        (max > 0).then(|| OutAliases {
            max,
            by_topic: HashMap::new(),
            slots: Vec::new(),
            clock: 0,
        })
    }

    /// How the next PUBLISH to `topic` should name it. Changes nothing: call
    /// [`OutAliases::sent`] once that PUBLISH is written (one dropped as too large for the
    /// client must not change the client's mapping as the broker sees it).
    pub fn pick(&self, topic: &str) -> Alias {
        if let Some(&a) = self.by_topic.get(topic) {
            return Alias::Known(a);
        }
        if self.slots.len() < usize::from(self.max) {
            return Alias::Assign(self.slots.len() as u16 + 1);
        }
        let lru = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, used))| *used)
            .map_or(0, |(i, _)| i);
        Alias::Assign(lru as u16 + 1)
    }

    /// Records that a PUBLISH to `topic` went out as `alias` said.
    pub fn sent(&mut self, topic: &Arc<str>, alias: Alias) {
        self.clock += 1;
        let (Alias::Known(a) | Alias::Assign(a)) = alias;
        let i = usize::from(a) - 1;
        if let Alias::Assign(_) = alias {
            if i == self.slots.len() {
                self.slots.push((topic.clone(), 0));
            } else if let Some(slot) = self.slots.get_mut(i) {
                let old = std::mem::replace(&mut slot.0, topic.clone());
                self.by_topic.remove(&old);
            }
            self.by_topic.insert(topic.clone(), a);
        }
        if let Some(slot) = self.slots.get_mut(i) {
            slot.1 = self.clock;
        }
    }
}

/// The aliases a client set, allocated at the first one (most clients never use them).
#[derive(Debug, Default)]
pub struct InAliases {
    /// Boxed: 8 bytes in every connection's task instead of an empty map's 48.
    held: Option<Box<Held>>,
}

/// The aliases of [`InAliases`] and the bytes of their topics.
#[derive(Debug, Default)]
struct Held {
    map: HashMap<u16, String>,
    /// Sum of the topics' lengths, held under `max_topic_alias_bytes`.
    bytes: usize,
}

impl InAliases {
    /// Applies a PUBLISH's alias: an empty `topic` is replaced by the one the alias stands for,
    /// a topic with an alias (re)sets it, unless the topics would then hold more than
    /// `max_bytes` (the connection is closed: 0x97 Quota exceeded).
    pub fn apply(
        &mut self,
        alias: u16,
        topic: &mut String,
        max_bytes: usize,
    ) -> Result<(), CloseReason> {
        if alias > TOPIC_ALIAS_MAX {
            return Err(CloseReason::AliasOverMax(alias));
        }
        if topic.is_empty() {
            match self.held.as_ref().and_then(|h| h.map.get(&alias)) {
                Some(t) => topic.clone_from(t),
                None => return Err(CloseReason::UnknownAlias(alias)),
            }
        } else {
            let h = self.held.get_or_insert_with(Default::default);
            let old = h.map.get(&alias).map_or(0, String::len);
            let bytes = h.bytes - old + topic.len();
            if bytes > max_bytes {
                return Err(CloseReason::AliasBytes);
            }
            h.bytes = bytes;
            h.map.insert(alias, topic.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `topic` through the aliases; what the client's map resolves it to afterwards.
    fn send(a: &mut OutAliases, client: &mut HashMap<u16, String>, topic: &str) -> Alias {
        let t: Arc<str> = Arc::from(topic);
        let pick = a.pick(topic);
        match pick {
            Alias::Known(n) => assert_eq!(client.get(&n).map(String::as_str), Some(topic)),
            Alias::Assign(n) => {
                client.insert(n, topic.to_string());
            }
        }
        a.sent(&t, pick);
        pick
    }

    #[test]
    fn client_aliases_set_resolve_and_are_bounded() {
        let mut a = InAliases::default();
        let mut t = String::new();
        assert!(matches!(
            a.apply(1, &mut t, 10),
            Err(CloseReason::UnknownAlias(1))
        ));
        let mut t = "x/y".to_string();
        assert!(a.apply(1, &mut t, 10).is_ok());
        let mut t = String::new();
        assert!(a.apply(1, &mut t, 10).is_ok());
        assert_eq!(t, "x/y");
        assert!(matches!(
            a.apply(TOPIC_ALIAS_MAX + 1, &mut t, 10),
            Err(CloseReason::AliasOverMax(_))
        ));
        // 3 + 7 bytes fit in 10; an 11th does not; a replacement counts its new length only
        assert!(a.apply(2, &mut "abcdefg".to_string(), 10).is_ok());
        assert!(matches!(
            a.apply(3, &mut "z".to_string(), 10),
            Err(CloseReason::AliasBytes)
        ));
        assert!(a.apply(2, &mut "abcdef".to_string(), 10).is_ok());
        assert!(a.apply(3, &mut "z".to_string(), 10).is_ok());
    }

    #[test]
    fn none_without_the_client_allowing_any() {
        assert!(OutAliases::new(0).is_none());
        assert_eq!(
            OutAliases::new(1000).map(|a| a.max),
            Some(OUT_TOPIC_ALIAS_MAX)
        );
    }

    #[test]
    fn least_recently_used_alias_is_reassigned() {
        let mut a = OutAliases::new(2).unwrap();
        let mut client = HashMap::new();
        assert_eq!(send(&mut a, &mut client, "x"), Alias::Assign(1));
        assert_eq!(send(&mut a, &mut client, "y"), Alias::Assign(2));
        assert_eq!(send(&mut a, &mut client, "x"), Alias::Known(1));
        // y is the least recently used: z takes alias 2
        assert_eq!(send(&mut a, &mut client, "z"), Alias::Assign(2));
        assert_eq!(send(&mut a, &mut client, "y"), Alias::Assign(1));
        assert_eq!(send(&mut a, &mut client, "z"), Alias::Known(2));
        assert_eq!(send(&mut a, &mut client, "y"), Alias::Known(1));
    }

    #[test]
    fn a_pick_not_sent_changes_nothing() {
        let mut a = OutAliases::new(1).unwrap();
        let mut client = HashMap::new();
        send(&mut a, &mut client, "x");
        assert_eq!(a.pick("y"), Alias::Assign(1));
        assert_eq!(a.pick("x"), Alias::Known(1));
    }

    #[test]
    fn many_topics_always_resolve_right() {
        // a brute-force check against the client's view, many evictions
        let mut a = OutAliases::new(5).unwrap();
        let mut client = HashMap::new();
        let mut x: u32 = 7;
        for _ in 0..5000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let topic = format!("t/{}", (x >> 16) % 12);
            send(&mut a, &mut client, &topic);
        }
        assert!(client.len() <= 5);
        assert_eq!(a.by_topic.len(), a.slots.len());
    }
}

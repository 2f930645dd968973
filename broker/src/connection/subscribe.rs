//! SUBSCRIBE and UNSUBSCRIBE: each filter checked (syntax, the ACL file, the `[auth.http_acl]`
//! service, `max_subscriptions_per_client`),
//! the routes changed, the changed filters persisted (one store row each) before the
//! acknowledgement, and the retained messages of a new subscription queued for streaming
//! through the connection's [`super::feed`].

use super::Conn;
use crate::auth::acl_hook::AclAction;
use crate::auth::Access;
use crate::error::CloseReason;
use crate::limits::Bite;
use crate::protocol::{
    reason, AckProperties, Packet, RetainHandling, SubAck, Subscribe, SubscribeFilter, UnsubAck,
    Unsubscribe,
};
use crate::routing::trie::SubOptions;
use crate::session::sub_options;
use crate::session::Sub;
use crate::topic::{parse_shared, valid_topic_filter};

impl Conn {
    /// SUBSCRIBE: SUBACK with one code per filter (3.1.1: any failure is 0x80), then the
    /// retained messages the subscriptions ask for.
    pub(super) async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), CloseReason> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let mut changed = Vec::new();
        let user = self.s.lock().username.clone();
        let id = s.properties.subscription_identifier;
        // the filters are vetted together: the external checks of a SUBSCRIBE with many filters
        // take about one `timeout`, not one per filter
        let vetted =
            futures_util::future::join_all(s.filters.iter().map(|f| self.vet(f, user.as_deref())))
                .await;
        for (f, vetted) in s.filters.iter().zip(vetted) {
            let (code, sub) = match vetted? {
                Some(code) => (code, None),
                None => self.subscribe_one(f, id),
            };
            codes.push(code);
            if let Some((sub, send_retained)) = sub {
                changed.push((f.filter.clone(), Some(sub)));
                if send_retained {
                    retained.push((f.filter.clone(), sub));
                }
            }
        }
        if let Err(e) = self.b.persist_subscriptions(&self.s, &changed).await {
            // not acknowledged: the session keeps the change here, and its next write copies
            // it whole to the replica; the client sends the packet again
            tracing::error!(client_id = %self.s.client_id, error = %e, "subscription change not durable; closing without acknowledgement");
            return Err(CloseReason::NotAcknowledged);
        }
        if !self.v.is_v5() {
            for c in &mut codes {
                if *c >= 0x80 {
                    *c = 0x80;
                }
            }
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: AckProperties::default(),
            codes,
        }));
        for (f, sub) in retained {
            self.stream_retained(&f, sub_options(&sub));
        }
        Ok(())
    }

    /// The checks of one filter of a SUBSCRIBE before it may be granted: syntax, the ACL
    /// file, then the `[auth.http_acl]` service (on the filter as requested; of a shared one,
    /// the part after the group). `Some(code)` refuses it.
    async fn vet(
        &self,
        f: &SubscribeFilter,
        user: Option<&str>,
    ) -> Result<Option<u8>, CloseReason> {
        let shared = parse_shared(&f.filter);
        if shared.is_some() && f.no_local {
            // MQTT-3.8.3-4
            return Err(CloseReason::SharedNoLocal);
        }
        if !valid_topic_filter(&f.filter) {
            return Ok(Some(reason::TOPIC_FILTER_INVALID));
        }
        let plain = shared.map(|(_, f)| f).unwrap_or(&f.filter);
        if let Some(acl) = self.b.auth().acl() {
            if !acl.check(user, &self.s.client_id, plain, Access::Subscribe) {
                return Ok(Some(reason::NOT_AUTHORIZED));
            }
        }
        Ok(self.check_external(AclAction::Subscribe, plain).await)
    }

    /// One filter of a SUBSCRIBE that passed [`Conn::vet`]: its SUBACK code, and when it was
    /// granted the subscription and whether its retained messages are to be sent.
    fn subscribe_one(&mut self, f: &SubscribeFilter, id: Option<u32>) -> (u8, Option<(Sub, bool)>) {
        let shared = parse_shared(&f.filter);
        let (held, has) = {
            let st = self.s.lock();
            (st.subs.len(), st.subs.contains_key(&f.filter))
        };
        if !has && !self.limits().admits_subscription(held) {
            // 3.1.1 clients read it as 0x80 (see on_subscribe)
            Bite::Subscriptions.count(self.b.metrics());
            return (reason::QUOTA_EXCEEDED, None);
        }
        let sub = Sub {
            qos: f.qos,
            no_local: f.no_local,
            retain_as_published: f.retain_as_published,
            retain_handling: f.retain_handling,
            id,
        };
        let new = self.b.subscribe(&self.s, &f.filter, sub);
        let send_retained = shared.is_none()
            && match f.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => new,
                RetainHandling::DoNotSend => false,
            };
        (f.qos as u8, Some((sub, send_retained)))
    }

    /// Queues the retained messages of a new subscription for streaming (see [`super::feed`]),
    /// bounded by [`crate::limits::Limits::retained_room`]; the rest are dropped
    /// (`retained_backlog`).
    fn stream_retained(&mut self, filter: &str, opts: SubOptions) {
        let mut msgs = self.b.retained_snapshot(filter);
        if msgs.is_empty() {
            return;
        }
        let limits = self.limits();
        let feed = self.feed.get_or_insert_with(Default::default);
        let room = limits.retained_room(self.b.retained().len(), feed.len());
        if msgs.len() > room {
            let over = (msgs.len() - room) as u64;
            self.b.metrics().dropped_many("retained_backlog", over);
            msgs.truncate(room);
        }
        let ahead = self.s.lock().queue.len();
        // sent even when this client published them: No Local is about forwarding publishes
        let opts = SubOptions {
            no_local: false,
            ..opts
        };
        feed.push(msgs, opts, ahead);
        if feed.is_empty() {
            self.feed = None;
        }
    }

    /// UNSUBSCRIBE: UNSUBACK once the session is persisted (0x11 for a filter not subscribed).
    pub(super) async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), CloseReason> {
        let mut codes = Vec::with_capacity(u.filters.len());
        let mut changed = Vec::new();
        for f in &u.filters {
            let existed = self.b.unsubscribe(&self.s, f);
            codes.push(if existed {
                changed.push((f.clone(), None));
                0
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        if let Err(e) = self.b.persist_subscriptions(&self.s, &changed).await {
            // not acknowledged: the session keeps the change here, and its next write copies
            // it whole to the replica; the client sends the packet again
            tracing::error!(client_id = %self.s.client_id, error = %e, "subscription change not durable; closing without acknowledgement");
            return Err(CloseReason::NotAcknowledged);
        }
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: AckProperties::default(),
            codes,
        }));
        Ok(())
    }
}

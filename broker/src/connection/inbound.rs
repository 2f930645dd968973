//! PUBLISH from the client: its topic alias, the checks the protocol asks for, QoS 2
//! de-duplication, the ACL, routing, and its acknowledgement, which leaves in order (see
//! [`super::acks`]) once the message is durable and every cluster peer took it. A publisher
//! is held back, bounded in time, while a peer's forward queue is full or a subscriber is
//! congested (`publisher_hold`). And PUBREL → PUBCOMP, which releases a QoS 2 publish.

use std::sync::Arc;
use std::time::Duration;

use super::acks::{AckKind, PendingAck, Wait};
use super::authorize::Cached;
use super::{Conn, Later};
use crate::auth::acl_hook::AclAction;
use crate::auth::Access;
use crate::cluster::Gate;
use crate::error::CloseReason;
use crate::message::{unix_now, Message};
use crate::protocol::{reason, PubAck, Publish, QoS};
use crate::session::record::record_put;
use crate::session::{Session, Writes};
use crate::topic::valid_topic_name;

/// Longest a publisher is held back by one congested peer before it goes on.
const CONGESTION_WAIT: Duration = Duration::from_secs(2);

/// What routing a publish set in motion that its acknowledgement waits for.
#[derive(Default)]
struct Routed {
    /// Durability and cluster acks (true when all went well).
    wait: Option<Wait>,
    /// Peers whose forward queue is full: the publisher is held back for them.
    gates: Vec<Arc<Gate>>,
    /// Connected subscribers (not this client) far behind: held back for them too.
    congested: Vec<Arc<Session>>,
}

impl Conn {
    /// A PUBLISH: routed at once; its acknowledgement is owed in order. A held-back publisher
    /// or one owing too many acknowledgements gets the rest as a boxed continuation, and so
    /// does one the `[auth.http_acl]` service must be asked about (the cache answers at once).
    pub(super) fn on_publish(&mut self, mut p: Publish) -> Result<Option<Later<'_>>, CloseReason> {
        self.b.metrics().messages_received.inc();
        self.check_publish(&mut p)?;
        // the ACL file first: what it refuses the service is not asked about
        if !self.may_publish(&p.topic) {
            return self.publish_checked(p, Some(reason::NOT_AUTHORIZED), "ACL");
        }
        // a QoS 2 retransmission is only acknowledged: nothing to ask
        let resent =
            p.qos == QoS::ExactlyOnce && self.s.lock().qos2_in.contains(&p.packet_id.unwrap_or(0));
        if resent {
            return self.publish_checked(p, None, "");
        }
        match self.check_cached(AclAction::Publish, &p.topic) {
            Cached::Ask(left) => Ok(Some(Box::pin(async move {
                let deny = self.check_rest(left, AclAction::Publish, &p.topic).await;
                if let Some(later) = self.publish_checked(p, deny, "external checks")? {
                    later.await?;
                }
                Ok(())
            }))),
            Cached::Done(deny) => self.publish_checked(p, deny, "external checks"),
        }
    }

    /// A PUBLISH whose topic is checked: routed, or refused with `deny`'s code (v5; 3.1.1
    /// acknowledges and drops, MQTT-3.3.5-2) by `by` (for the log); its acknowledgement owed.
    fn publish_checked(
        &mut self,
        p: Publish,
        deny: Option<u8>,
        by: &'static str,
    ) -> Result<Option<Later<'_>>, CloseReason> {
        let pid = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce && !self.claim_qos2(pid)? {
            // a retransmission of a message we already routed: acknowledge only (MQTT-4.3.3)
            self.acks.push(PendingAck {
                kind: AckKind::PubRec,
                pid,
                code: 0,
                wait: None,
            });
            self.flush_acks();
            return Ok(None);
        }
        let qos = p.qos;
        let (code, routed) = match deny {
            None => (0, self.route(p)),
            Some(code) => {
                self.b.metrics().dropped("not_authorized");
                tracing::debug!(client_id = %self.s.client_id, topic = %p.topic, "publish denied by the {by}");
                (if self.v.is_v5() { code } else { 0 }, Routed::default())
            }
        };
        if qos == QoS::ExactlyOnce && code >= 0x80 {
            self.s.lock().qos2_in.remove(&pid);
        }
        let ack = (qos != QoS::AtMostOnce).then_some(PendingAck {
            kind: AckKind::for_publish(qos),
            pid,
            code,
            wait: routed.wait,
        });
        if !routed.gates.is_empty() || !routed.congested.is_empty() {
            let (gates, congested) = (routed.gates, routed.congested);
            return Ok(Some(Box::pin(self.hold_back(gates, congested, ack))));
        }
        if let Some(a) = ack {
            self.acks.push(a);
            if self.limits().owes_too_many_acks(self.acks.len()) {
                return Ok(Some(Box::pin(self.bound_pending())));
            }
        }
        self.flush_acks();
        Ok(None)
    }

    /// Resolves the topic alias and checks what MQTT forbids in a client's PUBLISH.
    fn check_publish(&mut self, p: &mut Publish) -> Result<(), CloseReason> {
        if let Some(a) = p.properties.topic_alias {
            let max = self.limits().topic_alias_bytes();
            self.aliases.apply(a, &mut p.topic, max)?;
        }
        if !valid_topic_name(&p.topic) {
            return Err(CloseReason::InvalidTopicName(p.topic.clone()));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            // MQTT-3.3.4-6
            return Err(CloseReason::SubscriptionIdFromClient);
        }
        Ok(())
    }

    /// Records a QoS 2 publish as received until its PUBREL; false when it already was (a
    /// retransmission, not to be routed again).
    fn claim_qos2(&mut self, pid: u16) -> Result<bool, CloseReason> {
        let limits = self.limits();
        let mut st = self.s.lock();
        if st.qos2_in.contains(&pid) {
            return Ok(false);
        }
        if !limits.admits_qos2(st.qos2_in.len()) {
            return Err(CloseReason::ReceiveMaximumExceeded);
        }
        st.qos2_in.insert(pid);
        Ok(true)
    }

    /// Whether the ACL lets this client publish to `topic` (never to `$SYS`).
    fn may_publish(&self, topic: &str) -> bool {
        !topic.starts_with("$SYS")
            && match self.b.auth().acl() {
                Some(acl) => {
                    let user = self.s.lock().username.clone();
                    acl.check(user.as_deref(), &self.s.client_id, topic, Access::Write)
                }
                None => true,
            }
    }

    /// Routes the message; what its acknowledgement must wait for.
    fn route(&mut self, p: Publish) -> Routed {
        let now = unix_now();
        let props = p.properties;
        let msg = Message {
            topic: Arc::from(p.topic.as_str()),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            publisher: self.s.client_id.clone(),
            expires_at: props.message_expiry_interval.map(|e| now + u64::from(e)),
            payload_format_indicator: props.payload_format_indicator,
            content_type: props.content_type,
            response_topic: props.response_topic,
            correlation_data: props.correlation_data,
            user_properties: props.user_properties,
        };
        let qos2 = p.qos == QoS::ExactlyOnce;
        let published = self.b.publish(Arc::new(msg));
        let mut writes = published.writes;
        if qos2 {
            // the packet id held until PUBREL is durable with the message: a retransmission
            // after a restart is recognised, not routed twice
            self.submit_record(&mut writes);
        }
        // queued now, in the order of this connection's packets (the PUBREL that releases
        // this id is queued after it); only the wait for the commit runs beside the connection
        let durable = match self.b.store() {
            Some(store) if !writes.is_empty() => Some(writes.submit(store)),
            _ => None,
        };
        // acknowledge only what is durable and what every other node took (QoS 1/2); the
        // connection goes on reading meanwhile and acks leave in order. No task or timer per
        // publish: a peer's ack that never comes is failed by the cluster after
        // `FORWARD_ACK_TIMEOUT` (one sweep for all)
        let mut acks = published.acks;
        let wait = if durable.is_none() && acks.len() == 1 {
            // one peer took it or will not: the same wait, without a boxed future
            acks.pop().map(Wait::ack)
        } else {
            (durable.is_some() || !acks.is_empty()).then(|| {
                Wait::new(async move {
                    if let Some(durable) = durable {
                        if let Err(e) = durable.await {
                            tracing::error!(error = %e, "store write failed");
                            return false;
                        }
                    }
                    for ack in acks {
                        if !ack.await {
                            return false;
                        }
                    }
                    true
                })
            })
        };
        let mut congested = published.congested;
        congested.retain(|c| !Arc::ptr_eq(c, &self.s));
        Routed {
            wait,
            gates: published.peer_gates,
            congested,
        }
    }

    /// Holds a publisher back (no PUBACK, no further reads), bounded in time, while a peer's
    /// forward queue is full (up to 2 s) or a connected subscriber is congested (until it is
    /// relieved, at most `publisher_hold` per congestion: then that subscriber pays, see
    /// `session::queue`). Then owes the publish's acknowledgement.
    async fn hold_back(
        &mut self,
        gates: Vec<Arc<Gate>>,
        congested: Vec<Arc<Session>>,
        ack: Option<PendingAck>,
    ) -> Result<(), CloseReason> {
        for g in gates {
            let deadline = tokio::time::Instant::now() + CONGESTION_WAIT;
            loop {
                let space = g.space().notified();
                tokio::pin!(space);
                space.as_mut().enable();
                if !g.congested() {
                    break;
                }
                if tokio::time::timeout_at(deadline, space).await.is_err() {
                    break;
                }
            }
        }
        let hold = self.b.cfg().flow.publisher_hold;
        for c in congested {
            c.wait_for_space(hold).await;
        }
        if let Some(a) = ack {
            self.acks.push(a);
        }
        self.bound_pending().await
    }

    /// Bounded acknowledgements: a client that floods without waiting for acks waits here.
    async fn bound_pending(&mut self) -> Result<(), CloseReason> {
        while self.limits().owes_too_many_acks(self.acks.len()) {
            if !self.acks.await_front().await {
                return Err(CloseReason::NotAcknowledged);
            }
            self.flush_acks();
        }
        self.flush_acks();
        Ok(())
    }

    /// Writes every acknowledgement whose wait is over, in order.
    pub(super) fn flush_acks(&mut self) {
        self.acks.flush(&mut self.out, self.v);
    }

    /// Queues the store write of this session's record (with its QoS 2 ids), when it is kept:
    /// under the session's lock, so that records reach the store in the order they were taken.
    fn submit_record(&self, writes: &mut Writes) {
        let Some(store) = self.b.store() else {
            return;
        };
        let st = self.s.lock();
        if st.persistent() {
            writes.submit_now(store, vec![record_put(&self.s.client_id, st.encode())]);
        }
    }

    /// PUBREL: the QoS 2 publish is released (PUBCOMP; 0x92 when it was not held). The
    /// PUBCOMP waits until the release is durable: a packet id still held after a restart
    /// would swallow the client's next publish under it.
    pub(super) fn on_pubrel(&mut self, a: PubAck) {
        let had = self.s.lock().qos2_in.remove(&a.packet_id);
        let code = if had {
            0
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        let mut writes = Writes::default();
        if had {
            self.submit_record(&mut writes);
        }
        let wait = match self.b.store() {
            Some(store) if !writes.is_empty() => {
                let durable = writes.submit(store);
                Some(Wait::new(async move { durable.await.is_ok() }))
            }
            _ => None,
        };
        self.acks.push(PendingAck {
            kind: AckKind::PubComp,
            pid: a.packet_id,
            code,
            wait,
        });
        self.flush_acks();
    }
}

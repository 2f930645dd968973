//! A routed application message, shared (`Arc`) by every session it is queued to, and its
//! compact binary form for the store (`data_dir`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::protocol::{PublishProperties, QoS, UserProperty};

/// Gives a decoded payload (or correlation data) an allocation of its own. Decoded, it is a
/// slice of the connection's read buffer, and a slice keeps the whole buffer alive: a message
/// that outlives the read (retained, queued for an offline session, exported to a peer) would
/// pin it, so 150 one-byte retained messages read among large packets held 147 MB. The copy
/// costs one allocation and a memcpy of the payload per PUBLISH, which each delivery to a
/// subscriber copies into its write buffer anyway.
pub fn unpin(b: &mut Bytes) {
    if !b.is_empty() {
        *b = Bytes::copy_from_slice(b);
    }
}

/// Seconds since the Unix epoch (message expiry survives restarts).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One application message as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// Published QoS.
    pub qos: QoS,
    /// Published RETAIN flag.
    pub retain: bool,
    /// Publisher's client id (for No Local).
    pub publisher: Arc<str>,
    /// Absolute expiry (unix seconds) from the v5 Message Expiry Interval.
    pub expires_at: Option<u64>,
    /// v5 properties forwarded to subscribers.
    pub payload_format_indicator: Option<u8>,
    /// v5 Content Type.
    pub content_type: Option<String>,
    /// v5 Response Topic.
    pub response_topic: Option<String>,
    /// v5 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// v5 User Properties, in order.
    pub user_properties: Vec<UserProperty>,
}

impl Message {
    /// A message without v5 properties or expiry (what the broker itself publishes, `$SYS`).
    pub fn plain(
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        publisher: Arc<str>,
    ) -> Message {
        Message {
            topic: Arc::from(topic),
            payload,
            qos,
            retain,
            publisher,
            expires_at: None,
            payload_format_indicator: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }
    }

    /// Whether the message expired (undeliverable).
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|e| now >= e)
    }

    /// Publish properties for delivery: remaining expiry, forwarded properties, subscription ids.
    pub fn properties(&self, now: u64, subscription_ids: &[u32]) -> PublishProperties {
        PublishProperties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.expires_at.map(|e| e.saturating_sub(now).max(1) as u32),
            topic_alias: None,
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone(),
            user_properties: self.user_properties.clone(),
            subscription_identifiers: subscription_ids.to_vec(),
            content_type: self.content_type.clone(),
        }
    }

    /// Serializes for the store.
    pub fn encode(&self) -> Vec<u8> {
        // exactly what is written: no regrowth, and a cluster forward turns the buffer into
        // `Bytes` without another allocation
        let opt = |b: Option<usize>| 1 + b.map_or(0, |l| 4 + l);
        let props: usize = self
            .user_properties
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum();
        let size = 3
            + 8
            + (4 + self.topic.len())
            + (4 + self.payload.len())
            + (4 + self.publisher.len())
            + 1
            + opt(self.content_type.as_ref().map(String::len))
            + opt(self.response_topic.as_ref().map(String::len))
            + opt(self.correlation_data.as_ref().map(|c| c.len()))
            + 4
            + props;
        let mut o = Vec::with_capacity(size);
        o.push(1); // format version
        o.push(self.qos as u8);
        o.push(u8::from(self.retain));
        o.extend_from_slice(&self.expires_at.unwrap_or(0).to_be_bytes());
        put(&mut o, self.topic.as_bytes());
        put(&mut o, &self.payload);
        put(&mut o, self.publisher.as_bytes());
        o.push(self.payload_format_indicator.unwrap_or(0xff));
        put_opt(&mut o, self.content_type.as_deref().map(str::as_bytes));
        put_opt(&mut o, self.response_topic.as_deref().map(str::as_bytes));
        put_opt(&mut o, self.correlation_data.as_deref());
        o.extend_from_slice(&(self.user_properties.len() as u32).to_be_bytes());
        for (k, v) in &self.user_properties {
            put(&mut o, k.as_bytes());
            put(&mut o, v.as_bytes());
        }
        o
    }

    /// Reads what [`Message::encode`] wrote; `None` for a corrupt record.
    pub fn decode(b: &[u8]) -> Option<Message> {
        let mut r = Rd(b);
        if r.u8()? != 1 {
            return None;
        }
        let qos = QoS::from_u8(r.u8()?)?;
        let retain = r.u8()? != 0;
        let exp = r.u64()?;
        let topic: Arc<str> = Arc::from(r.string()?);
        let payload = Bytes::copy_from_slice(r.bytes()?);
        let publisher: Arc<str> = Arc::from(r.string()?);
        let pfi = match r.u8()? {
            0xff => None,
            v => Some(v),
        };
        let content_type = r.opt()?.map(|b| String::from_utf8_lossy(b).into_owned());
        let response_topic = r.opt()?.map(|b| String::from_utf8_lossy(b).into_owned());
        let correlation_data = r.opt()?.map(Bytes::copy_from_slice);
        let n = r.u32()?;
        let mut user_properties = Vec::with_capacity((n as usize).min(1024));
        for _ in 0..n {
            user_properties.push((r.string()?, r.string()?));
        }
        Some(Message {
            topic,
            payload,
            qos,
            retain,
            publisher,
            expires_at: (exp != 0).then_some(exp),
            payload_format_indicator: pfi,
            content_type,
            response_topic,
            correlation_data,
            user_properties,
        })
    }
}

pub(crate) fn put(o: &mut Vec<u8>, b: &[u8]) {
    o.extend_from_slice(&(b.len() as u32).to_be_bytes());
    o.extend_from_slice(b);
}

fn put_opt(o: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            o.push(1);
            put(o, b);
        }
        None => o.push(0),
    }
}

/// A bounds-checked reader over a stored record.
pub(crate) struct Rd<'a>(pub &'a [u8]);

impl<'a> Rd<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }
    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub(crate) fn string(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
    fn opt(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            _ => self.bytes().map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Message {
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"\x00\x01hello"),
            qos: QoS::AtLeastOnce,
            retain: true,
            publisher: Arc::from("pub-1"),
            expires_at: Some(1_900_000_000),
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: None,
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
        };
        assert_eq!(Message::decode(&m.encode()), Some(m.clone()));
        let enc = m.encode();
        // sized exactly: a forward's `Bytes::from` takes the buffer without reallocating
        assert_eq!(enc.len(), enc.capacity());
        for i in 0..enc.len() {
            assert_eq!(Message::decode(&enc[..i]), None);
        }
        let bare = Message::plain(
            "t",
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            false,
            "p".into(),
        );
        let enc = bare.encode();
        assert_eq!(enc.len(), enc.capacity());
    }
}

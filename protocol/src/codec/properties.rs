//! The v5 properties (2.2.2): each property set is declared once (`properties!`), and reading
//! it (the [`Reader`] methods here) and writing it ([`put_props`]) both derive from that
//! declaration. May import `error`, `reader`, `packets` and `wire`.

use bytes::Bytes;

use super::error::DecodeError::{self, Malformed, Protocol};
use super::reader::Reader;
use crate::packets::*;
use crate::wire::{put_bin, put_str, put_varint, Counter, Sink};

/// Reading the property blocks: here rather than in `reader`, beside the sets they fill.
impl Reader {
    /// Reads the v5 property block (its length, then exactly that many bytes: 2.2.2.1) into `p`.
    pub(super) fn properties<P: Props>(&mut self, p: &mut P) -> Result<(), DecodeError> {
        let n = self.varint()? as usize;
        let mut block = self.sub(n)?;
        while !block.is_empty() {
            let id = block.varint()?;
            p.set(id, block.property(id)?)?;
        }
        Ok(())
    }

    /// A v5 property set, or the empty set for 3.1.1, which has none on the wire.
    pub(super) fn props<P: Props + Default>(&mut self, v: Version) -> Result<P, DecodeError> {
        let mut p = P::default();
        if v.is_v5() {
            self.properties(&mut p)?;
        }
        Ok(p)
    }

    /// One property value; its identifier decides its type (2.2.2.2).
    fn property(&mut self, id: u32) -> Result<Prop, DecodeError> {
        let value = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Prop::Byte(self.u8()?),
            0x13 | 0x21 | 0x22 | 0x23 => Prop::Short(self.u16()?),
            0x02 | 0x11 | 0x18 | 0x27 => Prop::Int(self.u32()?),
            0x0B => Prop::Var(self.varint()?),
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => Prop::Str(self.string()?),
            0x09 | 0x16 => Prop::Bin(self.binary()?),
            0x26 => Prop::Pair(self.string()?, self.string()?),
            _ => return Err(Malformed("unknown property identifier")),
        };
        // Every one-byte property is a 0/1 switch (Payload Format Indicator, Request Problem and
        // Response Information, Maximum QoS, the *Available flags); Receive Maximum, Maximum
        // Packet Size, Topic Alias (MQTT-3.3.2-8 v5) and Subscription Identifier cannot be 0.
        let out_of_range = match value {
            Prop::Byte(b) => b > 1,
            Prop::Short(0) | Prop::Int(0) | Prop::Var(0) => matches!(id, 0x0B | 0x21 | 0x23 | 0x27),
            _ => false,
        };
        if out_of_range {
            return Err(Protocol("property value out of range"));
        }
        Ok(value)
    }
}

/// One decoded property value, typed by its identifier (2.2.2.2).
pub(super) enum Prop {
    Byte(u8),
    Short(u16),
    Int(u32),
    Var(u32),
    Str(String),
    Bin(Bytes),
    Pair(String, String),
}

/// A v5 property set: which identifiers it accepts (Table 2-4), how it stores their values and
/// how it writes itself (identifier, value pairs, without the length prefix).
pub(super) trait Props {
    fn set(&mut self, id: u32, value: Prop) -> Result<(), DecodeError>;
    fn put<S: Sink>(&self, s: &mut S);
}

pub(super) fn props_len<P: Props>(p: &P) -> usize {
    let mut c = Counter(0);
    p.put(&mut c);
    c.0
}

/// The property block, written for v5 only: its length, then the properties.
pub(super) fn put_props<S: Sink, P: Props>(s: &mut S, v5: bool, p: &P) {
    if v5 {
        put_varint(s, props_len(p));
        p.put(s);
    }
}

/// A property value's Rust type: how it comes out of a [`Prop`] and how it is written.
trait Value: Sized {
    fn from_prop(p: Prop) -> Option<Self>;
    fn put<S: Sink>(&self, s: &mut S, id: u8);
}

impl Value for u8 {
    fn from_prop(p: Prop) -> Option<Self> {
        if let Prop::Byte(v) = p {
            Some(v)
        } else {
            None
        }
    }
    fn put<S: Sink>(&self, s: &mut S, _: u8) {
        s.byte(*self);
    }
}

impl Value for u16 {
    fn from_prop(p: Prop) -> Option<Self> {
        if let Prop::Short(v) = p {
            Some(v)
        } else {
            None
        }
    }
    fn put<S: Sink>(&self, s: &mut S, _: u8) {
        s.short(*self);
    }
}

impl Value for u32 {
    fn from_prop(p: Prop) -> Option<Self> {
        if let Prop::Int(v) | Prop::Var(v) = p {
            Some(v)
        } else {
            None
        }
    }
    fn put<S: Sink>(&self, s: &mut S, id: u8) {
        if id == 0x0B {
            put_varint(s, *self as usize); // Subscription Identifier
        } else {
            s.put(&self.to_be_bytes());
        }
    }
}

impl Value for String {
    fn from_prop(p: Prop) -> Option<Self> {
        if let Prop::Str(v) = p {
            Some(v)
        } else {
            None
        }
    }
    fn put<S: Sink>(&self, s: &mut S, _: u8) {
        put_str(s, self);
    }
}

impl Value for Bytes {
    fn from_prop(p: Prop) -> Option<Self> {
        if let Prop::Bin(v) = p {
            Some(v)
        } else {
            None
        }
    }
    fn put<S: Sink>(&self, s: &mut S, _: u8) {
        put_bin(s, self);
    }
}

impl Value for UserProperty {
    fn from_prop(p: Prop) -> Option<Self> {
        if let Prop::Pair(k, v) = p {
            Some((k, v))
        } else {
            None
        }
    }
    fn put<S: Sink>(&self, s: &mut S, _: u8) {
        put_str(s, &self.0);
        put_str(s, &self.1);
    }
}

/// A property field: `Option` for properties that may appear once, `Vec` for repeatable ones.
trait Field {
    fn store(&mut self, p: Prop) -> Result<(), DecodeError>;
    fn put<S: Sink>(&self, s: &mut S, id: u8);
}

const WRONG_TYPE: DecodeError = Malformed("property of the wrong type");

impl<T: Value> Field for Option<T> {
    fn store(&mut self, p: Prop) -> Result<(), DecodeError> {
        if self.is_some() {
            return Err(Protocol("property appears more than once")); // 2.2.2.2 (v5)
        }
        *self = Some(T::from_prop(p).ok_or(WRONG_TYPE)?);
        Ok(())
    }
    fn put<S: Sink>(&self, s: &mut S, id: u8) {
        if let Some(v) = self {
            s.byte(id);
            v.put(s, id);
        }
    }
}

impl<T: Value> Field for Vec<T> {
    fn store(&mut self, p: Prop) -> Result<(), DecodeError> {
        self.push(T::from_prop(p).ok_or(WRONG_TYPE)?);
        Ok(())
    }
    fn put<S: Sink>(&self, s: &mut S, id: u8) {
        for v in self {
            s.byte(id);
            v.put(s, id);
        }
    }
}

/// Declares each property set once — identifier → field, in Table 2-4 — and derives both
/// directions from it; an identifier not listed is a Protocol Error in that packet.
macro_rules! properties {
    ($($ty:ty { $($id:literal => $($field:ident).+),+ $(,)? })+) => {$(
        impl Props for $ty {
            fn set(&mut self, id: u32, value: Prop) -> Result<(), DecodeError> {
                match id {
                    $($id => self.$($field).+.store(value),)+
                    _ => Err(Protocol("property not allowed in this packet")),
                }
            }
            fn put<S: Sink>(&self, s: &mut S) {
                $(self.$($field).+.put(s, $id);)+
            }
        }
    )+};
}

properties! {
    ConnectProperties {
        0x11 => session_expiry_interval, 0x21 => receive_maximum, 0x27 => maximum_packet_size,
        0x22 => topic_alias_maximum, 0x19 => request_response_information,
        0x17 => request_problem_information, 0x26 => user_properties,
        0x15 => authentication_method, 0x16 => authentication_data,
    }
    WillProperties {
        0x18 => will_delay_interval, 0x01 => payload_format_indicator,
        0x02 => message_expiry_interval, 0x03 => content_type, 0x08 => response_topic,
        0x09 => correlation_data, 0x26 => user_properties,
    }
    ConnAckProperties {
        0x11 => session_expiry_interval, 0x21 => receive_maximum, 0x24 => maximum_qos,
        0x25 => retain_available, 0x27 => maximum_packet_size,
        0x12 => assigned_client_identifier, 0x22 => topic_alias_maximum,
        0x1F => reason_string, 0x26 => user_properties, 0x28 => wildcard_subscription_available,
        0x29 => subscription_identifiers_available, 0x2A => shared_subscription_available,
        0x13 => server_keep_alive, 0x1A => response_information, 0x1C => server_reference,
        0x15 => authentication_method, 0x16 => authentication_data,
    }
    // Subscription Identifiers travel server → client only: the broker, which knows the
    // direction, rejects them in a client's PUBLISH (MQTT-3.3.4-6 v5).
    PublishProperties {
        0x01 => payload_format_indicator, 0x02 => message_expiry_interval, 0x23 => topic_alias,
        0x08 => response_topic, 0x09 => correlation_data, 0x26 => user_properties,
        0x0B => subscription_identifiers, 0x03 => content_type,
    }
    AckProperties { 0x1F => reason_string, 0x26 => user_properties }
    SubscribeProperties { 0x0B => subscription_identifier, 0x26 => user_properties }
    Unsubscribe { 0x26 => user_properties }
    DisconnectProperties {
        0x11 => session_expiry_interval, 0x1F => reason_string, 0x26 => user_properties,
        0x1C => server_reference,
    }
    Auth {
        0x15 => authentication_method, 0x16 => authentication_data,
        0x1F => properties.reason_string, 0x26 => properties.user_properties,
    }
}

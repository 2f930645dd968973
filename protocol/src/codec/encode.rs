//! Encoding: a packet to bytes for a version, written through a [`Sink`] so that the length
//! prefix and the bytes come from the same code. Never fails. May import `properties` (for the
//! property blocks), `packets` and `wire`.

use bytes::{BufMut, BytesMut};

use super::properties::{props_len, put_props, Props};
use crate::packets::*;
use crate::reason;
use crate::wire::{put_bin, put_str, put_varint, Counter, Sink};

/// Appends the encoding of `packet` for `version` to `out`. Never fails: callers respect size
/// limits (see [`encoded_len`]), properties that do not exist in 3.1.1 are simply not written,
/// strings and binaries longer than 65,535 bytes are cut (decode never produces them), and AUTH,
/// which 3.1.1 lacks, is always written in its v5 form.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) {
    let mut body = Counter(0);
    put_body(packet, version, &mut body);
    out.reserve(encoded_len_of(body.0));
    out.put_u8(first_byte(packet));
    put_varint(out, body.0);
    put_body(packet, version, out);
}

/// The encoded size of a packet, fixed header included, for maximum-packet-size checks before
/// sending (v5 3.1.2.11.4).
pub fn encoded_len(packet: &Packet, version: Version) -> usize {
    let mut body = Counter(0);
    put_body(packet, version, &mut body);
    encoded_len_of(body.0)
}

fn encoded_len_of(body: usize) -> usize {
    let mut total = Counter(1 + body);
    put_varint(&mut total, body);
    total.0
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => 0x30 | u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

fn put_body<S: Sink>(packet: &Packet, v: Version, s: &mut S) {
    let v5 = v.is_v5();
    match packet {
        Packet::Connect(c) => put_connect(c, v, s),
        Packet::ConnAck(a) => {
            s.byte(u8::from(a.session_present));
            s.byte(if v5 {
                a.code
            } else {
                reason::to_v3_return_code(a.code)
            });
            put_props(s, v5, &a.properties);
        }
        Packet::Publish(p) => {
            put_str(s, &p.topic);
            if p.qos != QoS::AtMostOnce {
                s.short(p.packet_id.unwrap_or(0));
            }
            put_props(s, v5, &p.properties);
            s.put(&p.payload);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            s.short(a.packet_id);
            put_code_and_props(s, v5, a.code, &a.properties);
        }
        Packet::Subscribe(sub) => {
            s.short(sub.packet_id);
            put_props(s, v5, &sub.properties);
            for f in &sub.filters {
                put_str(s, &f.filter);
                s.byte(subscription_options(f, v5));
            }
        }
        Packet::SubAck(a) => {
            s.short(a.packet_id);
            put_props(s, v5, &a.properties);
            for &code in &a.codes {
                // 3.1.1 has a single failure return code, 0x80.
                s.byte(if v5 || code <= 2 { code } else { 0x80 });
            }
        }
        Packet::Unsubscribe(u) => {
            s.short(u.packet_id);
            put_props(s, v5, u);
            u.filters.iter().for_each(|f| put_str(s, f));
        }
        Packet::UnsubAck(a) => {
            s.short(a.packet_id);
            if v5 {
                put_props(s, v5, &a.properties);
                s.put(&a.codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => put_code_and_props(s, v5, d.code, &d.properties),
        Packet::Auth(a) if a.code == 0 && props_len(a) == 0 => {}
        Packet::Auth(a) => {
            s.byte(a.code);
            put_props(s, true, a);
        }
    }
}

/// The v5 tail of the acks and DISCONNECT: nothing when the code is 0 and there are no
/// properties, the code alone when there are no properties (3.4.2.1, 3.14.2.1).
fn put_code_and_props<S: Sink, P: Props>(s: &mut S, v5: bool, code: u8, props: &P) {
    let has_props = props_len(props) > 0;
    if v5 && (code != 0 || has_props) {
        s.byte(code);
        // always with a property length (even 0) after a reason code: valid either way, and
        // what mosquitto sends; some clients (rumqttc 0.25) cannot read the shorter form
        put_props(s, v5, props);
    }
}

fn put_connect<S: Sink>(c: &Connect, v: Version, s: &mut S) {
    let v5 = v.is_v5();
    put_str(s, if v == Version::V31 { "MQIsdp" } else { "MQTT" });
    s.byte(v.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    s.byte(flags);
    s.short(c.keep_alive);
    put_props(s, v5, &c.properties);
    put_str(s, &c.client_id);
    if let Some(w) = &c.will {
        put_props(s, v5, &w.properties);
        put_str(s, &w.topic);
        put_bin(s, &w.payload);
    }
    if let Some(u) = &c.username {
        put_str(s, u);
    }
    if let Some(p) = &c.password {
        put_bin(s, p);
    }
}

fn subscription_options(f: &SubscribeFilter, v5: bool) -> u8 {
    let rh = match f.retain_handling {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendIfNew => 1,
        RetainHandling::DoNotSend => 2,
    };
    let extra = u8::from(f.no_local) << 2 | u8::from(f.retain_as_published) << 3 | rh << 4;
    f.qos as u8 | if v5 { extra } else { 0 }
}

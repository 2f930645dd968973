#!/usr/bin/env python3
"""Interoperability checks of an MQTT broker against Python paho-mqtt 2.x (MQTT 3.1.1 and 5.0).

Usage: paho_interop.py HOST PORT

Prints one line per check ("ok NAME" or "FAIL NAME: why") and a final "N passed, M failed";
exits 0 only when every check passed. Where paho hides what a check must observe (DUP flags,
packet ids, unacknowledged deliveries, keep-alive silence), a small raw MQTT client built from
struct-packed bytes is used instead. Every wait is bounded; the whole run takes well under a
minute. Topics are prefixed with a per-run id, so runs against the same broker do not interfere.
"""

import os
import socket
import struct
import sys
import threading
import time
import traceback
import uuid

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError:
    print("FAIL import: paho-mqtt is not installed (pip install paho-mqtt)")
    print("0 passed, 1 failed")
    sys.exit(2)

HOST = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 1883
# PAHO_WS_PATH=/mqtt: paho's websocket transport (MQTT over WebSocket at that path)
WS_PATH = os.environ.get("PAHO_WS_PATH")
RUN = uuid.uuid4().hex[:8]
V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
VNAME = {V311: "v311", V5: "v5"}


class CheckFailed(Exception):
    pass


def expect(cond, why):
    if not cond:
        raise CheckFailed(why)


def topic(*parts):
    return "/".join(("paho-" + RUN,) + parts)


def cid(name):
    return "paho-%s-%s" % (RUN, name)


# ---------------------------------------------------------------------------------------------
# paho helpers


class Paho:
    """A paho client on a background loop that records what it receives."""

    def __init__(self, name, version, clean=True, expiry=None, will=None, receive_maximum=None,
                 connect=True, keepalive=30, client_id=None):
        self.name = name
        self.version = version
        self.cond = threading.Condition()
        self.msgs = []
        self.connack = None
        self.subacks = {}
        self.disconnected = threading.Event()
        self.disconnect_reason = None
        kw = {}
        if version == V311:
            kw["clean_session"] = clean
        if WS_PATH:
            kw["transport"] = "websockets"
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=cid(name) if client_id is None else client_id,
                             protocol=version, reconnect_on_failure=False, **kw)
        if WS_PATH:
            self.c.ws_set_options(path=WS_PATH)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_disconnect = self._on_disconnect
        self.c.on_unsubscribe = self._on_unsubscribe
        self.unsubacks = {}
        if will is not None:
            wt, wp, wq, wprops = will[:4]
            wretain = will[4] if len(will) > 4 else False
            self.c.will_set(wt, wp, qos=wq, retain=wretain, properties=wprops)
        self.clean = clean
        self.expiry = expiry
        self.receive_maximum = receive_maximum
        self.keepalive = keepalive
        if connect:
            self.connect()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.connack = (flags.session_present, reason_code, properties)
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.msgs.append(msg)
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = [int(rc.value) if hasattr(rc, "value") else int(rc)
                                 for rc in reason_codes]
            self.cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.unsubacks[mid] = [int(rc.value) if hasattr(rc, "value") else int(rc)
                                   for rc in reason_codes]
            self.cond.notify_all()

    def unsubscribe(self, filt):
        rc, mid = self.c.unsubscribe(filt)
        expect(rc == mqtt.MQTT_ERR_SUCCESS, "%s: unsubscribe rc %s" % (self.name, rc))
        expect(self.wait(lambda: mid in self.unsubacks, 5), "%s: no UNSUBACK" % self.name)
        return self.unsubacks[mid]

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code
        self.disconnected.set()

    def wait(self, pred, timeout):
        end = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def connect(self):
        self.connack = None
        self.disconnected.clear()
        kw = {}
        if self.version == V5:
            props = Properties(PacketTypes.CONNECT)
            if self.expiry is not None:
                props.SessionExpiryInterval = self.expiry
            if self.receive_maximum is not None:
                props.ReceiveMaximum = self.receive_maximum
            kw["clean_start"] = self.clean
            kw["properties"] = props
        self.c.connect(HOST, PORT, keepalive=self.keepalive, **kw)
        self.c.loop_start()
        expect(self.wait(lambda: self.connack is not None, 5), "%s: no CONNACK" % self.name)
        rc = self.connack[1]
        expect(not rc.is_failure, "%s: CONNACK refused: %s" % (self.name, rc))
        return self.connack[0]

    def session_present(self):
        return bool(self.connack[0])

    def subscribe(self, filt, qos=1, no_local=False, rap=False, rh=0, sub_id=None):
        if self.version == V5:
            props = None
            if sub_id is not None:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sub_id
            opts = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=rap,
                                    retainHandling=rh)
            rc, mid = self.c.subscribe(filt, options=opts, properties=props)
        else:
            rc, mid = self.c.subscribe(filt, qos)
        expect(rc == mqtt.MQTT_ERR_SUCCESS, "%s: subscribe %s: rc %s" % (self.name, filt, rc))
        expect(self.wait(lambda: mid in self.subacks, 5),
               "%s: no SUBACK for %s" % (self.name, filt))
        codes = self.subacks[mid]
        expect(codes == [qos], "%s: SUBACK for %s: %s, want [%d]" % (self.name, filt, codes, qos))

    def publish(self, t, payload, qos=0, retain=False, props=None):
        info = self.c.publish(t, payload, qos=qos, retain=retain, properties=props)
        expect(info.rc == mqtt.MQTT_ERR_SUCCESS, "%s: publish rc %s" % (self.name, info.rc))
        if qos > 0:
            info.wait_for_publish(5)
            expect(info.is_published(), "%s: publish to %s not acknowledged" % (self.name, t))
        return info

    def on(self, t):
        with self.cond:
            return [m for m in self.msgs if m.topic == t]

    def wait_count(self, t, n, timeout=3.0):
        self.wait(lambda: len([m for m in self.msgs if m.topic == t]) >= n, timeout)
        return self.on(t)

    def quiet(self, t, secs):
        """Messages on `t` after waiting `secs` (for checks that nothing arrives)."""
        time.sleep(secs)
        return self.on(t)

    def disconnect(self, props=None):
        self.c.disconnect(properties=props)
        self.disconnected.wait(3)
        self.c.loop_stop()

    def abrupt(self):
        """Closes the socket without DISCONNECT (as a crashed client would), then stops the
        network loop (which sees the connection gone and, like a dead client, sends nothing)."""
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.c.loop_stop()
        if sock is not None:
            sock.close()


def poll_until(pred, timeout):
    """Waits for a condition spanning several clients."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def pubprops(**kw):
    p = Properties(PacketTypes.PUBLISH)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def cleanup(name, version):
    """Ends a client's session (clean connect + disconnect)."""
    try:
        c = Paho(name, version, clean=True, expiry=0)
        c.disconnect()
    except Exception:  # noqa: BLE001 -- best effort
        pass


# ---------------------------------------------------------------------------------------------
# raw MQTT client

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# property id -> kind
PROP_KIND = {
    0x01: "byte", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "bin", 0x0B: "varint",
    0x11: "u32", 0x12: "str", 0x13: "u16", 0x15: "str", 0x16: "bin", 0x17: "byte",
    0x18: "u32", 0x19: "byte", 0x1A: "str", 0x1C: "str", 0x1F: "str", 0x21: "u16",
    0x22: "u16", 0x23: "u16", 0x24: "byte", 0x25: "byte", 0x26: "pair", 0x27: "u32",
    0x28: "byte", 0x29: "byte", 0x2A: "byte",
}


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def mstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def props_bytes(props):
    body = bytearray()
    for pid, val in props:
        kind = PROP_KIND[pid]
        body += varint(pid)
        if kind == "byte":
            body += struct.pack("!B", val)
        elif kind == "u16":
            body += struct.pack("!H", val)
        elif kind == "u32":
            body += struct.pack("!I", val)
        elif kind == "varint":
            body += varint(val)
        elif kind in ("str", "bin"):
            body += mstr(val)
        elif kind == "pair":
            body += mstr(val[0]) + mstr(val[1])
    return varint(len(body)) + bytes(body)


def parse_props(b, i):
    n, i = read_varint(b, i)
    end = i + n
    out = {}
    while i < end:
        pid, i = read_varint(b, i)
        kind = PROP_KIND.get(pid)
        if kind == "byte":
            v = b[i]
            i += 1
        elif kind == "u16":
            v = struct.unpack_from("!H", b, i)[0]
            i += 2
        elif kind == "u32":
            v = struct.unpack_from("!I", b, i)[0]
            i += 4
        elif kind == "varint":
            v, i = read_varint(b, i)
        elif kind in ("str", "bin"):
            ln = struct.unpack_from("!H", b, i)[0]
            v = bytes(b[i + 2:i + 2 + ln])
            i += 2 + ln
        elif kind == "pair":
            l1 = struct.unpack_from("!H", b, i)[0]
            k = bytes(b[i + 2:i + 2 + l1])
            i += 2 + l1
            l2 = struct.unpack_from("!H", b, i)[0]
            v = (k, bytes(b[i + 2:i + 2 + l2]))
            i += 2 + l2
        else:
            raise CheckFailed("unknown property id 0x%02x" % pid)
        out.setdefault(pid, []).append(v)
    return out, end


def read_varint(b, i):
    mult, val = 1, 0
    while True:
        c = b[i]
        i += 1
        val += (c & 0x7F) * mult
        if not c & 0x80:
            return val, i
        mult *= 128


class Pkt:
    def __init__(self, ptype, flags, body):
        self.type, self.flags, self.body = ptype, flags, body

    def __repr__(self):
        return "Pkt(type=%d flags=%d body=%r)" % (self.type, self.flags, self.body[:40])


class Pub:
    def __init__(self, pkt, v5):
        b = pkt.body
        self.dup = bool(pkt.flags & 8)
        self.qos = (pkt.flags >> 1) & 3
        self.retain = bool(pkt.flags & 1)
        tl = struct.unpack_from("!H", b, 0)[0]
        self.topic = bytes(b[2:2 + tl]).decode()
        i = 2 + tl
        self.pid = None
        if self.qos:
            self.pid = struct.unpack_from("!H", b, i)[0]
            i += 2
        self.props = {}
        if v5:
            self.props, i = parse_props(b, i)
        self.payload = bytes(b[i:])

    def __repr__(self):
        return "Pub(%s %r qos=%d dup=%s pid=%s)" % (self.topic, self.payload, self.qos, self.dup,
                                                    self.pid)


class Closed(Exception):
    pass


class Raw:
    """A minimal MQTT client over a plain socket, to observe exact packets."""

    def __init__(self, v5):
        self.v5 = v5
        self.s = socket.create_connection((HOST, PORT), timeout=5)
        self.buf = b""

    def send(self, ptype, flags, body):
        self.s.sendall(bytes([(ptype << 4) | flags]) + varint(len(body)) + body)

    def recv(self, timeout):
        """Next packet, None on timeout; raises Closed when the server closed the socket."""
        end = time.monotonic() + timeout
        while True:
            pkt = self._parse()
            if pkt is not None:
                return pkt
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                return None
            except OSError as e:
                raise Closed(str(e))
            if not chunk:
                raise Closed("EOF")
            self.buf += chunk

    def _parse(self):
        b = self.buf
        if len(b) < 2:
            return None
        mult, val, i = 1, 0, 1
        while True:
            if i >= len(b):
                return None
            c = b[i]
            i += 1
            val += (c & 0x7F) * mult
            if not c & 0x80:
                break
            mult *= 128
        if len(b) < i + val:
            return None
        pkt = Pkt(b[0] >> 4, b[0] & 0x0F, b[i:i + val])
        self.buf = b[i + val:]
        return pkt

    def recv_type(self, ptype, timeout, skip=()):
        """Next packet of `ptype` (others in `skip` are ignored; anything else fails)."""
        end = time.monotonic() + timeout
        while True:
            pkt = self.recv(max(0.0, end - time.monotonic()))
            if pkt is None:
                return None
            if pkt.type == ptype:
                return pkt
            if pkt.type not in skip:
                raise CheckFailed("expected packet type %d, got %r" % (ptype, pkt))

    def connect(self, client_id, clean, keepalive=30, will=None, props=()):
        flags = 0x02 if clean else 0
        payload = mstr(client_id)
        if will is not None:
            wt, wp, wq, wprops = will
            flags |= 0x04 | (wq << 3)
            if self.v5:
                payload += props_bytes(wprops)
            payload += mstr(wt) + mstr(wp)
        body = mstr("MQTT") + bytes([5 if self.v5 else 4, flags]) + struct.pack("!H", keepalive)
        if self.v5:
            body += props_bytes(props)
        self.send(CONNECT, 0, body + payload)
        pkt = self.recv_type(CONNACK, 5)
        expect(pkt is not None, "raw %s: no CONNACK" % client_id)
        sp, code = pkt.body[0] & 1, pkt.body[1]
        cprops = parse_props(pkt.body, 2)[0] if self.v5 else {}
        expect(code == 0, "raw %s: CONNACK code 0x%02x" % (client_id, code))
        return bool(sp), cprops

    def subscribe(self, pid, filt, qos, props=()):
        body = struct.pack("!H", pid)
        if self.v5:
            body += props_bytes(props)
        body += mstr(filt) + bytes([qos])
        self.send(SUBSCRIBE, 2, body)
        pkt = self.recv_type(SUBACK, 5)
        expect(pkt is not None, "raw: no SUBACK for %s" % filt)
        code = pkt.body[-1]
        expect(code == qos, "raw: SUBACK code 0x%02x for %s" % (code, filt))

    def publish(self, t, payload, qos=0, pid=None, retain=False, dup=False, props=()):
        body = mstr(t)
        if qos:
            body += struct.pack("!H", pid)
        if self.v5:
            body += props_bytes(props)
        self.send(PUBLISH, (8 if dup else 0) | (qos << 1) | (1 if retain else 0),
                  body + payload)

    def ack(self, ptype, pid):
        self.send(ptype, 2 if ptype == PUBREL else 0, struct.pack("!H", pid))

    def recv_pub(self, timeout):
        pkt = self.recv_type(PUBLISH, timeout)
        return Pub(pkt, self.v5) if pkt is not None else None

    def disconnect(self):
        try:
            self.send(DISCONNECT, 0, b"")
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            self.s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.s.close()


def raw_session(version):
    """(clean connect args) for a fresh persistent session: v3 clean=false; v5 expiry 60."""
    if version == V5:
        return [(0x11, 60)]
    return []


# ---------------------------------------------------------------------------------------------
# checks (both versions)


def check_qos_round_trip(v):
    n = VNAME[v]
    sub = Paho("rt-sub-" + n, v)
    pub = Paho("rt-pub-" + n, v)
    try:
        sub.subscribe(topic("rt", n, "#"), qos=2)
        for q in (0, 1, 2):
            t = topic("rt", n, "q%d" % q)
            payload = b"q%d-\x00\xff-" % q + os.urandom(8)
            pub.publish(t, payload, qos=q)
            got = sub.wait_count(t, 1)
            expect(len(got) == 1, "QoS %d: got %d messages" % (q, len(got)))
            expect(got[0].payload == payload, "QoS %d: payload %r" % (q, got[0].payload))
            expect(got[0].qos == q, "QoS %d: delivered with QoS %d" % (q, got[0].qos))
            expect(not got[0].retain, "QoS %d: RETAIN set on a live delivery" % q)
        # downgrade to the subscription's QoS
        sub2 = Paho("rt-sub2-" + n, v)
        try:
            sub2.subscribe(topic("rt2", n), qos=1)
            pub.publish(topic("rt2", n), b"down", qos=2)
            got = sub2.wait_count(topic("rt2", n), 1)
            expect(len(got) == 1 and got[0].qos == 1,
                   "QoS 2 publish on a QoS 1 subscription: %r" % [(m.qos,) for m in got])
        finally:
            sub2.disconnect()
        time.sleep(0.3)
        for q in (0, 1, 2):
            got = sub.on(topic("rt", n, "q%d" % q))
            expect(len(got) == 1, "QoS %d: %d copies (duplicate delivery)" % (q, len(got)))
    finally:
        sub.disconnect()
        pub.disconnect()


def check_retained(v):
    n = VNAME[v]
    t = topic("ret", n)
    pub = Paho("ret-pub-" + n, v)
    try:
        pub.publish(t, b"r1", qos=1, retain=True)
        pub.publish(t, b"r2", qos=1, retain=True)
        s1 = Paho("ret-s1-" + n, v)
        try:
            s1.subscribe(t, qos=1)
            got = s1.wait_count(t, 1)
            expect(len(got) == 1, "on subscribe: %d retained messages" % len(got))
            expect(got[0].payload == b"r2", "retained not replaced: %r" % got[0].payload)
            expect(got[0].retain, "retained message delivered without RETAIN flag")
            # a live publish to an existing subscriber: RETAIN 0 (MQTT-3.3.1-9)
            pub.publish(t, b"r3", qos=1, retain=True)
            got = s1.wait_count(t, 2)
            expect(len(got) == 2, "live retained publish not delivered")
            expect(not got[1].retain, "live delivery of a retained publish has RETAIN set")
            # clear
            pub.publish(t, b"", qos=1, retain=True)
            s1.wait_count(t, 3)
        finally:
            s1.disconnect()
        s2 = Paho("ret-s2-" + n, v)
        try:
            s2.subscribe(t, qos=1)
            got = s2.quiet(t, 0.7)
            expect(not got, "retained message not cleared: %r" % [m.payload for m in got])
        finally:
            s2.disconnect()
        # a retained QoS 0 publish is kept too, and a wildcard subscription receives it
        pub.publish(topic("ret0", n, "a"), b"z", qos=0, retain=True)
        time.sleep(0.2)
        s3 = Paho("ret-s3-" + n, v)
        try:
            s3.subscribe(topic("ret0", n, "+"), qos=0)
            got = s3.wait_count(topic("ret0", n, "a"), 1)
            expect(len(got) == 1 and got[0].retain and got[0].payload == b"z",
                   "retained QoS 0 via wildcard: %r" % [(m.payload, m.retain) for m in got])
        finally:
            s3.disconnect()
        pub.publish(topic("ret0", n, "a"), b"", qos=1, retain=True)
        # a retained QoS 1 message goes to a QoS 2 subscription at QoS 1, to QoS 0 at QoS 0
        tq = topic("retq", n)
        pub.publish(tq, b"q1", qos=1, retain=True)
        s4 = Paho("ret-s4-" + n, v)
        try:
            s4.subscribe(tq, qos=2)
            got = s4.wait_count(tq, 1)
            expect(len(got) == 1 and got[0].qos == 1,
                   "retained QoS 1 on a QoS 2 subscription: %r" % [m.qos for m in got])
        finally:
            s4.disconnect()
        pub.publish(tq, b"", qos=1, retain=True)
    finally:
        pub.disconnect()


def check_will(v):
    n = VNAME[v]
    t = topic("will", n)
    sub = Paho("will-sub-" + n, v)
    try:
        sub.subscribe(t, qos=1)
        w = Paho("will-abrupt-" + n, v, will=(t, b"gone-abrupt", 1, None))
        w.abrupt()
        got = sub.wait_count(t, 1, 3)
        expect(len(got) == 1 and got[0].payload == b"gone-abrupt",
               "no will after an abrupt close: %r" % [m.payload for m in got])
        expect(got[0].qos == 1, "will delivered with QoS %d" % got[0].qos)
        w2 = Paho("will-normal-" + n, v, will=(t, b"gone-normal", 1, None))
        w2.disconnect()
        got = sub.quiet(t, 1.0)
        expect(all(m.payload != b"gone-normal" for m in got), "will published after DISCONNECT")
    finally:
        sub.disconnect()


def check_wildcards(v):
    n = VNAME[v]
    sub = Paho("wc-sub-" + n, v)
    pub = Paho("wc-pub-" + n, v)
    try:
        sub.subscribe(topic("wc", n, "+", "x"), qos=1)
        sub.subscribe(topic("wc2", n, "#"), qos=1)
        yes = [topic("wc", n, "a", "x"), topic("wc", n, "", "x"), topic("wc2", n),
               topic("wc2", n, "a"), topic("wc2", n, "a", "b", "c")]
        no = [topic("wc", n, "a", "b", "x"), topic("wc", n, "x"), topic("wc", n, "a", "x", "y"),
              topic("wc2x", n)]
        for t in no + yes:
            pub.publish(t, b"w", qos=1)
        sub.wait(lambda: len(sub.msgs) >= len(yes), 3)
        time.sleep(0.3)
        got = sorted(m.topic for m in sub.msgs)
        expect(got == sorted(yes), "received %r, want %r" % (got, sorted(yes)))
    finally:
        sub.disconnect()
        pub.disconnect()


def check_overlapping(v):
    n = VNAME[v]
    t = topic("ov", n, "a")
    sub = Paho("ov-sub-" + n, v)
    pub = Paho("ov-pub-" + n, v)
    try:
        sub.subscribe(topic("ov", n, "#"), qos=0)
        sub.subscribe(topic("ov", n, "+"), qos=2)
        sub.subscribe(t, qos=1)
        pub.publish(t, b"o", qos=2)
        sub.wait_count(t, 1)
        got = sub.quiet(t, 0.7)
        expect(len(got) == 1, "%d copies for overlapping subscriptions" % len(got))
        expect(got[0].qos == 2, "delivered with QoS %d, want the maximum 2" % got[0].qos)
    finally:
        sub.disconnect()
        pub.disconnect()


def check_dollar_topics(v):
    n = VNAME[v]
    dt = "$paho%s%s/bar" % (RUN, n)
    hash_sub = Paho("dollar-hash-" + n, v)
    plus_sub = Paho("dollar-plus-" + n, v)
    dsub = Paho("dollar-explicit-" + n, v)
    pub = Paho("dollar-pub-" + n, v)
    try:
        hash_sub.subscribe("#", qos=0)
        plus_sub.subscribe("+/bar", qos=0)
        dsub.subscribe("$paho%s%s/#" % (RUN, n), qos=0)
        pub.publish(dt, b"d", qos=1)
        got = dsub.wait_count(dt, 1)
        expect(len(got) == 1, "a $foo/# subscriber got %d messages" % len(got))
        time.sleep(0.3)
        expect(not hash_sub.on(dt), "'#' matched a topic starting with '$' (MQTT-4.7.2-1)")
        expect(not plus_sub.on(dt), "'+/bar' matched a topic starting with '$' (MQTT-4.7.2-1)")
        dollar = [m.topic for m in hash_sub.msgs if m.topic.startswith("$")]
        expect(not dollar, "'#' received $-topics %r" % dollar[:3])
    finally:
        for c in (hash_sub, plus_sub, dsub, pub):
            c.disconnect()


def check_shared(v):
    n = VNAME[v]
    f = "$share/g%s/%s" % (n, topic("sh", n, "#"))
    a = Paho("sh-a-" + n, v)
    b = Paho("sh-b-" + n, v)
    plain = Paho("sh-plain-" + n, v)
    pub = Paho("sh-pub-" + n, v)
    try:
        pub.publish(topic("sh", n, "kept"), b"retained", qos=1, retain=True)
        a.subscribe(f, qos=1)
        b.subscribe(f, qos=1)
        plain.subscribe(topic("sh", n, "#"), qos=1)
        plain.wait_count(topic("sh", n, "kept"), 1)
        time.sleep(0.3)
        expect(not a.msgs and not b.msgs,
               "retained message sent to a shared subscription (MQTT 5 §3.8.4)")
        pub.publish(topic("sh", n, "kept"), b"", qos=1, retain=True)
        count = 20
        for i in range(count):
            pub.publish(topic("sh", n, "m"), b"%d" % i, qos=1)
        t = topic("sh", n, "m")
        poll_until(lambda: len(a.on(t)) + len(b.on(t)) >= count, 5)
        plain.wait_count(t, count)
        time.sleep(0.3)
        pa = [m.payload for m in a.on(t)]
        pb = [m.payload for m in b.on(t)]
        every = sorted(pa + pb, key=int)
        expect(every == [b"%d" % i for i in range(count)],
               "group members got %d+%d messages, not each message exactly once: %r"
               % (len(pa), len(pb), every))
        expect(pa and pb, "not spread: member a got %d, member b got %d" % (len(pa), len(pb)))
        expect(len(plain.on(t)) == count, "non-shared subscriber got %d of %d"
               % (len(plain.on(t)), count))
    finally:
        for c in (a, b, plain, pub):
            c.disconnect()


def check_keepalive(v):
    n = VNAME[v]
    t = topic("ka", n)
    sub = Paho("ka-sub-" + n, v)
    try:
        sub.subscribe(t, qos=1)
        r = Raw(v == V5)
        r.connect(cid("ka-raw-" + n), True, keepalive=1, will=(t, b"ka-will", 1, []))
        start = time.monotonic()
        disc = None
        try:
            while time.monotonic() - start < 4:
                pkt = r.recv(4 - (time.monotonic() - start))
                if pkt is None:
                    break
                if pkt.type == DISCONNECT:
                    disc = pkt
            raise CheckFailed("still connected 4 s after going silent with keep-alive 1 s")
        except Closed:
            took = time.monotonic() - start
        finally:
            r.close()
        expect(1.0 <= took <= 2.6,
               "closed %.2f s after CONNACK, want about 1.5 s "
               "(3.1.1: MQTT-3.1.2-24, 5.0: MQTT-3.1.2-22)" % took)
        if v == V5:
            expect(disc is not None and disc.body[:1] == b"\x8d",
                   "v5: no DISCONNECT 0x8D (Keep Alive timeout) before closing: %r" % disc)
        got = sub.wait_count(t, 1, 2)
        expect(len(got) == 1 and got[0].payload == b"ka-will",
               "will not published on keep-alive expiry")
    finally:
        sub.disconnect()


def check_qos1_redelivery(v):
    n = VNAME[v]
    t = topic("redeliver1", n)
    name = cid("redeliver1-" + n)
    pub = Paho("redeliver1-pub-" + n, v)
    try:
        r = Raw(v == V5)
        r.connect(name, v == V5, props=raw_session(v))
        r.subscribe(1, t, 1)
        pub.publish(t, b"unacked", qos=1)
        p = r.recv_pub(3)
        expect(p is not None and p.payload == b"unacked", "first delivery: %r" % p)
        expect(not p.dup, "first delivery has DUP set")
        r.close()  # no PUBACK
        time.sleep(0.2)
        r = Raw(v == V5)
        sp, _ = r.connect(name, False, props=raw_session(v))
        expect(sp, "reconnect: session present 0")
        p2 = r.recv_pub(3)
        expect(p2 is not None, "unacknowledged QoS 1 not redelivered on reconnect (MQTT-4.4.0-1)")
        expect(p2.payload == b"unacked" and p2.qos == 1, "redelivered %r" % p2)
        expect(p2.dup, "redelivery without DUP=1 (MQTT-3.3.1-1)")
        expect(p2.pid == p.pid, "redelivery with another packet id (%d, was %d)" % (p2.pid, p.pid))
        r.ack(PUBACK, p2.pid)
        time.sleep(0.2)
        r.disconnect()
        r = Raw(v == V5)
        sp, _ = r.connect(name, False, props=raw_session(v))
        extra = r.recv_pub(0.7)
        expect(extra is None, "acknowledged message delivered again: %r" % extra)
        r.disconnect()
    finally:
        pub.disconnect()
        r = Raw(v == V5)
        r.connect(name, True)
        r.disconnect()


def check_qos2_redelivery(v):
    n = VNAME[v]
    t = topic("redeliver2", n)
    name = cid("redeliver2-" + n)
    pub = Paho("redeliver2-pub-" + n, v)
    try:
        r = Raw(v == V5)
        r.connect(name, v == V5, props=raw_session(v))
        r.subscribe(1, t, 2)
        # 1) PUBLISH not acknowledged: resent with DUP
        pub.publish(t, b"q2-a", qos=2)
        p = r.recv_pub(3)
        expect(p is not None and p.qos == 2, "first delivery: %r" % p)
        r.close()
        time.sleep(0.2)
        r = Raw(v == V5)
        sp, _ = r.connect(name, False, props=raw_session(v))
        expect(sp, "reconnect: session present 0")
        p2 = r.recv_pub(3)
        expect(p2 is not None and p2.dup and p2.pid == p.pid and p2.payload == b"q2-a",
               "unacknowledged QoS 2 PUBLISH not resent with DUP and the same id: %r" % p2)
        # 2) PUBREC sent, PUBREL received, no PUBCOMP: PUBREL resent on reconnect
        r.ack(PUBREC, p2.pid)
        rel = r.recv_type(PUBREL, 3)
        expect(rel is not None, "no PUBREL after PUBREC")
        r.close()
        time.sleep(0.2)
        r = Raw(v == V5)
        sp, _ = r.connect(name, False, props=raw_session(v))
        expect(sp, "second reconnect: session present 0")
        pkt = r.recv(3)
        expect(pkt is not None and pkt.type == PUBREL,
               "PUBREL not resent on reconnect (MQTT-4.4.0-1), got %r" % pkt)
        expect(pkt.flags == 2, "PUBREL with flags %d" % pkt.flags)
        expect(struct.unpack_from("!H", pkt.body, 0)[0] == p.pid, "PUBREL for another id")
        r.ack(PUBCOMP, p.pid)
        extra = r.recv(0.7)
        expect(extra is None, "after PUBCOMP: unexpected %r" % extra)
        r.disconnect()
    finally:
        pub.disconnect()
        r = Raw(v == V5)
        r.connect(name, True)
        r.disconnect()


def check_qos2_inbound_resume(v):
    """A publisher's QoS 2 flow interrupted after PUBREC resumes with PUBREL on reconnect, and
    the message is delivered exactly once."""
    n = VNAME[v]
    t = topic("inbound2", n)
    name = cid("inbound2-" + n)
    sub = Paho("inbound2-sub-" + n, v)
    try:
        sub.subscribe(t, qos=2)
        r = Raw(v == V5)
        r.connect(name, v == V5, props=raw_session(v))
        r.publish(t, b"once", qos=2, pid=7)
        rec = r.recv_type(PUBREC, 3)
        expect(rec is not None, "no PUBREC")
        r.close()
        r = Raw(v == V5)
        sp, _ = r.connect(name, False, props=raw_session(v))
        expect(sp, "reconnect: session present 0")
        r.publish(t, b"once", qos=2, pid=7, dup=True)  # the client may resend the PUBLISH
        rec = r.recv_type(PUBREC, 3)
        expect(rec is not None, "no PUBREC for the resent PUBLISH")
        r.ack(PUBREL, 7)
        comp = r.recv_type(PUBCOMP, 3)
        expect(comp is not None and struct.unpack_from("!H", comp.body, 0)[0] == 7, "no PUBCOMP")
        code = comp.body[2] if len(comp.body) > 2 else 0
        expect(code == 0, "PUBCOMP reason 0x%02x" % code)
        r.disconnect()
        sub.wait_count(t, 1)
        got = sub.quiet(t, 0.5)
        expect(len(got) == 1, "QoS 2 message delivered %d times" % len(got))
    finally:
        sub.disconnect()
        r = Raw(v == V5)
        r.connect(name, True)
        r.disconnect()


def check_session_present_v311(v):
    n = VNAME[v]
    t = topic("sess", n)
    c = Paho("sess-" + n, v, clean=False)
    pub = Paho("sess-pub-" + n, v)
    try:
        c.subscribe(t, qos=1)
        c.disconnect()
        pub.publish(t, b"while-away-1", qos=1)
        pub.publish(t, b"while-away-2", qos=1)
        pub.publish(t, b"qos0-dropped-or-kept", qos=0)
        sp = c.connect()
        expect(sp, "persistent session: session present 0")
        got = c.wait_count(t, 2)
        pays = [m.payload for m in got if m.qos == 1]
        expect(pays == [b"while-away-1", b"while-away-2"], "queued while away: %r" % pays)
        c.disconnect()
        c2 = Paho("sess-" + n, v, clean=True)
        expect(not c2.session_present(), "clean session: session present 1 (MQTT-3.2.2-1)")
        pub.publish(t, b"after-clean", qos=1)
        got = c2.quiet(t, 0.5)
        expect(not got[2:], "clean session kept the old subscription: %r"
               % [m.payload for m in got[2:]])
        c2.disconnect()
    finally:
        pub.disconnect()


def check_unsubscribe(v):
    n = VNAME[v]
    t = topic("unsub", n)
    c = Paho("unsub-" + n, v)
    pub = Paho("unsub-pub-" + n, v)
    try:
        c.subscribe(t, qos=1)
        c.subscribe(t + "/+", qos=1)
        codes = c.unsubscribe(t)
        if v == V5:
            expect(codes == [0], "UNSUBACK %r, want [0x00]" % codes)
            codes = c.unsubscribe(t + "/never")
            expect(codes == [0x11], "UNSUBACK for no subscription: %r, want [0x11]" % codes)
        pub.publish(t, b"gone", qos=1)
        pub.publish(t + "/x", b"kept", qos=1)
        c.wait_count(t + "/x", 1)
        expect(not c.quiet(t, 0.3), "delivered after UNSUBSCRIBE")
        expect(len(c.on(t + "/x")) == 1, "the other subscription stopped too")
    finally:
        c.disconnect()
        pub.disconnect()


def check_takeover(v):
    """A second connection with the same client id takes the session over: the first is closed
    (v5: DISCONNECT 0x8E), the subscriptions carry over (MQTT-3.1.4-3)."""
    n = VNAME[v]
    t = topic("takeover", n)
    kw = {"clean": False} if v == V311 else {"clean": True, "expiry": 60}
    a = Paho("takeover-" + n, v, **kw)
    pub = Paho("takeover-pub-" + n, v)
    b = None
    try:
        a.subscribe(t, qos=1)
        kw["clean"] = False
        b = Paho("takeover-" + n, v, **kw)
        expect(b.session_present(), "takeover: session present 0")
        expect(a.disconnected.wait(3), "first connection not closed on takeover")
        if v == V5:
            rc = a.disconnect_reason
            expect(rc is not None and int(rc.value) == 0x8E,
                   "first connection: reason %r, want 0x8E Session taken over" % rc)
        pub.publish(t, b"to-new", qos=1)
        got = b.wait_count(t, 1)
        expect(len(got) == 1, "subscription did not carry over to the new connection")
        expect(not a.on(t), "the old connection still received messages")
        # a session that lives only as long as its connection is not resumed by a takeover
        # (MQTT-3.1.2-6; v5 §3.1.2.11.2): the new connection starts a fresh one
        kw0 = {"clean": True} if v == V311 else {"clean": True, "expiry": 0}
        c = Paho("takeover0-" + n, v, **kw0)
        c.subscribe(t + "/0", qos=1)
        kw0["clean"] = False
        if v == V5:
            kw0["expiry"] = 60
        d = Paho("takeover0-" + n, v, **kw0)
        try:
            expect(not d.session_present(),
                   "a clean session was resumed by a takeover with clean session 0")
            pub.publish(t + "/0", b"stale", qos=1)
            expect(not d.quiet(t + "/0", 0.4), "a clean session's subscription survived a takeover")
        finally:
            c.c.loop_stop()
            d.disconnect()
            cleanup("takeover0-" + n, v)
    finally:
        a.c.loop_stop()
        if b is not None:
            b.disconnect()
        pub.disconnect()
        cleanup("takeover-" + n, v)


def check_keepalive_ping(v):
    """A client that pings within its keep-alive stays connected."""
    n = VNAME[v]
    t = topic("kaping", n)
    c = Paho("kaping-" + n, v, keepalive=1)
    pub = Paho("kaping-pub-" + n, v)
    try:
        c.subscribe(t, qos=1)
        time.sleep(2.4)
        expect(not c.disconnected.is_set(), "a pinging client with keep-alive 1 s was disconnected")
        pub.publish(t, b"alive", qos=1)
        expect(len(c.wait_count(t, 1)) == 1, "not delivered after 2.4 s of pings")
    finally:
        c.disconnect()
        pub.disconnect()


def check_will_retain(v):
    n = VNAME[v]
    t = topic("willret", n)
    wprops = None
    if v == V5:
        wprops = Properties(PacketTypes.WILLMESSAGE)
        wprops.UserProperty = [("why", "crash")]
        wprops.ContentType = "text/plain"
    w = Paho("willret-" + n, v, will=(t, b"dead", 1, wprops, True))
    w.abrupt()
    time.sleep(0.5)
    s = Paho("willret-sub-" + n, v)
    try:
        s.subscribe(t, qos=1)
        got = s.wait_count(t, 1)
        expect(len(got) == 1 and got[0].payload == b"dead" and got[0].retain,
               "retained will not kept: %r" % [(m.payload, m.retain) for m in got])
        if v == V5:
            p = got[0].properties
            expect(getattr(p, "UserProperty", None) == [("why", "crash")],
                   "will user property lost: %r" % getattr(p, "UserProperty", None))
            expect(getattr(p, "ContentType", None) == "text/plain", "will content type lost")
        s.publish(t, b"", qos=1, retain=True)
    finally:
        s.disconnect()


def check_empty_client_id(v):
    c = Paho("", v, client_id="")
    try:
        if v == V5:
            p = c.connack[2]
            aid = getattr(p, "AssignedClientIdentifier", None)
            expect(aid, "no Assigned Client Identifier for an empty client id (MQTT-3.2.2-16)")
    finally:
        c.disconnect()
    if v == V311:
        # an empty client id with clean session 0: CONNACK 0x02 and close (MQTT-3.1.3-8)
        r = Raw(False)
        body = mstr("MQTT") + bytes([4, 0]) + struct.pack("!H", 30) + mstr("")
        r.send(CONNECT, 0, body)
        try:
            pkt = r.recv_type(CONNACK, 3)
            expect(pkt is not None and pkt.body[1] == 0x02,
                   "empty client id, clean session 0: %r, want CONNACK 0x02" % pkt)
        except Closed:
            raise CheckFailed("empty client id, clean session 0: closed without CONNACK 0x02")
        finally:
            r.close()


# ---------------------------------------------------------------------------------------------
# v5-only checks


def check_session_expiry():
    t = topic("expiry")
    short = Paho("exp-short", V5, clean=True, expiry=2)
    short.subscribe(t + "/short", qos=1)
    short.disconnect()
    long_ = Paho("exp-long", V5, clean=True, expiry=60)
    long_.subscribe(t + "/long", qos=1)
    long_.disconnect()
    pub = Paho("exp-pub", V5)
    try:
        pub.publish(t + "/long", b"kept-1", qos=1)
        pub.publish(t + "/long", b"kept-2", qos=1)
        time.sleep(3.0)
        short.clean = False
        sp = short.connect()
        expect(not sp, "session with expiry 2 s still present after 3 s")
        short.disconnect()
        long_.clean = False
        sp = long_.connect()
        expect(sp, "session with expiry 60 s gone after 3 s")
        got = long_.wait_count(t + "/long", 2)
        expect([m.payload for m in got] == [b"kept-1", b"kept-2"],
               "queued QoS 1 messages: %r" % [m.payload for m in got])
        long_.disconnect()
        # expiry 0 at CONNECT: nothing survives the connection
        z = Paho("exp-zero", V5, clean=True, expiry=0)
        z.subscribe(t + "/zero", qos=1)
        z.disconnect()
        z.clean = False
        expect(not z.connect(), "session with expiry 0 present after disconnect")
        z.disconnect()
    finally:
        pub.disconnect()
        cleanup("exp-long", V5)


def will_props(delay):
    p = Properties(PacketTypes.WILLMESSAGE)
    p.WillDelayInterval = delay
    return p


def check_will_delay():
    t = topic("willdelay")
    sub = Paho("wd-sub", V5)
    try:
        sub.subscribe(t + "/#", qos=1)
        a = Paho("wd-a", V5, clean=True, expiry=30, will=(t + "/a", b"late", 1, will_props(2)))
        b = Paho("wd-b", V5, clean=True, expiry=30, will=(t + "/b", b"never", 1, will_props(2)))
        # will delay longer than the session expiry: the will goes out when the session ends
        c = Paho("wd-c", V5, clean=True, expiry=1,
                 will=(t + "/c", b"at-expiry", 1, will_props(30)))
        start = time.monotonic()
        for x in (a, b, c):
            x.abrupt()
        time.sleep(max(0.0, 1.0 - (time.monotonic() - start)))
        expect(not sub.on(t + "/a"), "will with delay 2 s published after %.1f s"
               % (time.monotonic() - start))
        b.clean = False
        b.c.will_clear()
        expect(b.connect(), "reconnect within the will delay: session present 0")
        got = sub.wait_count(t + "/c", 1, 2)
        expect(len(got) == 1, "will (delay 30 s) not published when the 1 s session expired")
        got = sub.wait_count(t + "/a", 1, 2.6)
        took = time.monotonic() - start
        expect(len(got) == 1 and got[0].payload == b"late", "delayed will not published by 3.6 s")
        expect(took >= 1.8, "delayed will published after %.2f s, want about 2 s" % took)
        time.sleep(max(0.0, 2.5 - (time.monotonic() - start)))
        expect(not sub.on(t + "/b"),
               "will published although the client reconnected within the delay (MQTT-3.1.2-8)")
        b.disconnect()
    finally:
        sub.disconnect()
        cleanup("wd-a", V5)
        cleanup("wd-b", V5)


def check_topic_alias():
    t = topic("alias", "x")
    sub = Paho("alias-sub", V5)
    pub = Paho("alias-pub", V5)
    try:
        sub.subscribe(t, qos=1)
        pub.publish(t, b"a1", qos=1, props=pubprops(TopicAlias=1))
        pub.publish("", b"a2", qos=1, props=pubprops(TopicAlias=1))
        pub.publish("", b"a3", qos=0, props=pubprops(TopicAlias=1))
        got = sub.wait_count(t, 3)
        expect([m.payload for m in got] == [b"a1", b"a2", b"a3"],
               "via alias: %r" % [(m.topic, m.payload) for m in sub.msgs])
        for m in got:
            expect(getattr(m.properties, "TopicAlias", None) is None,
                   "server used a topic alias the client did not allow")
        expect(not pub.disconnected.is_set(), "publisher disconnected")
        # alias 0 is a protocol error (MQTT-3.3.2-8)
        r = Raw(True)
        r.connect(cid("alias-raw"), True)
        r.publish(t, b"bad", qos=0, props=[(0x23, 0)])
        try:
            pkt = r.recv(3)
            expect(pkt is not None and pkt.type == DISCONNECT and pkt.body[:1] in (b"\x94", b"\x82",
                                                                                b"\x81"),
                   "topic alias 0: want DISCONNECT 0x94 (or 0x82/0x81), got %r" % pkt)
        except Closed:
            pass
        r.close()
        expect(not sub.quiet(t, 0.3)[3:], "a publish with topic alias 0 was delivered")
    finally:
        sub.disconnect()
        pub.disconnect()


def check_message_expiry():
    t = topic("msgexp")
    s = Paho("msgexp-sub", V5, clean=True, expiry=60)
    s.subscribe(t, qos=1)
    s.disconnect()
    pub = Paho("msgexp-pub", V5)
    try:
        pub.publish(t, b"short", qos=1, props=pubprops(MessageExpiryInterval=1))
        pub.publish(t, b"long", qos=1, props=pubprops(MessageExpiryInterval=60))
        pub.publish(t, b"none", qos=1)
        # retained messages expire too (MQTT-3.3.2-5)
        pub.publish(t + "/ret/short", b"short", qos=1, retain=True,
                    props=pubprops(MessageExpiryInterval=1))
        pub.publish(t + "/ret/long", b"long", qos=1, retain=True,
                    props=pubprops(MessageExpiryInterval=60))
        time.sleep(2.2)
        r = Paho("msgexp-ret", V5)
        try:
            r.subscribe(t + "/ret/#", qos=1)
            got = r.wait_count(t + "/ret/long", 1)
            expect(len(got) == 1, "retained message with expiry 60 not delivered")
            rem = getattr(got[0].properties, "MessageExpiryInterval", None)
            expect(rem is not None and 0 < rem < 60, "retained: remaining expiry %r" % rem)
            expect(not r.quiet(t + "/ret/short", 0.2), "expired retained message delivered")
        finally:
            r.disconnect()
        pub.publish(t + "/ret/long", b"", qos=1, retain=True)
        s.clean = False
        expect(s.connect(), "session present 0")
        got = s.wait_count(t, 2)
        time.sleep(0.3)
        got = s.on(t)
        pays = [m.payload for m in got]
        expect(pays == [b"long", b"none"], "after 2 s offline: %r (want long, none)" % pays)
        rem = getattr(got[0].properties, "MessageExpiryInterval", None)
        expect(rem is not None and 0 < rem < 60,
               "remaining Message Expiry Interval %r, want below 60 (MQTT-3.3.2-6)" % rem)
        expect(getattr(got[1].properties, "MessageExpiryInterval", None) is None,
               "expiry added to a message published without one")
        s.disconnect()
    finally:
        pub.disconnect()
        cleanup("msgexp-sub", V5)


def check_receive_maximum():
    t = topic("rxmax")
    pub = Paho("rxmax-pub", V5)
    r = Raw(True)
    try:
        r.connect(cid("rxmax-raw"), True, props=[(0x21, 2)])
        r.subscribe(1, t, 1)
        for i in range(5):
            pub.publish(t, b"m%d" % i, qos=1)
        got = []
        while True:
            p = r.recv_pub(0.8)
            if p is None:
                break
            got.append(p)
        expect(len(got) == 2, "with Receive Maximum 2 and no PUBACK: %d in flight (MQTT-3.3.4-9)"
               % len(got))
        r.ack(PUBACK, got[0].pid)
        p = r.recv_pub(2)
        expect(p is not None, "nothing sent after a PUBACK freed the window")
        got.append(p)
        extra = r.recv_pub(0.5)
        expect(extra is None, "window exceeded after one PUBACK: %r" % extra)
        for q in got[1:]:
            r.ack(PUBACK, q.pid)
        while len(got) < 5:
            p = r.recv_pub(2)
            expect(p is not None, "only %d of 5 delivered" % len(got))
            got.append(p)
            r.ack(PUBACK, p.pid)
        expect([p.payload for p in got] == [b"m%d" % i for i in range(5)],
               "order: %r" % [p.payload for p in got])
        expect(all(not p.dup for p in got), "DUP set on a first delivery")
        r.disconnect()
    finally:
        pub.disconnect()
        r.close()


def check_server_receive_maximum():
    """Server-side flow control: the broker announces a Receive Maximum and disconnects a client
    that exceeds it with unacknowledged QoS 2 (MQTT-3.3.4-8, reason 0x93)."""
    t = topic("srvflow")
    r = Raw(True)
    try:
        _, props = r.connect(cid("srvflow"), True)
        rm = props.get(0x21, [65535])[0]
        expect(0 < rm < 65535 or 0x21 not in props, "CONNACK Receive Maximum %r" % rm)
        for i in range(1, rm + 1):
            r.publish(t, b"x", qos=2, pid=i)
        recs = 0
        while recs < rm:
            pkt = r.recv(3)
            expect(pkt is not None, "only %d PUBRECs for %d QoS 2 publishes" % (recs, rm))
            expect(pkt.type == PUBREC, "within the Receive Maximum: got %r" % pkt)
            recs += 1
        r.publish(t, b"x", qos=2, pid=rm + 1)
        try:
            pkt = r.recv(3)
            expect(pkt is not None and pkt.type == DISCONNECT and pkt.body[:1] == b"\x93",
                   "Receive Maximum exceeded: want DISCONNECT 0x93, got %r" % pkt)
        except Closed:
            raise CheckFailed("Receive Maximum exceeded: closed without DISCONNECT 0x93")
    finally:
        r.close()


def check_user_properties():
    t = topic("userprops")
    sub = Paho("up-sub", V5)
    pub = Paho("up-pub", V5)
    try:
        sub.subscribe(t, qos=1)
        props = pubprops(UserProperty=[("a", "1"), ("b", "2"), ("a", "3")],
                         ContentType="text/plain", ResponseTopic=t + "/reply",
                         CorrelationData=b"\x01\x02", PayloadFormatIndicator=1)
        pub.publish(t, "héllo", qos=1, props=props)
        got = sub.wait_count(t, 1)
        expect(len(got) == 1, "not delivered")
        p = got[0].properties
        up = getattr(p, "UserProperty", None)
        expect(up == [("a", "1"), ("b", "2"), ("a", "3")],
               "user properties %r (order must be kept, MQTT-3.3.2-18)" % up)
        expect(getattr(p, "ContentType", None) == "text/plain", "content type lost")
        expect(getattr(p, "ResponseTopic", None) == t + "/reply", "response topic lost")
        expect(getattr(p, "CorrelationData", None) == b"\x01\x02", "correlation data lost")
        expect(getattr(p, "PayloadFormatIndicator", None) == 1, "payload format indicator lost")
    finally:
        sub.disconnect()
        pub.disconnect()


def check_no_local():
    t = topic("nolocal")
    c = Paho("nl-self", V5)
    other = Paho("nl-other", V5)
    try:
        c.subscribe(t, qos=1, no_local=True)
        c.publish(t, b"mine", qos=1)
        other.publish(t, b"theirs", qos=1)
        c.wait_count(t, 1)
        got = c.quiet(t, 0.5)
        expect([m.payload for m in got] == [b"theirs"],
               "No Local: received %r (MQTT-3.8.3-3)" % [m.payload for m in got])
    finally:
        c.disconnect()
        other.disconnect()


def check_retain_as_published():
    t = topic("rap")
    a = Paho("rap-on", V5)
    b = Paho("rap-off", V5)
    pub = Paho("rap-pub", V5)
    try:
        a.subscribe(t, qos=1, rap=True)
        b.subscribe(t, qos=1, rap=False)
        pub.publish(t, b"r", qos=1, retain=True)
        ga = a.wait_count(t, 1)
        gb = b.wait_count(t, 1)
        expect(len(ga) == 1 and ga[0].retain, "Retain As Published: RETAIN not kept")
        expect(len(gb) == 1 and not gb[0].retain, "without Retain As Published: RETAIN set")
        pub.publish(t, b"", qos=1, retain=True)
    finally:
        for c in (a, b, pub):
            c.disconnect()


def check_retain_handling():
    t = topic("rh")
    pub = Paho("rh-pub", V5)
    c = Paho("rh-sub", V5)
    try:
        pub.publish(t, b"kept", qos=1, retain=True)
        c.subscribe(t, qos=1, rh=2)
        expect(not c.quiet(t, 0.6), "Retain Handling 2: retained message sent (MQTT-3.3.1-11)")
        # Retain Handling 1: only for a new subscription
        c2 = Paho("rh-sub1", V5)
        try:
            c2.subscribe(t, qos=1, rh=1)
            expect(len(c2.wait_count(t, 1)) == 1,
                   "Retain Handling 1: nothing on a new subscription")
            c2.subscribe(t, qos=1, rh=1)
            expect(len(c2.quiet(t, 0.6)) == 1,
                   "Retain Handling 1: retained message sent again for an existing subscription")
            c2.subscribe(t, qos=1, rh=0)
            expect(len(c2.wait_count(t, 2)) == 2,
                   "Retain Handling 0: not sent again on re-subscribe (MQTT-3.3.1-9)")
        finally:
            c2.disconnect()
        pub.publish(t, b"", qos=1, retain=True)
    finally:
        pub.disconnect()
        c.disconnect()


def check_subscription_identifiers():
    sub = Paho("sid-sub", V5)
    pub = Paho("sid-pub", V5)
    try:
        sub.subscribe(topic("sid", "a"), qos=1, sub_id=7)
        sub.subscribe(topic("sid", "+"), qos=1, sub_id=9)
        sub.subscribe(topic("sid", "none", "#"), qos=1)
        pub.publish(topic("sid", "b"), b"one", qos=1)
        got = sub.wait_count(topic("sid", "b"), 1)
        ids = getattr(got[0].properties, "SubscriptionIdentifier", None) if got else None
        expect(ids == [9], "single match: Subscription Identifier %r, want [9]" % ids)
        pub.publish(topic("sid", "none", "x"), b"none", qos=1)
        got = sub.wait_count(topic("sid", "none", "x"), 1)
        ids = getattr(got[0].properties, "SubscriptionIdentifier", None) if got else None
        expect(ids is None, "identifier %r on a subscription without one" % ids)
        pub.publish(topic("sid", "a"), b"both", qos=1)
        got = sub.wait_count(topic("sid", "a"), 1)
        time.sleep(0.3)
        got = sub.on(topic("sid", "a"))
        ids = sorted(sum((getattr(m.properties, "SubscriptionIdentifier", []) for m in got), []))
        expect(ids == [7, 9], "overlapping subscriptions: identifiers %r over %d copies, want "
               "7 and 9 (MQTT-3.3.4-3/-4)" % (ids, len(got)))
    finally:
        sub.disconnect()
        pub.disconnect()


def check_will_takeover():
    """v5 takeover and the old connection's will (MQTT-3.1.2-8, MQTT-3.1.4-3): delay 0: sent;
    delay > 0 and the session continues: not sent; delay > 0 and clean start: sent (the
    session ended)."""
    t = topic("willto")
    sub = Paho("wto-sub", V5)
    olds, news = [], []
    try:
        sub.subscribe(t + "/#", qos=1)
        olds.append(Paho("wto-a", V5, clean=True, expiry=60, will=(t + "/a", b"a", 1, None)))
        olds.append(Paho("wto-b", V5, clean=True, expiry=60,
                         will=(t + "/b", b"b", 1, will_props(10))))
        olds.append(Paho("wto-c", V5, clean=True, expiry=60,
                         will=(t + "/c", b"c", 1, will_props(10))))
        news.append(Paho("wto-a", V5, clean=False, expiry=60))
        news.append(Paho("wto-b", V5, clean=False, expiry=60))
        news.append(Paho("wto-c", V5, clean=True, expiry=60))
        got = sub.wait_count(t + "/a", 1, 3)
        expect(len(got) == 1, "will delay 0: will not published on takeover")
        got = sub.wait_count(t + "/c", 1, 3)
        expect(len(got) == 1,
               "will delay 10, takeover with clean start: will not published (session ended)")
        time.sleep(0.7)
        expect(not sub.on(t + "/b"), "will delay 10, takeover resuming the session: will "
               "published although a new connection came within the delay (MQTT-3.1.2-8)")
    finally:
        for c in olds:
            c.c.loop_stop()
        for c in news:
            c.disconnect()
        sub.disconnect()
        for name in ("wto-a", "wto-b", "wto-c"):
            cleanup(name, V5)


def check_disconnect_reason_will():
    """Only DISCONNECT with reason 0x00 discards the will (MQTT-3.14.4-3); 0x04 (Disconnect with
    Will Message) and error codes such as 0x80 leave it to be published (MQTT 5 §3.1.2.5)."""
    t = topic("discwill")
    sub = Paho("dw-sub", V5)
    try:
        sub.subscribe(t + "/#", qos=1)
        for code in (0x00, 0x04, 0x80):
            r = Raw(True)
            r.connect(cid("dw-%02x" % code), True, will=(t + "/%02x" % code, b"w", 1, []))
            r.send(DISCONNECT, 0, bytes([code, 0]))
            r.close()
        expect(len(sub.wait_count(t + "/04", 1, 2)) == 1,
               "DISCONNECT 0x04 (Disconnect with Will Message): will not published")
        expect(len(sub.wait_count(t + "/80", 1, 1)) == 1,
               "DISCONNECT 0x80 (Unspecified error): will not published")
        time.sleep(0.2)
        expect(not sub.on(t + "/00"), "DISCONNECT 0x00: will published (MQTT-3.14.4-3)")
    finally:
        sub.disconnect()


def check_disconnect_session_expiry():
    """DISCONNECT may shorten the session expiry to 0: the session ends (MQTT-3.14.2-2 allows
    changing a non-zero value)."""
    t = topic("discexp")
    c = Paho("discexp", V5, clean=True, expiry=60)
    c.subscribe(t, qos=1)
    p = Properties(PacketTypes.DISCONNECT)
    p.SessionExpiryInterval = 0
    c.disconnect(p)
    time.sleep(0.2)
    c.clean = False
    c.expiry = 60
    try:
        expect(not c.connect(), "session present after DISCONNECT with Session Expiry 0")
    finally:
        c.disconnect()
        cleanup("discexp", V5)


def check_receive_maximum_qos2():
    """A QoS 2 delivery counts against Receive Maximum until PUBCOMP."""
    t = topic("rxmax2")
    pub = Paho("rxmax2-pub", V5)
    r = Raw(True)
    try:
        r.connect(cid("rxmax2-raw"), True, props=[(0x21, 1)])
        r.subscribe(1, t, 2)
        pub.publish(t, b"first", qos=2)
        pub.publish(t, b"second", qos=2)
        p = r.recv_pub(2)
        expect(p is not None and p.payload == b"first", "first: %r" % p)
        expect(r.recv_pub(0.5) is None, "second QoS 2 sent with Receive Maximum 1")
        r.ack(PUBREC, p.pid)
        rel = r.recv(2)
        expect(rel is not None and rel.type == PUBREL, "want PUBREL, got %r" % rel)
        nxt = r.recv(0.5)
        expect(nxt is None, "sent %r before PUBCOMP with Receive Maximum 1" % nxt)
        r.ack(PUBCOMP, p.pid)
        p2 = r.recv_pub(2)
        expect(p2 is not None and p2.payload == b"second", "after PUBCOMP: %r" % p2)
        r.ack(PUBREC, p2.pid)
        rel = r.recv(2)
        expect(rel is not None and rel.type == PUBREL, "want PUBREL, got %r" % rel)
        r.ack(PUBCOMP, p2.pid)
        r.disconnect()
    finally:
        pub.disconnect()
        r.close()


def check_maximum_packet_size():
    """The server does not send a packet larger than the client's Maximum Packet Size; it drops
    the message and carries on (MQTT-3.1.2-24/25)."""
    t = topic("maxpkt")
    pub = Paho("maxpkt-pub", V5)
    r = Raw(True)
    try:
        r.connect(cid("maxpkt-raw"), True, props=[(0x27, 128)])
        r.subscribe(1, t, 1)
        pub.publish(t, b"x" * 300, qos=1)
        pub.publish(t, b"small", qos=1)
        p = r.recv_pub(3)
        expect(p is not None and p.payload == b"small", "want only the small message, got %r" % p)
        r.ack(PUBACK, p.pid)
        expect(r.recv_pub(0.4) is None, "more than the small message")
        r.disconnect()
    finally:
        pub.disconnect()
        r.close()


# ---------------------------------------------------------------------------------------------


def main():
    checks = []
    for v in (V311, V5):
        n = VNAME[v]
        checks += [
            ("qos_round_trip_" + n, lambda v=v: check_qos_round_trip(v)),
            ("retained_" + n, lambda v=v: check_retained(v)),
            ("will_" + n, lambda v=v: check_will(v)),
            ("wildcards_" + n, lambda v=v: check_wildcards(v)),
            ("overlapping_subscriptions_" + n, lambda v=v: check_overlapping(v)),
            ("dollar_topics_" + n, lambda v=v: check_dollar_topics(v)),
            ("shared_subscriptions_" + n, lambda v=v: check_shared(v)),
            ("keepalive_expiry_" + n, lambda v=v: check_keepalive(v)),
            ("qos1_redelivery_" + n, lambda v=v: check_qos1_redelivery(v)),
            ("qos2_redelivery_" + n, lambda v=v: check_qos2_redelivery(v)),
            ("qos2_inbound_resume_" + n, lambda v=v: check_qos2_inbound_resume(v)),
            ("unsubscribe_" + n, lambda v=v: check_unsubscribe(v)),
            ("takeover_" + n, lambda v=v: check_takeover(v)),
            ("keepalive_ping_" + n, lambda v=v: check_keepalive_ping(v)),
            ("will_retain_" + n, lambda v=v: check_will_retain(v)),
            ("empty_client_id_" + n, lambda v=v: check_empty_client_id(v)),
        ]
    checks.append(("persistent_session_v311", lambda: check_session_present_v311(V311)))
    checks += [
        ("session_expiry_v5", check_session_expiry),
        ("will_delay_v5", check_will_delay),
        ("topic_alias_v5", check_topic_alias),
        ("message_expiry_v5", check_message_expiry),
        ("receive_maximum_v5", check_receive_maximum),
        ("receive_maximum_qos2_v5", check_receive_maximum_qos2),
        ("maximum_packet_size_v5", check_maximum_packet_size),
        ("will_takeover_v5", check_will_takeover),
        ("disconnect_session_expiry_v5", check_disconnect_session_expiry),
        ("disconnect_reason_will_v5", check_disconnect_reason_will),
        ("server_receive_maximum_v5", check_server_receive_maximum),
        ("user_properties_v5", check_user_properties),
        ("no_local_v5", check_no_local),
        ("retain_as_published_v5", check_retain_as_published),
        ("retain_handling_v5", check_retain_handling),
        ("subscription_identifiers_v5", check_subscription_identifiers),
    ]
    only = os.environ.get("PAHO_ONLY")
    if only:
        checks = [c for c in checks if any(o in c[0] for o in only.split(","))]
    passed = failed = 0
    started = time.monotonic()
    for name, fn in checks:
        t0 = time.monotonic()
        try:
            fn()
            print("ok %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
            passed += 1
        except CheckFailed as e:
            print("FAIL %s: %s" % (name, e), flush=True)
            failed += 1
        except Exception as e:  # noqa: BLE001 -- a crash in a check is a failure of that check
            why = "".join(traceback.format_exception_only(type(e), e)).strip()
            print("FAIL %s: %s" % (name, why), flush=True)
            if os.environ.get("PAHO_TRACE"):
                traceback.print_exc()
            failed += 1
    print("took %.1fs" % (time.monotonic() - started))
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

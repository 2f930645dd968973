//! TLS 1.3 after the handshake, without rustls' connection state.
//!
//! Once a TLS 1.3 handshake is done, what a connection still needs is record protection (one
//! AEAD key each way, its IV and sequence number) and the two traffic secrets, from which a
//! `KeyUpdate` derives the next keys. rustls' connection keeps much more for the connection's
//! whole life (its common state, the handshake joiner's capacity, the send and receive queues,
//! the peer's certificate chain, the handshake state machine: ~3.5 KiB per idle connection,
//! measured with heaptrack), and its `KernelConnection` (the kTLS hand-off) still ~1.2 KiB.
//! [`Records`] keeps only the keys: rustls hands over the keys and sequence numbers
//! (`dangerous_into_kernel_connection`, whose rest is dropped at once) and the traffic secrets
//! (through the key log, see [`SecretCapture`]); the AEADs are aws-lc's, the same rustls uses.
//! This file frames records (RFC 8446 section 5), derives updated keys (section 7.2) and
//! answers `KeyUpdate`, `close_notify` and alerts.
//!
//! TLS 1.2 connections keep rustls' connection (no key updates there, and few clients).

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::crypto::tls13::OkmBlock;
use rustls::server::UnbufferedServerConnection;
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, KeyLog, ProtocolVersion, SupportedCipherSuite,
    Tls13CipherSuite,
};

use super::{tls_err, Progress};

/// The TLS record header: type, legacy version, length.
const HEADER: usize = 5;
/// The largest TLS 1.3 ciphertext record payload (2^14 + 256, RFC 8446 section 5.2).
const MAX_CIPHERTEXT: usize = 16 * 1024 + 256;
/// The largest plaintext of one record.
const MAX_PLAINTEXT: usize = 16 * 1024;
const TAG_LEN: usize = 16;
/// Content types (the outer one is always application data).
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
/// The most unsent ciphertext a `KeyUpdate` request may add to (replies pile up only when the
/// peer does not read).
const MAX_UNREAD_REPLIES: usize = 16 * 1024;
/// Handshake message type of `KeyUpdate`.
const KEY_UPDATE: u8 = 24;
/// Alert descriptions sent on failure.
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_INTERNAL_ERROR: u8 = 80;

/// The key log labels of the first application traffic secrets.
const CLIENT_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

thread_local! {
    /// The traffic secrets rustls has just derived on this thread (see [`SecretCapture`]):
    /// client's, server's.
    static CAPTURED: RefCell<[Option<OkmBlock>; 2]> = const { RefCell::new([None, None]) };
}

/// Wraps a config's key log to learn the application traffic secrets, which rustls does not
/// hand out otherwise (only keys, and the next ones through a `KernelConnection`). rustls logs
/// them synchronously from inside `process_tls_records` on the caller's thread, so
/// [`take_captured`] right after that call returns this connection's, before the task can yield
/// (the same way as `handshake::SniCapture`). What the wrapped log wants still reaches it.
#[derive(Debug)]
pub(super) struct SecretCapture(pub(super) Arc<dyn KeyLog>);

impl KeyLog for SecretCapture {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let slot = match label {
            CLIENT_SECRET => Some(0),
            SERVER_SECRET => Some(1),
            _ => None,
        };
        if let Some(i) = slot {
            CAPTURED.with(|c| c.borrow_mut()[i] = Some(OkmBlock::new(secret)));
        }
        if self.0.will_log(label) {
            self.0.log(label, client_random, secret);
        }
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(label, CLIENT_SECRET | SERVER_SECRET) || self.0.will_log(label)
    }
}

/// The secrets [`SecretCapture`] saw on this thread since the last call (both, or none).
pub(super) fn take_captured() -> Option<Box<[OkmBlock; 2]>> {
    match CAPTURED.with(|c| std::mem::take(&mut *c.borrow_mut())) {
        [Some(client), Some(server)] => Some(Box::new([client, server])),
        _ => None,
    }
}

/// One direction's record protection.
struct Dir {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    /// This direction's current traffic secret, for the next `KeyUpdate`.
    secret: OkmBlock,
}

impl Dir {
    fn nonce(&self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Moves to the next traffic secret (RFC 8446 section 7.2); the sequence restarts at 0.
    fn update(
        &mut self,
        suite: &Tls13CipherSuite,
        alg: &'static aead::Algorithm,
    ) -> io::Result<()> {
        let next = expand_label(suite, &self.secret, b"traffic upd", None)?;
        let (key, iv) = traffic_keys(suite, alg, &next)?;
        *self = Dir {
            key,
            iv,
            seq: 0,
            secret: next,
        };
        Ok(())
    }
}

/// HKDF-Expand-Label(secret, label, "", len) (RFC 8446 section 7.1) into `out`, or the hash's
/// length as a new secret when `out` is `None`.
fn expand_label(
    suite: &Tls13CipherSuite,
    secret: &OkmBlock,
    label: &[u8],
    out: Option<&mut [u8]>,
) -> io::Result<OkmBlock> {
    let expander = suite.hkdf_provider.expander_for_okm(secret);
    let len = out.as_ref().map_or(expander.hash_len(), |o| o.len());
    let len_be = (len as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&len_be, &label_len, b"tls13 ", label, &[0]];
    match out {
        Some(o) => {
            expander
                .expand_slice(&info, o)
                .map_err(|_| io::Error::other("HKDF output too long"))?;
            Ok(OkmBlock::new(&[]))
        }
        None => Ok(expander.expand_block(&info)),
    }
}

/// The key and IV of a traffic secret (RFC 8446 section 7.3).
fn traffic_keys(
    suite: &Tls13CipherSuite,
    alg: &'static aead::Algorithm,
    secret: &OkmBlock,
) -> io::Result<(LessSafeKey, [u8; NONCE_LEN])> {
    let mut key = [0u8; 32];
    let key = &mut key[..alg.key_len()];
    expand_label(suite, secret, b"key", Some(key))?;
    let mut iv = [0u8; NONCE_LEN];
    expand_label(suite, secret, b"iv", Some(&mut iv))?;
    let k = UnboundKey::new(alg, key).map_err(|_| io::Error::other("bad TLS traffic key"))?;
    key.fill(0);
    Ok((LessSafeKey::new(k), iv))
}

/// The aws-lc AEAD of a TLS 1.3 suite rustls negotiated.
fn aead_of(suite: &Tls13CipherSuite) -> Option<&'static aead::Algorithm> {
    match suite.common.suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(&aead::AES_128_GCM),
        CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(&aead::AES_256_GCM),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(&aead::CHACHA20_POLY1305),
        _ => None,
    }
}

/// Record protection of an established TLS 1.3 connection; see the module docs.
pub(super) struct Records {
    suite: &'static Tls13CipherSuite,
    alg: &'static aead::Algorithm,
    tx: Dir,
    rx: Dir,
    /// The alert to send when the connection fails (set with the error).
    alert: Option<u8>,
}

fn other(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The key and IV rustls held for one direction.
fn held_key_iv(s: &ConnectionTrafficSecrets) -> Option<(&[u8], &[u8])> {
    match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            Some((key.as_ref(), iv.as_ref()))
        }
        _ => None,
    }
}

impl Records {
    /// Whether `conn` can become [`Records`]: a finished TLS 1.3 handshake with nothing queued,
    /// in a suite this file knows.
    pub(super) fn fits(conn: &UnbufferedServerConnection) -> bool {
        conn.protocol_version() == Some(ProtocolVersion::TLSv1_3)
            && !conn.is_handshaking()
            && !conn.wants_write()
            && matches!(conn.negotiated_cipher_suite(), Some(SupportedCipherSuite::Tls13(s)) if aead_of(s).is_some())
    }

    /// Takes the sequence numbers out of a connection that [`Records::fits`] and builds the
    /// keys from the captured traffic secrets (client's, server's). The keys rustls held are
    /// compared with the derived ones: a mismatch is an error, never a wrong key.
    pub(super) fn from_conn(
        conn: UnbufferedServerConnection,
        secrets: &[OkmBlock; 2],
    ) -> io::Result<Records> {
        let Some(SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite() else {
            return Err(io::Error::other("not a TLS 1.3 connection"));
        };
        let alg = aead_of(suite).ok_or_else(|| io::Error::other("unknown TLS 1.3 AEAD"))?;
        let (extracted, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_err)?;
        drop(kernel);
        let dir = |secret: &OkmBlock, (seq, held): &(u64, ConnectionTrafficSecrets)| {
            let (key, iv) = traffic_keys(suite, alg, secret)?;
            let mut check = [0u8; 32];
            let check = &mut check[..alg.key_len()];
            expand_label(suite, secret, b"key", Some(check))?;
            let same = held_key_iv(held) == Some((&*check, &iv[..]));
            check.fill(0);
            if !same {
                return Err(io::Error::other(
                    "captured TLS secret does not match the key",
                ));
            }
            Ok::<_, io::Error>(Dir {
                key,
                iv,
                seq: *seq,
                secret: OkmBlock::new(secret.as_ref()),
            })
        };
        Ok(Records {
            suite,
            alg,
            rx: dir(&secrets[0], &extracted.rx)?,
            tx: dir(&secrets[1], &extracted.tx)?,
            alert: None,
        })
    }

    fn fail(&mut self, alert: u8, e: io::Error) -> io::Error {
        self.alert.get_or_insert(alert);
        e
    }

    /// Opens the whole records at the front of `buf` (in place); application data goes to
    /// `sink`, replies (a `KeyUpdate`'s) are appended to `outgoing`. Returns how many bytes
    /// were consumed (a partial record stays) and whether the peer closed.
    pub(super) fn open(
        &mut self,
        buf: &mut [u8],
        outgoing: &mut Vec<u8>,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<(usize, Progress)> {
        let mut off = 0;
        loop {
            let rest = &mut buf[off..];
            if rest.len() < HEADER {
                return Ok((off, Progress::Traffic));
            }
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if len > MAX_CIPHERTEXT {
                return Err(self.fail(ALERT_RECORD_OVERFLOW, other("TLS record too large")));
            }
            if rest.len() < HEADER + len {
                return Ok((off, Progress::Traffic));
            }
            // after the handshake every TLS 1.3 record is protected application data
            if rest[0] != APPLICATION_DATA || len < TAG_LEN + 1 {
                let e = other("unprotected or short TLS record after the handshake");
                return Err(self.fail(ALERT_UNEXPECTED_MESSAGE, e));
            }
            let (header, body) = rest.split_at_mut(HEADER);
            let aad = Aad::from([header[0], header[1], header[2], header[3], header[4]]);
            let nonce = self.rx.nonce();
            let Ok(plain) = self.rx.key.open_in_place(nonce, aad, &mut body[..len]) else {
                return Err(self.fail(ALERT_BAD_RECORD_MAC, other("TLS record failed to decrypt")));
            };
            self.rx.seq += 1;
            off += HEADER + len;
            // the inner plaintext: content, content type, zero padding
            let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                return Err(self.fail(ALERT_UNEXPECTED_MESSAGE, other("TLS record without type")));
            };
            let (typ, content) = (plain[end], &plain[..end]);
            if content.len() > MAX_PLAINTEXT {
                return Err(self.fail(ALERT_RECORD_OVERFLOW, other("TLS plaintext too large")));
            }
            match typ {
                APPLICATION_DATA => sink(content),
                ALERT => {
                    return match content {
                        [_, 0] => Ok((off, Progress::PeerClosed)),
                        [_, _] => Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "peer sent a TLS alert",
                        )),
                        _ => Err(self.fail(ALERT_DECODE_ERROR, other("malformed TLS alert"))),
                    };
                }
                HANDSHAKE => {
                    self.post_handshake(content, outgoing)?;
                }
                _ => {
                    let e = other("unexpected TLS record type");
                    return Err(self.fail(ALERT_UNEXPECTED_MESSAGE, e));
                }
            }
        }
    }

    /// The post-handshake messages a client may send: only `KeyUpdate`, a whole message
    /// (rustls never splits one, and a 5-byte message has no reason to be) that ends its record
    /// (RFC 8446 section 5.1: handshake messages must not span a key change).
    fn post_handshake(&mut self, msgs: &[u8], outgoing: &mut Vec<u8>) -> io::Result<()> {
        let [KEY_UPDATE, 0, 0, 1, request] = *msgs else {
            let e = if msgs.starts_with(&[KEY_UPDATE, 0, 0, 1]) {
                other("TLS KeyUpdate not at the end of its record")
            } else {
                other("unexpected TLS post-handshake message")
            };
            return Err(self.fail(ALERT_UNEXPECTED_MESSAGE, e));
        };
        if request > 1 {
            return Err(self.fail(ALERT_DECODE_ERROR, other("bad TLS KeyUpdate")));
        }
        if let Err(e) = self.rx.update(self.suite, self.alg) {
            return Err(self.fail(ALERT_INTERNAL_ERROR, e));
        }
        if request == 1 {
            // a peer that asks for updates and never reads the answers is not queued for
            if outgoing.len() > MAX_UNREAD_REPLIES {
                let e = other("peer requests TLS key updates without reading the replies");
                return Err(self.fail(ALERT_UNEXPECTED_MESSAGE, e));
            }
            // answered under the old key, then ours changes too (RFC 8446 section 4.6.3)
            self.update_tx(outgoing)?;
        }
        Ok(())
    }

    /// Sends `KeyUpdate(update_not_requested)` and switches to the next sending key.
    fn update_tx(&mut self, outgoing: &mut Vec<u8>) -> io::Result<()> {
        self.seal_one(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], outgoing)?;
        self.tx.update(self.suite, self.alg)
    }

    /// Appends one record of `typ` holding `data` (at most [`MAX_PLAINTEXT`] bytes).
    fn seal_one(&mut self, typ: u8, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        let len = data.len() + 1 + TAG_LEN;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        out.reserve(HEADER + len);
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.push(typ);
        let nonce = self.tx.nonce();
        let body = &mut out[start + HEADER..];
        match self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), body)
        {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            Err(_) => {
                out.truncate(start);
                return Err(io::Error::other("TLS record failed to encrypt"));
            }
        }
        self.tx.seq += 1;
        Ok(())
    }

    /// Seals `data` (at most one record's worth) as application data, appended to `out`; the
    /// sending key is replaced first when it has sealed its limit.
    pub(super) fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.tx.seq >= self.suite.common.confidentiality_limit {
            self.update_tx(out)?;
        }
        self.seal_one(APPLICATION_DATA, data, out)
    }

    /// Appends `close_notify`.
    pub(super) fn close_notify(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.seal_one(ALERT, &[1, 0], out)
    }

    /// Appends the fatal alert for the failure just returned, if any (once).
    pub(super) fn queue_alert(&mut self, out: &mut Vec<u8>) {
        if let Some(a) = self.alert.take() {
            let _ = self.seal_one(ALERT, &[2, a], out);
        }
    }
}

#[cfg(test)]
pub(super) fn size_of_records() -> usize {
    std::mem::size_of::<Records>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite() -> &'static Tls13CipherSuite {
        match rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256 {
            SupportedCipherSuite::Tls13(s) => s,
            _ => unreachable!("a TLS 1.3 suite"),
        }
    }

    fn dir(secret: u8) -> Dir {
        let (suite, alg) = (suite(), &aead::AES_128_GCM);
        let secret = OkmBlock::new(&[secret; 32]);
        let (key, iv) = traffic_keys(suite, alg, &secret).unwrap();
        Dir {
            key,
            iv,
            seq: 0,
            secret,
        }
    }

    /// A client's and a server's record protection over the same two secrets.
    fn pair() -> (Records, Records) {
        let side = |tx, rx| Records {
            suite: suite(),
            alg: &aead::AES_128_GCM,
            tx: dir(tx),
            rx: dir(rx),
            alert: None,
        };
        (side(1, 2), side(2, 1))
    }

    fn open_all(r: &mut Records, wire: &mut [u8]) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let (mut data, mut replies) = (Vec::new(), Vec::new());
        let (used, _) = r.open(wire, &mut replies, &mut |d| data.extend_from_slice(d))?;
        assert_eq!(used, wire.len(), "whole records");
        Ok((data, replies))
    }

    #[test]
    fn a_requested_key_update_is_answered_and_both_sides_move_on() {
        let (mut client, mut server) = pair();
        let mut wire = Vec::new();
        client.seal(b"before", &mut wire).unwrap();
        client
            .seal_one(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 1], &mut wire)
            .unwrap();
        client.tx.update(client.suite, client.alg).unwrap();
        client.seal(b"after", &mut wire).unwrap();
        let (data, mut reply) = open_all(&mut server, &mut wire).unwrap();
        assert_eq!(data, b"beforeafter");
        server.seal(b"answer", &mut reply).unwrap();
        let (data, back) = open_all(&mut client, &mut reply).unwrap();
        assert_eq!(
            data, b"answer",
            "the reply's KeyUpdate moved the client's key"
        );
        assert!(back.is_empty(), "update_not_requested asks for nothing");
    }

    #[test]
    fn a_key_update_that_does_not_end_its_record_is_refused() {
        let (mut client, mut server) = pair();
        let mut wire = Vec::new();
        let two = [KEY_UPDATE, 0, 0, 1, 0, KEY_UPDATE, 0, 0, 1, 0];
        client.seal_one(HANDSHAKE, &two, &mut wire).unwrap();
        let e = open_all(&mut server, &mut wire).unwrap_err();
        assert!(e.to_string().contains("not at the end"), "{e}");
        assert_eq!(server.alert, Some(ALERT_UNEXPECTED_MESSAGE));
    }

    #[test]
    fn a_tampered_record_fails_with_bad_record_mac() {
        let (mut client, mut server) = pair();
        let mut wire = Vec::new();
        client.seal(b"hello", &mut wire).unwrap();
        wire[HEADER + 1] ^= 1;
        assert!(open_all(&mut server, &mut wire).is_err());
        assert_eq!(server.alert, Some(ALERT_BAD_RECORD_MAC));
    }
}

//! A ticket key file that several LB instances share (`[listener.tls] ticket_keys`, like
//! HAProxy's `tls-ticket-keys`): a device resumes on any LB of the fleet, not only on the one
//! that gave it its ticket. One key per line, 64 hex digits (32 bytes), `#` comments; the first
//! key encrypts new tickets, every key decrypts. To rotate: put a new key first on every LB,
//! then drop the last one once the old tickets' lifetime has passed (the file is watched).
//!
//! A ticket is `key id (8 bytes) || nonce (12) || AES-256-GCM(session state)`, the id being the
//! start of the key's SHA-256. The associated data is the id and the listener's *trust context*:
//! the SHA-256 of its `client_ca` and `crl` files. A resumed session skips the client
//! certificate check, so a ticket issued before a CRL or CA change must not resume after it;
//! LBs with the same files (a fleet) still accept each other's tickets.

use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// How long a ticket may be used: the same 12 hours as rustls' own ticketer.
pub const TICKET_LIFETIME: u32 = 12 * 60 * 60;
/// At most this many keys (the encrypting one and those still decrypting).
pub const MAX_KEYS: usize = 16;

/// The keys of one file, the first one encrypting.
pub struct TicketKeys {
    keys: Vec<([u8; 8], LessSafeKey)>,
    rng: SystemRandom,
    /// The trust context (see the module doc); zero until [`TicketKeys::bind`].
    context: [u8; 32],
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the keys
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Reads a key file; the error says which line is wrong.
pub fn load(path: &Path) -> Result<TicketKeys, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|(line, why)| format!("{}:{line}: {why}", path.display()))
}

/// Parses a key file's text; `Err((line, why))`.
pub fn parse(text: &str) -> Result<TicketKeys, (usize, String)> {
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bytes = unhex(line).ok_or((i + 1, "a key is 64 hex digits (32 bytes)".to_string()))?;
        let id: [u8; 8] = digest(&SHA256, &bytes).as_ref()[..8]
            .try_into()
            .map_err(|_| (i + 1, "digest".to_string()))?;
        let key =
            UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| (i + 1, "bad key".to_string()))?;
        keys.push((id, LessSafeKey::new(key)));
    }
    if keys.is_empty() {
        return Err((1, "no key in the file".to_string()));
    }
    if keys.len() > MAX_KEYS {
        return Err((1, format!("at most {MAX_KEYS} keys")));
    }
    Ok(TicketKeys {
        keys,
        rng: SystemRandom::new(),
        context: [0; 32],
    })
}

impl TicketKeys {
    /// Binds the tickets to the contents of the listener's `client_ca` and `crl` files.
    pub fn bind(mut self, trust_files: &[Vec<u8>]) -> TicketKeys {
        let mut all = Vec::new();
        for f in trust_files {
            all.extend_from_slice(&(f.len() as u64).to_be_bytes());
            all.extend_from_slice(f);
        }
        self.context.copy_from_slice(digest(&SHA256, &all).as_ref());
        self
    }

    fn aad(&self, id: &[u8; 8]) -> [u8; 40] {
        let mut a = [0u8; 40];
        a[..8].copy_from_slice(id);
        a[8..].copy_from_slice(&self.context);
        a
    }
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (id, key) = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(self.aad(id)),
            &mut sealed,
        )
        .ok()?;
        let mut out = Vec::with_capacity(8 + NONCE_LEN + sealed.len());
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let id = cipher.get(..8)?;
        let nonce: [u8; NONCE_LEN] = cipher.get(8..8 + NONCE_LEN)?.try_into().ok()?;
        let (kid, key) = self.keys.iter().find(|(k, _)| k == id)?;
        let mut sealed = cipher.get(8 + NONCE_LEN..)?.to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(kid)),
                &mut sealed,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f";

    #[test]
    fn rotation_keeps_old_tickets_and_a_dropped_key_ends_them() {
        let old = parse(K1).unwrap();
        let t = old.encrypt(b"session").unwrap();
        let rotated = parse(&format!("# new first\n{K2}\n{K1}\n")).unwrap();
        assert_eq!(rotated.decrypt(&t).unwrap(), b"session");
        let t2 = rotated.encrypt(b"s2").unwrap();
        assert!(
            old.decrypt(&t2).is_none(),
            "an LB without the new key cannot read it"
        );
        assert!(parse(K2).unwrap().decrypt(&t).is_none());
        let mut bad = t.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(rotated.decrypt(&bad).is_none());
        assert!(rotated.decrypt(&t[..10]).is_none());
    }

    #[test]
    fn a_new_crl_ends_the_tickets_issued_before_it() {
        let before = parse(K1)
            .unwrap()
            .bind(&[b"ca".to_vec(), b"crl v1".to_vec()]);
        let t = before.encrypt(b"session").unwrap();
        let same = parse(K1)
            .unwrap()
            .bind(&[b"ca".to_vec(), b"crl v1".to_vec()]);
        assert_eq!(same.decrypt(&t).unwrap(), b"session");
        let after = parse(K1)
            .unwrap()
            .bind(&[b"ca".to_vec(), b"crl v2".to_vec()]);
        assert!(after.decrypt(&t).is_none());
    }

    #[test]
    fn bad_files_name_their_line() {
        assert_eq!(parse(&format!("{K1}\nzz\n")).unwrap_err().0, 2);
        assert_eq!(parse("# only a comment\n").unwrap_err().0, 1);
        assert_eq!(parse(&K1[..62]).unwrap_err().0, 1);
    }
}

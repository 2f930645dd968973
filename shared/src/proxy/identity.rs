//! The client certificate's identity beyond the CN, in mqedge's PROXY v2 TLVs of the
//! application range: the subject DN (`0xE1`, an RFC 4514 string) and the subject alternative
//! names (`0xE2`, a list of typed entries). Pure and bounded: a certificate with hundreds of
//! SANs gives a header of at most [`MAX_SANS_LEN`] bytes of them, cut by the rule of
//! [`encode_sans`] and marked as cut, never an oversized header. The layout is documented for
//! other receivers in docs/operations.md ("PROXY protocol").

use super::ProxyError;

/// mqedge's application TLV: the client certificate's subject DN, RFC 4514, UTF-8.
pub const PP2_TYPE_MQEDGE_SUBJECT_DN: u8 = 0xE1;
/// mqedge's application TLV: the client certificate's SANs, entries `kind, u16 len, value`.
pub const PP2_TYPE_MQEDGE_SANS: u8 = 0xE2;
/// The longest DN the LB sends; a longer one is left out (a cut DN would name someone else),
/// and a receiver refuses a longer `0xE1` as a bad header.
pub const MAX_DN_LEN: usize = 1024;
/// The longest `0xE2` value: the SANs that fit, in certificate order, then the cut marker.
pub const MAX_SANS_LEN: usize = 2048;
/// The `0xE2` entry kind that says later SANs were left out (value empty, always last).
pub const SAN_TRUNCATED: u8 = 0x00;

/// What kind of name a SAN entry is; the byte is its kind on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SanKind {
    /// `dNSName`.
    Dns = 0x01,
    /// `uniformResourceIdentifier` (SPIFFE ids, URNs).
    Uri = 0x02,
    /// `iPAddress`, as text (`192.0.2.7`, `2001:db8::7`).
    Ip = 0x03,
    /// `rfc822Name`.
    Email = 0x04,
}

impl SanKind {
    fn from_u8(b: u8) -> Option<SanKind> {
        Some(match b {
            0x01 => SanKind::Dns,
            0x02 => SanKind::Uri,
            0x03 => SanKind::Ip,
            0x04 => SanKind::Email,
            _ => return None,
        })
    }
}

/// One subject alternative name, as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct San {
    /// Its kind.
    pub kind: SanKind,
    /// Its value (an IP address in its usual text form).
    pub value: String,
}

impl San {
    /// A SAN of this kind.
    pub fn new(kind: SanKind, value: impl Into<String>) -> San {
        San {
            kind,
            value: value.into(),
        }
    }
}

/// The client certificate's identity as the `0xE1`/`0xE2` TLVs carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// Subject DN, RFC 4514 (`CN=dev-7,O=Acme\, Inc.,C=DE`); `None` when empty or sent not.
    pub dn: Option<String>,
    /// The SANs, in certificate order.
    pub sans: Vec<San>,
    /// Whether SANs were left out to stay within [`MAX_SANS_LEN`].
    pub sans_truncated: bool,
}

impl CertIdentity {
    /// The first SAN of this kind (what `username_from = "san_uri"` takes).
    pub fn first_san(&self, kind: SanKind) -> Option<&str> {
        self.sans
            .iter()
            .find(|s| s.kind == kind)
            .map(|s| s.value.as_str())
    }
}

/// The `0xE1` value, or `None` when the DN is empty or over [`MAX_DN_LEN`].
pub fn encode_dn(dn: &str) -> Option<&[u8]> {
    (!dn.is_empty() && dn.len() <= MAX_DN_LEN).then_some(dn.as_bytes())
}

/// Decodes a `0xE1` value: UTF-8, at most [`MAX_DN_LEN`] bytes (empty reads as none).
pub fn decode_dn(v: &[u8]) -> Result<Option<String>, ProxyError> {
    if v.len() > MAX_DN_LEN {
        return Err(ProxyError::Invalid("subject DN TLV over 1024 bytes".into()));
    }
    let s = std::str::from_utf8(v)
        .map_err(|_| ProxyError::Invalid("subject DN TLV is not UTF-8".into()))?;
    Ok((!s.is_empty()).then(|| s.to_string()))
}

/// The `0xE2` value: each SAN as `kind (1 byte), length (u16, big endian), value (UTF-8)`, in
/// order. When they do not all fit in [`MAX_SANS_LEN`] (or `truncated` says some were left out
/// already), the SANs are taken in order while they fit in `MAX_SANS_LEN - 3`, the first that
/// does not and all after it are left out, and a [`SAN_TRUNCATED`] entry of length 0 ends the
/// list. Empty when there is nothing to say.
pub fn encode_sans(sans: &[San], truncated: bool) -> Vec<u8> {
    let size = |s: &San| 3 + s.value.len();
    let all: usize = sans.iter().map(size).sum();
    let cut = truncated || all > MAX_SANS_LEN;
    let room = if cut { MAX_SANS_LEN - 3 } else { MAX_SANS_LEN };
    let mut v = Vec::with_capacity(all.min(MAX_SANS_LEN));
    for s in sans {
        if v.len() + size(s) > room {
            break;
        }
        v.push(s.kind as u8);
        v.extend_from_slice(&(s.value.len() as u16).to_be_bytes());
        v.extend_from_slice(s.value.as_bytes());
    }
    if cut {
        v.extend_from_slice(&[SAN_TRUNCATED, 0, 0]);
    }
    v
}

/// Decodes a `0xE2` value: `(sans, truncated)`. Entries of kinds this version does not know
/// are skipped (a later sender may add some); a value over [`MAX_SANS_LEN`], an entry running
/// past the value, or a value that is not UTF-8 is a bad header.
pub fn decode_sans(mut v: &[u8]) -> Result<(Vec<San>, bool), ProxyError> {
    if v.len() > MAX_SANS_LEN {
        return Err(ProxyError::Invalid("SAN TLV over 2048 bytes".into()));
    }
    let bad = |m: &str| ProxyError::Invalid(format!("SAN TLV: {m}"));
    let mut sans = Vec::new();
    let mut truncated = false;
    while !v.is_empty() {
        if v.len() < 3 {
            return Err(bad("truncated entry"));
        }
        let len = usize::from(u16::from_be_bytes([v[1], v[2]]));
        let Some(value) = v.get(3..3 + len) else {
            return Err(bad("entry runs past its TLV"));
        };
        if v[0] == SAN_TRUNCATED {
            truncated = true;
        } else if let Some(kind) = SanKind::from_u8(v[0]) {
            let value = std::str::from_utf8(value).map_err(|_| bad("entry is not UTF-8"))?;
            sans.push(San::new(kind, value));
        }
        v = &v[3 + len..];
    }
    Ok((sans, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_round_trip_in_order() {
        let sans = vec![
            San::new(SanKind::Dns, "dev-7.example"),
            San::new(SanKind::Uri, "spiffe://acme/dev/7"),
            San::new(SanKind::Ip, "2001:db8::7"),
            San::new(SanKind::Email, "ops@acme.example"),
        ];
        let v = encode_sans(&sans, false);
        assert_eq!(&v[..16], b"\x01\x00\x0ddev-7.example");
        assert_eq!(decode_sans(&v), Ok((sans, false)));
        assert!(encode_sans(&[], false).is_empty());
        assert_eq!(decode_sans(&[]), Ok((vec![], false)));
    }

    #[test]
    fn hundreds_of_sans_are_cut_by_the_rule_and_marked() {
        let sans: Vec<San> = (0..500)
            .map(|i| San::new(SanKind::Dns, format!("host-{i:03}.example.com")))
            .collect();
        let v = encode_sans(&sans, false);
        assert!(v.len() <= MAX_SANS_LEN, "{}", v.len());
        assert_eq!(&v[v.len() - 3..], &[SAN_TRUNCATED, 0, 0]);
        let (back, cut) = decode_sans(&v).unwrap();
        assert!(cut);
        // each entry is 3 + 20 bytes: as many as fit in 2045
        assert_eq!(back.len(), (MAX_SANS_LEN - 3) / 23);
        assert_eq!(back[..], sans[..back.len()]);
        // re-encoding what was read gives the same bytes
        assert_eq!(encode_sans(&back, cut), v);
        // exactly full, without a cut: no marker
        let one = San::new(SanKind::Uri, "u".repeat(MAX_SANS_LEN - 3));
        let full = encode_sans(std::slice::from_ref(&one), false);
        assert_eq!(full.len(), MAX_SANS_LEN);
        assert_eq!(decode_sans(&full), Ok((vec![one], false)));
    }

    #[test]
    fn bad_values_are_refused_and_unknown_kinds_skipped() {
        assert!(decode_sans(&[1, 0]).is_err());
        assert!(decode_sans(&[1, 0, 5, b'a']).is_err());
        assert!(decode_sans(&[1, 0, 1, 0xff]).is_err());
        assert!(decode_sans(&vec![9; MAX_SANS_LEN + 1]).is_err());
        assert_eq!(
            decode_sans(&[0x7f, 0, 1, 0xff, 2, 0, 1, b'u']),
            Ok((vec![San::new(SanKind::Uri, "u")], false))
        );
        assert_eq!(decode_dn(b""), Ok(None));
        assert_eq!(decode_dn(b"CN=a"), Ok(Some("CN=a".into())));
        assert!(decode_dn(&[0xc3]).is_err());
        assert!(decode_dn(&[b'a'; MAX_DN_LEN + 1]).is_err());
        assert_eq!(encode_dn(&"a".repeat(MAX_DN_LEN + 1)), None);
        assert_eq!(encode_dn(""), None);
    }
}

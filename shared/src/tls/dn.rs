//! A certificate's subject as the RFC 4514 string LDAP, Java and Go write (`CN=dev-7,O=Acme\,
//! Inc.,C=DE`): the RDNs last to first, `,` between them, `+` inside a multi-valued one, the
//! short names of RFC 4514 section 3 (others as dotted OIDs with the value as `#` and the hex
//! of its DER), and the escapes of section 2.4. One string per certificate, so a broker can use
//! it as a username and an ACL can name it.

use x509_parser::der_parser::asn1_rs::{Class, Tag};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// The short names of RFC 4514 section 3, by dotted OID.
const SHORT_NAMES: [(&str, &str); 9] = [
    ("2.5.4.3", "CN"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.6", "C"),
    ("2.5.4.9", "STREET"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
];

/// The subject (or any name) as an RFC 4514 string; empty for an empty name.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            push_attribute(&mut out, attr);
        }
    }
    out
}

fn push_attribute(out: &mut String, attr: &AttributeTypeAndValue<'_>) {
    let oid = attr.attr_type().to_id_string();
    let short = SHORT_NAMES.iter().find(|(o, _)| *o == oid).map(|(_, n)| *n);
    let text = match short {
        Some(_) => string_value(attr),
        None => None,
    };
    out.push_str(short.unwrap_or(&oid));
    out.push('=');
    match text {
        Some(s) => escape(out, &s),
        None => hex_value(out, attr),
    }
}

/// The value as text when it is a string type (BMPString decoded from UTF-16).
fn string_value(attr: &AttributeTypeAndValue<'_>) -> Option<String> {
    if let Ok(s) = attr.as_str() {
        return Some(s.to_string());
    }
    let v = attr.attr_value();
    if v.tag() == Tag::BmpString {
        let units: Vec<u16> = v
            .data
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16(&units).ok();
    }
    None
}

/// `#` and the hex of the value's DER (RFC 4514 section 2.4, for dotted OIDs and non-strings).
fn hex_value(out: &mut String, attr: &AttributeTypeAndValue<'_>) {
    use std::fmt::Write;
    let v = attr.attr_value();
    let data = v.data;
    // universal tags below 31 fit the first byte; others are rare enough to keep their number
    let class = match v.class() {
        Class::Universal => 0x00,
        Class::Application => 0x40,
        Class::ContextSpecific => 0x80,
        Class::Private => 0xC0,
    };
    let constructed = if v.header.is_constructed() { 0x20 } else { 0 };
    let mut der = vec![class | constructed | (v.tag().0.min(30) as u8)];
    match data.len() {
        n @ 0..=127 => der.push(n as u8),
        n @ 128..=255 => der.extend_from_slice(&[0x81, n as u8]),
        n => {
            let n = n.min(usize::from(u16::MAX)) as u16;
            der.push(0x82);
            der.extend_from_slice(&n.to_be_bytes());
        }
    }
    der.extend_from_slice(data);
    out.push('#');
    for b in der {
        let _ = write!(out, "{b:02x}");
    }
}

/// RFC 4514 section 2.4: `"+,;<>\` anywhere, `#` or space first, space last, and NUL as `\00`.
fn escape(out: &mut String, s: &str) {
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn_of(params: rcgen::DistinguishedName) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = params;
        let cert = p.self_signed(&key).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        rfc4514(c.subject())
    }

    #[test]
    fn last_rdn_first_with_escapes() {
        use rcgen::DnType;
        let mut d = rcgen::DistinguishedName::new();
        d.push(DnType::CountryName, "DE");
        d.push(DnType::OrganizationName, "Acme, Inc.");
        d.push(DnType::OrganizationalUnitName, " Floor #2 ");
        d.push(DnType::CommonName, "sensor+7");
        d.push(
            DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            "ops@acme.example",
        );
        assert_eq!(
            dn_of(d),
            "1.2.840.113549.1.9.1=#0c106f70734061636d652e6578616d706c65,\
             CN=sensor\\+7,OU=\\ Floor #2\\ ,O=Acme\\, Inc.,C=DE"
        );
        assert_eq!(dn_of(rcgen::DistinguishedName::new()), "");
    }
}

//! `[[listener]] username_from` (and the older `use_cn_as_username`): which field of the client
//! certificate the LB vouched for in its PROXY v2 header becomes the MQTT username, and what a
//! connection whose certificate lacks it gets. The fields come from the shared PROXY parser
//! (`mqedge_shared::proxy`: the CN sub-TLV `0x22`, `0xE0` fingerprint, `0xE1` DN, `0xE2` SANs).

use mqedge_shared::config::Problems;
use mqedge_shared::proxy::{SanKind, SslInfo};
use serde::Deserialize;
use toml::Spanned;

use super::ProxyIn;

/// The certificate field that names the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsernameFrom {
    /// The subject CN (sub-TLV `0x22` of the SSL TLV).
    Cn,
    /// The whole subject DN, RFC 4514 (`0xE1`).
    Dn,
    /// The first URI SAN (`0xE2`), e.g. a SPIFFE id.
    SanUri,
    /// The first DNS SAN (`0xE2`).
    SanDns,
    /// The SHA-256 of the certificate (`0xE0`), 64 lowercase hex digits.
    Fingerprint,
}

impl UsernameFrom {
    /// The config value, for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            UsernameFrom::Cn => "cn",
            UsernameFrom::Dn => "dn",
            UsernameFrom::SanUri => "san_uri",
            UsernameFrom::SanDns => "san_dns",
            UsernameFrom::Fingerprint => "fingerprint",
        }
    }

    /// The username this field gives, from a header's SSL facts; `None` when the header does
    /// not say that a certificate was presented and verified, or the certificate has no such
    /// field (or the sender did not send it).
    pub fn pick(self, ssl: &SslInfo) -> Option<String> {
        if !(ssl.client_cert && ssl.verified) {
            return None;
        }
        let id = &ssl.identity;
        let v = match self {
            UsernameFrom::Cn => ssl.cn.clone(),
            UsernameFrom::Dn => id.dn.clone(),
            UsernameFrom::SanUri => id.first_san(SanKind::Uri).map(str::to_string),
            UsernameFrom::SanDns => id.first_san(SanKind::Dns).map(str::to_string),
            UsernameFrom::Fingerprint => ssl.cert_sha256.map(|fp| {
                fp.iter().fold(String::with_capacity(64), |mut s, b| {
                    use std::fmt::Write;
                    let _ = write!(s, "{b:02x}");
                    s
                })
            }),
        };
        v.filter(|v| !v.is_empty())
    }
}

/// A listener's rule: the field, and whether a connection without it is refused
/// (`username_from`) or goes on to the password rules (`use_cn_as_username`, as before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertUsername {
    /// The field.
    pub from: UsernameFrom,
    /// Refuse a CONNECT whose certificate lacks it.
    pub required: bool,
}

/// Validates a listener's two keys: at most one of them, and only with `proxy_protocol`.
pub(super) fn cert_username(
    p: &mut Problems<'_>,
    bind: &Spanned<String>,
    proxy: ProxyIn,
    use_cn: bool,
    from: Option<&Spanned<UsernameFrom>>,
) -> Option<CertUsername> {
    let rule = match (use_cn, from) {
        (true, Some(f)) => {
            p.at(
                f.span(),
                "use_cn_as_username and username_from are both set: keep username_from \
                 (use_cn_as_username = true is username_from = \"cn\" without the refusal)",
            );
            return None;
        }
        (true, None) => CertUsername {
            from: UsernameFrom::Cn,
            required: false,
        },
        (false, Some(f)) => CertUsername {
            from: *f.get_ref(),
            required: true,
        },
        (false, None) => return None,
    };
    if proxy == ProxyIn::Off {
        let (key, span) = match from {
            Some(f) => ("username_from", f.span()),
            None => ("use_cn_as_username", bind.span()),
        };
        p.at(
            span,
            format!("{key} needs proxy_protocol (the certificate comes in the PROXY v2 header)"),
        );
    }
    Some(rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqedge_shared::proxy::{CertIdentity, San};

    #[test]
    fn each_field_only_from_a_verified_certificate() {
        let mut ssl = SslInfo {
            client_cert: true,
            verified: true,
            cn: Some("dev-7".into()),
            cert_sha256: Some([0xab; 32]),
            identity: CertIdentity {
                dn: Some("CN=dev-7,O=Acme".into()),
                sans: vec![
                    San::new(SanKind::Dns, "dev-7.acme"),
                    San::new(SanKind::Uri, "spiffe://acme/dev/7"),
                    San::new(SanKind::Uri, "urn:second"),
                ],
                sans_truncated: false,
            },
            ..SslInfo::default()
        };
        let got = |f: UsernameFrom, s: &SslInfo| f.pick(s);
        assert_eq!(got(UsernameFrom::Cn, &ssl).as_deref(), Some("dev-7"));
        assert_eq!(
            got(UsernameFrom::Dn, &ssl).as_deref(),
            Some("CN=dev-7,O=Acme")
        );
        assert_eq!(
            got(UsernameFrom::SanUri, &ssl).as_deref(),
            Some("spiffe://acme/dev/7")
        );
        assert_eq!(
            got(UsernameFrom::SanDns, &ssl).as_deref(),
            Some("dev-7.acme")
        );
        assert_eq!(got(UsernameFrom::Fingerprint, &ssl), Some("ab".repeat(32)));
        ssl.identity.sans.retain(|s| s.kind != SanKind::Uri);
        assert_eq!(got(UsernameFrom::SanUri, &ssl), None);
        ssl.verified = false;
        assert_eq!(got(UsernameFrom::Cn, &ssl), None);
    }

    #[test]
    fn the_keys_validate_with_lines() {
        let parse = |l: &str| {
            let src = format!(
                "[[listener]]\nbind = \"127.0.0.1:1883\"\nproxy_protocol = \"required\"\n\
                 trusted_proxies = [\"127.0.0.1/32\"]\n{l}"
            );
            crate::config::Config::parse(std::path::Path::new("b.toml"), &src)
                .map(|c| c.listeners[0].cert_username)
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse(""), Ok(None));
        let rule = |from, required| Ok(Some(CertUsername { from, required }));
        assert_eq!(
            parse("use_cn_as_username = true\n"),
            rule(UsernameFrom::Cn, false)
        );
        assert_eq!(
            parse("username_from = \"san_uri\"\n"),
            rule(UsernameFrom::SanUri, true)
        );
        assert_eq!(
            parse("username_from = \"fingerprint\"\n"),
            rule(UsernameFrom::Fingerprint, true)
        );
        let e = parse("use_cn_as_username = true\nusername_from = \"dn\"\n").unwrap_err();
        assert!(
            e.starts_with("b.toml:6: use_cn_as_username and username_from"),
            "{e}"
        );
        let e = parse("username_from = \"email\"\n").unwrap_err();
        assert!(e.starts_with("b.toml:5"), "{e}");
        assert!(e.contains("san_uri"), "{e}");
        let src = "[[listener]]\nbind = \"127.0.0.1:1883\"\nusername_from = \"dn\"\n";
        let e = crate::config::Config::parse(std::path::Path::new("b.toml"), src)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("b.toml:3: username_from needs proxy_protocol"),
            "{e}"
        );
    }
}

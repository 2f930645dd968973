//! `[auth.http]`: the external authentication service a CONNECT is checked against before the
//! password file, and `[auth.http_acl]`: the authorization service a PUBLISH or SUBSCRIBE is
//! checked against after the ACL file (docs/operations.md "External authentication"). Both
//! tables have the same keys.

use std::time::Duration;

use mqedge_shared::config::{HumanDuration, Problems};
use serde::Deserialize;
use toml::Spanned;

pub use crate::auth::hook::{AuthHttpConfig, OnUnavailable};

/// The raw table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuthHttp {
    url: Spanned<String>,
    timeout: Option<Spanned<HumanDuration>>,
    cache_size: Option<Spanned<i64>>,
    cache_ttl: Option<HumanDuration>,
    #[serde(default)]
    on_unavailable: OnUnavailable,
}

/// An external service's `timeout` in `table` (1 ms to 30 s; 5 s by default); `None` with the
/// problem in `p`. One rule for `[auth.http]`, `[auth.http_acl]` and `[auth.postgres]`.
pub(crate) fn service_timeout(
    table: &str,
    t: &Option<Spanned<HumanDuration>>,
    p: &mut Problems<'_>,
) -> Option<Duration> {
    match t {
        Some(t) if t.get_ref().0.is_zero() || t.get_ref().0 > Duration::from_secs(30) => {
            p.at(
                t.span(),
                format!("{table} timeout must be between 1ms and 30s"),
            );
            None
        }
        Some(t) => Some(t.get_ref().0),
        None => Some(Duration::from_secs(5)),
    }
}

/// An external service's answer cache size in `table` (0 to 10,000,000; 10,000 by default).
pub(crate) fn cache_size(
    table: &str,
    c: &Option<Spanned<i64>>,
    p: &mut Problems<'_>,
) -> Option<usize> {
    match c {
        Some(c) if !(0..=10_000_000).contains(c.get_ref()) => {
            p.at(
                c.span(),
                format!("{table} cache_size must be between 0 and 10000000"),
            );
            None
        }
        Some(c) => Some(*c.get_ref() as usize),
        None => Some(10_000),
    }
}

/// Validates `[auth.http]` or `[auth.http_acl]` (`table`, for the messages); `None` with the problems in `p`.
pub(crate) fn parse(table: &str, raw: RawAuthHttp, p: &mut Problems<'_>) -> Option<AuthHttpConfig> {
    let url = raw.url.get_ref();
    let Some(rest) = url.strip_prefix("http://") else {
        let why = if url.starts_with("https://") {
            format!("{table} url: https is not supported; reach the service over the private network, or through a local TLS proxy")
        } else {
            format!("{table} url must start with http://")
        };
        p.at(raw.url.span(), why);
        return None;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let port_ok = authority
        .rsplit_once(':')
        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0));
    if !port_ok {
        p.at(
            raw.url.span(),
            format!("{table} url needs host:port, like \"http://10.0.0.9:8991/mqtt/auth\""),
        );
        return None;
    }
    let (timeout, cache_size) = (
        service_timeout(table, &raw.timeout, p),
        cache_size(table, &raw.cache_size, p),
    );
    let (timeout, cache_size) = (timeout?, cache_size?);
    Some(AuthHttpConfig {
        authority: authority.to_string(),
        path: path.to_string(),
        timeout,
        cache_size,
        cache_ttl: raw.cache_ttl.map_or(Duration::from_secs(60), |t| t.0),
        on_unavailable: raw.on_unavailable,
    })
}

//! `[auth.postgres]`: users and ACL rows in PostgreSQL (docs/operations.md "Users and ACL in
//! PostgreSQL").

use std::str::FromStr;
use std::time::Duration;

use mqedge_shared::config::{HumanDuration, Problems};
use serde::Deserialize;
use toml::Spanned;

use crate::auth::hook::OnUnavailable;
pub use crate::auth::postgres::PostgresConfig;

/// The raw table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuthPostgres {
    url: Spanned<String>,
    timeout: Option<Spanned<HumanDuration>>,
    cache_size: Option<Spanned<i64>>,
    cache_ttl: Option<HumanDuration>,
    #[serde(default)]
    on_unavailable: OnUnavailable,
    acl: Option<bool>,
}

/// Validates `[auth.postgres]`; `None` with the problems in `p`.
pub(crate) fn parse(raw: RawAuthPostgres, p: &mut Problems<'_>) -> Option<PostgresConfig> {
    let pg = match tokio_postgres::Config::from_str(raw.url.get_ref()) {
        Ok(c) if !c.get_hosts().is_empty() => Some(c),
        Ok(_) => {
            p.at(raw.url.span(), "auth.postgres url names no host, like \"postgresql://mqedge@10.0.0.9:5432/mqedge\"");
            None
        }
        Err(e) => {
            p.at(raw.url.span(), format!("auth.postgres url: {e}"));
            None
        }
    };
    let timeout = super::auth_http::service_timeout("auth.postgres", &raw.timeout, p);
    let cache_size = super::auth_http::cache_size("auth.postgres", &raw.cache_size, p);
    let (pg, timeout, cache_size) = (pg?, timeout?, cache_size?);
    Some(PostgresConfig {
        pg,
        timeout,
        cache_size,
        cache_ttl: raw.cache_ttl.map_or(Duration::from_secs(60), |t| t.0),
        on_unavailable: raw.on_unavailable,
        acl: raw.acl.unwrap_or(true),
    })
}

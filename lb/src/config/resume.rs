//! TLS session resumption of a listener (`[listener.tls] session_cache`, `tickets`): a
//! session cache of the configured size and, by default, stateless tickets, so a device that
//! reconnects (a reconnect storm after an LB or network blip) resumes instead of paying a full
//! handshake. Each load of the config (a reload included) gets a fresh cache and ticket key:
//! a session from before a reload that changed `client_ca` or `crl` cannot skip their check.

use std::sync::Arc;

use mqedge_shared::config::Problems;
use mqedge_shared::tls::TlsError;
use toml::Spanned;

/// Default `session_cache`: sessions by id (TLS 1.2 without tickets, or `tickets = false`).
pub const DEFAULT_SESSION_CACHE: usize = 4096;
/// Largest `session_cache` (each entry holds a session's secrets, a few hundred bytes).
pub const MAX_SESSION_CACHE: i64 = 1_000_000;

/// A listener's resumption keys, as written.
pub(super) struct Resumption<'a> {
    /// `session_cache`.
    pub size: &'a Option<Spanned<i64>>,
    /// `tickets`.
    pub tickets: Option<bool>,
    /// The loaded `ticket_keys` file, when there is one.
    pub keys: Option<super::ticket_keys::TicketKeys>,
}

/// Sets the cache and the ticketer on a listener's freshly built config.
pub(super) fn with_resumption(
    sc: Arc<rustls::ServerConfig>,
    r: Resumption<'_>,
    name: &str,
    p: &mut Problems<'_>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let entries = match r.size {
        Some(s) if !(0..=MAX_SESSION_CACHE).contains(s.get_ref()) => {
            p.at(
                s.span(),
                format!("listener {name:?} tls: session_cache must be between 0 and 1000000"),
            );
            DEFAULT_SESSION_CACHE
        }
        Some(s) => *s.get_ref() as usize,
        None => DEFAULT_SESSION_CACHE,
    };
    let mut c = (*sc).clone();
    c.session_storage = if entries == 0 {
        Arc::new(rustls::server::NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(entries)
    };
    match (r.tickets.unwrap_or(true), r.keys) {
        (false, _) => {}
        (true, Some(keys)) => c.ticketer = Arc::new(keys),
        (true, None) => {
            c.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
                .map_err(|e| TlsError::Rustls(format!("ticket key: {e}")))?;
        }
    }
    Ok(Arc::new(c))
}

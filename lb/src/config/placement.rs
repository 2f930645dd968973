//! `[placement]` and `[[backend]] admin`: where the LB reads the cluster's placement feed
//! (`GET /api/placement` on each broker's admin port) and how often. A backend with `admin` is
//! a feed; with none, the feature is off and every pick goes by the hash. All of it is
//! reloadable: the poller reads the live config at every round.

use std::path::Path;
use std::time::Duration;

use mqedge_shared::admin::AdminAccess;
use mqedge_shared::config::{HumanDuration, Problems};
use serde::Deserialize;
use toml::Spanned;

use super::BackendAddr;

/// Default and largest `max_entries`.
const DEFAULT_MAX_ENTRIES: usize = 100_000;
const MAX_MAX_ENTRIES: usize = 1_000_000;

/// `[placement]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlacement {
    interval: Option<Spanned<HumanDuration>>,
    timeout: Option<Spanned<HumanDuration>>,
    max_entries: Option<Spanned<usize>>,
    admin_token_file: Option<Spanned<String>>,
}

/// One feed: the backend it speaks for and its broker's admin address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    /// The backend's `name`, which the feed's `node` must be.
    pub backend: String,
    /// `[[backend]] admin`: the broker's admin API.
    pub admin: BackendAddr,
}

/// The validated `[placement]` with its feeds.
#[derive(Clone, PartialEq, Eq)]
pub struct PlacementConfig {
    /// Backends with `admin`, in config order (the first feed to list a client id wins).
    pub feeds: Vec<Feed>,
    /// Pause between two polls of every feed.
    pub interval: Duration,
    /// Deadline of one poll of one feed (connect, request, whole answer).
    pub timeout: Duration,
    /// Bound of the exceptions table, all feeds together (and the `limit` asked of each).
    pub max_entries: usize,
    /// The brokers' admin bearer token (`admin_token_file`), when they ask for one.
    pub token: Option<String>,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            feeds: Vec::new(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            max_entries: DEFAULT_MAX_ENTRIES,
            token: None,
        }
    }
}

impl std::fmt::Debug for PlacementConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the token is a secret: never in logs or `mqedge check` output
        f.debug_struct("PlacementConfig")
            .field("feeds", &self.feeds)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("max_entries", &self.max_entries)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Validates `[placement]` and the backends' `admin` keys (`(backend name, admin)` in config
/// order); every problem goes to `p` as `file:line: what`.
pub(super) fn parse(
    path: &Path,
    raw: Option<RawPlacement>,
    admins: Vec<(String, Spanned<String>)>,
    p: &mut Problems<'_>,
) -> PlacementConfig {
    let mut out = PlacementConfig::default();
    for (backend, a) in admins {
        match a.get_ref().parse::<BackendAddr>() {
            Ok(admin) => out.feeds.push(Feed { backend, admin }),
            Err(e) => p.at(a.span(), format!("backend {backend:?} admin: {e}")),
        }
    }
    let Some(raw) = raw else { return out };
    let dur =
        |d: &Option<Spanned<HumanDuration>>, min: Duration, what: &str, p: &mut Problems<'_>| {
            let d = d.as_ref()?;
            if d.get_ref().0 < min {
                p.at(
                    d.span(),
                    format!("placement {what} must be at least {min:?}"),
                );
                return None;
            }
            Some(d.get_ref().0)
        };
    if let Some(i) = dur(&raw.interval, Duration::from_millis(100), "interval", p) {
        out.interval = i;
    }
    if let Some(t) = dur(&raw.timeout, Duration::from_millis(10), "timeout", p) {
        out.timeout = t;
    }
    if let Some(m) = &raw.max_entries {
        match *m.get_ref() {
            n @ 1..=MAX_MAX_ENTRIES => out.max_entries = n,
            _ => p.at(
                m.span(),
                format!("placement max_entries must be between 1 and {MAX_MAX_ENTRIES}"),
            ),
        }
    }
    out.token = AdminAccess::from_config(p, path, raw.admin_token_file.as_ref(), &[]).token;
    out
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const BASE: &str = "[[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n";

    #[test]
    fn feeds_come_from_backends_with_admin_and_the_table_has_defaults() {
        let src = format!(
            "{BASE}[[backend]]\nname = \"node1\"\naddr = \"127.0.0.1:1883\"\nadmin = \"127.0.0.1:8081\"\n\
             [[backend]]\nname = \"node2\"\naddr = \"127.0.0.1:1884\"\n\
             [[backend]]\nname = \"node3\"\naddr = \"127.0.0.1:1885\"\nadmin = \"broker-3.internal:8081\"\n"
        );
        let c = Config::parse(Path::new("/tmp/lb.toml"), &src).unwrap();
        let names: Vec<&str> = c
            .placement
            .feeds
            .iter()
            .map(|f| f.backend.as_str())
            .collect();
        assert_eq!(names, ["node1", "node3"]);
        assert_eq!(
            c.placement.feeds[1].admin.to_string(),
            "broker-3.internal:8081"
        );
        assert_eq!(c.placement.interval.as_secs(), 2);
        assert_eq!(c.placement.max_entries, 100_000);
        assert!(c.placement.token.is_none());
    }

    #[test]
    fn bad_keys_are_reported_at_their_lines_all_at_once() {
        let src = format!(
            "{BASE}[placement]\ninterval = \"10ms\"\ntimeout = \"1ms\"\nmax_entries = 0\n\
             admin_token_file = \"/nonexistent/token\"\n\
             [[backend]]\nname = \"node1\"\naddr = \"127.0.0.1:1883\"\nadmin = \"no port\"\n"
        );
        let e = Config::parse(Path::new("/tmp/lb.toml"), &src)
            .unwrap_err()
            .to_string();
        for want in [
            "lb.toml:5: placement interval must be at least 100ms",
            "lb.toml:6: placement timeout must be at least 10ms",
            "lb.toml:7: placement max_entries must be between 1 and 1000000",
            "lb.toml:8: admin_token_file: cannot read",
            "lb.toml:12: backend \"node1\" admin: invalid backend address",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }
}

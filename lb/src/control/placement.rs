//! The placement feeds' poller and what the admin API shows of them. Every `[placement]
//! interval` it asks each backend with `admin` for the sessions its broker holds off their hash
//! home (`GET /api/placement`, see `feed`), all feeds at once, each within `timeout`; then it
//! builds one bounded table from the answers and swaps it in whole (`Lb::set_placement`). A feed
//! that fails, or answers for another node than its backend, contributes nothing to that
//! round's table: its entries are gone until it answers again (a stale entry would only cost one
//! takeover; a missing one costs nothing but the hash's pick). The live config is read at every
//! round, so `[placement]` and `admin` keys reload without a restart.
//!
//! The pick side is `conn::connect` with `backend::placement::prefer`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::feed::{self, FeedDoc, FeedError};
use crate::backend::balance::hash_order;
use crate::backend::placement::{Builder, FeedStatus, MAX_MEMBERS};
use crate::backend::Backend;
use crate::config::placement::Feed;
use crate::config::PlacementConfig;
use crate::metrics::BackendLabel;
use crate::state::Lb;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Polls the feeds until `stop`, a round every `[placement] interval`.
pub async fn run(lb: Arc<Lb>, mut stop: watch::Receiver<bool>) {
    loop {
        let cfg = lb.live().placement.clone();
        tokio::select! {
            _ = stop.changed() => break,
            _ = round(&lb, &cfg) => {}
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
}

/// One round: every feed polled at once, the table rebuilt from the answers.
pub async fn round(lb: &Lb, cfg: &PlacementConfig) {
    // a backend without a feed (or with pacing off) is not paced
    for b in &lb.live().backends {
        if !cfg.pacing || !cfg.feeds.iter().any(|f| f.backend == b.name()) {
            b.pacer().set_rate(None);
        }
    }
    if cfg.feeds.is_empty() {
        if !lb.placement().feeds().is_empty() || !lb.placement().is_empty() {
            lb.set_placement(Builder::new(0).finish(Vec::new()));
        }
        return;
    }
    let polls: Vec<_> = cfg
        .feeds
        .iter()
        .map(|f| {
            let (addr, token) = (f.admin.clone(), cfg.token.clone());
            let (limit, timeout) = (cfg.max_entries, cfg.timeout);
            tokio::spawn(async move { feed::fetch(&addr, limit, token.as_deref(), timeout).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(polls.len());
    for (f, p) in cfg.feeds.iter().zip(polls) {
        let r = p
            .await
            .unwrap_or(Err(FeedError::Http("poll task ended")))
            .and_then(|doc| checked(f, doc));
        answers.push((f, r));
    }
    let before = lb.placement();
    let mut table = Builder::new(cfg.max_entries);
    let mut feeds = Vec::with_capacity(answers.len());
    for (f, r) in answers {
        let prev = before.feeds().iter().find(|s| s.backend == f.backend);
        let mut st = FeedStatus {
            backend: f.backend.clone(),
            admin: f.admin.to_string(),
            last_ok_unix_ms: prev.and_then(|p| p.last_ok_unix_ms),
            ..FeedStatus::default()
        };
        match r {
            Ok(doc) => {
                let ids = doc
                    .exceptions
                    .iter()
                    .filter(|e| e.node == doc.node)
                    .map(|e| e.client_id.as_str());
                st.entries = table.add(&f.backend, ids);
                if doc.truncated {
                    table.mark_truncated();
                }
                if prev.is_some_and(|p| !p.ok) {
                    tracing::info!(backend = %f.backend, admin = %f.admin, entries = st.entries, "placement feed answers again");
                }
                st.ok = true;
                st.truncated = doc.truncated;
                st.admit_rate = doc.admit.map(|a| a.rate);
                if let Some(b) = lb.live().find(&f.backend) {
                    b.pacer().set_rate(st.admit_rate.filter(|_| cfg.pacing));
                }
                st.members = doc.members.into_iter().take(MAX_MEMBERS).collect();
                st.last_ok_unix_ms = Some(now_ms());
            }
            Err(e) => {
                lb.metrics()
                    .placement_feed_errors
                    .get_or_create(&BackendLabel {
                        backend: f.backend.clone(),
                    })
                    .inc();
                // once per outage, not once per round
                if prev.is_none_or(|p| p.ok) {
                    tracing::warn!(backend = %f.backend, admin = %f.admin, error = %e, "placement feed failed; its clients go by the hash until it answers");
                }
                st.error = Some(e.to_string());
                // the last rate its broker gave stands while it does not answer
                st.admit_rate = prev.and_then(|p| p.admit_rate);
            }
        }
        feeds.push(st);
    }
    drop(before);
    lb.set_placement(table.finish(feeds));
}

/// The answer, when it is the feed of the backend it is configured on.
fn checked(f: &Feed, doc: FeedDoc) -> Result<FeedDoc, FeedError> {
    if doc.node == f.backend {
        Ok(doc)
    } else {
        Err(FeedError::WrongNode {
            want: f.backend.clone(),
            got: doc.node,
        })
    }
}

/// `GET /api/placement` on the LB: the table's size and every feed's last round.
pub fn status_json(lb: &Lb) -> Value {
    let cfg = lb.live().placement.clone();
    let s = lb.placement();
    let feeds: Vec<Value> = s
        .feeds()
        .iter()
        .map(|f| {
            json!({
                "backend": f.backend,
                "admin": f.admin,
                "ok": f.ok,
                "entries": f.entries,
                "truncated": f.truncated,
                "members": f.members,
                "error": f.error,
                "last_ok_at": f.last_ok_unix_ms,
                "admit_rate": f.admit_rate,
                "pacing_rate": lb.live().find(&f.backend).map(|b| b.pacer().rate()),
            })
        })
        .collect();
    json!({
        "entries": s.len(),
        "max_entries": cfg.max_entries,
        "truncated": s.truncated(),
        "interval_ms": cfg.interval.as_millis() as u64,
        "pacing": cfg.pacing,
        "pacing_wait_ms": cfg.pacing_wait.as_millis() as u64,
        "feeds": feeds,
    })
}

/// `GET /api/placement/{client_id}` on the LB: the client's exception entry, if any, and the
/// backend a connect would try first now (`source`: what decided it).
pub fn client_json(lb: &Lb, client_id: &str) -> Value {
    let live = lb.live();
    let ok = live.usable();
    let cands = Backend::candidates(&ok);
    let snap = lb.placement();
    let exception = snap.lookup(client_id);
    let hashed = hash_order(client_id.as_bytes(), &cands)
        .first()
        .map(|&i| cands[i].name);
    let placed = exception.filter(|n| cands.iter().any(|c| c.weight > 0 && c.name == *n));
    json!({
        "client_id": client_id,
        "exception": exception,
        "hash": hashed,
        "pick": placed.or(hashed),
        "source": if placed.is_some() { "exception" } else { "hash" },
    })
}

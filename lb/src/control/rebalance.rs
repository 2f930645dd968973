//! Scale-out rebalance (docs/operations.md, "Rebalance"): the LB walks its open connections and
//! finds the clients whose hash pick over the usable backends is not the backend they are on
//! (after a node joined, or a rolling restart left them elsewhere): the **moved share**, no
//! other client. At `[balance] rebalance_rate` clients per second it asks each one's broker
//! (its `[[backend]] admin`) to move them: `POST /api/sessions/move` with the new node and
//! their client ids. The broker pushes each session there first (freeze → confirm) and then
//! tells the client DISCONNECT `0x9C` Use another server (3.1.1: closed); the client comes back
//! through the LB to its hash pick, where its session already is (Session Present = 1).
//!
//! Started by `POST /api/rebalance`, and with `[balance] rebalance = "auto"` when a backend
//! becomes `up` that was not ([`on_up`]). Progress in `backend::rebalance`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::feed::{self, FeedError};
use crate::backend::balance::hash_order;
use crate::backend::Backend;
use crate::config::{BackendAddr, RebalanceMode, Strategy};
use crate::state::{Lb, Live};

/// Most client ids in one request to a broker (a step of the pacer at a high rate).
const STEP_MAX: usize = 100;
/// `auto`: how long after a backend came up the rebalance starts (its broker joins the
/// cluster's membership in that time, so the old nodes can push sessions to it).
pub const AUTO_SETTLE: Duration = Duration::from_secs(3);

/// Why a rebalance did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Only the `client_id` strategy has a hash home to move clients to.
    #[error("[balance] strategy is not client_id: clients have no hash home to move to")]
    NotClientId,
    /// One runs already.
    #[error("a rebalance is running already")]
    Running,
}

/// One client to move.
struct Move {
    client_id: Arc<str>,
    /// The backend it is on.
    from: Arc<Backend>,
    /// Its hash pick.
    to: String,
}

/// The moved share: every open connection whose client id's hash pick over the usable
/// backends is another backend than the one it is on.
fn plan(live: &Live) -> Vec<Move> {
    let usable = live.usable();
    let cands = Backend::candidates(&usable);
    let mut out = Vec::new();
    for (i, b) in usable.iter().enumerate() {
        for id in b.client_ids() {
            match hash_order(id.as_bytes(), &cands).first() {
                Some(&pick) if pick != i => out.push(Move {
                    client_id: id,
                    from: Arc::clone(b),
                    to: usable[pick].name().to_string(),
                }),
                _ => {}
            }
        }
    }
    out
}

/// Plans a rebalance and starts moving in its own task; the number of clients planned.
pub fn start(lb: &Arc<Lb>, cause: &'static str) -> Result<usize, StartError> {
    let live = lb.live_arc();
    if live.balance.strategy != Strategy::ClientId {
        return Err(StartError::NotClientId);
    }
    let moves = plan(&live);
    let rate = live.balance.rebalance_rate.max(1);
    if !lb.rebalance().start(cause, moves.len(), rate) {
        return Err(StartError::Running);
    }
    let planned = moves.len();
    tracing::info!(
        cause,
        planned,
        rate,
        "rebalance: moving the clients whose hash pick changed"
    );
    let lb = lb.clone();
    tokio::spawn(async move {
        let t0 = Instant::now();
        run(&lb, &live, moves, rate).await;
        let p = lb.rebalance().json();
        tracing::info!(planned, moved = %p["moved"], failed = %p["failed"], took = ?t0.elapsed(), "rebalance: done");
        lb.rebalance().finish();
    });
    Ok(planned)
}

/// `auto`: a backend became `up` that was not; a rebalance starts after [`AUTO_SETTLE`] (after
/// the running one, if any). Triggers meanwhile join that one (several backends up at once,
/// as at the LB's start).
pub fn on_up(lb: &Arc<Lb>, backend: &str) {
    if lb.live().balance.rebalance != RebalanceMode::Auto || !lb.rebalance().schedule_auto() {
        return;
    }
    let (lb, backend) = (lb.clone(), backend.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(AUTO_SETTLE).await;
        while lb.rebalance().running() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lb.rebalance().auto_due();
        match start(&lb, "auto") {
            Ok(n) => {
                tracing::info!(backend = %backend, planned = n, "rebalance started: a backend came up")
            }
            Err(e) => {
                tracing::info!(backend = %backend, error = %e, "no rebalance after a backend came up")
            }
        }
    });
}

/// Moves `moves` in order, in steps of [`step`] clients: a step starts no earlier than the
/// one before it started plus its length / `rate`, and never to catch up on time lost (a slow
/// broker answer makes the run slower, never faster than `rate`). So any one second holds at
/// most `rate` clients plus one step.
async fn run(lb: &Lb, live: &Live, moves: Vec<Move>, rate: u32) {
    let every = Duration::from_secs(1) / rate;
    let n = step(rate);
    let mut next = 0usize;
    let mut at = Instant::now();
    while next < moves.len() {
        tokio::time::sleep_until(at).await;
        let started = Instant::now();
        let end = (next + n).min(moves.len());
        let mut groups: BTreeMap<(&str, &str), Vec<&Arc<str>>> = BTreeMap::new();
        for m in &moves[next..end] {
            groups
                .entry((m.from.name(), &m.to))
                .or_default()
                .push(&m.client_id);
        }
        at = started + every * (end - next) as u32;
        next = end;
        for ((from, to), ids) in groups {
            let moved = ask(live, from, to, &ids).await;
            for id in ids {
                lb.rebalance()
                    .record(id, moved.iter().any(|m| m.as_str() == &**id));
            }
        }
    }
}

/// Clients per step at `rate`: a twentieth of a second's worth (one at 20/s and below), at most
/// [`STEP_MAX`].
pub fn step(rate: u32) -> usize {
    ((rate / 20).max(1) as usize).min(STEP_MAX)
}

/// Asks `from`'s broker to move `ids` to `to`: the ids it moved (none when it could not be
/// asked: logged).
async fn ask(live: &Live, from: &str, to: &str, ids: &[&Arc<str>]) -> Vec<String> {
    let p = &live.placement;
    let Some(feed) = p.feeds.iter().find(|f| f.backend == from) else {
        tracing::warn!(backend = %from, clients = ids.len(), "rebalance: the backend has no admin address ([[backend]] admin); its clients are not moved");
        return Vec::new();
    };
    let ids: Vec<&str> = ids.iter().map(|i| &***i).collect();
    match post_move(&feed.admin, p.token.as_deref(), to, &ids, p.timeout).await {
        Ok(a) => {
            if !a.failed.is_empty() {
                tracing::info!(backend = %from, to, failed = a.failed.len(), "rebalance: the broker moved not every client (gone, or no session there)");
            }
            a.moved
        }
        Err(e) => {
            tracing::warn!(backend = %from, to, clients = ids.len(), error = %e, "rebalance: the broker's move failed");
            Vec::new()
        }
    }
}

/// The broker's answer to `POST /api/sessions/move`.
#[derive(Debug, Deserialize)]
struct MoveAnswer {
    moved: Vec<String>,
    #[serde(default)]
    failed: Vec<String>,
}

/// One `POST /api/sessions/move` to a broker's admin address, answered within `timeout`.
async fn post_move(
    addr: &BackendAddr,
    token: Option<&str>,
    to: &str,
    ids: &[&str],
    timeout: Duration,
) -> Result<MoveAnswer, FeedError> {
    let cap = feed::cap_for(ids.len());
    let call = async {
        let (mut s, peer) = feed::dial(addr).await?;
        let body = serde_json::json!({ "to": to, "client_ids": ids }).to_string();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /api/sessions/move HTTP/1.1\r\nHost: {peer}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{}: 1\r\nUser-Agent: mqedge-lb\r\n{auth}Connection: close\r\n\r\n",
            body.len(),
            mqedge_shared::admin::ADMIN_HEADER,
        );
        s.write_all(format!("{head}{body}").as_bytes()).await?;
        feed::read_json::<MoveAnswer>(&mut s, cap).await
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(FeedError::Timeout(timeout)))
}

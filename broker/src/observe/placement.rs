//! `GET /api/placement`: the placement feed an LB reads (`[[backend]] admin` in its config) to
//! send a reconnecting client to the node that holds its session when that is not the node its
//! hash names (docs/cluster.md "Placement"). The answer lists the **exceptions** only: the
//! persistent sessions this node holds whose hash home, the first of
//! `mqedge_shared::placement::rendezvous_order` over the live nodes' names, is another node.
//! Every other client goes by the hash anyway, so the list stays small (sessions that moved in
//! a failover, a promotion on a replica, or a client that connected to a node directly).
//!
//! Computed on request from the registry, off the async workers; bounded by
//! [`MAX_EXCEPTIONS`] entries (and the caller's `?limit=`), with `truncated` saying that more
//! were left out. Client ids over [`MAX_ID_LEN`] bytes or with control characters are left out
//! too: those clients go by the hash (one takeover, never a loss).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::broker::Broker;

/// Most entries one answer lists, whatever `?limit=` asks.
pub const MAX_EXCEPTIONS: usize = 100_000;

/// Longest client id listed, in bytes: it keeps an entry's size bounded for the LB's byte cap.
pub const MAX_ID_LEN: usize = 256;

/// The query of `GET /api/placement`.
#[derive(Debug, Deserialize)]
pub struct Params {
    /// At most this many entries (capped by [`MAX_EXCEPTIONS`]).
    limit: Option<usize>,
}

/// `GET /api/placement[?limit=N]`.
pub async fn placement(State(b): State<Arc<Broker>>, Query(q): Query<Params>) -> Json<Value> {
    let limit = q.limit.unwrap_or(MAX_EXCEPTIONS).min(MAX_EXCEPTIONS);
    let me = b.cfg().name.clone();
    let members = members(&b);
    let work = {
        let (b, me, members) = (b.clone(), me.clone(), members.clone());
        move || {
            let names: Vec<&str> = members.iter().map(String::as_str).collect();
            exceptions(&me, &names, b.sessions().held_ids(), limit)
        }
    };
    // a node with many sessions walks them all: not on an async worker
    let (ids, truncated) = tokio::task::spawn_blocking(work).await.unwrap_or_default();
    let entries: Vec<Value> = ids
        .iter()
        .map(|id| json!({ "client_id": &**id, "node": me }))
        .collect();
    Json(json!({
        "node": me,
        "members": members,
        "exceptions": entries,
        "truncated": truncated,
    }))
}

/// This node and the peers gossip calls live, sorted: the names the hash home is taken over.
pub fn members(b: &Broker) -> Vec<String> {
    let mut names = vec![b.cfg().name.clone()];
    if let Some(c) = b.cluster() {
        names.extend(
            c.peers()
                .into_iter()
                .filter(|(_, st, _)| st.up)
                .map(|(n, _, _)| n.to_string()),
        );
    }
    names.sort();
    names.dedup();
    names
}

/// Of the client ids `held` here (`me`), those whose hash home over `members` is another node,
/// at most `limit` of them (and whether some were left out). Pure.
pub fn exceptions(
    me: &str,
    members: &[&str],
    held: Vec<Arc<str>>,
    limit: usize,
) -> (Vec<Arc<str>>, bool) {
    let mut out = Vec::new();
    let mut truncated = false;
    for id in held {
        if id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
            continue;
        }
        let home = mqedge_shared::placement::rendezvous_first(id.as_bytes(), members);
        if home.is_none_or(|h| h == me) {
            continue;
        }
        if out.len() == limit {
            truncated = true;
            break;
        }
        out.push(id);
    }
    (out, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Arc<str>> {
        (0..n).map(|i| Arc::from(format!("dev-{i}"))).collect()
    }

    #[test]
    fn only_sessions_whose_hash_home_is_another_live_node_are_listed() {
        let members = ["n1", "n2", "n3"];
        let (out, truncated) = exceptions("n2", &members, ids(3_000), usize::MAX);
        assert!(!truncated);
        // about two thirds are homed elsewhere
        assert!((1_800..2_200).contains(&out.len()), "{}", out.len());
        for id in &out {
            let home = mqedge_shared::placement::rendezvous_first(id.as_bytes(), &members);
            assert_ne!(home, Some("n2"), "{id}");
        }
        // alone, a node is every session's home
        assert!(exceptions("n2", &["n2"], ids(100), 10).0.is_empty());
    }

    #[test]
    fn the_list_is_bounded_and_says_so() {
        let members = ["n1", "n2"];
        let (all, t) = exceptions("n1", &members, ids(1_000), usize::MAX);
        assert!(!t && all.len() > 10);
        let (some, t) = exceptions("n1", &members, ids(1_000), 10);
        assert!(t);
        assert_eq!(some, all[..10]);
        let (exact, t) = exceptions("n1", &members, ids(1_000), all.len());
        assert!(!t, "exactly at the limit is not truncated");
        assert_eq!(exact.len(), all.len());
    }

    #[test]
    fn long_and_control_character_ids_are_left_to_the_hash() {
        let members = ["n1", "n2"];
        let long = (0..)
            .map(|i| format!("{}{i}", "x".repeat(MAX_ID_LEN)))
            .find(|id| {
                mqedge_shared::placement::rendezvous_first(id.as_bytes(), &members) == Some("n2")
            })
            .unwrap();
        let ctl = (0..)
            .map(|i| format!("a\u{1}{i}"))
            .find(|id| {
                mqedge_shared::placement::rendezvous_first(id.as_bytes(), &members) == Some("n2")
            })
            .unwrap();
        let held = vec![Arc::from(long), Arc::from(ctl)];
        assert!(exceptions("n1", &members, held, 10).0.is_empty());
    }
}

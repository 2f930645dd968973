//! `POST /api/sessions/move` (a rebalance, asked by the LB): `{"to": NODE, "client_ids": [..]}`;
//! each session is pushed to `to` and its client told DISCONNECT `0x9C` (see
//! `cluster::rebalance`). Behind the admin guard like every state-changing request; at most
//! [`MAX_IDS`] client ids a request. See docs/operations.md, "Rebalance".

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::broker::Broker;

/// The most client ids one request may name (the LB sends far fewer: one pacing step's worth).
pub const MAX_IDS: usize = 10_000;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The node the sessions go to (their new hash home).
    to: String,
    /// The clients to move.
    client_ids: Vec<String>,
}

fn refuse(code: StatusCode, why: String) -> Response {
    (code, Json(json!({ "error": why }))).into_response()
}

/// `200` with `{"to", "moved": [..], "failed": [..]}` (failed: no session or connection here,
/// or it could not be sent); `409` when `to` is not a live peer that takes clients, or without
/// `[cluster]`; `400` for more than [`MAX_IDS`] ids.
pub async fn post(State(b): State<Arc<Broker>>, Json(req): Json<MoveRequest>) -> Response {
    if req.client_ids.len() > MAX_IDS {
        let why = format!("at most {MAX_IDS} client_ids per request");
        return refuse(StatusCode::BAD_REQUEST, why);
    }
    let Some(peers) = b.cluster() else {
        let why = "no [cluster]: there is no other node to move sessions to".to_string();
        return refuse(StatusCode::CONFLICT, why);
    };
    let Some(done) = peers.move_sessions(&req.to, req.client_ids) else {
        let why = format!("{:?} is not a live peer that takes clients", req.to);
        return refuse(StatusCode::CONFLICT, why);
    };
    let (moved, failed): (Vec<_>, Vec<_>) = done.into_iter().partition(|(_, ok)| *ok);
    let ids = |v: Vec<(String, bool)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    Json(json!({ "to": req.to, "moved": ids(moved), "failed": ids(failed) })).into_response()
}

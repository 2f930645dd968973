//! `GET /api/drain` (the drain's progress) and `POST /api/drain` (start it), behind the admin
//! guard like every state-changing request. See docs/operations.md, "Draining a node".

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::broker::Broker;

/// The drain's state and progress.
pub async fn get(State(b): State<Arc<Broker>>) -> Json<serde_json::Value> {
    Json(b.drain().json())
}

/// Starts a drain: `202` with its state (`200` when it drains already); `409` without
/// `[cluster]` (there is no node to move the clients to: stop the node instead).
pub async fn post(State(b): State<Arc<Broker>>) -> Response {
    if b.cfg().cluster.is_none() {
        let why = "no [cluster]: there is no other node to move the clients to; stop the node (SIGTERM) instead";
        return (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": why })),
        )
            .into_response();
    }
    let code = if b.start_drain("api") {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (code, Json(b.drain().json())).into_response()
}

//! Broker admin HTTP (axum): `/healthz`, `/metrics`, `GET /api/clients/{client_id}` with the
//! client's real address (from the PROXY header) and its username (the CN when configured).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::broker::Broker;

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(b): State<Arc<Broker>>) -> Response {
    b.metrics.store_commits.set(
        b.store
            .as_ref()
            .map(|s| s.stats().commits as i64)
            .unwrap_or(0),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        b.metrics.encode(),
    )
        .into_response()
}

async fn client(State(b): State<Arc<Broker>>, Path(id): Path<String>) -> Response {
    let Some(s) = b.session(&id) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no client {id:?}") })),
        )
            .into_response();
    };
    let st = s.lock();
    Json(json!({
        "client_id": id,
        "username": st.username,
        "peer_addr": st.peer.map(|p| p.to_string()),
        "node": b.cfg.name,
        "protocol_version": st.version.level(),
        "connected": st.conn.is_some(),
    }))
    .into_response()
}

/// The admin router.
pub fn router(b: Arc<Broker>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/clients/{client_id}", get(client))
        .with_state(b)
}

/// Serves until `stop`.
pub async fn serve(
    b: Arc<Broker>,
    l: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Ok(a) = l.local_addr() {
        tracing::info!(addr = %a, "admin listening");
    }
    if let Err(e) = axum::serve(l, router(b)).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "admin server failed");
    }
}

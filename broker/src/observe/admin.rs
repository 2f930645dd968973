//! Broker admin HTTP (axum): `/healthz`, `/metrics`, `GET /api/clients/{client_id}` with the
//! client's real address (from the PROXY header) and its username (the CN when configured),
//! `GET /api/cluster`, `GET`/`POST /api/drain` (`drain_api`), the LB's placement feed
//! `GET /api/placement` (`placement`), `POST /api/sessions/move` (`move_api`), and the status page `GET /` with its JSON
//! `GET /api/status` (`status`). Every request passes the shared admin guard first.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mqedge_shared::admin;
use serde_json::json;
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::metrics::Reason;

/// 200 `ok`, or 503 with the reason while the store refuses writes (a node that cannot make
/// messages durable should not be sent clients) or the node drains.
async fn healthz(State(b): State<Arc<Broker>>) -> Response {
    if b.drain().is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match b.store().and_then(|s| s.failing()) {
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
        None => "ok\n".into_response(),
    }
}

async fn metrics(State(b): State<Arc<Broker>>) -> Response {
    super::status::refresh_gauges(&b);
    admin::metrics_text(b.metrics().encode())
}

async fn client(State(b): State<Arc<Broker>>, Path(id): Path<String>) -> Response {
    let Some(s) = b.session(&id) else {
        return admin::not_found(format!("no client {id:?}"));
    };
    let st = s.lock();
    Json(json!({
        "client_id": id,
        "username": st.username,
        "peer_addr": st.peer.map(|p| p.to_string()),
        "node": b.cfg().name,
        "protocol_version": st.version.level(),
        "connected": st.conn.is_some(),
    }))
    .into_response()
}

async fn cluster(State(b): State<Arc<Broker>>) -> Json<serde_json::Value> {
    Json(super::status::cluster_json(&b))
}

async fn status_page(State(b): State<Arc<Broker>>) -> axum::response::Html<String> {
    axum::response::Html(super::status::page_html(&b))
}

async fn status(State(b): State<Arc<Broker>>) -> Json<serde_json::Value> {
    Json(super::status::status_json(&b))
}

/// The admin router, behind the shared guard (Host, Origin, `x-mqedge-admin` on
/// state-changing methods, the bearer token of `[node] admin_token_file`).
pub fn router(b: Arc<Broker>) -> Router {
    let access = b.cfg().admin_access.clone();
    let counted = b.clone();
    let routes = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/clients/{client_id}", get(client))
        .route("/api/cluster", get(cluster))
        .route(
            "/api/drain",
            get(super::drain_api::get).post(super::drain_api::post),
        )
        .route("/api/placement", get(super::placement::placement))
        .route(
            "/api/sessions/move",
            axum::routing::post(super::move_api::post),
        )
        .with_state(b);
    admin::guarded(
        routes,
        move || access.clone(),
        move |why: admin::Refusal| {
            counted
                .metrics()
                .admin_refused
                .get_or_create(&Reason {
                    reason: why.as_str().to_string(),
                })
                .inc();
        },
    )
}

/// Serves until `stop`.
pub async fn serve(
    b: Arc<Broker>,
    l: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Ok(addr) = l.local_addr() {
        admin::warn_if_exposed(addr, &b.cfg().admin_access);
    }
    admin::serve(l, router(b), stop).await
}

//! The admin HTTP API on `[lb] admin` (axum): `/healthz`, `/metrics` (Prometheus text),
//! `GET /api/backends`, `POST /api/backends/{name}/drain` (and `/ready` to undo it),
//! `GET /api/reload`, `GET`/`POST /api/rebalance` (`control::rebalance`), the placement feeds' state `GET /api/placement` (and
//! `/api/placement/{client_id}`: where that client goes now), and the status page `GET /` with
//! its JSON `GET /api/status` (`status`).
//! Shapes are DESIGN.md's; bind it to a private address. Every request
//! passes the shared admin guard first.
//!
//! May use `state`, `backend`, `metrics`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mqedge_shared::admin;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::backend::{Backend, State as BState};
use crate::metrics::AdminRefusedLabel;
use crate::state::Lb;

async fn healthz(State(lb): State<Arc<Lb>>) -> Response {
    if lb.accepting() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn metrics(State(lb): State<Arc<Lb>>) -> Response {
    admin::metrics_text(lb.metrics().encode())
}

async fn backends(State(lb): State<Arc<Lb>>) -> Json<Value> {
    let live = lb.live();
    Json(Value::Array(
        live.backends
            .iter()
            .map(|b| super::status::backend_json(b))
            .collect(),
    ))
}

fn find(lb: &Lb, name: &str) -> Option<Arc<Backend>> {
    lb.live().find(name)
}

fn not_found(name: &str) -> Response {
    admin::not_found(format!("no backend named {name:?}"))
}

async fn drain(State(lb): State<Arc<Lb>>, Path(name): Path<String>) -> Response {
    let Some(b) = find(&lb, &name) else {
        return not_found(&name);
    };
    let after = lb.live().lb.drain_timeout;
    if b.start_drain(after) != BState::Draining {
        tracing::info!(backend = %name, drain_timeout = ?after, "backend drained by the admin API");
    }
    Json(super::status::backend_json(&b)).into_response()
}

async fn ready(State(lb): State<Arc<Lb>>, Path(name): Path<String>) -> Response {
    let Some(b) = find(&lb, &name) else {
        return not_found(&name);
    };
    // back through a check before traffic; a pending close of the leftovers is cancelled
    if b.end_drain() {
        tracing::info!(backend = %name, "backend undrained by the admin API; takes traffic after its next check");
    }
    Json(super::status::backend_json(&b)).into_response()
}

async fn status_page(State(lb): State<Arc<Lb>>) -> axum::response::Html<String> {
    axum::response::Html(crate::control::status::page_html(&lb))
}

async fn status(State(lb): State<Arc<Lb>>) -> Json<Value> {
    Json(crate::control::status::status_json(&lb))
}

async fn placement(State(lb): State<Arc<Lb>>) -> Json<Value> {
    Json(crate::control::placement::status_json(&lb))
}

async fn placement_of(State(lb): State<Arc<Lb>>, Path(id): Path<String>) -> Json<Value> {
    Json(crate::control::placement::client_json(&lb, &id))
}

async fn rebalance(State(lb): State<Arc<Lb>>) -> Json<Value> {
    Json(lb.rebalance().json())
}

/// `202` with the progress once started; `409` when one runs or the strategy has no hash home.
async fn start_rebalance(State(lb): State<Arc<Lb>>) -> Response {
    match crate::control::rebalance::start(&lb, "api") {
        Ok(_) => (StatusCode::ACCEPTED, Json(lb.rebalance().json())).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn reload(State(lb): State<Arc<Lb>>) -> Json<Value> {
    let generation = lb.live().generation;
    let last_error = lb.reload_status().last_error();
    Json(json!({ "generation": generation, "last_error": last_error }))
}

/// The admin router, behind the guard of `mqedge_shared::admin` (Host, Origin,
/// `x-mqedge-admin` on POST, the bearer token), which reads `[lb]` from the live config.
pub fn router(lb: Arc<Lb>) -> Router {
    let (a, r) = (lb.clone(), lb.clone());
    let routes = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/backends", get(backends))
        .route("/api/backends/{name}/drain", post(drain))
        .route("/api/backends/{name}/ready", post(ready))
        .route("/api/reload", get(reload))
        .route("/api/rebalance", get(rebalance).post(start_rebalance))
        .route("/api/placement", get(placement))
        .route("/api/placement/{client_id}", get(placement_of))
        .with_state(lb);
    admin::guarded(
        routes,
        move || a.live().lb.admin_access.clone(),
        move |why: admin::Refusal| {
            r.metrics()
                .admin_refused
                .get_or_create(&AdminRefusedLabel {
                    reason: why.as_str(),
                })
                .inc();
        },
    )
}

/// Serves the admin API on a bound listener until `stop` resolves.
pub async fn serve(
    lb: Arc<Lb>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Ok(addr) = listener.local_addr() {
        admin::warn_if_exposed(addr, &lb.live().lb.admin_access);
    }
    admin::serve(listener, router(lb), stop).await
}

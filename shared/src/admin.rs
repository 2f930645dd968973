//! The HTTP skeleton both admin ports use (axum): serving a router on an already-bound listener
//! until a shutdown signal, the `/metrics` response in Prometheus' text format, and the JSON
//! error shape of the APIs. Each role keeps its own routes and handlers.

use std::future::Future;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

/// The Prometheus text exposition format, version 0.0.4: what scrapers expect on `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/metrics` response: an encoded registry with the content type scrapers expect.
pub fn metrics_text(body: String) -> Response {
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response()
}

/// A 404 with `{"error": message}`, the shape every admin API error has.
pub fn not_found(message: String) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response()
}

/// Serves `router` on a bound listener until `stop` resolves; requests in flight then finish.
/// Logs `admin listening` with the address, and `admin server failed` if serving fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "admin listening");
    }
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

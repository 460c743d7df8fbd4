//! Health checks for load balancers.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde_json::{Value, json};

use super::ApiError;
use crate::ctx::Ctx;

/// `GET /up`: 200 while the server and its transport answer; 503 when the transport does not
/// or the server is shutting down.
pub(crate) async fn up(State(ctx): State<Arc<Ctx>>) -> (StatusCode, Json<Value>) {
    if ctx.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ok": false, "error": "shutting down" })),
        );
    }
    match ctx.drivers.transport.health().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "ok": true }))),
        Err(e) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ok": false, "error": e.to_string() })))
        }
    }
}

/// `GET /ready`: 200 while this node wants new traffic; 503 with the reason (`draining`,
/// `memory`) while it does not. Apart from `/up`: a node over its memory threshold still works
/// for the connections it has, and should not be restarted for it, only sent less.
pub(crate) async fn ready(State(ctx): State<Arc<Ctx>>) -> (StatusCode, Json<Value>) {
    match ctx.readiness.check(&ctx.shutdown) {
        None => (StatusCode::OK, Json(json!({ "ready": true }))),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": reason.label() })),
        ),
    }
}

/// `GET /up/{app_id}`: as `/up`, and 404 for an unknown app, 503 for a disabled one.
pub(crate) async fn up_app(
    State(ctx): State<Arc<Ctx>>,
    Path(app_id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let app = super::app(&ctx, &app_id).await?;
    if !app.enabled {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ok": false, "error": "the app is disabled" })),
        ));
    }
    Ok(up(State(ctx)).await)
}

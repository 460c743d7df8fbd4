//! The server: one listener for WebSocket connections and the HTTP API.

use std::{future::Future, sync::Arc};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;

use crate::plugins::Drivers;

/// What the server needs to run, validated.
#[derive(Debug, Clone, Default)]
pub struct Settings {}

struct AppState {
    drivers: Drivers,
}

/// Serve on `listener` until `shutdown` resolves, then stop accepting, release the drivers and
/// return.
///
/// # Errors
/// If the listener fails.
pub async fn run(
    listener: TcpListener,
    _settings: Settings,
    drivers: Drivers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(AppState { drivers });
    let app = Router::new().route("/up", get(up)).with_state(state.clone());
    tracing::info!(addr = %listener.local_addr()?, "Listening.");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    state.drivers.shutdown().await;
    tracing::info!("Stopped.");
    Ok(())
}

async fn up(State(state): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    match state.drivers.transport.health().await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "ok": true }))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ok": false, "error": e.to_string() })),
        ),
    }
}

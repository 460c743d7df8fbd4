//! `POST /apps/{app_id}/users/{user_id}/terminate_connections`.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value, json};

use super::{ApiError, Signed};
use crate::{ctx::Ctx, protocol::codes};

/// Close every connection signed in as the user, with 4009.
pub(crate) async fn terminate(
    State(ctx): State<Arc<Ctx>>,
    Path((_, user_id)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let app = &signed.app;
    let closed = ctx.adapter.terminate_user(&app.id, &user_id, codes::UNAUTHORIZED).await;
    tracing::info!(app_id = %app.id, user_id, closed, "Terminated a user's connections.");
    Ok(Json(json!({})))
}

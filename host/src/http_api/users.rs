//! `POST /apps/{app_id}/users/{user_id}/terminate_connections`.

use std::sync::Arc;

use axum::{
    Json,
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, Method, Uri},
};
use serde_json::{Value, json};

use super::{ApiError, accept};
use crate::{protocol::codes, ctx::Ctx};

/// Close every connection signed in as the user, with 4009.
pub(crate) async fn terminate(
    State(ctx): State<Arc<Ctx>>,
    Path((app_id, user_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (_, authed) =
        accept(&ctx, &app_id, &method, &uri, query.as_deref(), &headers, body).await?;
    let closed = ctx.adapter.terminate_user(&authed.app.id, &user_id, codes::UNAUTHORIZED).await;
    tracing::info!(app_id = %authed.app.id, user_id, closed, "Terminated a user's connections.");
    Ok(Json(json!({})))
}

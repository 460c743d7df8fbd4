//! The Pusher HTTP API: triggers, channel queries, health. Every error is a status with a JSON
//! body `{"error": "...", "code": <status>}`; a client's mistake is never a 500.

pub mod auth;
pub mod channels;
pub mod events;
pub mod health;
pub mod users;

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Request, State, rejection::BytesRejection},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{plugins::RateDecision, server::Ctx};

/// An HTTP API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub message: String,
    /// For 429: the limit, and when it resets (`X-RateLimit-*`, `Retry-After`).
    pub rate: Option<RateDecision>,
}

impl ApiError {
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into(), rate: None }
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self { status: StatusCode::UNAUTHORIZED, message: message.into(), rate: None }
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self { status: StatusCode::FORBIDDEN, message: message.into(), rate: None }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: message.into(), rate: None }
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self { status: StatusCode::PAYLOAD_TOO_LARGE, message: message.into(), rate: None }
    }
}

impl ApiError {
    /// 429 for a refused rate-limit check.
    pub fn rate_limited(what: &str, decision: RateDecision) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("Too many {what}: the limit is {} per second", decision.limit),
            rate: Some(decision),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.status.as_u16() });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(rate) = self.rate {
            let reset_secs = rate.reset_after_ms.div_ceil(1000).max(1);
            let headers = response.headers_mut();
            for (name, value) in [
                ("x-ratelimit-limit", u64::from(rate.limit)),
                ("x-ratelimit-remaining", u64::from(rate.remaining)),
                ("x-ratelimit-reset", reset_secs),
                ("retry-after", reset_secs),
            ] {
                headers.insert(name, value.into());
            }
        }
        response
    }
}

/// The request body, or 413 / 400 as JSON.
pub fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large("The request body is over the size limit")
        }
        _ => ApiError::bad_request(format!("The request body could not be read: {rejection}")),
    })
}

/// Read a write request's body (413 over the limit), count it, and authenticate the request.
pub async fn accept(
    ctx: &Ctx,
    app_id: &str,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    query: Option<&str>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<(Bytes, auth::Authed), ApiError> {
    let bytes = body(bytes)?;
    ctx.metrics.http_bytes_received.inc_by(bytes.len() as u64);
    let authed = auth::authenticate(ctx, app_id, method, uri.path(), query, &bytes)?;
    Ok((bytes, authed))
}

/// A JSON answer, marked `X-Sockhost-Partial: true` when some node did not answer in time (the
/// counts in it are then what the others said).
pub fn counted(body: serde_json::Value, complete: bool) -> Response {
    let mut response = Json(body).into_response();
    if !complete {
        response
            .headers_mut()
            .insert("x-sockhost-partial", axum::http::HeaderValue::from_static("true"));
    }
    response
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("No such endpoint")
}

/// Count every API response by status.
pub async fn count_requests(State(ctx): State<Arc<Ctx>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    ctx.metrics.http_requests.get_or_create(&vec![("status", status)]).inc();
    response
}

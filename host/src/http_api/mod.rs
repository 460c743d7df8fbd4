//! The Pusher HTTP API: triggers, channel queries, health. Every error is a status with a JSON
//! body `{"error": "...", "code": <status>}`; a client's mistake is never a 500.

pub(crate) mod auth;
pub(crate) mod channels;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod idempotency;
pub(crate) mod redirect;
pub(crate) mod signed;
pub(crate) mod users;

pub(crate) use signed::{Signed, SignedQuery};

use std::sync::Arc;

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    apps::{App, Lookup},
    ctx::Ctx,
    edge::Peer,
    plugins::RateDecision,
};

/// An HTTP API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub message: String,
    /// For 429: the limit, and when it resets (`X-RateLimit-*`, `Retry-After`).
    pub rate: Option<RateDecision>,
    /// Seconds for `Retry-After`, when the refusal is for a while (overload).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), rate: None, retry_after: None }
    }

    /// The same, with `Retry-After: secs`.
    #[must_use]
    pub(crate) fn retry_after(self, secs: u64) -> Self {
        Self { retry_after: Some(secs), ..self }
    }

    /// 400.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 413.
    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 408.
    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, message)
    }
}

impl ApiError {
    /// 429 for a refused rate-limit check.
    pub(crate) fn rate_limited(what: &str, decision: RateDecision) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("Too many {what}: the limit is {} per second", decision.limit),
            rate: Some(decision),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.status.as_u16() });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
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

/// A JSON answer, marked `X-Sockhost-Partial: true` when some node did not answer in time (the
/// counts in it are then what the others said).
pub(crate) fn counted(body: serde_json::Value, complete: bool) -> Response {
    let mut response = Json(body).into_response();
    if !complete {
        response
            .headers_mut()
            .insert("x-sockhost-partial", axum::http::HeaderValue::from_static("true"));
    }
    response
}

/// Unknown routes.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("No such endpoint")
}

/// Count every API response by status, and give the framework's own refusals (a path that
/// does not decode, a missing query) the API's JSON shape.
pub(crate) async fn count_requests(
    State(ctx): State<Arc<Ctx>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    ctx.metrics.http_requests.get_or_create(&vec![("status", status.as_u16().to_string())]).inc();
    json_refusal(response).await
}

/// The one rejection handler: a 4xx that is not JSON (the framework's own refusals, a bad
/// query string or path, a wrong method, an unknown route, a body over the limit, are short
/// text or empty) becomes the API's JSON error with the same status, keeping what the refusal
/// told the client besides its body (`Allow` on a 405, `Retry-After`). Clients and the console
/// read every refusal the same way.
pub(crate) async fn json_refusal(mut response: Response) -> Response {
    let status = response.status();
    // The framework's refusals are plain text or have no type; a page (the console's sign-in,
    // a 401 in HTML) and JSON are answers meant as they are.
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !status.is_client_error() || !plain {
        return response;
    }
    let body = std::mem::take(response.body_mut());
    // The framework's refusals are short text; anything longer is cut, not buffered.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("Bad request").to_string()
    } else {
        message
    };
    let mut rewritten = ApiError::new(status, message).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = response.headers().get(&name) {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

/// Run a request inside a span naming it, so its log lines say which request they are about.
pub(crate) async fn in_span(request: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
    );
    next.run(request).instrument(span).await
}

/// Refuse a request on a connection over the edge's limits with 503 (WebSocket upgrades are
/// refused on the socket itself, and health checks still answer).
pub(crate) async fn refuse_over_limit(request: Request, next: Next) -> Response {
    let over = request.extensions().get::<Peer>().and_then(|peer| peer.over_limit);
    let path = request.uri().path();
    match over {
        Some(over)
            if !path.starts_with("/up") && path != "/ready" && !path.starts_with("/app/") =>
        {
            let mut response = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, over.message())
                .retry_after(1)
                .into_response();
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        _ => next.run(request).await,
    }
}

/// The app with this id: 404 when there is none, 503 when the app manager did not answer.
pub(crate) async fn app(ctx: &Ctx, app_id: &str) -> Result<Arc<App>, ApiError> {
    match ctx.apps.by_id(app_id).await {
        Lookup::Found(app) => Ok(app),
        Lookup::Unknown => Err(ApiError::not_found(format!("App {app_id} does not exist"))),
        Lookup::Unavailable => {
            Err(ApiError::unavailable("The app manager did not answer; retry later").retry_after(1))
        }
        Lookup::Refused => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests for apps that do not exist from this address; retry later",
        )
        .retry_after(10)),
    }
}

/// Run a request with its client address known to app lookups (their per-address budget).
pub(crate) async fn with_client(request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    match client {
        Some(ip) => crate::apps::CLIENT.scope(ip, next.run(request)).await,
        None => next.run(request).await,
    }
}

//! The console's pages: one HTML page and its script and style, built into the binary, shown
//! only to a signed-in browser; anyone else gets the sign-in form (401) and nothing more.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use subtle::ConstantTimeEq as _;

use super::session;
use crate::{ctx::Ctx, metrics::Metrics};

const INDEX: &str = include_str!("../../console/index.html");
const SIGN_IN: &str = include_str!("../../console/sign-in.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

/// Everything the console loads comes from this listener; nothing inline runs, and no other
/// site may frame it.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn token(ctx: &Ctx) -> &str {
    ctx.settings.admin.as_ref().map_or("", |a| a.token.as_str())
}

fn page(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// The sign-in form with `message`, answered 401.
fn sign_in(message: &str) -> Response {
    let body = SIGN_IN.replace("<!--message-->", message);
    page(StatusCode::UNAUTHORIZED, "text/html; charset=utf-8", body)
}

/// `GET /`: to the console.
pub(crate) async fn root() -> Redirect {
    Redirect::to("/console")
}

/// `GET /console`: the console for a signed-in browser, else the sign-in form.
pub(crate) async fn console(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if !session::signed_in(token(&ctx), &headers) {
        return sign_in("");
    }
    page(StatusCode::OK, "text/html; charset=utf-8", INDEX.to_string())
}

/// `POST /console/sign-in` (a form with `token`): the cookie and on to the console, or the
/// form again.
pub(crate) async fn sign_in_with(State(ctx): State<Arc<Ctx>>, body: Bytes) -> Response {
    let given = form_urlencoded::parse(&body)
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let token = token(&ctx);
    if token.is_empty() || !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Metrics::count(&ctx.metrics.admin_requests, "outcome", "unauthorized");
        return sign_in(r#"<p class="refused" role="alert">That is not the admin token.</p>"#);
    }
    Metrics::count(&ctx.metrics.admin_requests, "outcome", "ok");
    // 303: the browser follows with a GET.
    let mut response = Redirect::to("/console").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::issue(token)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `POST /console/sign-out` from the console's own script (its header): the cookie removed,
/// and every session this node issued so far ended, so a copy of the cookie stops working too.
/// Without the header (a form on another site) it is refused with 403: no other site may sign
/// a user out. A request with the header but no valid cookie only removes its cookie, so
/// nobody without a session can end everyone's.
pub(crate) async fn sign_out(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if !headers.contains_key(session::CONSOLE_HEADER) {
        let body = serde_json::json!({ "error": "Sign out from the console itself" });
        return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
    }
    if session::signed_in(token(&ctx), &headers) {
        session::end_sessions();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::revoke()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `GET /console/console.js`.
pub(crate) async fn script() -> Response {
    page(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT.to_string())
}

/// `GET /console/console.css`.
pub(crate) async fn style() -> Response {
    page(StatusCode::OK, "text/css; charset=utf-8", STYLE.to_string())
}

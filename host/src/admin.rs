//! The admin API, on its own listener: apps listed, read, created, changed, disabled, deleted,
//! and secrets rotated with an overlap window. Off unless `admin.enabled`; every request
//! carries `Authorization: Bearer <admin.token>`, compared in constant time. Its routes are
//! described in `docs/admin-api.json` (served at `/openapi.json`).
//!
//! Writes go to the app manager's database; the change then reaches this node's cache at once
//! and every other node's over the cluster bus (`AppChanged`), where a disabled or deleted
//! app's connections close with 4003.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, Request, State},
    http::{Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq as _;

use crate::{
    apps::Lookup,
    cluster_events,
    config::AppConfig,
    console::{self, session},
    metrics::Metrics,
    plugins::{AppManager, ErrorCode},
    server::Ctx,
};

/// The OpenAPI description of these routes.
pub(crate) const OPENAPI: &str = include_str!("../../docs/admin-api.json");
/// Request bodies larger than this are refused unread.
const MAX_BODY: usize = 64 * 1024;
/// Apps one list request answers at most.
const MAX_PAGE: u32 = 1000;
/// The longest overlap a rotation may ask for.
const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Fields the admin API sets itself, never from a request body.
const RESERVED: [&str; 4] =
    ["previous_secret", "previous_secret_expires_at", "created_at", "updated_at"];

/// An admin API error: a status and a JSON `{"error": ...}`.
#[derive(Debug)]
struct AdminError(StatusCode, String);

impl AdminError {
    fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::plugins::DriverError> for AdminError {
    fn from(error: crate::plugins::DriverError) -> Self {
        let status = match error.code() {
            Some(ErrorCode::REJECTED) => StatusCode::CONFLICT,
            Some(_) | None => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self(status, error.to_string())
    }
}

type Answer = Result<Response, AdminError>;

/// The admin router, every route behind the token.
pub(crate) fn router(ctx: Arc<Ctx>) -> Router {
    let signed = Router::new()
        .route("/apps", get(list).post(create))
        .route("/apps/{id}", get(show).patch(update).delete(remove))
        .route("/apps/{id}/disable", post(disable))
        .route("/apps/{id}/enable", post(enable))
        .route("/apps/{id}/rotate-secret", post(rotate))
        .route("/openapi.json", get(openapi));
    console::signed(signed)
        .layer(middleware::from_fn_with_state(ctx.clone(), authorize))
        .merge(console::public())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx)
}

/// Whether the request carries the token, or comes from a signed-in console (its cookie, and
/// for anything but a read its own header, so another site's form cannot use the cookie).
fn authorized(token: &str, request: &Request) -> bool {
    // Never an empty token: the configuration refuses to enable the API without one.
    if token.is_empty() {
        return false;
    }
    let headers = request.headers();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = given {
        return bool::from(given.as_bytes().ct_eq(token.as_bytes()));
    }
    let read = request.method() == Method::GET || request.method() == Method::HEAD;
    session::signed_in(token, headers) && (read || headers.contains_key(session::CONSOLE_HEADER))
}

/// Refuse a request without the token (401), and count every request by outcome.
async fn authorize(State(ctx): State<Arc<Ctx>>, request: Request, next: Next) -> Response {
    let token = ctx.settings.admin.as_ref().map_or("", |a| a.token.as_str());
    if !authorized(token, &request) {
        Metrics::count(&ctx.metrics.admin_requests, "outcome", "unauthorized");
        return AdminError(StatusCode::UNAUTHORIZED, "A valid admin token is required".into())
            .into_response();
    }
    let response = next.run(request).await;
    let outcome = match response.status() {
        s if s.is_success() => "ok",
        s if s.is_client_error() => "refused",
        _ => "failed",
    };
    Metrics::count(&ctx.metrics.admin_requests, "outcome", outcome);
    response
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The app manager, or 409 when apps come from the configuration file.
fn manager(ctx: &Ctx) -> Result<&Arc<AppManager>, AdminError> {
    ctx.apps.manager().ok_or_else(|| {
        AdminError(
            StatusCode::CONFLICT,
            "Apps come from the configuration file (app_manager.driver = memory); choose a database app manager to change them here".into(),
        )
    })
}

/// A record as the app manager answered it: bounded, a JSON object (else 502).
fn parse_stored(record: &str) -> Result<Map<String, Value>, AdminError> {
    if record.len() > MAX_BODY {
        return Err(AdminError(StatusCode::BAD_GATEWAY, "A stored app is too large".into()));
    }
    match serde_json::from_str(record) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(AdminError(StatusCode::BAD_GATEWAY, "A stored app is not a JSON object".into())),
    }
}

/// A record as answered to the operator: the app's fields, without the previous secret.
fn shown(mut record: Map<String, Value>) -> Value {
    record.remove("previous_secret");
    Value::Object(record)
}

/// The stored record of an app, or 404.
async fn stored(ctx: &Ctx, id: &str) -> Result<Map<String, Value>, AdminError> {
    let not_found = || AdminError(StatusCode::NOT_FOUND, format!("App {id} does not exist"));
    let record = manager(ctx)?.find_by_id(id).await?.ok_or_else(not_found)?;
    let record = parse_stored(&record)?;
    // A database that compares ids loosely (MySQL's collations ignore case) answers another
    // id: that is not the app asked for, and its changes would be announced under the wrong id.
    if record.get("id").and_then(Value::as_str) != Some(id) {
        return Err(not_found());
    }
    Ok(record)
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<u32>,
}

async fn list(State(ctx): State<Arc<Ctx>>, Query(page): Query<Page>) -> Answer {
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let after = page.after.unwrap_or_default();
    let apps: Vec<Value> = match ctx.apps.manager() {
        Some(manager) => {
            let records = manager.list(&after, limit).await?;
            let mut apps = Vec::with_capacity(records.len());
            for record in records.iter().take(limit as usize) {
                let mut app = parse_stored(record)?;
                app.remove("secret");
                apps.push(shown(app));
            }
            apps
        }
        None => {
            let mut ids = ctx.apps.ids();
            ids.sort();
            ids.into_iter()
                .filter(|id| *id > after)
                .take(limit as usize)
                .filter_map(|id| ctx.apps.known(&id))
                .map(|app| {
                    json!({
                        "id": app.id, "key": app.key, "enabled": app.enabled,
                        "max_connections": app.max_connections,
                        "enable_client_messages": app.enable_client_messages,
                    })
                })
                .collect()
        }
    };
    let next = (apps.len() == limit as usize).then(|| apps.last().map(|a| a["id"].clone()));
    Ok(Json(json!({ "apps": apps, "next_after": next.flatten() })).into_response())
}

async fn show(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Answer {
    if ctx.apps.manager().is_none() {
        return match ctx.apps.by_id(&id).await {
            Lookup::Found(app) => Ok(Json(json!({
                "id": app.id, "key": app.key, "secret": app.secret, "enabled": app.enabled,
                "max_connections": app.max_connections,
                "enable_client_messages": app.enable_client_messages,
            }))
            .into_response()),
            _ => Err(AdminError(StatusCode::NOT_FOUND, format!("App {id} does not exist"))),
        };
    }
    Ok(Json(shown(stored(&ctx, &id).await?)).into_response())
}

/// A request body: a JSON object of app fields the configuration file knows, none reserved.
fn fields(body: &Bytes) -> Result<Map<String, Value>, AdminError> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Err(AdminError::bad("The body must be a JSON object of app fields"));
    };
    if let Some(reserved) = fields.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(AdminError::bad(format!(
            "`{reserved}` is set by the server, not in a request"
        )));
    }
    // The reference's tables keep every number in a 32-bit INTEGER column: a larger one is the
    // request's mistake (400), not a database refusal (409).
    let too_big = |v: &Value| v.as_u64().is_some_and(|n| n > i32::MAX as u64);
    if let Some((field, _)) = fields.iter().find(|(_, v)| too_big(v)) {
        return Err(AdminError::bad(format!("`{field}` is at most {}", i32::MAX)));
    }
    // Checked against the configuration file's own app type, so an unknown or mistyped field
    // is a 400 naming it rather than a column silently not written.
    let mut probe = fields.clone();
    for field in ["id", "key", "secret"] {
        probe.entry(field).or_insert_with(|| Value::String("x".into()));
    }
    serde_json::from_value::<AppConfig>(Value::Object(probe))
        .map_err(|e| AdminError::bad(format!("Invalid app: {e}")))?;
    Ok(fields)
}

/// A random credential of `bytes` random bytes, as hex.
fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// Check a whole record as a node will read it (400 with the problem), create or update it,
/// and make the change known here and on every node.
async fn save(ctx: &Arc<Ctx>, id: &str, record: Map<String, Value>, created: bool) -> Answer {
    let text = serde_json::to_string(&record).map_err(|e| AdminError::bad(e.to_string()))?;
    ctx.apps.parse_record(&text).map_err(|e| AdminError::bad(format!("Invalid app: {e}")))?;
    let manager = manager(ctx)?;
    if created {
        manager.create(&text).await?;
    } else if !manager.update(&text).await? {
        return Err(AdminError(StatusCode::NOT_FOUND, format!("App {id} does not exist")));
    }
    announce(ctx, id).await;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(shown(record))).into_response())
}

/// This node looks the app up again (closing its connections if it is disabled or gone), and
/// every other node is told to.
async fn announce(ctx: &Arc<Ctx>, id: &str) {
    cluster_events::app_changed(ctx, id).await;
    ctx.adapter.cluster().announce_app_changed(id);
}

async fn create(State(ctx): State<Arc<Ctx>>, body: Bytes) -> Answer {
    let mut record = fields(&body)?;
    manager(&ctx)?;
    let id = match record.get("id") {
        Some(Value::String(id)) => id.clone(),
        _ => rand::random::<u32>().to_string(),
    };
    record.insert("id".into(), Value::String(id.clone()));
    record.entry("key").or_insert_with(|| Value::String(random_hex(10)));
    record.entry("secret").or_insert_with(|| Value::String(random_hex(20)));
    // The reference's table has these NOT NULL without a default: always write them.
    let defaults = &ctx.settings.app_records.defaults;
    record.entry("enabled").or_insert(Value::Bool(true));
    record.entry("max_connections").or_insert(json!(0));
    record.entry("enable_client_messages").or_insert(Value::Bool(false));
    record
        .entry("max_client_events_per_second")
        .or_insert(json!(defaults.max_client_events_per_second));
    save(&ctx, &id, record, true).await
}

async fn update(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>, body: Bytes) -> Answer {
    let changes = fields(&body)?;
    if changes.get("id").is_some_and(|given| given.as_str() != Some(id.as_str())) {
        return Err(AdminError::bad("An app's id cannot change"));
    }
    let mut record = stored(&ctx, &id).await?;
    record.extend(changes);
    save(&ctx, &id, record, false).await
}

async fn set_enabled(ctx: &Arc<Ctx>, id: &str, enabled: bool) -> Answer {
    let mut record = stored(ctx, id).await?;
    record.insert("enabled".into(), Value::Bool(enabled));
    save(ctx, id, record, false).await
}

async fn disable(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Answer {
    set_enabled(&ctx, &id, false).await
}

async fn enable(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Answer {
    set_enabled(&ctx, &id, true).await
}

async fn remove(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Answer {
    stored(&ctx, &id).await?;
    if !manager(&ctx)?.delete(&id).await? {
        return Err(AdminError(StatusCode::NOT_FOUND, format!("App {id} does not exist")));
    }
    announce(&ctx, &id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotation {
    /// Seconds the old secret keeps signing. Default: 3600.
    overlap_seconds: Option<u64>,
}

/// A new secret; the old one keeps signing API requests and channel auth for the overlap, so
/// a tenant can roll its servers over without a failed request.
async fn rotate(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>, body: Bytes) -> Answer {
    let rotation: Rotation = if body.is_empty() {
        Rotation::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| AdminError::bad(format!("Invalid body: {e}")))?
    };
    let overlap = Duration::from_secs(rotation.overlap_seconds.unwrap_or(3600));
    if overlap > MAX_OVERLAP {
        return Err(AdminError::bad(format!(
            "overlap_seconds is at most {}",
            MAX_OVERLAP.as_secs()
        )));
    }
    let mut record = stored(&ctx, &id).await?;
    let old = record.get("secret").cloned().unwrap_or(Value::Null);
    let until = SystemTime::now() + overlap;
    let until_ms = until.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let until_ms = u64::try_from(until_ms).unwrap_or(u64::MAX);
    record.insert("secret".into(), Value::String(random_hex(20)));
    record.insert("previous_secret".into(), old);
    record.insert("previous_secret_expires_at".into(), json!(until_ms));
    save(&ctx, &id, record, false).await
}

//! The admin API, on its own listener: apps listed, read, created, changed, disabled, deleted,
//! and secrets rotated with an overlap window. Off unless `admin.enabled`; every request
//! carries `Authorization: Bearer <admin.token>`, compared in constant time. Its routes are
//! described in `docs/admin-api.json` (served at `/openapi.json`).
//!
//! Writes go to the app manager's database; the change then reaches this node's cache at once
//! and every other node's over the cluster bus (`AppChanged`), where a disabled or deleted
//! app's connections close with 4003.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq as _;

use crate::{
    address_counts::AddressCounts,
    apps::{Lookup, is_safe_name},
    cluster_events,
    config::AppConfig,
    console::{self, session},
    ctx::Ctx,
    metrics::Metrics,
    plugins::{AppManager, Conditional, ErrorCode},
    telemetry::LogLimiter,
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
const RESERVED: [&str; 5] =
    ["previous_secret", "previous_secret_expires_at", "created_at", "updated_at", "version"];
/// Times a write is read and applied again when another write to the same app came first;
/// then the request is answered 409 with `retry`.
const WRITE_ATTEMPTS: usize = 8;
/// The shortest secret the API sets: a short one is guessed from a few signed requests.
const MIN_SECRET: usize = 16;
/// Upper bounds of per-app numbers, far above any real use and far below what would cost a
/// node its memory (a conflation key is a delta stream kept per channel).
const FIELD_BOUNDS: [(&str, u64); 8] = [
    ("max_conflation_keys", 10_000),
    ("max_event_payload_in_kb", 10 * 1024),
    ("max_presence_member_size_in_kb", 1024),
    ("max_presence_members_per_channel", 1_000_000),
    ("max_channel_name_length", 1024),
    ("max_event_name_length", 1024),
    ("max_event_batch_size", 10_000),
    ("max_event_channels_at_once", 10_000),
];
/// Token failures one client address may make within [`TOKEN_WINDOW`]; past them its requests
/// are refused with 429 before the token is even compared, until the window ends.
const TOKEN_FAILURES: u32 = 20;
/// The window token failures are counted in.
const TOKEN_WINDOW: Duration = Duration::from_secs(10);

/// An admin API error: a status and a JSON `{"error": ...}` (with `"retry": true` when the
/// same request may succeed if sent again).
#[derive(Debug)]
struct AdminError(StatusCode, String);

impl AdminError {
    fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }

    fn not_found(id: &str) -> Self {
        Self(StatusCode::NOT_FOUND, format!("App {id} does not exist"))
    }
}

/// The message of the 409 that asks for a retry; its body also says `"retry": true`.
const RETRY: &str =
    "The app was changed by other requests while this one was applied; send it again";

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        if self.0 == StatusCode::CONFLICT && self.1 == RETRY {
            return (self.0, Json(json!({ "error": self.1, "retry": true }))).into_response();
        }
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
    let guard = Arc::new(TokenGuard::default());
    console::signed(signed)
        .layer(middleware::from_fn_with_state((ctx.clone(), guard), authorize))
        .merge(console::public())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(json_errors))
        .with_state(ctx)
}

/// Every refusal as the API's JSON error: the framework's own (413 over the body limit, a bad
/// query string or path, a wrong method, an unknown route) are short text or empty, which the
/// console's client and scripts cannot read.
async fn json_errors(request: Request, next: Next) -> Response {
    crate::http_api::json_refusal(next.run(request).await).await
}

/// Token failures by client address, so guessing the token costs the guesser a wait.
#[derive(Debug)]
struct TokenGuard {
    failures: AddressCounts,
    log: LogLimiter,
}

impl Default for TokenGuard {
    fn default() -> Self {
        Self { failures: AddressCounts::new(TOKEN_WINDOW), log: LogLimiter::default() }
    }
}

impl TokenGuard {
    /// How long the address must wait before it is heard again; `None` when it may try.
    fn blocked(&self, address: IpAddr) -> Option<Duration> {
        let (count, left) = self.failures.current(address);
        (count >= TOKEN_FAILURES && !left.is_zero()).then_some(left)
    }

    /// Count a failure of `address`; its failures in the current window.
    fn failed(&self, address: IpAddr) -> u32 {
        self.failures.add(address)
    }
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

/// Refuse a request without the token (401; 429 for an address that failed too often
/// lately), and count every request by outcome.
async fn authorize(
    State((ctx, guard)): State<(Arc<Ctx>, Arc<TokenGuard>)>,
    request: Request,
    next: Next,
) -> Response {
    // Without the peer's address (a listener that does not record it) every client shares
    // one budget: still a bound on guessing, at the price of a shared wait.
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(peer)| peer.ip());
    if let Some(wait) = guard.blocked(address) {
        Metrics::count(&ctx.metrics.admin_requests, "outcome", "throttled");
        let mut response = AdminError(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests without a valid admin token; wait before trying again".into(),
        )
        .into_response();
        let seconds = wait.as_secs() + 1;
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    let token = ctx.settings.admin.as_ref().map_or("", |a| a.token.as_str());
    if !authorized(token, &request) {
        Metrics::count(&ctx.metrics.admin_requests, "outcome", "unauthorized");
        let failures = guard.failed(address);
        if guard.log.allow() {
            tracing::warn!(
                %address,
                failures,
                "An admin request without a valid token was refused."
            );
        }
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
    let not_found = || AdminError::not_found(id);
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
            _ => Err(AdminError::not_found(&id)),
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
    if let Some((field, bound)) = FIELD_BOUNDS.iter().find(|(f, b)| over(&fields, f, *b)) {
        return Err(AdminError::bad(format!("`{field}` is at most {bound}")));
    }
    for field in ["id", "key"] {
        if let Some(value) = fields.get(field)
            && !value.as_str().is_some_and(is_safe_name)
        {
            return Err(AdminError::bad(format!(
                "`{field}` must be 1 to 255 letters, digits, `.`, `_` or `-`"
            )));
        }
    }
    if let Some(secret) = fields.get("secret")
        && !secret.as_str().is_some_and(|s| (MIN_SECRET..=255).contains(&s.len()))
    {
        return Err(AdminError::bad(format!("`secret` must be {MIN_SECRET} to 255 bytes")));
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

/// Whether `field` appears anywhere in `value` (a per-channel table nests it) above `bound`.
fn over(fields: &Map<String, Value>, field: &str, bound: u64) -> bool {
    fn walk(value: &Value, field: &str, bound: u64, depth: usize) -> bool {
        match value {
            // The body is bounded, and so is how deep it is searched.
            _ if depth > 16 => false,
            Value::Object(map) => map.iter().any(|(k, v)| {
                (k == field && v.as_f64().is_some_and(|n| n > bound as f64))
                    || walk(v, field, bound, depth + 1)
            }),
            Value::Array(list) => list.iter().any(|v| walk(v, field, bound, depth + 1)),
            _ => false,
        }
    }
    walk(&Value::Object(fields.clone()), field, bound, 0)
}

/// A random credential of `bytes` random bytes, as hex.
fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// Check a whole new record as a node will read it (400 with the problem), add it, and make it
/// known here and on every node.
async fn save(ctx: &Arc<Ctx>, id: &str, record: Map<String, Value>) -> Answer {
    let text = serde_json::to_string(&record).map_err(|e| AdminError::bad(e.to_string()))?;
    ctx.apps.parse_record(&text).map_err(|e| AdminError::bad(format!("Invalid app: {e}")))?;
    manager(ctx)?.create(&text).await?;
    announce(ctx, id).await;
    Ok((StatusCode::CREATED, Json(shown(record))).into_response())
}

/// Every other node is told to look the app up again, then this node does (closing its
/// connections if it is disabled or gone). The telling comes first and the look-up runs on a
/// task of its own: the look-up retries for seconds while the database is down, and an admin
/// client that gives up meanwhile must not leave the write unannounced (the other nodes would
/// keep a disabled or deleted app's sockets open, and refuse a rotated secret, until their
/// cache expired).
async fn announce(ctx: &Arc<Ctx>, id: &str) {
    ctx.adapter.cluster().announce_app_changed(id);
    let (ctx, id) = (ctx.clone(), id.to_string());
    let looked_up =
        tokio::spawn(
            async move { cluster_events::app_changed(&ctx.apps, &ctx.adapter, &id).await },
        );
    if let Err(error) = looked_up.await {
        tracing::warn!(%error, "An app's look-up after an admin write ended early.");
    }
}

async fn create(State(ctx): State<Arc<Ctx>>, body: Bytes) -> Answer {
    let mut record = fields(&body)?;
    manager(&ctx)?;
    // `fields` checked a given id; a made-up one is digits.
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
    save(&ctx, &id, record).await
}

async fn update(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>, body: Bytes) -> Answer {
    let mut changes = fields(&body)?;
    if changes.get("id").is_some_and(|given| given.as_str() != Some(id.as_str())) {
        return Err(AdminError::bad("An app's id cannot change"));
    }
    changes.remove("id");
    write(&ctx, &id, |_| Ok(changes.clone())).await
}

/// Apply the fields `change` makes of the stored record, as a write conditional on the record
/// being still as read: when another write came first, read and apply again (a few times, then
/// 409 with `retry`), so concurrent requests each take effect or are refused, and none undoes
/// another. Only the changed fields are written.
async fn write(
    ctx: &Arc<Ctx>,
    id: &str,
    change: impl Fn(&Map<String, Value>) -> Result<Map<String, Value>, AdminError>,
) -> Answer {
    let manager = manager(ctx)?;
    for _ in 0..WRITE_ATTEMPTS {
        let stored = stored(ctx, id).await?;
        let changes = change(&stored)?;
        let mut record = stored.clone();
        record.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
        // The whole record as a node will read it: 400 with the problem.
        let whole = serde_json::to_string(&record).map_err(|e| AdminError::bad(e.to_string()))?;
        ctx.apps.parse_record(&whole).map_err(|e| AdminError::bad(format!("Invalid app: {e}")))?;
        let version = stored.get("version").and_then(Value::as_u64).unwrap_or(0);
        // The request's changes, on the condition that nothing changed the record since it was
        // read; the whole record goes with them for a driver built before conditional writes
        // (which replaces it whole, unconditionally), so that it never loses a field.
        let changed: Vec<String> = changes.keys().cloned().collect();
        match manager.update_if(&whole, &changed, version).await? {
            Conditional::Updated => {
                record.insert("version".into(), json!(version + 1));
            }
            Conditional::NotFound => return Err(AdminError::not_found(id)),
            Conditional::Conflict => continue,
        }
        announce(ctx, id).await;
        return Ok(Json(shown(record)).into_response());
    }
    Err(AdminError(StatusCode::CONFLICT, RETRY.into()))
}

async fn set_enabled(ctx: &Arc<Ctx>, id: &str, enabled: bool) -> Answer {
    write(ctx, id, |_| Ok(Map::from_iter([("enabled".to_string(), Value::Bool(enabled))]))).await
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
        return Err(AdminError::not_found(&id));
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
    let until = SystemTime::now() + overlap;
    let until_ms = until.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let until_ms = u64::try_from(until_ms).unwrap_or(u64::MAX);
    // The secret replaced is the one read in the same attempt: a rotation that loses a race
    // reads the winner's secret and keeps that one signing for the overlap.
    write(&ctx, &id, |stored| {
        let old = stored.get("secret").cloned().unwrap_or(Value::Null);
        Ok(Map::from_iter([
            ("secret".to_string(), Value::String(random_hex(20))),
            ("previous_secret".to_string(), old),
            ("previous_secret_expires_at".to_string(), json!(until_ms)),
        ]))
    })
    .await
}

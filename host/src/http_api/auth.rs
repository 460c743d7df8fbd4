//! Authenticating HTTP API requests with the Pusher signature scheme.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::http::Method;

use super::ApiError;
use crate::{apps::App, ctx::Ctx, protocol::signature};

/// How far `auth_timestamp` may be from the server's clock, in seconds.
pub(crate) const TIMESTAMP_WINDOW_SECS: u64 = 600;

/// A request that passed authentication: its app and its decoded query parameters.
#[derive(Debug)]
pub(crate) struct Authed {
    /// The app named in the path, whose key signed the request.
    pub app: Arc<App>,
    /// The query parameters (auth ones included).
    pub query: HashMap<String, String>,
}

/// A request whose query passed every check that needs no body: the app exists and is enabled,
/// the key is the app's, the timestamp is fresh and the signature is right (it covers the
/// query, `body_md5` included). Made before the body is read, so an unauthenticated client
/// never makes the server hold its body; only `body_md5` is left to check against the body.
#[derive(Debug)]
pub(crate) struct Prechecked {
    app: Arc<App>,
    query: HashMap<String, String>,
}

/// The checks of a request that need no body.
pub(crate) async fn precheck(
    ctx: &Ctx,
    app_id: &str,
    method: &Method,
    path: &str,
    raw_query: Option<&str>,
) -> Result<Prechecked, ApiError> {
    let app = super::app(ctx, app_id).await?;
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()).into_owned().collect();
    let query: HashMap<String, String> = pairs.iter().cloned().collect();
    let param = |name: &str| query.get(name).map(String::as_str);
    let require = |name: &'static str| {
        param(name).ok_or_else(|| ApiError::unauthorized(format!("Missing {name}")))
    };

    let key = require("auth_key")?;
    let timestamp = require("auth_timestamp")?;
    let given = require("auth_signature")?;
    require("auth_version")?;
    if key != app.key {
        return Err(ApiError::unauthorized("auth_key does not belong to this app"));
    }
    if !app.enabled {
        return Err(ApiError::forbidden("The app is disabled"));
    }
    let timestamp: u64 =
        timestamp.parse().map_err(|_| ApiError::unauthorized("auth_timestamp is not a number"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now.abs_diff(timestamp) > TIMESTAMP_WINDOW_SECS {
        return Err(ApiError::unauthorized(format!(
            "auth_timestamp is more than {TIMESTAMP_WINDOW_SECS} seconds from the server's time ({now}); check the clock"
        )));
    }
    let message = signature::api_message(
        method.as_str(),
        path,
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if !app.verifies(|secret| signature::verify(secret, &message, given)) {
        return Err(ApiError::unauthorized("Invalid signature"));
    }
    Ok(Prechecked { app, query })
}

/// The check that needs the body: `body_md5` matches a non-empty body.
pub(crate) fn verify(pre: Prechecked, body: &[u8]) -> Result<Authed, ApiError> {
    let Prechecked { app, query } = pre;
    match query.get("body_md5") {
        Some(md5) if *md5 != signature::body_md5(body) => {
            return Err(ApiError::unauthorized("body_md5 does not match the body"));
        }
        None if !body.is_empty() => return Err(ApiError::unauthorized("Missing body_md5")),
        _ => {}
    }
    Ok(Authed { app, query })
}

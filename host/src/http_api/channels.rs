//! `GET /apps/{app_id}/channels`, `.../channels/{name}` and `.../channels/{name}/users`.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    response::Response,
};
use serde_json::{Map, Value, json};

use super::{ApiError, SignedQuery, counted};
use crate::{
    ctx::Ctx,
    protocol::channel::{self, ChannelKind},
};

/// Apply the app's read limit to an authenticated read, and check the channel name if there is
/// one.
pub(super) async fn read_request(
    ctx: &Ctx,
    authed: SignedQuery,
    channel_name: Option<&str>,
) -> Result<SignedQuery, ApiError> {
    limit(ctx, &authed.app).await?;
    if let Some(name) = channel_name {
        channel::validate(name, authed.app.limits.max_channel_name_length)
            .map_err(|e| ApiError::bad_request(format!("Channel {name:?}: {e}")))?;
    }
    Ok(authed)
}

/// The app's read-request limit.
async fn limit(ctx: &Ctx, app: &crate::apps::App) -> Result<(), ApiError> {
    match ctx
        .rate_limit(&format!("read-requests:{}", app.id), 1, app.max_read_requests_per_second, 1000)
        .await
    {
        None => Ok(()),
        Some(decision) => Err(ApiError::rate_limited("read requests", decision)),
    }
}

fn attributes(query: &std::collections::HashMap<String, String>) -> Vec<String> {
    query
        .get("info")
        .map(|info| {
            info.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
        })
        .unwrap_or_default()
}

/// Occupied channels, optionally filtered by prefix; `info=user_count` for presence prefixes.
pub(crate) async fn list(
    State(ctx): State<Arc<Ctx>>,
    signed: SignedQuery,
) -> Result<Response, ApiError> {
    let authed = read_request(&ctx, signed, None).await?;
    let prefix = authed.query.get("filter_by_prefix").cloned().unwrap_or_default();
    let info = attributes(&authed.query);
    for attribute in &info {
        match attribute.as_str() {
            "user_count" if !prefix.starts_with("presence-") => {
                return Err(ApiError::bad_request(
                    "info=user_count needs filter_by_prefix=presence-",
                ));
            }
            "user_count" | "subscription_count" => {}
            other => {
                return Err(ApiError::bad_request(format!("Unknown info attribute {other:?}")));
            }
        }
    }
    let mut channels = Map::new();
    let mut complete = true;
    for (name, counts) in ctx.adapter.channels(&authed.app.id, &prefix).await {
        complete &= counts.complete;
        let mut entry = Map::new();
        if info.iter().any(|a| a == "user_count") {
            entry.insert("user_count".into(), counts.user_count.into());
        }
        if info.iter().any(|a| a == "subscription_count") {
            entry.insert("subscription_count".into(), counts.subscription_count.into());
        }
        channels.insert(name, Value::Object(entry));
    }
    Ok(counted(json!({ "channels": channels }), complete))
}

/// One channel: whether it is occupied, and the counts asked for.
pub(crate) async fn show(
    State(ctx): State<Arc<Ctx>>,
    Path((_, name)): Path<(String, String)>,
    signed: SignedQuery,
) -> Result<Response, ApiError> {
    let authed = read_request(&ctx, signed, Some(&name)).await?;
    let presence = ChannelKind::of(&name) == ChannelKind::Presence;
    let info = attributes(&authed.query);
    let counts = ctx.adapter.channel_info(&authed.app.id, &name).await;
    let mut body = Map::new();
    body.insert("occupied".into(), (counts.subscription_count > 0).into());
    for attribute in &info {
        match attribute.as_str() {
            "user_count" if presence => {
                body.insert("user_count".into(), counts.user_count.into());
            }
            "user_count" => {
                return Err(ApiError::bad_request("user_count is only for presence channels"));
            }
            "subscription_count" => {
                body.insert("subscription_count".into(), counts.subscription_count.into());
            }
            // Whether the cache driver holds an event for a cache channel: why a subscriber
            // gets `pusher:cache_miss` (the cache lost it, it expired, nothing was published).
            "cached" if channel::is_cache(&name) => {
                let key = super::events::cache_key(&authed.app.id, &name);
                let cached = ctx.drivers.cache.has(&key).await.map_err(|error| {
                    ApiError::unavailable(format!("The cache did not answer: {error}"))
                })?;
                body.insert("cached".into(), cached.into());
            }
            "cached" => {
                return Err(ApiError::bad_request("cached is only for cache channels"));
            }
            other => {
                return Err(ApiError::bad_request(format!("Unknown info attribute {other:?}")));
            }
        }
    }
    Ok(counted(Value::Object(body), counts.complete))
}

/// The users of a presence channel.
pub(crate) async fn users(
    State(ctx): State<Arc<Ctx>>,
    Path((_, name)): Path<(String, String)>,
    signed: SignedQuery,
) -> Result<Json<Value>, ApiError> {
    let authed = read_request(&ctx, signed, Some(&name)).await?;
    if ChannelKind::of(&name) != ChannelKind::Presence {
        return Err(ApiError::bad_request("Users can only be listed for presence channels"));
    }
    let users: Vec<Value> = ctx
        .adapter
        .user_ids(&authed.app.id, &name)
        .await
        .into_iter()
        .map(|id| json!({ "id": id }))
        .collect();
    Ok(Json(json!({ "users": users })))
}

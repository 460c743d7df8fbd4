//! `GET /apps/{app_id}/channels/{channel}/history` and `.../history/state`: a channel's kept
//! events, read from the history store, in Sockudo 5.2.0's answer shape (signed like every
//! read; 422 when history is off).
//!
//! Serials are dense, so a page is one read of a serial range: oldest first from the lower
//! bound (or after the cursor), newest first back from the upper one (or before it). Time
//! bounds filter within the page. The cursor is base64url (no padding) JSON naming the stream,
//! the last serial answered, the direction and the bounds; a follow-up must repeat the
//! direction and bounds, and a cursor of a stream since started again is refused.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    extract::{Path, State},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiError, SignedQuery, channels::read_request};
use crate::{
    apps::App,
    ctx::Ctx,
    plugins::{History, Retention, StoredEvent, StreamPage},
    protocol::recovery::with_position,
    recovery::Record,
    telemetry::LogLimiter,
};

/// The largest cursor accepted.
const MAX_CURSOR_BYTES: usize = 16 * 1024;
/// Events one page answers at most (Sockudo's `max_page_size`).
const MAX_PAGE: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Direction {
    NewestFirst,
    OldestFirst,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Bounds {
    start_serial: Option<u64>,
    end_serial: Option<u64>,
    start_time_ms: Option<u64>,
    end_time_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    version: u8,
    app_id: String,
    channel: String,
    stream_id: String,
    serial: u64,
    direction: Direction,
    bounds: Bounds,
}

impl Cursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a cursor serializes"))
    }

    fn decode(text: &str) -> Result<Self, ApiError> {
        if text.len() > MAX_CURSOR_BYTES {
            return Err(ApiError::bad_request("History cursor exceeds 16 KiB"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|e| ApiError::bad_request(format!("Invalid history cursor: {e}")))?;
        let cursor: Self = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("Invalid history cursor: {e}")))?;
        if cursor.version != 1 {
            let version = cursor.version;
            return Err(ApiError::bad_request(format!(
                "Unsupported history cursor version: {version}"
            )));
        }
        Ok(cursor)
    }
}

/// A whole number from the query, if given.
fn number(query: &HashMap<String, String>, names: &[&str]) -> Result<Option<u64>, ApiError> {
    let Some((name, text)) = names.iter().find_map(|n| query.get(*n).map(|v| (*n, v))) else {
        return Ok(None);
    };
    text.parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("{name} must be a whole number")))
}

/// The store, with what it keeps, or 422 when history is off (for the server or the app).
fn store(ctx: &Ctx, app: &App, channel: &str) -> Result<(Arc<History>, Retention), ApiError> {
    let recovery = ctx.recovery.as_ref().filter(|_| app.recovery.enabled);
    recovery.and_then(|r| r.history()).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("Durable history is disabled by policy for channel '{channel}'"),
        )
    })
}

fn store_error(error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(%error, "The history store could not be read for the HTTP API.");
    ApiError::unavailable("The history store is unavailable")
}

/// The stream's head and its oldest kept event.
async fn ends(
    history: &History,
    retention: Retention,
    app: &str,
    channel: &str,
) -> Result<StreamPage, ApiError> {
    history.read(app, channel, 0, 1, retention).await.map_err(store_error)
}

/// What the store keeps of the stream, and how it stands.
fn stream_state(history: &History, page: &StreamPage) -> (Value, Value) {
    let oldest = page.events.first();
    let retained = json!({
        "stream_id": page.stream_id,
        // The store's answer: a log entry past the head must not wrap the count.
        "retained_messages": oldest.map_or(0, |o| page.head.saturating_add(1).saturating_sub(o.serial)),
        "retained_bytes": Value::Null,
        "oldest_available_serial": oldest.map(|o| o.serial),
        "newest_available_serial": oldest.map(|_| page.head),
        "oldest_available_published_at_ms": oldest.map(|o| o.at_ms),
        "newest_available_published_at_ms": Value::Null,
    });
    let state = json!({
        "stream_id": page.stream_id,
        "durable_state": "healthy",
        "recovery_allowed": true,
        "reset_required": false,
        "reason": Value::Null,
        "node_id": Value::Null,
        "last_transition_at_ms": Value::Null,
        "authoritative_source": history.name(),
        "observed_source": history.name(),
    });
    (retained, state)
}

/// `GET .../history/state`.
pub(crate) async fn state(
    State(ctx): State<Arc<Ctx>>,
    Path((_, channel)): Path<(String, String)>,
    signed: SignedQuery,
) -> Result<Json<Value>, ApiError> {
    let authed = read_request(&ctx, signed, Some(&channel)).await?;
    let (history, retention) = store(&ctx, &authed.app, &channel)?;
    let page = ends(&history, retention, &authed.app.id, &channel).await?;
    let (retained, state) = stream_state(&history, &page);
    Ok(Json(json!({
        "channel": channel,
        "stream": {
            "stream_id": page.stream_id,
            "next_serial": page.head.saturating_add(1),
            "retained": retained,
            "state": state,
        },
    })))
}

/// One kept event as the answer lists it.
fn item(stream_id: &str, stored: &StoredEvent) -> Option<Value> {
    let Ok(record) = Record::decode(&stored.record) else {
        // Left out of the page, not failing it: the store holds a record this server did not
        // write (or one past its size bound). Said, at most once a second.
        static LOGGED: LogLimiter = LogLimiter::new();
        if LOGGED.allow() {
            tracing::warn!(
                serial = stored.serial,
                "A history record could not be read; the history API left it out of its answer."
            );
        }
        return None;
    };
    let frame = with_position(&record.frame, &record.message_id, stream_id, stored.serial);
    let message: Value = serde_json::from_str(&frame).ok()?;
    Some(json!({
        "stream_id": stream_id,
        "serial": stored.serial,
        "published_at_ms": stored.at_ms,
        "message_id": record.message_id,
        "event_name": message.get("event").cloned().unwrap_or(Value::Null),
        "operation_kind": "append",
        "payload_size_bytes": stored.record.len(),
        "message": message,
    }))
}

/// `GET .../history`.
pub(crate) async fn page(
    State(ctx): State<Arc<Ctx>>,
    Path((_, channel)): Path<(String, String)>,
    signed: SignedQuery,
) -> Result<Json<Value>, ApiError> {
    let authed = read_request(&ctx, signed, Some(&channel)).await?;
    let (history, retention) = store(&ctx, &authed.app, &channel)?;
    let (app, query) = (&authed.app.id, &authed.query);
    let direction = match query.get("direction").map(|d| d.to_ascii_lowercase()).as_deref() {
        None | Some("newest_first" | "backwards" | "reverse") => Direction::NewestFirst,
        Some("oldest_first" | "forwards" | "forward") => Direction::OldestFirst,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid direction '{other}'. Accepted values: newest_first, oldest_first, backwards, forwards"
            )));
        }
    };
    let limit = number(query, &["limit"])?.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    if limit == 0 {
        return Err(ApiError::bad_request("History limit must be greater than 0"));
    }
    let bounds = Bounds {
        start_serial: number(query, &["start_serial"])?,
        end_serial: number(query, &["end_serial"])?,
        start_time_ms: number(query, &["start_time_ms", "start"])?,
        end_time_ms: number(query, &["end_time_ms", "end"])?,
    };
    if bounds.start_serial.zip(bounds.end_serial).is_some_and(|(s, e)| s > e) {
        return Err(ApiError::bad_request("start_serial must be less than or equal to end_serial"));
    }
    if bounds.start_time_ms.zip(bounds.end_time_ms).is_some_and(|(s, e)| s > e) {
        return Err(ApiError::bad_request(
            "start_time_ms must be less than or equal to end_time_ms",
        ));
    }
    let ends = ends(&history, retention, app, &channel).await?;
    let cursor = query.get("cursor").map(|c| Cursor::decode(c)).transpose()?;
    if let Some(cursor) = &cursor {
        if cursor.app_id != *app || cursor.channel != channel {
            return Err(ApiError::bad_request("History cursor does not match the request"));
        }
        if cursor.direction != direction || cursor.bounds != bounds {
            return Err(ApiError::bad_request(
                "History cursor direction or bounds do not match the request",
            ));
        }
        if cursor.stream_id != ends.stream_id {
            return Err(ApiError::bad_request("Expired history cursor: channel stream changed"));
        }
    }
    // The serial range asked for, within what exists.
    let mut low = bounds.start_serial.unwrap_or(1).max(1);
    let mut high = bounds.end_serial.unwrap_or(ends.head).min(ends.head);
    match (&cursor, direction) {
        // The cursor is the caller's: its serial may be any number.
        (Some(c), Direction::OldestFirst) => low = low.max(c.serial.saturating_add(1)),
        (Some(c), Direction::NewestFirst) => high = high.min(c.serial.saturating_sub(1)),
        (None, _) => {}
    }
    let span = if high >= low { high - low + 1 } else { 0 };
    let take = span.min(limit + 1);
    let after = match direction {
        Direction::OldestFirst => low - 1,
        Direction::NewestFirst => high - take,
    };
    let take_u32 = u32::try_from(take).unwrap_or(u32::MAX);
    let mut events = if take == 0 {
        Vec::new()
    } else {
        history.read(app, &channel, after, take_u32, retention).await.map_err(store_error)?.events
    };
    events.retain(|e| e.serial >= low && e.serial <= high);
    if direction == Direction::NewestFirst {
        events.reverse();
    }
    let has_more = events.len() as u64 > limit;
    events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let last = events.last().map(|e| e.serial);
    let in_time = |e: &&StoredEvent| {
        bounds.start_time_ms.is_none_or(|s| e.at_ms >= s)
            && bounds.end_time_ms.is_none_or(|t| e.at_ms <= t)
    };
    let items: Vec<Value> =
        events.iter().filter(in_time).filter_map(|e| item(&ends.stream_id, e)).collect();
    let next_cursor = last.filter(|_| has_more).map(|serial| {
        Cursor {
            version: 1,
            app_id: app.clone(),
            channel: channel.clone(),
            stream_id: ends.stream_id.clone(),
            serial,
            direction,
            bounds,
        }
        .encode()
    });
    let oldest = ends.events.first().map(|o| o.serial);
    let truncated_by_retention = match (bounds.start_serial, oldest) {
        (Some(start), Some(oldest)) => start < oldest,
        (None, Some(oldest)) => oldest > 1,
        (_, None) => ends.head > 0,
    };
    let (retained, stream_state) = stream_state(&history, &ends);
    let mut continuity = retained;
    continuity["complete"] = (!has_more && !truncated_by_retention).into();
    continuity["truncated_by_retention"] = truncated_by_retention.into();
    Ok(Json(json!({
        "items": items,
        "direction": direction,
        "limit": limit,
        "has_more": has_more,
        "next_cursor": next_cursor,
        "bounds": bounds,
        "continuity": continuity,
        "stream_state": stream_state,
    })))
}

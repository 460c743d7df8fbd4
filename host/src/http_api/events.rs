//! `POST /apps/{app_id}/events` and `POST /apps/{app_id}/batch_events`.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use super::{
    ApiError, Signed,
    idempotency::{self, Claim, Reached},
};
use crate::{
    adapter::Congestion,
    apps::App,
    config::Limits,
    ctx::Ctx,
    emit::{self, emit},
    feed::{Entry, Kind},
    metrics::Metrics,
    protocol::{
        Broadcast,
        channel::{self, ChannelKind},
        filter::{self, Tags},
        frames,
    },
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    name: String,
    data: Value,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
    /// Tags (an object of strings) that subscribers' filters are judged by.
    #[serde(default)]
    tags: Option<Value>,
    /// A retry of a trigger with the same key within the window is answered, not published
    /// again (see [`idempotency`]); in a batch, checked only.
    #[serde(default)]
    idempotency_key: Option<String>,
    /// The event's id (`message_id` on positioned frames), as the publisher names it.
    #[serde(default)]
    message_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    batch: Vec<Event>,
}

/// An event that passed every check, ready to publish.
struct Checked {
    name: String,
    data: Value,
    channels: Vec<String>,
    socket_id: Option<String>,
    info: Vec<String>,
    tags: Tags,
    message_id: Option<String>,
    idempotency_key: Option<String>,
}

fn is_socket_id(s: &str) -> bool {
    s.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

fn check(app: &App, event: Event, in_batch: bool) -> Result<Checked, ApiError> {
    let limits = &app.limits;
    let tags = match &event.tags {
        None | Some(Value::Null) => Tags::new(),
        Some(tags) => filter::event_tags(tags)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?,
    };
    if event.name.is_empty() {
        return Err(ApiError::bad_request("The event name is empty"));
    }
    if event.name.chars().count() > limits.max_event_name_length {
        return Err(ApiError::bad_request(format!(
            "The event name is longer than {} characters",
            limits.max_event_name_length
        )));
    }
    let channels = channels(event.channel, event.channels, in_batch, limits)?;
    // Channel events carry their data as a string; other JSON is sent as its text.
    let data = match event.data {
        Value::String(s) => s,
        other => other.to_string(),
    };
    if data.len() > limits.max_event_payload_bytes {
        return Err(ApiError::too_large(format!(
            "The event data is {} bytes; the limit is {}",
            data.len(),
            limits.max_event_payload_bytes
        )));
    }
    if let Some(socket_id) = &event.socket_id
        && !is_socket_id(socket_id)
    {
        return Err(ApiError::bad_request(format!(
            "socket_id {socket_id:?} is not of the form 123.456"
        )));
    }
    if let Some(id) = &event.message_id
        && (id.is_empty() || id.chars().count() > MAX_MESSAGE_ID_LENGTH)
    {
        return Err(ApiError::bad_request(format!(
            "message_id must be 1 to {MAX_MESSAGE_ID_LENGTH} characters"
        )));
    }
    Ok(Checked {
        name: event.name,
        data: Value::String(data),
        channels,
        socket_id: event.socket_id,
        info: info(event.info.as_deref())?,
        tags,
        message_id: event.message_id,
        idempotency_key: event.idempotency_key,
    })
}

/// The longest `message_id` a publisher may give.
const MAX_MESSAGE_ID_LENGTH: usize = 128;

/// The channels an event goes to (`channel` or `channels`, one only in a batch), each valid.
fn channels(
    one: Option<String>,
    many: Option<Vec<String>>,
    in_batch: bool,
    limits: &Limits,
) -> Result<Vec<String>, ApiError> {
    let channels = match (one, many) {
        (Some(one), None) => vec![one],
        (None, Some(many)) if !in_batch => many,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("Give channel or channels, not both"));
        }
        (None, Some(_)) => return Err(ApiError::bad_request("A batched event takes one channel")),
        (None, None) => return Err(ApiError::bad_request("Missing channel or channels")),
    };
    if channels.is_empty() {
        return Err(ApiError::bad_request("channels is empty"));
    }
    if channels.len() > limits.max_event_channels_at_once {
        return Err(ApiError::bad_request(format!(
            "{} channels given; the limit is {}",
            channels.len(),
            limits.max_event_channels_at_once
        )));
    }
    for name in &channels {
        if let Some(user_id) = name.strip_prefix(channel::SERVER_TO_USER_PREFIX) {
            if user_id.is_empty() {
                return Err(ApiError::bad_request(format!("Channel {name:?} names no user")));
            }
            if user_id.chars().count() > channel::MAX_USER_ID_LENGTH {
                return Err(ApiError::bad_request(format!(
                    "The user id of a {} channel is longer than {} characters",
                    channel::SERVER_TO_USER_PREFIX,
                    channel::MAX_USER_ID_LENGTH
                )));
            }
            continue;
        }
        channel::validate(name, limits.max_channel_name_length)
            .map_err(|e| ApiError::bad_request(format!("Channel {name:?}: {e}")))?;
    }
    Ok(channels)
}

/// The `info` attributes asked for, comma-separated; only the ones the API knows.
fn info(info: Option<&str>) -> Result<Vec<String>, ApiError> {
    let info: Vec<String> = info
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    for attribute in &info {
        if attribute != "user_count" && attribute != "subscription_count" {
            return Err(ApiError::bad_request(format!("Unknown info attribute {attribute:?}")));
        }
    }
    Ok(info)
}

/// The cache key of a cache channel's last event.
pub(crate) fn cache_key(app_id: &str, channel: &str) -> String {
    format!("app:{app_id}:channel:{channel}:cache")
}

/// Deliver a checked event (keeping it if the channel is a cache channel) and, if asked,
/// describe its channels. With history on, a channel whose event the store could not take is
/// not broadcast (nothing goes out that a resume could not recover): 503, after the channels
/// before it went.
///
/// `reached` (a keyed publish's) skips the channels an earlier attempt under the key reached,
/// and gains each one this one reaches: a retry after a 503 goes only where the event has not.
async fn publish(
    ctx: &Arc<Ctx>,
    app: &App,
    event: &Checked,
    reached: Option<&Reached>,
) -> Result<Option<Value>, ApiError> {
    let skipped = |name: &str| reached.is_some_and(|r| r.earlier(name));
    let going = event.channels.iter().filter(|name| !skipped(name)).count();
    ctx.feed.stats.published(&app.id, going as u64);
    for name in &event.channels {
        if skipped(name) {
            continue;
        }
        let text = frames::channel_event(&event.name, name, &event.data, None);
        ctx.metrics.events_published.inc();
        ctx.feed.tap.record(&app.id, || {
            let entry = Entry::new(Kind::ApiEvent).channel(name).event(&event.name);
            let entry = entry.data(event.data.as_str().unwrap_or_default());
            match &event.socket_id {
                Some(except) => entry.socket(except).detail("not to this connection"),
                None => entry,
            }
        });
        if let Some(user_id) = name.strip_prefix(channel::SERVER_TO_USER_PREFIX) {
            ctx.adapter.send_to_user(&app.id, user_id, &text.into());
            reached.inspect(|r| r.add(name));
            continue;
        }
        let kept = if channel::is_cache(name) {
            Some(keep_last(ctx, app, name, &text).await)
        } else {
            None
        };
        // With filtering on, an event is judged by its tags (none is an empty set).
        let tags = ctx.settings.tag_filtering.then_some(&event.tags);
        // Encrypted channels' events never go as deltas: their ciphertexts do not shrink.
        let compressible = ChannelKind::of(name) != ChannelKind::PrivateEncrypted;
        let except = event.socket_id.as_deref();
        let to =
            Broadcast::to(&app.id, name).except(except).tagged(tags).compressible(compressible);
        if let Err(error) = emit(ctx, app, &to, text, event.message_id.clone()).await {
            if let Some(before) = kept {
                restore_last(ctx, app, name, before).await;
            }
            return Err(ApiError::unavailable(format!(
                "Channel {name:?}: {error}; the event was not published"
            )));
        }
        reached.inspect(|r| r.add(name));
    }
    if event.info.is_empty() {
        return Ok(None);
    }
    let mut channels = Map::new();
    for name in &event.channels {
        let counts = ctx.adapter.channel_info(&app.id, name).await;
        let mut info = Map::new();
        for attribute in &event.info {
            match attribute.as_str() {
                "user_count" if ChannelKind::of(name) == ChannelKind::Presence => {
                    info.insert("user_count".into(), counts.user_count.into());
                }
                "subscription_count" => {
                    info.insert("subscription_count".into(), counts.subscription_count.into());
                }
                _ => {}
            }
        }
        channels.insert(name.clone(), Value::Object(info));
    }
    Ok(Some(Value::Object(channels)))
}

/// What a cache channel held before its new last event was written: only looked up when the
/// publish may yet be refused (a history store that must take the event first), so that the
/// refusal can put it back.
enum Before {
    /// The publish cannot be refused after the write; nothing to put back.
    Unneeded,
    /// The channel held this event, or nothing.
    Held(Option<Vec<u8>>),
}

/// Keep `text` as the cache channel's last event, written before the event goes out: a
/// subscriber that arrives meanwhile gets it from the cache rather than neither. A failed
/// write is logged; the publish goes on (the subscriber gets `pusher:cache_miss`).
async fn keep_last(ctx: &Ctx, app: &App, name: &str, text: &str) -> Before {
    let key = cache_key(&app.id, name);
    let before = if emit::may_refuse(ctx, app) {
        match ctx.drivers.cache.get(&key).await {
            Ok(held) => Before::Held(held),
            // Nothing sure to put back: a refusal then removes the event instead.
            Err(_) => Before::Held(None),
        }
    } else {
        Before::Unneeded
    };
    if let Err(error) =
        ctx.drivers.cache.set(&key, text.as_bytes().to_vec(), cache_ttl_ms(ctx)).await
    {
        tracing::warn!(%error, channel = %name, "A cache channel's event could not be kept.");
    }
    before
}

/// The event kept by [`keep_last`] was not published: the cache channel goes back to what it
/// held, so no subscriber is given an event that never went out. (A publish to the same
/// channel in between is overwritten; the next one sets it right.)
async fn restore_last(ctx: &Ctx, app: &App, name: &str, before: Before) {
    let key = cache_key(&app.id, name);
    let restored = match before {
        Before::Unneeded => return,
        Before::Held(Some(held)) => ctx.drivers.cache.set(&key, held, cache_ttl_ms(ctx)).await,
        Before::Held(None) => ctx.drivers.cache.delete(&key).await.map(|_| ()),
    };
    if let Err(error) = restored {
        tracing::warn!(%error, channel = %name, "A cache channel keeps an event that was not published: the cache did not take it back.");
    }
}

/// How long a cache channel keeps its last event, in milliseconds.
fn cache_ttl_ms(ctx: &Ctx) -> u64 {
    u64::try_from(ctx.settings.cache_ttl.as_millis()).unwrap_or(u64::MAX)
}

/// Overload push-back: a trigger waits while most subscribers of a channel it names are behind
/// on this node (within `overload.max_publish_delay_ms` for the whole request), and is refused
/// with 429 and `Retry-After` if they stay behind. The publisher slows to its readers' pace
/// instead of filling every reader's queue until all of them are closed with 4100.
async fn push_back<'a>(
    ctx: &Ctx,
    app: &App,
    channels: impl Iterator<Item = &'a String>,
) -> Result<(), ApiError> {
    let max = ctx.settings.overload.max_publish_delay;
    let started = tokio::time::Instant::now();
    let mut waited = false;
    for name in channels {
        let left = max.saturating_sub(started.elapsed());
        match ctx.adapter.wait_uncongested(&app.id, name, left).await {
            Congestion::Clear => {}
            Congestion::CaughtUp => waited = true,
            Congestion::Behind => {
                Metrics::count(&ctx.metrics.publish_pushback, "outcome", "refused");
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("The subscribers of {name} are behind; publish more slowly"),
                )
                .retry_after(1));
            }
        }
    }
    if waited {
        Metrics::count(&ctx.metrics.publish_pushback, "outcome", "delayed");
    }
    Ok(())
}

/// The app's backend-events limit: each channel of each event counts once.
async fn limit(ctx: &Ctx, app: &App, cost: usize) -> Result<(), ApiError> {
    let cost = u32::try_from(cost).unwrap_or(u32::MAX);
    match ctx
        .rate_limit(
            &format!("backend-events:{}", app.id),
            cost,
            app.max_backend_events_per_second,
            1000,
        )
        .await
    {
        None => Ok(()),
        Some(decision) => Err(ApiError::rate_limited("events", decision)),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The body is not a valid event: {e}")))
}

/// Trigger one event on one or more channels.
pub(crate) async fn trigger(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Signed { app, body }: Signed,
) -> Result<Json<Value>, ApiError> {
    let key = headers
        .get(IDEMPOTENCY_HEADER)
        .map(|v| v.to_str().map_err(|_| ApiError::bad_request("X-Idempotency-Key is not text")));
    Ok(Json(publish_body(&ctx, &app, &body, key.transpose()?).await?))
}

/// The header a publisher may give its idempotency key in.
const IDEMPOTENCY_HEADER: &str = "x-idempotency-key";

/// Check, limit and publish one event given as the HTTP API's body (with the idempotency key
/// of the request's header, if any); the API's answer. The debug console's form publishes
/// through here too.
pub(crate) async fn publish_body(
    ctx: &Arc<Ctx>,
    app: &Arc<App>,
    body: &[u8],
    header_key: Option<&str>,
) -> Result<Value, ApiError> {
    let event = check(app, parse(body)?, false)?;
    // The publisher's `message_id` is a key too, as Sockudo takes it: a retry that carries only
    // it is not broadcast again.
    let key = match &ctx.settings.idempotency {
        Some(settings) => idempotency::key(
            settings,
            event.idempotency_key.as_deref(),
            header_key.or(event.message_id.as_deref()),
        )?,
        None => None,
    };
    // The app's limit first: a publish over it (with a key or not) costs one check, and
    // leaves nothing under its key (a retry once the limit allows gets published then).
    limit(ctx, app, event.channels.len()).await?;
    let Some(key) = key.map(str::to_string) else {
        return publish_checked(ctx, app, event, None).await;
    };
    // A publish with a key runs to its end on a task of its own, from its claim to keeping
    // its answer, whether or not its request still waits: a publisher that hung up (or timed
    // out on a slow history store) and retries gets the first answer. Dropped with its
    // request, the publish would leave the key looking in progress for the whole window.
    let (ctx, app) = (ctx.clone(), app.clone());
    to_its_end(async move {
        let settings = ctx.settings.idempotency.as_ref().expect("a key comes with settings");
        let fingerprint = fingerprint(&event);
        let claimed = match idempotency::claim(&ctx, settings, &app, &key, fingerprint).await? {
            Claim::Answered(answer) => return Ok(answer),
            Claim::First(claimed) => claimed,
        };
        let answer = publish_checked(&ctx, &app, event, Some(claimed.reached())).await;
        claimed.settle(&ctx, answer.as_ref().ok()).await;
        answer
    })
    .await
}

/// What identifies an event under an idempotency key: its name, channels, data, excluded
/// socket and tags (a retry must send the same; the key and `message_id` are left out).
fn fingerprint(event: &Checked) -> String {
    let what = (&event.name, &event.channels, &event.data, &event.socket_id, &event.tags);
    let bytes = serde_json::to_vec(&what).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// Run `publish` on a task of its own, so that it ends whether or not its request still
/// waits; its answer.
async fn to_its_end<T: Send + 'static>(
    publish: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(publish).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "A publish ended without an answer.");
        Err(ApiError::unavailable("The publish ended without an answer").retry_after(1))
    })
}

async fn publish_checked(
    ctx: &Arc<Ctx>,
    app: &Arc<App>,
    event: Checked,
    reached: Option<&Reached>,
) -> Result<Value, ApiError> {
    push_back(ctx, app, event.channels.iter()).await?;
    let described = publish_whole(ctx, app, vec![event], reached.cloned()).await?;
    Ok(match described.into_iter().next().flatten() {
        Some(channels) => json!({ "channels": channels }),
        None => json!({}),
    })
}

/// Publish `events` in order, each to every channel it names, to the end: once its checks
/// have passed, a publish is carried out whole whether or not its request still waits.
/// Dropped with a request whose publisher hung up (or timed out on a slow store), a trigger to
/// several channels would reach only those before the drop, an event the store positioned
/// would not be delivered here, and a cache channel could keep an event that never went out.
/// So a publish that waits on the way (for the history store, a cache channel's write, or the
/// other nodes' counts before a batch's next event) runs on a task of its own; one that does
/// not cannot be cut short, and runs here without the task's cost. The answer of each event,
/// as [`publish`] gives it; the first refusal ends the rest.
async fn publish_whole(
    ctx: &Arc<Ctx>,
    app: &Arc<App>,
    events: Vec<Checked>,
    reached: Option<Reached>,
) -> Result<Vec<Option<Value>>, ApiError> {
    // Describing an event's channels asks the other nodes: a batch's next events wait for it.
    let waits = emit::waits_for_store(ctx, app)
        || events.iter().flat_map(|e| &e.channels).any(|name| channel::is_cache(name))
        || (events.len() > 1 && events.iter().any(|e| !e.info.is_empty()));
    if !waits {
        return publish_all(ctx, app, &events, reached.as_ref()).await;
    }
    let (ctx, app) = (ctx.clone(), app.clone());
    to_its_end(async move { publish_all(&ctx, &app, &events, reached.as_ref()).await }).await
}

async fn publish_all(
    ctx: &Arc<Ctx>,
    app: &App,
    events: &[Checked],
    reached: Option<&Reached>,
) -> Result<Vec<Option<Value>>, ApiError> {
    let mut described = Vec::with_capacity(events.len());
    for event in events {
        described.push(publish(ctx, app, event, reached).await?);
    }
    Ok(described)
}

/// Trigger several events at once; every event is checked before any is published.
pub(crate) async fn batch(
    State(ctx): State<Arc<Ctx>>,
    Signed { app, body }: Signed,
) -> Result<Json<Value>, ApiError> {
    let batch: Batch = parse(&body)?;
    let max = app.limits.max_event_batch_size;
    if batch.batch.len() > max {
        return Err(ApiError::bad_request(format!(
            "{} events given; a batch takes at most {max}",
            batch.batch.len()
        )));
    }
    let events = batch
        .batch
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            check(&app, e, true)
                .map_err(|e| ApiError { message: format!("batch[{i}]: {}", e.message), ..e })
        })
        .collect::<Result<Vec<_>, _>>()?;
    limit(&ctx, &app, events.iter().map(|e| e.channels.len()).sum()).await?;
    push_back(&ctx, &app, events.iter().flat_map(|e| e.channels.iter())).await?;
    let described = publish_whole(&ctx, &app, events, None).await?;
    if described.iter().all(Option::is_none) {
        return Ok(Json(json!({})));
    }
    let batch: Vec<Value> = described
        .into_iter()
        .map(|channels| {
            channels
                .and_then(|c| c.as_object()?.values().next().cloned())
                .unwrap_or_else(|| json!({}))
        })
        .collect();
    Ok(Json(json!({ "batch": batch })))
}

#[cfg(test)]
mod tests {
    use super::is_socket_id;

    #[test]
    fn socket_ids_are_two_numbers() {
        assert!(is_socket_id("123.456"));
        for bad in ["123", "123.", ".456", "12a.3", "1.2.3", ""] {
            assert!(!is_socket_id(bad), "{bad}");
        }
    }
}

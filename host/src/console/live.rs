//! The console's data, on the admin listener behind the token (or the console's cookie):
//! an app's figures from every node, its live log as server-sent events, and the form that
//! publishes an event through the HTTP API's own path.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{StreamExt as _, stream};
use serde_json::{Value, json};

use crate::{
    apps::{App, Lookup},
    cluster::{CONTROL, envelope::Control, query::Query},
    ctx::Ctx,
    feed::stats::{self, NodeFigures},
    http_api::{ApiError, events},
};

/// Channels the figures list at most (the busiest first).
const MAX_CHANNELS: usize = 200;

/// The app, or 404 (503 when the app manager cannot be asked).
async fn app(ctx: &Ctx, id: &str) -> Result<Arc<App>, ApiError> {
    match ctx.apps.by_id(id).await {
        Lookup::Found(app) => Ok(app),
        Lookup::Unknown => {
            Err(ApiError::new(StatusCode::NOT_FOUND, format!("App {id} does not exist")))
        }
        Lookup::Unavailable | Lookup::Refused => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "The app manager cannot be reached"))
        }
    }
}

/// `GET /apps/{id}/figures`: connections, channels with their subscribers, presence users,
/// events per second and webhooks, on every node, with ten minutes of history.
pub(crate) async fn figures(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ctx = &*ctx;
    let app = app(ctx, &id).await?;
    let mut nodes = vec![ctx.events.local_figures(&app.id)];
    let answers = ctx
        .adapter
        .cluster()
        .request(&Query::Figures { app: app.id.clone() }, false, |_| false)
        .await;
    nodes.extend(crate::cluster::query::parse::<NodeFigures>(&answers.answers));
    let mut channels = ctx.adapter.channels(&app.id, "").await;
    let channel_count = channels.len();
    let presence_users: usize = channels.iter().map(|(_, info)| info.user_count).sum();
    channels
        .sort_by(|a, b| b.1.subscription_count.cmp(&a.1.subscription_count).then(a.0.cmp(&b.0)));
    let listed: Vec<Value> = channels
        .into_iter()
        .take(MAX_CHANNELS)
        .map(|(name, info)| {
            json!({ "name": name, "subscription_count": info.subscription_count, "user_count": info.user_count })
        })
        .collect();
    let history = stats::merge(&nodes);
    let per_second = stats::SAMPLE_EVERY.as_secs_f64();
    let events_per_second = history.last().map_or(0.0, |s| s.events as f64 / per_second);
    let sum = |f: fn(&NodeFigures) -> u64| nodes.iter().map(f).fold(0u64, u64::saturating_add);
    Ok(Json(json!({
        "app": app.id,
        "node": ctx.feed.tap.node(),
        "complete": answers.complete,
        "connections": sum(|n| n.connections),
        "channel_count": channel_count,
        "channels": listed,
        "presence_users": presence_users,
        "events_per_second": events_per_second,
        "webhooks": {
            "queued": sum(|n| n.webhooks_queued),
            "sent": sum(|n| n.webhooks_sent),
            "failed": sum(|n| n.webhooks_failed),
        },
        "sample_seconds": stats::SAMPLE_EVERY.as_secs(),
        "history": history,
        "nodes": nodes.iter().map(|n| json!({
            "node": n.node, "connections": n.connections, "events": n.events,
            "webhooks_queued": n.webhooks_queued, "webhooks_sent": n.webhooks_sent,
            "webhooks_failed": n.webhooks_failed,
        })).collect::<Vec<_>>(),
    })))
}

/// `GET /apps/{id}/log`: the app's live log, as server-sent events (one JSON entry each),
/// from every node. The tap is on while at least one log is open; a viewer that does not keep
/// up is cut off (its browser reconnects).
pub(crate) async fn log(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Response {
    let app = match app(&ctx, &id).await {
        Ok(app) => app,
        Err(error) => return error.into_response(),
    };
    let Some(feed) = ctx.feed.tap.view(&app.id) else {
        let why = "Too many live logs are open on this node, or too many apps are watched";
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    };
    // The other nodes start sending at once, not at the next renewal.
    ctx.adapter.cluster().send_control(CONTROL, Control::ConsoleWatch { app: app.id.clone() });
    let hello =
        Event::default().event("hello").data(json!({ "node": ctx.feed.tap.node() }).to_string());
    let entries = stream::unfold(feed, |mut feed| async move {
        let text = feed.recv().await?;
        Some((Ok::<_, Infallible>(Event::default().data(&*text)), feed))
    });
    let events = stream::iter([Ok(hello)]).chain(entries);
    // Ends at shutdown, so an open console never holds the listener's graceful stop.
    let events = events.take_until(ctx.shutdown.clone().cancelled_owned());
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

/// `POST /apps/{id}/events`: publish an event (the HTTP API's body: `name`, `data`, `channel`
/// or `channels`, ...) through the same checks, limits and delivery as the HTTP API, without
/// its signature (the admin token stands for it).
pub(crate) async fn send(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let app = app(&ctx, &id).await?;
    Ok(Json(events::publish_body(&ctx, &app, &body, None).await?))
}

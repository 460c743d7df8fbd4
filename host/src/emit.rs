//! An app's event (published over HTTP, or a client event) on its way to a channel's
//! subscribers. With recovery on for the app, it gets its position first: from the history
//! store, once for the whole cluster, or from this node's stream of the channel. Both kinds go
//! the same way, so a client that missed either can resume, as on Sockudo's protocol 2.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use crate::{
    apps::App,
    cluster::{self, envelope::Control},
    ctx::Ctx,
    protocol::Broadcast,
    recovery::{Record, Recovery},
    telemetry::LogLimiter,
};

/// The history store did not take the event and the app does not publish best effort:
/// nothing was broadcast (nothing goes out that a resume could not recover).
/// Why is in the node's log.
#[derive(Debug, thiserror::Error)]
#[error("the history store is unavailable")]
pub(crate) struct NotKept;

/// Whether [`emit`] waits for the history store with an event of `app` (else it delivers
/// without suspending).
pub(crate) fn waits_for_store(ctx: &Ctx, app: &App) -> bool {
    app.recovery.enabled && ctx.recovery.as_ref().is_some_and(|recovery| recovery.is_durable())
}

/// Whether [`emit`] may refuse an event of `app` ([`NotKept`]): its events must be taken by the
/// history store first, and it does not publish best effort.
pub(crate) fn may_refuse(ctx: &Ctx, app: &App) -> bool {
    waits_for_store(ctx, app) && !app.recovery.best_effort
}

/// Deliver `text` (a Pusher frame without a position) as `to` says: through the history
/// store, this node's stream, or straight to the adapter. `message_id` is the publisher's id
/// for the event, if it gave one.
pub(crate) async fn emit(
    ctx: &Ctx,
    app: &App,
    to: &Broadcast<'_>,
    text: String,
    message_id: Option<String>,
) -> Result<(), NotKept> {
    let Some(recovery) = ctx.recovery.as_ref().filter(|_| app.recovery.enabled) else {
        ctx.adapter.broadcast(to, &Utf8Bytes::from(text));
        return Ok(());
    };
    let message_id = message_id.unwrap_or_else(new_message_id);
    if !recovery.is_durable() {
        // The event's position is given, kept and delivered in one step per channel.
        let frame = Utf8Bytes::from(text);
        recovery.publish(to.app, to.channel, frame.as_str(), message_id, to.tags, |positioned| {
            ctx.adapter.broadcast_positioned(to, &frame, positioned);
        });
        return Ok(());
    }
    // The store gives the position; the other nodes and this one deliver in its order.
    // The frame is kept for a best-effort broadcast, should the store not take the event.
    let plain = app.recovery.best_effort.then(|| text.clone());
    // A store that writes to the bus's server publishes the event as it positions it: no
    // publish of ours after, and the bus carries the channel's events in serial order.
    let outgoing = recovery
        .store_publishes()
        .then(|| ctx.adapter.cluster().stored_broadcast(to, text.as_bytes(), &message_id))
        .flatten();
    let record = Record {
        message_id,
        frame: text,
        tags: to.tags.cloned(),
        except: to.except.map(str::to_string),
    };
    // The caller must not drop this future before it ends: an event the store took would go
    // undelivered here (and, with a store that does not publish, on every other node). The
    // HTTP API runs such publishes on a task of their own, a client event is handled on its
    // connection's task, which never drops a message half-handled.
    match (recovery.append(to.app, to.channel, record, outgoing).await, plain) {
        (Ok(unpublished), _) => {
            if let Some(event) = unpublished {
                ctx.adapter.broadcast_elsewhere(to, &event.record.frame, event.bus_position());
            }
            Ok(())
        }
        (Err(error), Some(plain)) => {
            static LOGGED: LogLimiter = LogLimiter::new();
            if LOGGED.allow() {
                tracing::warn!(%error, channel = %to.channel, "The history store did not take an event; it went out without a position (the app publishes best effort), and the channel's resumes fail until its stream starts again.");
            }
            ctx.metrics.recovery_best_effort.inc();
            degrade(ctx, recovery, to.app, to.channel);
            ctx.adapter.broadcast(to, &Utf8Bytes::from(plain));
            Ok(())
        }
        (Err(error), None) => {
            // Once a second at most: while the store is down or behind, every publish fails
            // so (counted in `history_errors` and `history_backlog_refused`).
            static LOGGED: LogLimiter = LogLimiter::new();
            if LOGGED.allow() {
                tracing::warn!(%error, channel = %to.channel, "An event was not published: the history store did not take it.");
            }
            Err(NotKept)
        }
    }
}

/// A new event id (`message_id`), a UUIDv4 as Sockudo's.
fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Mark the channel degraded on every node (its resumes fail closed) until its stream is
/// started again in the store.
fn degrade(ctx: &Ctx, recovery: &Arc<Recovery>, app: &str, channel: &str) {
    let control = |degraded| Control::HistoryDegraded {
        app: app.to_string(),
        channel: channel.to_string(),
        degraded,
    };
    let cluster = ctx.adapter.cluster();
    let (later, lifted) = (cluster.clone(), control(false));
    recovery.degrade(
        app,
        channel,
        || cluster.send_control(cluster::CONTROL, control(true)),
        move || later.send_control(cluster::CONTROL, lifted),
    );
}

//! This node's part in the cluster: joining, the incoming bus messages, heartbeats, dead-node
//! cleanup and leaving, and the member and occupancy events that follow.
//!
//! It sits above the cluster layer (`cluster/`, which knows the bus, membership and the
//! replicated state, and depends on nothing above it) and acts on the host: the hub, webhooks
//! and metrics.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::cluster::{
    CONTROL, PerNode, Refusal,
    envelope::{Body, Control},
    node_topic, presence_state,
};
use crate::{
    metrics::Metrics, plugins::Incoming, protocol::frames, server::Ctx, telemetry::LogLimiter,
};

/// Join the cluster: listen on the control and own topics, say hello, and start the tasks that
/// read the bus and keep membership.
pub async fn start(ctx: &Arc<Ctx>, inbox: mpsc::Receiver<Incoming>) {
    let cluster = ctx.adapter.cluster();
    tokio::spawn(incoming(ctx.clone(), inbox));
    cluster.acquire(CONTROL.to_string()).await;
    cluster.acquire(node_topic(cluster.node_id)).await;
    cluster.send_control_awaited(CONTROL, Control::Hello { reply: true }).await;
    tokio::spawn(health(ctx.clone()));
    tracing::info!(node_id = cluster.node_id, "Joined the cluster.");
}

/// Leave the cluster: tell the others, so they need not wait for the node timeout.
pub async fn stop(ctx: &Ctx) {
    let cluster = ctx.adapter.cluster();
    if cluster.has_peers() {
        cluster.send_control_awaited(CONTROL, Control::Goodbye).await;
    }
}

/// Send this node's presence state and a hello to `node`, which has just appeared.
fn welcome(ctx: &Ctx, node: u64) {
    let cluster = ctx.adapter.cluster();
    let topic = node_topic(node);
    cluster.send_control(&topic, Control::Hello { reply: false });
    let state = presence_state(ctx.adapter.hub().presence_members());
    let occupied = ctx.adapter.hub().occupied_channels();
    let online = ctx.adapter.hub().signed_in_users();
    cluster.send_control(&topic, Control::PresenceSync { state, occupied, online });
    tracing::info!(node, "A node joined the cluster.");
}

/// Count a refused bus message and log it at most once a second (a flood of forged messages
/// must not flood the log).
fn refused(ctx: &Ctx, refusal: Refusal, topic: &str, logged: &LogLimiter) {
    ctx.metrics.bus_refused.inc();
    if let Refusal::Seal(error) = refusal {
        Metrics::count(&ctx.metrics.bus_unauthenticated, "reason", error.label());
    }
    if logged.allow() {
        tracing::warn!(error = %refusal, topic, "Refused a bus message.");
    }
}

async fn incoming(ctx: Arc<Ctx>, mut inbox: mpsc::Receiver<Incoming>) {
    let cluster = ctx.adapter.cluster().clone();
    let refusals_logged = LogLimiter::default();
    while let Some(message) = inbox.recv().await {
        let envelope = match cluster.open(message.payload()) {
            Ok(envelope) => envelope,
            Err(refusal) => {
                refused(&ctx, refusal, &message.topic, &refusals_logged);
                continue;
            }
        };
        if envelope.node == cluster.node_id {
            continue;
        }
        match envelope.body {
            Body::Broadcast { app, channel, except, frame } => {
                ctx.metrics.bus_broadcasts_received.inc();
                match String::from_utf8(frame) {
                    Ok(text) => {
                        ctx.adapter.hub().broadcast(
                            &app,
                            &channel,
                            &Utf8Bytes::from(text),
                            except.as_deref(),
                        );
                    }
                    Err(_) => {
                        tracing::warn!(channel, "Refused a broadcast whose frame is not UTF-8.")
                    }
                }
            }
            Body::Control(control) => {
                let node = envelope.node;
                let new = !matches!(control, Control::Goodbye) && cluster.saw(node);
                if new {
                    count_nodes(&ctx);
                }
                match control {
                    Control::Hello { reply } => {
                        if new || reply {
                            welcome(&ctx, node);
                        }
                    }
                    Control::Heartbeat { connections } => {
                        if new {
                            welcome(&ctx, node);
                        }
                        cluster.apply_connections(node, connections);
                    }
                    Control::Goodbye => {
                        tracing::info!(node, "A node left the cluster.");
                        members_gone(&ctx, node);
                    }
                    Control::Request { id, query } => {
                        if new {
                            welcome(&ctx, node);
                        }
                        let answer = ctx.adapter.answer(&query);
                        cluster.send_control(&node_topic(node), Control::Response { id, answer });
                    }
                    Control::Response { id, answer } => cluster.answered(id, answer),
                    Control::Presence { app, channel, user_id, info } => {
                        if new {
                            welcome(&ctx, node);
                        }
                        let before = present(&ctx, &app, &channel, &user_id);
                        cluster.apply_presence(
                            node,
                            envelope.seq,
                            app.clone(),
                            channel.clone(),
                            user_id.clone(),
                            info.clone(),
                        );
                        if before != present(&ctx, &app, &channel, &user_id) {
                            member_event(&ctx, &app, &channel, &user_id, info.as_ref(), None);
                        }
                    }
                    Control::Occupancy { app, channel, occupied } => {
                        if new {
                            welcome(&ctx, node);
                        }
                        let key = (app, channel);
                        let before = occupied_anywhere(&ctx, &key.0, &key.1);
                        cluster.occupancy.set(node, key.clone(), occupied);
                        if before != occupied_anywhere(&ctx, &key.0, &key.1) {
                            occupancy_event(&ctx, &key.0, &key.1, occupied);
                        }
                    }
                    Control::UserStatus { app, user_id, online } => {
                        if new {
                            welcome(&ctx, node);
                        }
                        let key = (app, user_id);
                        let before = online_anywhere(&ctx, &key.0, &key.1);
                        cluster.online.set(node, key.clone(), online);
                        if before != online_anywhere(&ctx, &key.0, &key.1) {
                            user_status_event(&ctx, &key.0, &key.1, online);
                        }
                    }
                    Control::PresenceSync { state, occupied, online } => {
                        replace_and_announce(
                            &cluster.online,
                            node,
                            online,
                            |a, u| online_anywhere(&ctx, a, u),
                            |a, u, now| {
                                user_status_event(&ctx, a, u, now);
                            },
                        );
                        replace_and_announce(
                            &cluster.occupancy,
                            node,
                            occupied,
                            |a, c| occupied_anywhere(&ctx, a, c),
                            |a, c, now| {
                                occupancy_event(&ctx, a, c, now);
                            },
                        );
                        let touched = cluster.members_of(node, &state);
                        let before: Vec<bool> =
                            touched.iter().map(|(a, c, u, _)| present(&ctx, a, c, u)).collect();
                        cluster.apply_presence_sync(node, envelope.seq, &state);
                        for ((app, channel, user, info), was) in touched.iter().zip(before) {
                            if was != present(&ctx, app, channel, user) {
                                member_event(&ctx, app, channel, user, info.as_ref(), None);
                            }
                        }
                    }
                    Control::ToUser { app, user_id, frame } => {
                        ctx.adapter.hub().send_to_user(&app, &user_id, &Utf8Bytes::from(frame));
                    }
                }
            }
        }
    }
}

/// A user appeared in (`info` given) or left a presence channel, as this node sees the
/// cluster. Every node tells its own subscribers when its view changes, so each subscriber
/// hears it once, whichever node saw the change first; only the cleanup leader sends the
/// webhook, so it goes out once.
pub fn member_event(
    ctx: &Arc<Ctx>,
    app_id: &str,
    channel: &str,
    user: &str,
    info: Option<&Value>,
    except: Option<&str>,
) {
    let (frame, kind) = match info {
        Some(info) => (frames::member_added(channel, user, info), "member_added"),
        None => (frames::member_removed(channel, user), "member_removed"),
    };
    ctx.adapter.hub().broadcast(app_id, channel, &Utf8Bytes::from(frame), except);
    if ctx.adapter.cluster().is_leader()
        && let Some(app) = ctx.apps.by_id(app_id)
    {
        ctx.webhooks.emit(ctx, app, json!({ "name": kind, "channel": channel, "user_id": user }));
    }
}

/// A channel gained its first subscriber (`occupied`) or lost its last, as this node sees the
/// cluster: the cleanup leader sends the webhook, so it goes out once.
pub fn occupancy_event(ctx: &Arc<Ctx>, app_id: &str, channel: &str, occupied: bool) {
    if !ctx.adapter.cluster().is_leader() {
        return;
    }
    let Some(app) = ctx.apps.by_id(app_id) else { return };
    if occupied {
        ctx.webhooks.occupied(ctx, app, channel);
    } else {
        ctx.webhooks.vacated(ctx, app, channel);
    }
}

/// Replace what `node` holds in `set` with `new`, and announce every pair whose state this node
/// sees change (`anywhere` says the state; `event` announces the new one).
fn replace_and_announce(
    set: &PerNode,
    node: u64,
    new: Vec<(String, String)>,
    anywhere: impl Fn(&str, &str) -> bool,
    event: impl Fn(&str, &str, bool),
) {
    let touched = set.touched(node, &new);
    let before: Vec<bool> = touched.iter().map(|(a, b)| anywhere(a, b)).collect();
    set.replace(node, new);
    for ((a, b), was) in touched.iter().zip(before) {
        let now = anywhere(a, b);
        if was != now {
            event(a, b, now);
        }
    }
}

/// A user came online or went offline cluster-wide, as this node sees it: tell this node's
/// watchers of the user (the other nodes tell theirs).
fn user_status_event(ctx: &Ctx, app_id: &str, user: &str, online: bool) {
    let name = if online { "online" } else { "offline" };
    let frame = Utf8Bytes::from(frames::watchlist_event(name, &[user.to_string()]));
    ctx.adapter.notify_watchers(app_id, user, &frame);
}

/// Whether `user` is signed in anywhere, as this node sees it.
fn online_anywhere(ctx: &Ctx, app_id: &str, user: &str) -> bool {
    !ctx.adapter.hub().online(app_id, &[user.to_string()]).is_empty()
        || ctx.adapter.cluster().online.elsewhere(app_id, user)
}

/// Whether the channel has a subscriber anywhere, as this node sees it.
fn occupied_anywhere(ctx: &Ctx, app_id: &str, channel: &str) -> bool {
    ctx.adapter.hub().subscription_count(app_id, channel) > 0
        || ctx.adapter.cluster().occupancy.elsewhere(app_id, channel)
}

/// Whether `user` is in the channel anywhere, as this node sees it.
fn present(ctx: &Ctx, app_id: &str, channel: &str, user: &str) -> bool {
    ctx.adapter.hub().has_member(app_id, channel, user)
        || ctx.adapter.cluster().present_elsewhere(app_id, channel, user)
}

/// Forget `node`: users that were only there leave their channels.
fn members_gone(ctx: &Arc<Ctx>, node: u64) {
    let departed = ctx.adapter.cluster().forget(node);
    count_nodes(ctx);
    for (app_id, channel, user) in departed.members {
        if !present(ctx, &app_id, &channel, &user) {
            member_event(ctx, &app_id, &channel, &user, None, None);
        }
    }
    for (app_id, user) in departed.users {
        if !online_anywhere(ctx, &app_id, &user) {
            user_status_event(ctx, &app_id, &user, false);
        }
    }
    for (app_id, channel) in departed.channels {
        if !occupied_anywhere(ctx, &app_id, &channel) {
            occupancy_event(ctx, &app_id, &channel, false);
        }
    }
}

fn count_nodes(ctx: &Ctx) {
    let peers = ctx.adapter.cluster().peers().len();
    ctx.metrics.cluster_nodes.set(i64::try_from(peers + 1).unwrap_or(i64::MAX));
}

/// Heartbeats, and dead-node cleanup.
async fn health(ctx: Arc<Ctx>) {
    let cluster = ctx.adapter.cluster().clone();
    let settings = cluster.settings().clone();
    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
    let mut cleanup = tokio::time::interval(settings.cleanup_interval);
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = heartbeat.tick() => {
                let connections = if settings.socket_counting {
                    ctx.apps.ids().map(|id| (id.to_string(), ctx.adapter.hub().connection_count(id))).filter(|(_, n)| *n > 0).collect()
                } else {
                    Default::default()
                };
                cluster.send_control(CONTROL, Control::Heartbeat { connections });
            }
            _ = cleanup.tick() => {
                for node in cluster.expired() {
                    tracing::warn!(node, "A node stopped answering; removing it and its members.");
                    ctx.metrics.dead_nodes.inc();
                    members_gone(&ctx, node);
                }
            }
        }
    }
}

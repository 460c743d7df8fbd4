//! This node's part in the cluster: joining, the incoming bus messages, heartbeats, dead-node
//! cleanup and leaving.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    CONTROL,
    envelope::{Body, Control, Envelope},
    node_topic, presence_state,
};
use crate::{plugins::Incoming, protocol::frames, server::Ctx};

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
    cluster.send_control(&topic, Control::PresenceSync { state });
    tracing::info!(node, "A node joined the cluster.");
}

async fn incoming(ctx: Arc<Ctx>, mut inbox: mpsc::Receiver<Incoming>) {
    let cluster = ctx.adapter.cluster().clone();
    while let Some(message) = inbox.recv().await {
        let envelope = match Envelope::decode(message.payload()) {
            Ok(envelope) => envelope,
            Err(error) => {
                ctx.metrics.bus_refused.inc();
                tracing::warn!(%error, topic = %message.topic, "Refused a bus message this node cannot read.");
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
                        ctx.adapter.hub().broadcast(&app, &channel, &Utf8Bytes::from(text), except.as_deref());
                    }
                    Err(_) => tracing::warn!(channel, "Refused a broadcast whose frame is not UTF-8."),
                }
            }
            Body::Control(control) => {
                let node = envelope.node;
                let new = !matches!(control, Control::Goodbye) && cluster.saw(node);
                match control {
                    Control::Hello { reply } => {
                        if new || reply {
                            welcome(&ctx, node);
                        }
                    }
                    Control::Heartbeat => {
                        if new {
                            welcome(&ctx, node);
                        }
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
                        cluster.apply_presence(node, envelope.seq, app, channel, user_id, info);
                    }
                    Control::PresenceSync { state } => cluster.apply_presence_sync(node, envelope.seq, &state),
                    Control::ToUser { app, user_id, frame } => {
                        ctx.adapter.hub().send_to_user(&app, &user_id, &Utf8Bytes::from(frame));
                    }
                }
            }
        }
    }
}

/// Forget `node`: users that were only there leave their channels. Every node tells its own
/// subscribers; only the cleanup leader sends the webhooks, so they go out once.
fn members_gone(ctx: &Arc<Ctx>, node: u64) {
    let cluster = ctx.adapter.cluster();
    let gone = cluster.forget(node);
    let leader = cluster.is_leader();
    for (app_id, channel, user) in gone {
        if ctx.adapter.hub().has_member(&app_id, &channel, &user) || cluster.present_elsewhere(&app_id, &channel, &user) {
            continue;
        }
        let frame = Utf8Bytes::from(frames::member_removed(&channel, &user));
        ctx.adapter.hub().broadcast(&app_id, &channel, &frame, None);
        if leader && let Some(app) = ctx.apps.by_id(&app_id) {
            ctx.webhooks.emit(ctx, app, json!({ "name": "member_removed", "channel": channel, "user_id": user }));
        }
    }
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
            _ = heartbeat.tick() => cluster.send_control(CONTROL, Control::Heartbeat),
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

//! The node's side of the cluster: what it does when the cluster layer says something happened
//! (frames for local sockets, member and occupancy events, webhooks, metrics), and what it
//! tells the cluster layer about its own state. The one implementation of [`cluster::host::Host`].

use std::{collections::HashMap, sync::Arc};

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    apps::{App, Lookup},
    cluster::{
        self, Refusal,
        host::{Host, Snapshot},
        query::Query,
    },
    metrics::Metrics,
    plugins::Incoming,
    protocol::{filter::Tags, frames},
    server::Ctx,
    webhooks::Hook,
};

/// Join the cluster (see [`cluster::reader::start`]) with this node as its host.
pub(crate) async fn start(ctx: &Arc<Ctx>, inbox: mpsc::Receiver<Incoming>) {
    let host: Arc<dyn Host> = Arc::new(Node(ctx.clone()));
    cluster::reader::start(ctx.adapter.cluster().clone(), host, inbox, ctx.shutdown.clone()).await;
}

/// Leave the cluster.
pub(crate) async fn stop(ctx: &Ctx) {
    cluster::reader::stop(ctx.adapter.cluster()).await;
}

/// This node, as the cluster layer sees it.
struct Node(Arc<Ctx>);

impl Host for Node {
    fn has_member(&self, app: &str, channel: &str, user: &str) -> bool {
        self.0.adapter.hub().has_member(app, channel, user)
    }

    fn occupied(&self, app: &str, channel: &str) -> bool {
        self.0.adapter.hub().subscription_count(app, channel) > 0
    }

    fn online(&self, app: &str, user: &str) -> bool {
        !self.0.adapter.hub().online(app, &[user.to_string()]).is_empty()
    }

    fn snapshot(&self) -> Snapshot {
        let hub = self.0.adapter.hub();
        Snapshot {
            members: hub.presence_members(),
            occupied: hub.occupied_channels(),
            online: hub.signed_in_users(),
        }
    }

    fn connections(&self) -> HashMap<String, u64> {
        let hub = self.0.adapter.hub();
        self.0
            .apps
            .ids()
            .into_iter()
            .map(|id| {
                let count = hub.connection_count(&id);
                (id, count)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn answer(&self, query: Query) -> Value {
        match query {
            Query::Figures { app } => crate::cluster::query::answer_value(
                &crate::console::live::local_figures(&self.0, &app),
            ),
            query => self.0.adapter.answer(query),
        }
    }

    fn broadcast(
        &self,
        app: &str,
        channel: &str,
        frame: String,
        except: Option<&str>,
        tags: Option<&Tags>,
        compressible: bool,
    ) {
        self.0.metrics.bus_broadcasts_received.inc();
        let tags = tags.filter(|_| self.0.settings.tag_filtering);
        let frame = Utf8Bytes::from(frame);
        self.0.adapter.hub().broadcast(app, channel, &frame, except, tags, compressible);
    }

    fn to_user(&self, app: &str, user: &str, frame: String) {
        self.0.adapter.hub().send_to_user(app, user, &Utf8Bytes::from(frame));
    }

    fn member_changed(&self, app: &str, channel: &str, user: &str, info: Option<&Value>) {
        member_event(&self.0, app, channel, user, info, None);
    }

    fn occupancy_changed(&self, app: &str, channel: &str, occupied: bool) {
        occupancy_event(&self.0, app, channel, occupied);
    }

    fn app_changed(&self, app: &str) {
        let (ctx, app) = (self.0.clone(), app.to_string());
        tokio::spawn(async move { app_changed(&ctx, &app).await });
    }

    fn console_watched(&self, node: u64, app: &str) {
        self.0.console.tap.watched_by(node, app);
    }

    fn console_entries(&self, node: u64, app: &str, entries: Vec<Value>) {
        self.0.console.tap.received(&crate::console::node_label(node), app, entries);
    }

    fn user_status_changed(&self, app: &str, user: &str, online: bool) {
        let name = if online { "online" } else { "offline" };
        let frame = Utf8Bytes::from(frames::watchlist_event(name, &[user.to_string()]));
        self.0.adapter.notify_watchers(app, user, &frame);
    }

    fn nodes_changed(&self, nodes: usize) {
        self.0.metrics.cluster_nodes.set(i64::try_from(nodes).unwrap_or(i64::MAX));
    }

    fn node_died(&self, _node: u64) {
        self.0.metrics.dead_nodes.inc();
    }

    fn refused(&self, refusal: Refusal) {
        self.0.metrics.bus_refused.inc();
        if let Refusal::Seal(error) = refusal {
            Metrics::count(&self.0.metrics.bus_unauthenticated, "reason", error.label());
        }
    }
}

/// A user appeared in (`info` given) or left a presence channel, as this node sees the
/// cluster. Every node tells its own subscribers when its view changes, so each subscriber
/// hears it once, whichever node saw the change first; only the cleanup leader sends the
/// webhook, so it goes out once.
pub(crate) fn member_event(
    ctx: &Arc<Ctx>,
    app_id: &str,
    channel: &str,
    user: &str,
    info: Option<&Value>,
    except: Option<&str>,
) {
    // A peer's full state can add tens of thousands of members to channels with no subscriber
    // here: no frame is built for nobody.
    if ctx.adapter.hub().subscription_count(app_id, channel) > 0 {
        let frame = match info {
            Some(info) => frames::member_added(channel, user, info),
            None => frames::member_removed(channel, user),
        };
        ctx.adapter.hub().broadcast(app_id, channel, &Utf8Bytes::from(frame), except, None, false);
    }
    if ctx.adapter.cluster().is_leader() {
        let (channel, user_id) = (channel.to_string(), user.to_string());
        let event = match info {
            Some(_) => Hook::MemberAdded { channel, user_id },
            None => Hook::MemberRemoved { channel, user_id },
        };
        with_app(ctx, app_id, move |ctx, app| ctx.webhooks.emit(ctx, app, event));
    }
}

/// A channel gained its first subscriber (`occupied`) or lost its last, as this node sees the
/// cluster: the cleanup leader sends the webhook, so it goes out once.
pub(crate) fn occupancy_event(ctx: &Arc<Ctx>, app_id: &str, channel: &str, occupied: bool) {
    if !ctx.adapter.cluster().is_leader() {
        return;
    }
    let channel = channel.to_string();
    with_app(ctx, app_id, move |ctx, app| {
        if occupied {
            ctx.webhooks.occupied(ctx, app, &channel);
        } else {
            ctx.webhooks.vacated(ctx, app, &channel);
        }
    });
}

/// Run `then` with the app: at once when this node knows it, else after looking it up (the
/// cleanup leader may have no connection of an app whose webhooks it sends).
fn with_app(
    ctx: &Arc<Ctx>,
    app_id: &str,
    then: impl FnOnce(&Arc<Ctx>, &Arc<App>) + Send + 'static,
) {
    if let Some(app) = ctx.apps.known(app_id) {
        return then(ctx, &app);
    }
    let (ctx, app_id) = (ctx.clone(), app_id.to_string());
    tokio::spawn(async move {
        if let Some(app) = ctx.apps.by_id(&app_id).await.found() {
            then(&ctx, &app);
        }
    });
}

/// An app's record changed (here or on another node): look it up again; if it is disabled or
/// gone, its connections on this node close with 4003. If the app manager does not answer, the
/// cached app is kept and the lookup retried with backoff.
pub(crate) async fn app_changed(ctx: &Arc<Ctx>, app_id: &str) {
    // A change must not be missed because the database blinked: ask again, a few times.
    let mut wait = std::time::Duration::from_millis(250);
    for _ in 0..6 {
        match ctx.apps.refresh(app_id).await {
            Lookup::Found(app) if app.enabled => return,
            Lookup::Found(_) | Lookup::Unknown => {
                tracing::info!(
                    app = app_id,
                    "The app is disabled or gone; closing its connections."
                );
                return ctx.adapter.end_app(app_id);
            }
            Lookup::Unavailable | Lookup::Refused => {}
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    tracing::warn!(
        app = app_id,
        "A change to the app could not be read; the cached app stays until its TTL."
    );
}

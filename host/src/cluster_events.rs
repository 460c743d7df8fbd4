//! The node's side of the cluster: what it does when the cluster layer says something happened
//! (frames for local sockets, member and occupancy events, webhooks, metrics), and what it
//! tells the cluster layer about its own state. The one implementation of [`cluster::host::Host`].

use std::{collections::HashMap, sync::Arc};

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    adapter::Adapter,
    apps::Apps,
    apps::{App, Lookup},
    cluster::{
        self, Refusal,
        envelope::BusPosition,
        host::{Host, Snapshot},
        query::Query,
    },
    feed::{Feed, node_label, stats::NodeFigures},
    metrics::Metrics,
    plugins::Incoming,
    protocol::{Broadcast, frames, webhook::Hook},
    recovery::{Event, Record, Recovery},
    webhooks::Webhooks,
};

/// This node, as the cluster layer sees it: the services a change in the cluster-wide view
/// reaches.
#[derive(Debug)]
pub(crate) struct ClusterEvents {
    /// Channel state and delivery.
    pub adapter: Arc<Adapter>,
    /// The apps, for the webhooks of apps this node has no connection of.
    pub apps: Arc<Apps>,
    /// Member and occupancy webhooks.
    pub webhooks: Arc<Webhooks>,
    /// The console's figures and log.
    pub feed: Arc<Feed>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Whether broadcasts' tags are matched against subscribers' filters.
    pub tag_filtering: bool,
    /// Connection recovery, which delivers events with a history position in serial order.
    pub recovery: Option<Arc<Recovery>>,
}

impl ClusterEvents {
    /// Join the cluster (see [`cluster::reader::start`]) with this node as its host.
    pub(crate) async fn start(
        self: &Arc<Self>,
        inbox: mpsc::Receiver<Incoming>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let host: Arc<dyn Host> = self.clone();
        cluster::reader::start(self.adapter.cluster().clone(), host, inbox, shutdown).await;
    }

    /// Leave the cluster.
    pub(crate) async fn stop(&self) {
        cluster::reader::stop(self.adapter.cluster()).await;
    }

    /// This node's figures for the app, for its console or another node's.
    pub(crate) fn local_figures(&self, app: &str) -> NodeFigures {
        let connections = self.adapter.hub().connection_count(app);
        let queued = self.webhooks.queued(app);
        self.feed.stats.figures(app, self.feed.tap.node(), connections, queued)
    }
}

impl Host for ClusterEvents {
    fn has_member(&self, app: &str, channel: &str, user: &str) -> bool {
        self.adapter.hub().has_member(app, channel, user)
    }

    fn occupied(&self, app: &str, channel: &str) -> bool {
        self.adapter.hub().subscription_count(app, channel) > 0
    }

    fn online(&self, app: &str, user: &str) -> bool {
        !self.adapter.hub().online(app, &[user.to_string()]).is_empty()
    }

    fn snapshot(&self) -> Snapshot {
        let hub = self.adapter.hub();
        Snapshot {
            members: hub.presence_members(),
            occupied: hub.occupied_channels(),
            online: hub.signed_in_users(),
        }
    }

    fn connections(&self) -> HashMap<String, u64> {
        let hub = self.adapter.hub();
        self.apps
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
            Query::Figures { app } => {
                crate::cluster::query::answer_value(&self.local_figures(&app))
            }
            query => self.adapter.answer(query),
        }
    }

    fn broadcast(&self, to: &Broadcast<'_>, frame: String, position: Option<BusPosition>) {
        self.metrics.bus_broadcasts_received.inc();
        if let (Some(recovery), Some(position)) = (&self.recovery, position)
            && recovery.is_durable()
        {
            let record = Record {
                message_id: position.message_id,
                frame,
                tags: to.tags.cloned(),
                except: to.except.map(str::to_string),
            };
            let event = Event {
                stream_id: position.stream_id.into(),
                serial: position.serial,
                record,
                published: false,
            };
            return recovery.deliver(to.app, to.channel, event);
        }
        let to = to.tagged(to.tags.filter(|_| self.tag_filtering));
        self.adapter.hub().broadcast(&to, &Utf8Bytes::from(frame));
    }

    fn to_user(&self, app: &str, user: &str, frame: String) {
        self.adapter.hub().send_to_user(app, user, &Utf8Bytes::from(frame));
    }

    fn member_changed(&self, app: &str, channel: &str, user: &str, info: Option<&Value>) {
        self.member_event(app, channel, user, info, None);
    }

    fn occupancy_changed(&self, app: &str, channel: &str, occupied: bool) {
        self.occupancy_event(app, channel, occupied);
    }

    fn app_changed(&self, app: &str) {
        let (apps, adapter, app) = (self.apps.clone(), self.adapter.clone(), app.to_string());
        tokio::spawn(async move { app_changed(&apps, &adapter, &app).await });
    }

    fn console_watched(&self, node: u64, app: &str) {
        self.feed.tap.watched_by(node, app);
    }

    fn console_entries(&self, node: u64, app: &str, entries: Vec<Value>) {
        self.feed.tap.received(&node_label(node), app, entries);
    }

    fn history_degraded(&self, app: &str, channel: &str, degraded: bool) {
        let Some(recovery) = &self.recovery else { return };
        if degraded {
            recovery.degraded.mark(app, channel);
        } else {
            recovery.degraded.lift(app, channel);
        }
    }

    fn user_status_changed(&self, app: &str, user: &str, online: bool) {
        let name = if online { "online" } else { "offline" };
        let frame = Utf8Bytes::from(frames::watchlist_event(name, &[user.to_string()]));
        self.adapter.notify_watchers(app, user, &frame);
    }

    fn nodes_changed(&self, nodes: usize) {
        self.metrics.cluster_nodes.set(i64::try_from(nodes).unwrap_or(i64::MAX));
    }

    fn node_died(&self, _node: u64) {
        self.metrics.dead_nodes.inc();
    }

    fn refused(&self, refusal: Refusal) {
        self.metrics.bus_refused.inc();
        if let Refusal::Seal(error) = refusal {
            Metrics::count(&self.metrics.bus_unauthenticated, "reason", error.label());
        }
    }
}

impl ClusterEvents {
    /// A user appeared in (`info` given) or left a presence channel, as this node sees the
    /// cluster. Every node tells its own subscribers when its view changes, so each subscriber
    /// hears it once, whichever node saw the change first; only the cleanup leader sends the
    /// webhook, so it goes out once.
    pub(crate) fn member_event(
        &self,
        app_id: &str,
        channel: &str,
        user: &str,
        info: Option<&Value>,
        except: Option<&str>,
    ) {
        // A peer's full state can add tens of thousands of members to channels with no subscriber
        // here: no frame is built for nobody.
        if self.adapter.hub().subscription_count(app_id, channel) > 0 {
            let frame = match info {
                Some(info) => frames::member_added(channel, user, info),
                None => frames::member_removed(channel, user),
            };
            let to = Broadcast::to(app_id, channel).except(except);
            self.adapter.hub().broadcast(&to, &Utf8Bytes::from(frame));
        }
        if self.adapter.cluster().is_leader() {
            let (channel, user_id) = (channel.to_string(), user.to_string());
            let event = match info {
                Some(_) => Hook::MemberAdded { channel, user_id },
                None => Hook::MemberRemoved { channel, user_id },
            };
            self.with_app(app_id, move |webhooks, app| webhooks.emit(app, event));
        }
    }

    /// A channel gained its first subscriber (`occupied`) or lost its last, as this node sees the
    /// cluster: the cleanup leader sends the webhook, so it goes out once.
    pub(crate) fn occupancy_event(&self, app_id: &str, channel: &str, occupied: bool) {
        if !self.adapter.cluster().is_leader() {
            return;
        }
        let channel = channel.to_string();
        self.with_app(app_id, move |webhooks, app| {
            if occupied {
                webhooks.occupied(app, &channel);
            } else {
                webhooks.vacated(app, &channel);
            }
        });
    }

    /// Run `then` with the app: at once when this node knows it, else after looking it up (the
    /// cleanup leader may have no connection of an app whose webhooks it sends).
    fn with_app(
        &self,
        app_id: &str,
        then: impl FnOnce(&Arc<Webhooks>, &Arc<App>) + Send + 'static,
    ) {
        if let Some(app) = self.apps.known(app_id) {
            return then(&self.webhooks, &app);
        }
        let (apps, webhooks, app_id) =
            (self.apps.clone(), self.webhooks.clone(), app_id.to_string());
        tokio::spawn(async move {
            if let Some(app) = apps.by_id(&app_id).await.found() {
                then(&webhooks, &app);
            }
        });
    }
}

/// An app's record changed (here or on another node): look it up again; if it is disabled or
/// gone, its connections on this node close with 4003. If the app manager does not answer, the
/// cached app is kept and the lookup retried with backoff.
pub(crate) async fn app_changed(apps: &Apps, adapter: &Adapter, app_id: &str) {
    // A change must not be missed because the database blinked: ask again, a few times.
    let mut wait = std::time::Duration::from_millis(250);
    for _ in 0..6 {
        match apps.refresh(app_id).await {
            Lookup::Found(app) if app.enabled => return,
            Lookup::Found(_) | Lookup::Unknown => {
                tracing::info!(
                    app = app_id,
                    "The app is disabled or gone; closing its connections."
                );
                return adapter.end_app(app_id);
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

//! The adapter: every operation on channel state goes through here, and here it becomes
//! cluster-wide: local delivery first, then the bus; local counts plus the other nodes' answers;
//! local members plus the replicated presence registry.

use std::{collections::HashSet, sync::Arc};

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;

use crate::{
    cluster::{
        self, Cluster,
        envelope::{BusPosition, Control},
        query::{self, ChannelCount, ChannelList, Closed, Query},
    },
    hub::{ChannelFull, Conn, DeltaWish, Hub, Join, Positioned, Subscribed, Unsubscribed, Wants},
    protocol::Broadcast,
};

/// How often a publisher held back by congestion looks at the subscribers' queues again.
const CONGESTION_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// What a publisher found when it looked at a channel's subscribers on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Congestion {
    /// Most subscribers keep up.
    Clear,
    /// Most were behind, and caught up while the publisher waited.
    CaughtUp,
    /// Most are still behind.
    Behind,
}

/// Channel state and delivery, as the protocol and the HTTP API see them.
#[derive(Debug)]
pub(crate) struct Adapter {
    hub: Arc<Hub>,
    cluster: Arc<Cluster>,
}

/// What a channel looks like from the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ChannelInfo {
    /// Subscribed connections, on every node.
    pub subscription_count: usize,
    /// Distinct presence users, on every node.
    pub user_count: usize,
    /// Whether every node answered (else the counts are partial).
    pub complete: bool,
}

impl Adapter {
    /// An adapter over this node's hub and the cluster.
    pub(crate) fn new(hub: Arc<Hub>, cluster: Arc<Cluster>) -> Self {
        Self { hub, cluster }
    }

    /// This node's hub, for the node's side of the cluster layer (`cluster_events`), which
    /// acts on this node alone; the protocol and the HTTP API use the adapter's methods.
    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The cluster layer.
    pub(crate) fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Subscribe a local connection. The node subscribes to the channel's bus topic first, so
    /// that nothing published after the acknowledgement is missed. `ack` builds the
    /// acknowledgement (and what must follow it before the channel's events) from the
    /// channel's members on every node. In the outcome,
    /// `first_for_user` means the user is new to the channel cluster-wide, and `occupied` that
    /// the channel had no subscriber on any node.
    pub(crate) async fn subscribe(
        &self,
        app_id: &str,
        channel: &str,
        conn: &Conn,
        join: Option<Join>,
        wants: Wants,
        ack: impl FnOnce(&mut dyn Iterator<Item = (&str, &Value)>) -> Vec<Utf8Bytes>,
    ) -> Result<Subscribed, ChannelFull> {
        let topic = cluster::channel_topic(app_id, channel);
        self.cluster.acquire(topic.clone()).await;
        let remote = if join.is_some() {
            self.cluster.remote_members(app_id, channel)
        } else {
            Default::default()
        };
        let member = join.as_ref().map(|j| (j.user_id.clone(), j.user_info.clone()));
        // The member limit holds for the whole cluster: the registry's members count too.
        let join = join.map(|join| Join { elsewhere: remote.keys().cloned().collect(), ..join });
        let subscribed = self.hub.subscribe(app_id, channel, conn, join, wants, |local| {
            let local: Vec<(&str, &Value)> = local.collect();
            let ids: HashSet<&str> = local.iter().map(|(id, _)| *id).collect();
            let mut all = local.iter().copied().chain(
                remote
                    .iter()
                    .map(|(id, info)| (id.as_str(), info))
                    .filter(|(id, _)| !ids.contains(id)),
            );
            ack(&mut all)
        });
        match subscribed {
            Err(full) => {
                self.cluster.release(topic);
                Err(full)
            }
            Ok(mut outcome) => {
                if !outcome.new_subscriber {
                    self.cluster.release(topic);
                }
                if outcome.occupied {
                    let control = Control::Occupancy {
                        app: app_id.into(),
                        channel: channel.into(),
                        occupied: true,
                    };
                    self.cluster.send_control(cluster::CONTROL, control);
                    outcome.occupied = !self.cluster.occupancy.elsewhere(app_id, channel);
                }
                if let (true, Some((user_id, info))) = (outcome.first_for_user, member) {
                    outcome.first_for_user =
                        !self.cluster.present_elsewhere(app_id, channel, &user_id);
                    self.cluster.send_control(
                        cluster::CONTROL,
                        Control::Presence {
                            app: app_id.into(),
                            channel: channel.into(),
                            user_id,
                            info: Some(info),
                        },
                    );
                }
                Ok(outcome)
            }
        }
    }

    /// Unsubscribe a local connection. In the outcome, `removed_user` is a user who has left
    /// the channel cluster-wide, and `vacated` means no node has a subscriber left.
    pub(crate) fn unsubscribe(
        &self,
        app_id: &str,
        channel: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) -> Unsubscribed {
        let mut outcome = self.hub.unsubscribe(app_id, channel, socket_id, user_id);
        if outcome.was_subscribed {
            self.cluster.release(cluster::channel_topic(app_id, channel));
        }
        if outcome.vacated {
            let control =
                Control::Occupancy { app: app_id.into(), channel: channel.into(), occupied: false };
            self.cluster.send_control(cluster::CONTROL, control);
            outcome.vacated = !self.cluster.occupancy.elsewhere(app_id, channel);
        }
        if let Some(user) = outcome.removed_user.take() {
            self.cluster.send_control(
                cluster::CONTROL,
                Control::Presence {
                    app: app_id.into(),
                    channel: channel.into(),
                    user_id: user.clone(),
                    info: None,
                },
            );
            if !self.cluster.present_elsewhere(app_id, channel, &user) {
                outcome.removed_user = Some(user);
            }
        }
        outcome
    }

    /// Deliver `frame` to the channel's subscribers on every node except socket `except`; an
    /// event published with `tags` only to those whose tag filter it passes (each node judges
    /// its own subscribers); a `compressible` one (an app's event) as deltas to those who asked
    /// for them (each node keeps its own streams).
    pub(crate) fn broadcast(&self, to: &Broadcast<'_>, frame: &Utf8Bytes) -> usize {
        self.broadcast_positioned(to, frame, None)
    }

    /// [`Adapter::broadcast`], with the event's frame with its recovery position for the
    /// local sockets that want it (recovery runs on one node: other nodes get the plain frame).
    pub(crate) fn broadcast_positioned(
        &self,
        to: &Broadcast<'_>,
        frame: &Utf8Bytes,
        positioned: Option<Positioned<'_>>,
    ) -> usize {
        let sent = self.hub.broadcast_positioned(to, frame, positioned);
        self.cluster.publish_broadcast(to, frame.as_bytes(), None);
        sent
    }

    /// Send an event with its history position to the channel's subscribers on the other
    /// nodes; this node's get it through recovery's gate, in serial order.
    pub(crate) fn broadcast_elsewhere(
        &self,
        to: &Broadcast<'_>,
        frame: &str,
        position: BusPosition,
    ) {
        self.cluster.publish_broadcast(to, frame.as_bytes(), Some(position));
    }

    /// Count a new connection of the app if it is under `max` (0 = unlimited), with socket
    /// counting on the whole cluster's connections (the other nodes' from their heartbeats).
    pub(crate) fn admit(&self, app_id: &str, max: u64) -> bool {
        let elsewhere = if self.cluster.settings().socket_counting {
            self.cluster.remote_connections(app_id)
        } else {
            0
        };
        self.hub.admit(app_id, max, elsewhere)
    }

    /// Forget a connection counted by [`Adapter::admit`].
    pub(crate) fn release(&self, app_id: &str) {
        self.hub.release(app_id);
    }

    /// Cancelled when the app's connections on this node must close (the app was disabled).
    pub(crate) fn app_ending(&self, app_id: &str) -> tokio_util::sync::CancellationToken {
        self.hub.app_ending(app_id)
    }

    /// Close the app's connections on this node with 4003.
    pub(crate) fn end_app(&self, app_id: &str) {
        self.hub.end_app(app_id);
    }

    /// Send `socket_id` deltas on `channel` from now on (this node's streams); whether it is
    /// subscribed.
    pub(crate) fn enable_deltas(
        &self,
        app_id: &str,
        channel: &str,
        socket_id: &str,
        wish: DeltaWish,
    ) -> bool {
        self.hub.enable_deltas(app_id, channel, socket_id, wish)
    }

    /// `socket_id` lost its delta bases on `channel`: its next event there goes whole.
    pub(crate) fn resync_deltas(&self, app_id: &str, channel: &str, socket_id: &str) {
        self.hub.resync_deltas(app_id, channel, socket_id);
    }

    /// Make `conn` a watcher of each of `user_ids`.
    pub(crate) fn watch(&self, app_id: &str, conn: &Conn, user_ids: &[String]) {
        self.hub.watch(app_id, conn, user_ids);
    }

    /// Stop `socket_id` watching `user_ids`.
    pub(crate) fn unwatch(&self, app_id: &str, socket_id: &str, user_ids: &[String]) {
        self.hub.unwatch(app_id, socket_id, user_ids);
    }

    /// Wait while most of `channel`'s subscribers on this node are behind, up to `max_wait`.
    /// Only this node's subscribers are looked at: events published on other nodes reach them
    /// over the bus, where a full queue still closes the slow reader with 4100.
    pub(crate) async fn wait_uncongested(
        &self,
        app_id: &str,
        channel: &str,
        max_wait: std::time::Duration,
    ) -> Congestion {
        if !self.hub.congested(app_id, channel, false) {
            return Congestion::Clear;
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            if !self.hub.congested(app_id, channel, true) {
                return Congestion::CaughtUp;
            }
            if tokio::time::Instant::now() >= deadline {
                return Congestion::Behind;
            }
            // Queues drain at the readers' pace; a short pause between looks is enough.
            tokio::time::sleep(CONGESTION_POLL.min(max_wait)).await;
        }
    }

    /// Counts for one channel, on every node.
    pub(crate) async fn channel_info(&self, app_id: &str, channel: &str) -> ChannelInfo {
        let mut subscription_count = self.hub.subscription_count(app_id, channel);
        let query = Query::Channel { app: app_id.into(), channel: channel.into() };
        let answers = self.cluster.request(&query, false, |_| false).await;
        for answer in query::parse::<ChannelCount>(&answers.answers) {
            subscription_count += answer.subscription_count;
        }
        let user_count = self.user_ids(app_id, channel).await.len();
        ChannelInfo { subscription_count, user_count, complete: answers.complete }
    }

    /// Occupied channels whose name starts with `prefix`, on every node, with their counts (each
    /// marked complete or not).
    pub(crate) async fn channels(&self, app_id: &str, prefix: &str) -> Vec<(String, ChannelInfo)> {
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for (name, subs, _) in self.hub.channels(app_id, prefix) {
            *counts.entry(name).or_default() += subs;
        }
        let query = Query::Channels { app: app_id.into(), prefix: prefix.into() };
        let answers = self.cluster.request(&query, false, |_| false).await;
        for answer in query::parse::<ChannelList>(&answers.answers) {
            for (name, subs) in answer.channels {
                *counts.entry(name).or_default() += subs;
            }
        }
        let mut out = Vec::with_capacity(counts.len());
        for (name, subscription_count) in counts {
            let user_count = self.user_ids(app_id, &name).await.len();
            out.push((
                name,
                ChannelInfo { subscription_count, user_count, complete: answers.complete },
            ));
        }
        out
    }

    /// The distinct users of a presence channel, on every node.
    pub(crate) async fn user_ids(&self, app_id: &str, channel: &str) -> Vec<String> {
        let mut users: Vec<String> = self.hub.user_ids(app_id, channel);
        let known: HashSet<String> = users.iter().cloned().collect();
        users.extend(
            self.cluster.remote_members(app_id, channel).into_keys().filter(|u| !known.contains(u)),
        );
        users.sort();
        users
    }

    /// Deliver `frame` to every connection signed in as `user_id`, on every node.
    pub(crate) fn send_to_user(&self, app_id: &str, user_id: &str, frame: &Utf8Bytes) -> usize {
        if self.cluster.has_peers() {
            let control = Control::ToUser {
                app: app_id.into(),
                user_id: user_id.into(),
                frame: frame.as_str().into(),
            };
            self.cluster.send_control(cluster::CONTROL, control);
        }
        self.hub.send_to_user(app_id, user_id, frame)
    }

    /// Close every connection signed in as `user_id` with `code`, on every node; how many.
    pub(crate) async fn terminate_user(&self, app_id: &str, user_id: &str, code: u16) -> usize {
        let conns = self.hub.user_connections(app_id, user_id);
        for conn in &conns {
            conn.close(code);
        }
        let query = Query::Terminate { app: app_id.into(), user: user_id.into(), code };
        let answers = self.cluster.request(&query, false, |_| false).await;
        let remote: usize = query::parse::<Closed>(&answers.answers).map(|c| c.closed).sum();
        conns.len() + remote
    }

    /// Which of `user_ids` are online on any node: this node's sign-ins and the ones the other
    /// nodes replicate, so a watchlist never waits for a peer's answer.
    pub(crate) fn online(&self, app_id: &str, user_ids: &[String]) -> Vec<String> {
        let mut online: Vec<String> = self.hub.online(app_id, user_ids);
        for id in user_ids {
            if !online.contains(id) && self.cluster.online.elsewhere(app_id, id) {
                online.push(id.clone());
            }
        }
        online
    }

    /// Record that `conn` signed in as `user_id`; whether the user just came online
    /// cluster-wide (their first connection anywhere).
    pub(crate) fn sign_in(&self, app_id: &str, user_id: &str, conn: &Conn) -> bool {
        if !self.hub.sign_in(app_id, user_id, conn) {
            return false;
        }
        let status =
            Control::UserStatus { app: app_id.into(), user_id: user_id.into(), online: true };
        self.cluster.send_control(cluster::CONTROL, status);
        !self.cluster.online.elsewhere(app_id, user_id)
    }

    /// Forget a signed-in connection; whether the user just went offline cluster-wide.
    pub(crate) fn sign_out(&self, app_id: &str, user_id: &str, socket_id: &str) -> bool {
        if !self.hub.sign_out(app_id, user_id, socket_id) {
            return false;
        }
        let status =
            Control::UserStatus { app: app_id.into(), user_id: user_id.into(), online: false };
        self.cluster.send_control(cluster::CONTROL, status);
        !self.cluster.online.elsewhere(app_id, user_id)
    }

    /// Tell the watchers of `user_id` it came online or went offline.
    pub(crate) fn notify_watchers(&self, app_id: &str, user_id: &str, frame: &Utf8Bytes) {
        self.hub.send_to_watchers(app_id, user_id, frame);
    }

    /// This node's answer to another node's request.
    pub(crate) fn answer(&self, query: Query) -> Value {
        match query {
            Query::Channel { app, channel } => {
                let subscription_count = self.hub.subscription_count(&app, &channel);
                query::answer_value(&ChannelCount { subscription_count })
            }
            Query::Channels { app, prefix } => {
                let channels =
                    self.hub.channels(&app, &prefix).into_iter().map(|(n, s, _)| (n, s)).collect();
                query::answer_value(&ChannelList { channels })
            }
            Query::Terminate { app, user, code } => {
                let conns = self.hub.user_connections(&app, &user);
                for conn in &conns {
                    conn.close(code);
                }
                query::answer_value(&Closed { closed: conns.len() })
            }
            Query::Online { app, ids } => {
                query::answer_value(&query::Online { online: self.hub.online(&app, &ids) })
            }
            // The console's figures are not channel state: the host answers them.
            Query::Figures { .. } => serde_json::json!({ "error": "not answered here" }),
        }
    }
}

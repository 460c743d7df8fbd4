//! The bus reader and the state worker: what this node does with what the other nodes send.
//!
//! One task reads the bus. It opens a broadcast (seal, header, replay window) and hands it to
//! the host at once; a message whose header says it is a control message goes, unopened, to a
//! second task that authenticates, decodes and applies it. A control message can be large (a
//! presence sync of tens of thousands of members is a megabyte of JSON: a MAC over all of it, a
//! decode and a linear apply), and on its own task it delays only the control messages queued
//! behind it, never a broadcast. Control messages stay in arrival order on that one task because
//! each one's meaning depends on those before it (a join after a sync, a goodbye after both);
//! dead-node cleanup runs there too, for the same reason.

use std::sync::Arc;

use serde_json::Value;
use tokio::{sync::mpsc, time::Instant};

use super::{
    CONTROL, Changes, Cluster, PerNode, Refusal,
    envelope::{Body, Control},
    host::Host,
    node_topic, presence_state,
};
use crate::{plugins::Incoming, protocol::Broadcast, telemetry::LogLimiter};

/// How many control messages may wait for the state worker before the reader waits too (and
/// with it the transport's inbox, which counts what it drops).
pub(crate) const STATE_QUEUE: usize = 65_536;

/// Work for the state worker, in order.
#[derive(Debug)]
pub(super) enum Job {
    /// A bus message that says it holds a control message, not yet opened, and when it was
    /// received (its time window is checked against that, not against when it is opened).
    Control(Incoming, u64),
    /// Look for nodes that stopped answering, and remove them.
    Cleanup,
}

/// Read the bus until the transport closes the inbox.
pub(super) async fn read(
    cluster: Arc<Cluster>,
    host: Arc<dyn Host>,
    mut inbox: mpsc::Receiver<Incoming>,
    jobs: mpsc::Sender<Job>,
) {
    let logged = LogLimiter::default();
    while let Some(message) = inbox.recv().await {
        // Even authenticating a big control message takes time (a MAC over megabytes): it is
        // opened on the state worker too.
        let received = super::now_ms();
        if cluster.carries_control(message.payload()) {
            if jobs.send(Job::Control(message, received)).await.is_err() {
                return;
            }
            continue;
        }
        let envelope = match cluster.open(message.payload(), received) {
            Ok(envelope) => envelope,
            Err(refusal) => {
                refused(&*host, refusal, &message.topic, &logged);
                continue;
            }
        };
        // What says it is no control message and opens is a broadcast.
        let Body::Broadcast { app, channel, except, tags, compressible, position, frame } =
            envelope.body
        else {
            continue;
        };
        if envelope.node == cluster.node_id {
            continue;
        }
        match String::from_utf8(frame) {
            Ok(frame) => {
                let to = Broadcast::to(&app, &channel)
                    .except(except.as_deref())
                    .tagged(tags.as_ref())
                    .compressible(compressible);
                host.broadcast(&to, frame, position);
            }
            Err(_) => {
                let refusal = Refusal::Decode(super::DecodeError::Malformed("frame not UTF-8"));
                refused(&*host, refusal, &message.topic, &logged);
            }
        }
    }
}

/// Count a refused bus message (through the host) and log it at most once a second: a flood of
/// forged messages must not flood the log.
fn refused(host: &dyn Host, refusal: Refusal, topic: &str, logged: &LogLimiter) {
    host.refused(refusal);
    if logged.allow() {
        tracing::warn!(error = %refusal, topic, "Refused a bus message.");
    }
}

/// Apply control messages and cleanups, in order, until every sender is gone.
pub(super) async fn apply(
    cluster: Arc<Cluster>,
    host: Arc<dyn Host>,
    mut jobs: mpsc::Receiver<Job>,
) {
    let state = State { cluster, host, logged: LogLimiter::default() };
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Control(message, received) => state.open(&message, received),
            Job::Cleanup => {
                for node in state.cluster.expired() {
                    tracing::warn!(node, "A node stopped answering; removing it and its members.");
                    state.host.node_died(node);
                    state.gone(node);
                }
            }
        }
    }
}

/// The replicated state and the host, and how a change in one is told to the other.
struct State {
    cluster: Arc<Cluster>,
    host: Arc<dyn Host>,
    logged: LogLimiter,
}

impl State {
    /// Open a bus message that says it holds a control message, and apply it.
    fn open(&self, message: &Incoming, received: u64) {
        let opened = self.cluster.open(message.payload(), received).and_then(|envelope| {
            let Body::Control(body) = envelope.body else {
                return Err(super::DecodeError::Malformed("not a control message").into());
            };
            Ok((envelope.node, envelope.seq, Control::decode(body)?))
        });
        match opened {
            Ok((node, _, _)) if node == self.cluster.node_id => {}
            Ok((node, seq, control)) => self.control(node, seq, control),
            Err(refusal) => refused(&*self.host, refusal, &message.topic, &self.logged),
        }
    }

    fn control(&self, node: u64, seq: u64, control: Control) {
        let cluster = &self.cluster;
        let new = !matches!(control, Control::Goodbye) && cluster.saw(node);
        if new {
            self.host.nodes_changed(cluster.peers().len() + 1);
            self.welcome(node);
        }
        match control {
            Control::Hello { reply } => {
                if reply && !new {
                    self.welcome(node);
                }
            }
            Control::Heartbeat { connections } => cluster.apply_connections(node, connections),
            Control::Goodbye => {
                tracing::info!(node, "A node left the cluster.");
                self.gone(node);
            }
            Control::Request { id, query } => {
                let answer = match super::query::Query::read(&query) {
                    Ok(query) => self.host.answer(query),
                    Err(error) => serde_json::json!({ "error": error }),
                };
                cluster.send_control(&node_topic(node), Control::Response { id, answer });
            }
            Control::Response { id, answer } => cluster.answered(id, answer),
            Control::Presence { app, channel, user_id, info } => {
                let before = self.present(&app, &channel, &user_id);
                cluster.apply_presence(
                    node,
                    seq,
                    app.clone(),
                    channel.clone(),
                    user_id.clone(),
                    info.clone(),
                );
                if before != self.present(&app, &channel, &user_id) {
                    self.host.member_changed(&app, &channel, &user_id, info.as_ref());
                }
            }
            Control::Occupancy { app, channel, occupied } => self.set(
                &cluster.occupancy,
                node,
                (app, channel),
                occupied,
                |a, c| self.occupied(a, c),
                |a, c, now| self.host.occupancy_changed(a, c, now),
            ),
            Control::UserStatus { app, user_id, online } => self.set(
                &cluster.online,
                node,
                (app, user_id),
                online,
                |a, u| self.online(a, u),
                |a, u, now| self.host.user_status_changed(a, u, now),
            ),
            Control::PresenceSync { state, occupied, online } => {
                self.sync(node, seq, state, occupied, online);
            }
            Control::ToUser { app, user_id, frame } => self.host.to_user(&app, &user_id, frame),
            Control::AppChanged { app } => self.host.app_changed(&app),
            Control::ConsoleWatch { app } => self.host.console_watched(node, &app),
            Control::ConsoleEntries { app, entries } => {
                self.host.console_entries(node, &app, entries);
            }
            Control::HistoryDegraded { app, channel, degraded } => {
                self.host.history_degraded(&app, &channel, degraded);
            }
        }
    }

    /// Send this node's state and a hello to `node`, which has just appeared.
    fn welcome(&self, node: u64) {
        let topic = node_topic(node);
        self.cluster.send_control(&topic, Control::Hello { reply: false });
        let snapshot = self.host.snapshot();
        let state = presence_state(snapshot.members);
        let (occupied, online) = (snapshot.occupied, snapshot.online);
        self.cluster.send_control(&topic, Control::PresenceSync { state, occupied, online });
        tracing::info!(node, "A node joined the cluster.");
    }

    /// Replace `node`'s state with a full one, and tell the host of every change it makes.
    /// Linear in the members before and after.
    fn sync(
        &self,
        node: u64,
        seq: u64,
        state: Value,
        occupied: Vec<(String, String)>,
        online: Vec<(String, String)>,
    ) {
        let started = Instant::now();
        self.replace(
            &self.cluster.online,
            node,
            online,
            |a, u| self.online(a, u),
            |a, u, now| {
                self.host.user_status_changed(a, u, now);
            },
        );
        self.replace(
            &self.cluster.occupancy,
            node,
            occupied,
            |a, c| self.occupied(a, c),
            |a, c, now| self.host.occupancy_changed(a, c, now),
        );
        let changes = self.cluster.apply_presence_sync(node, seq, state);
        let mut changed = 0;
        for Changes { app, channel, members } in changes {
            changed += members.len();
            for (user, info) in members {
                if !self.host.has_member(&app, &channel, &user) {
                    self.host.member_changed(&app, &channel, &user, info.as_ref());
                }
            }
        }
        tracing::debug!(
            node,
            changed,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "Applied a node's full state."
        );
    }

    /// Replace what `node` holds in `set` with `new`, and announce every pair whose state this
    /// node sees change (`anywhere` says the state; `event` announces the new one).
    fn replace(
        &self,
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

    /// Record whether `node` holds `key` in `set`, and announce the pair's new state if this
    /// node sees it change (the one-pair case of [`State::replace`]).
    fn set(
        &self,
        set: &PerNode,
        node: u64,
        key: (String, String),
        held: bool,
        anywhere: impl Fn(&str, &str) -> bool,
        event: impl Fn(&str, &str, bool),
    ) {
        let before = anywhere(&key.0, &key.1);
        set.set(node, key.clone(), held);
        let now = anywhere(&key.0, &key.1);
        if before != now {
            event(&key.0, &key.1, now);
        }
    }

    /// Forget `node`: users that were only there leave their channels, and so on.
    fn gone(&self, node: u64) {
        let departed = self.cluster.forget(node);
        self.host.nodes_changed(self.cluster.peers().len() + 1);
        for (app, channel, user) in departed.members {
            if !self.present(&app, &channel, &user) {
                self.host.member_changed(&app, &channel, &user, None);
            }
        }
        for (app, user) in departed.users {
            if !self.online(&app, &user) {
                self.host.user_status_changed(&app, &user, false);
            }
        }
        for (app, channel) in departed.channels {
            if !self.occupied(&app, &channel) {
                self.host.occupancy_changed(&app, &channel, false);
            }
        }
    }

    /// Whether `user` is signed in anywhere, as this node sees it.
    fn online(&self, app: &str, user: &str) -> bool {
        self.host.online(app, user) || self.cluster.online.elsewhere(app, user)
    }

    /// Whether the channel has a subscriber anywhere, as this node sees it.
    fn occupied(&self, app: &str, channel: &str) -> bool {
        self.host.occupied(app, channel) || self.cluster.occupancy.elsewhere(app, channel)
    }

    /// Whether `user` is in the channel anywhere, as this node sees it.
    fn present(&self, app: &str, channel: &str, user: &str) -> bool {
        self.host.has_member(app, channel, user)
            || self.cluster.present_elsewhere(app, channel, user)
    }
}

/// Join the cluster: listen on the control and own topics, say hello, and start the tasks that
/// read the bus, apply what it says, and keep membership (heartbeats and cleanup) until
/// `shutdown`.
pub(crate) async fn start(
    cluster: Arc<Cluster>,
    host: Arc<dyn Host>,
    inbox: mpsc::Receiver<Incoming>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (jobs, queue) = mpsc::channel(STATE_QUEUE);
    tokio::spawn(read(cluster.clone(), host.clone(), inbox, jobs.clone()));
    tokio::spawn(apply(cluster.clone(), host.clone(), queue));
    cluster.acquire(CONTROL.to_string()).await;
    cluster.acquire(node_topic(cluster.node_id)).await;
    cluster.send_control_awaited(CONTROL, Control::Hello { reply: true }).await;
    tokio::spawn(health(cluster.clone(), host, jobs, shutdown));
    tracing::info!(node_id = cluster.node_id, "Joined the cluster.");
}

/// Leave the cluster: tell the others, so they need not wait for the node timeout.
pub(crate) async fn stop(cluster: &Cluster) {
    if cluster.has_peers() {
        cluster.send_control_awaited(CONTROL, Control::Goodbye).await;
    }
}

/// Heartbeats, and dead-node cleanup (on the state worker, in order with what peers said).
async fn health(
    cluster: Arc<Cluster>,
    host: Arc<dyn Host>,
    jobs: mpsc::Sender<Job>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let settings = cluster.settings().clone();
    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
    let mut cleanup = tokio::time::interval(settings.cleanup_interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = heartbeat.tick() => {
                let connections =
                    if settings.socket_counting { host.connections() } else { Default::default() };
                cluster.send_control(CONTROL, Control::Heartbeat { connections });
            }
            _ = cleanup.tick() => {
                // Never wait here: a full queue must not stop this node's heartbeats (the next
                // tick asks again).
                if let Err(mpsc::error::TrySendError::Closed(_)) = jobs.try_send(Job::Cleanup) {
                    return;
                }
            }
        }
    }
}

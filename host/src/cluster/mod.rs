//! The cluster layer: what makes several nodes behave as one server, over any transport.
//!
//! - Broadcast with interest routing: a channel's events go to the topic `#broadcast:<app>:<channel>`,
//!   which a node subscribes to while it has a local subscriber to the channel (before the
//!   subscription is acknowledged), so nodes receive only what their clients want.
//! - Membership: every node says hello at start, sends a heartbeat every interval and goodbye at
//!   shutdown on `#control`; a node silent for the node timeout is dead. Alone, a node publishes
//!   nothing but its heartbeat.
//! - Requests: questions to every other live node (counts, channel lists, terminations), answered
//!   on the asker's own topic `#node:<id>`, waited for up to a timeout, partial answers flagged.
//! - Presence registry: each node replicates its presence members (joins and leaves, stamped with
//!   its own increasing sequence numbers, and a full state to every newcomer), so member events
//!   and member lists are cluster-wide; a dead node's members are removed in one step.
//!
//! The layer depends on nothing above it: it tells the node what happened, and asks what the
//! node holds, through [`host::Host`]. [`reader`] reads the bus and applies what it says.

pub mod envelope;
pub mod host;
pub mod query;
pub mod reader;
pub mod seal;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

pub use self::seal::now_ms;
use self::{
    envelope::{Body, Control, DecodeError, Envelope},
    seal::{Seal, SealError},
};
pub use crate::config::ClusterSettings;
use crate::{
    plugins::{ErrorCode, Transport},
    protocol::Broadcast,
    telemetry::LogLimiter,
};

/// The most entries one peer may hold in each map of its replicated state (apps it counts
/// connections for, members, channels, users): a peer (buggy, or writing to the bus without a
/// secret) cannot grow this node's memory without bound. Past it, new entries are ignored.
pub const MAX_PEER_ENTRIES: usize = 1_000_000;

/// The topic every node listens to.
pub const CONTROL: &str = "#control";

/// A node's own topic (responses, state for a newcomer).
pub fn node_topic(node: u64) -> String {
    format!("#node:{node}")
}

/// The topic of a channel's broadcasts.
pub fn channel_topic(app: &str, channel: &str) -> String {
    format!("#broadcast:{app}:{channel}")
}

/// Remote presence: for one node, app -> channel -> user -> info.
#[derive(Debug, Default)]
struct NodePresence {
    /// The sequence number of the last full state applied; older incremental changes are
    /// already in it.
    snapshot_seq: u64,
    members: HashMap<(String, String), HashMap<String, Value>>,
}

type InterestOp = (String, bool, oneshot::Sender<()>);

/// The cluster state of this node.
#[derive(Debug)]
pub struct Cluster {
    /// This node's id.
    pub node_id: u64,
    transport: Arc<Transport>,
    settings: ClusterSettings,
    seq: AtomicU64,
    members: Mutex<HashMap<u64, Instant>>,
    presence: Mutex<HashMap<u64, NodePresence>>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Value>>>,
    interest: mpsc::UnboundedSender<InterestOp>,
    /// Channels with a subscriber on each other node, as (app, channel).
    pub occupancy: PerNode,
    /// Connections per app on each other node, from their heartbeats (socket counting).
    connections: Mutex<HashMap<u64, HashMap<String, u64>>>,
    /// Users signed in on each other node, as (app, user).
    pub online: PerNode,
    /// Publishes the transport refused (back-pressure, or the backend down).
    publish_refused: Counter,
    refusals_logged: LogLimiter,
    seal: Option<Seal>,
}

/// Why a bus message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not authenticated by the cluster secret (see [`seal`]).
    #[error("{0}")]
    Seal(#[from] SealError),
    /// Not a readable envelope.
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

/// Pairs of names (app and channel, or app and user) that each other node holds.
#[derive(Debug, Default)]
pub struct PerNode(Mutex<HashMap<u64, HashSet<(String, String)>>>);

impl PerNode {
    /// Record whether `node` holds `key`.
    pub fn set(&self, node: u64, key: (String, String), held: bool) {
        let mut all = self.0.lock().expect("cluster lock");
        let keys = all.entry(node).or_default();
        if held && keys.len() < MAX_PEER_ENTRIES {
            keys.insert(key);
        } else {
            keys.remove(&key);
        }
    }

    /// What replacing `node`'s keys with `new` touches: its keys now and those in `new`.
    pub fn touched(&self, node: u64, new: &[(String, String)]) -> Vec<(String, String)> {
        let mut keys: Vec<(String, String)> = self
            .0
            .lock()
            .expect("cluster lock")
            .get(&node)
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default();
        keys.extend(new.iter().cloned());
        keys.sort();
        keys.dedup();
        keys
    }

    /// Replace `node`'s keys.
    pub fn replace(&self, node: u64, keys: Vec<(String, String)>) {
        let keys = keys.into_iter().take(MAX_PEER_ENTRIES).collect();
        self.0.lock().expect("cluster lock").insert(node, keys);
    }

    /// Whether another node holds (`a`, `b`).
    pub fn elsewhere(&self, a: &str, b: &str) -> bool {
        let key = (a.to_string(), b.to_string());
        self.0.lock().expect("cluster lock").values().any(|k| k.contains(&key))
    }

    /// Forget `node`; what it held.
    pub fn remove(&self, node: u64) -> Vec<(String, String)> {
        self.0.lock().expect("cluster lock").remove(&node).unwrap_or_default().into_iter().collect()
    }
}

/// What a departed node leaves behind.
#[derive(Debug, Default)]
pub struct Departed {
    /// Its presence members, as (app, channel, user).
    pub members: Vec<(String, String, String)>,
    /// The channels it had subscribers for, as (app, channel).
    pub channels: Vec<(String, String)>,
    /// The users signed in on it, as (app, user).
    pub users: Vec<(String, String)>,
}

/// Answers to a request, and whether every live node answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    /// What the other nodes answered.
    pub answers: Vec<Value>,
    /// Whether all of them did.
    pub complete: bool,
}

impl Cluster {
    /// A cluster layer over `transport`; starts the task that keeps topic subscriptions.
    /// Every publish the transport refuses is counted in `publish_refused`.
    pub fn new(
        transport: Arc<Transport>,
        settings: ClusterSettings,
        publish_refused: Counter,
    ) -> Arc<Self> {
        let (interest, ops) = mpsc::unbounded_channel();
        let node_id = loop {
            let id = rand::random::<u64>() >> 1;
            if id != 0 {
                break id;
            }
        };
        let seal = settings.secret.as_deref().map(Seal::new);
        let cluster = Arc::new(Self {
            node_id,
            transport,
            settings,
            seq: AtomicU64::new(1),
            members: Mutex::default(),
            presence: Mutex::default(),
            pending: Mutex::default(),
            interest,
            occupancy: PerNode::default(),
            connections: Mutex::default(),
            online: PerNode::default(),
            publish_refused,
            refusals_logged: LogLimiter::default(),
            seal,
        });
        tokio::spawn(keep_interest(cluster.transport.clone(), ops));
        cluster
    }

    /// The cluster timing.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    fn envelope(&self, body: Body) -> Vec<u8> {
        let envelope =
            Envelope { node: self.node_id, seq: self.seq.fetch_add(1, Ordering::Relaxed), body }
                .encode();
        match &self.seal {
            Some(seal) => seal.seal(&envelope),
            None => envelope,
        }
    }

    /// Whether envelopes are sealed with a cluster secret.
    pub fn authenticated(&self) -> bool {
        self.seal.is_some()
    }

    /// Read a bus message received at `received` (milliseconds since the epoch, [`now_ms`]):
    /// unseal it (with a secret), read its header, and refuse a replay. A control body is left
    /// undecoded (see [`Control::decode`]).
    pub fn open<'a>(
        &self,
        message: &'a [u8],
        received: u64,
    ) -> Result<Envelope<&'a [u8]>, Refusal> {
        let bytes = match &self.seal {
            Some(seal) => seal.open_at(message, received)?,
            None => message,
        };
        let envelope = Envelope::read(bytes)?;
        // Node ids are never 0 (see `Cluster::new`): one that is was made up.
        if envelope.node == 0 {
            return Err(DecodeError::Malformed("node id 0").into());
        }
        if let Some(seal) = &self.seal
            && envelope.node != self.node_id
        {
            let control = matches!(envelope.body, Body::Control(_));
            seal.check_replay(envelope.node, control, envelope.seq)?;
        }
        Ok(envelope)
    }

    /// Whether a bus message says it holds a control message. Read before anything is checked,
    /// only to choose the task that opens it ([`Cluster::open`] still checks everything).
    pub fn carries_control(&self, message: &[u8]) -> bool {
        let envelope = match &self.seal {
            Some(_) => message.get(seal::HEADER..).unwrap_or_default(),
            None => message,
        };
        envelope::is_control(envelope)
    }

    /// Whether another live node is known.
    pub fn has_peers(&self) -> bool {
        !self.members.lock().expect("cluster lock").is_empty()
    }

    /// The other live nodes.
    pub fn peers(&self) -> Vec<u64> {
        self.members.lock().expect("cluster lock").keys().copied().collect()
    }

    /// Record that `node` is alive; whether it was unknown.
    pub fn saw(&self, node: u64) -> bool {
        self.members.lock().expect("cluster lock").insert(node, Instant::now()).is_none()
    }

    /// Record `node`'s connections per app.
    pub fn apply_connections(&self, node: u64, mut counts: HashMap<String, u64>) {
        if counts.len() > MAX_PEER_ENTRIES {
            counts = counts.into_iter().take(MAX_PEER_ENTRIES).collect();
        }
        self.connections.lock().expect("cluster lock").insert(node, counts);
    }

    /// The app's connections on the other nodes, as their last heartbeats said.
    pub fn remote_connections(&self, app: &str) -> u64 {
        // Counts come from peers: a huge one must not wrap the sum (in release) into a small one.
        self.connections
            .lock()
            .expect("cluster lock")
            .values()
            .filter_map(|c| c.get(app))
            .fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    /// Forget `node` and all it told: its presence members, occupied channels, signed-in users
    /// and connection counts.
    pub fn forget(&self, node: u64) -> Departed {
        if let Some(seal) = &self.seal {
            seal.forget(node);
        }
        let channels = self.occupancy.remove(node);
        self.members.lock().expect("cluster lock").remove(&node);
        self.connections.lock().expect("cluster lock").remove(&node);
        let users = self.online.remove(node);
        let gone = self.presence.lock().expect("cluster lock").remove(&node).unwrap_or_default();
        let members = gone
            .members
            .into_iter()
            .flat_map(|((app, channel), users)| {
                users.into_keys().map(move |user| (app.clone(), channel.clone(), user))
            })
            .collect();
        Departed { members, channels, users }
    }

    /// Nodes silent for longer than the node timeout.
    pub fn expired(&self) -> Vec<u64> {
        let now = Instant::now();
        self.members
            .lock()
            .expect("cluster lock")
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) > self.settings.node_timeout)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether this node is the cleanup leader: the lowest id among the live nodes.
    pub fn is_leader(&self) -> bool {
        self.members.lock().expect("cluster lock").keys().all(|id| *id > self.node_id)
    }

    /// Publish a broadcast to the other nodes (none if alone). Never waits.
    pub fn publish_broadcast(&self, to: &Broadcast<'_>, frame: &[u8]) {
        let Broadcast { app, channel, except, tags, compressible } = *to;
        if !self.has_peers() {
            return;
        }
        let body = Body::Broadcast {
            app: app.to_string(),
            channel: channel.to_string(),
            except: except.map(str::to_string),
            tags: tags.cloned(),
            compressible,
            frame: frame.to_vec(),
        };
        if let Err(error) =
            self.transport.try_publish(&channel_topic(app, channel), self.envelope(body))
        {
            self.refused(&error, channel);
        }
    }

    /// Count a publish the transport refused; log it at most once a second.
    fn refused(&self, error: &dyn std::fmt::Display, topic: &str) {
        self.publish_refused.inc();
        if self.refusals_logged.allow() {
            tracing::warn!(%error, topic, "Publishes to the other nodes are being refused (counted in bus_publish_refused).");
        }
    }

    /// Tell every other node that an app's record changed.
    pub fn announce_app_changed(&self, app: &str) {
        self.send_control(CONTROL, Control::AppChanged { app: app.to_string() });
    }

    /// Send a control message to `topic` (enqueued in order with broadcasts).
    pub fn send_control(&self, topic: &str, control: Control) {
        if let Err(error) = self.transport.try_publish(topic, self.envelope(Body::Control(control)))
        {
            self.refused(&error, topic);
        }
    }

    /// Send a control message and wait for the transport to take it.
    pub async fn send_control_awaited(&self, topic: &str, control: Control) {
        if let Err(error) =
            self.transport.publish(topic, self.envelope(Body::Control(control))).await
        {
            tracing::warn!(%error, topic, "A control message could not be published.");
        }
    }

    /// Make sure this node receives `topic` (reference-counted; resolves once subscribed).
    pub async fn acquire(&self, topic: String) {
        let (done, wait) = oneshot::channel();
        if self.interest.send((topic, true, done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Drop one reference to `topic`; the last one unsubscribes.
    pub fn release(&self, topic: String) {
        let (done, _) = oneshot::channel();
        let _ = self.interest.send((topic, false, done));
    }

    /// Ask every other live node `query`; wait for all answers, or until `enough` says the
    /// answers so far settle the question (a positive existence answer), or the timeout (short
    /// for `fast` questions: 50 ms per node).
    pub async fn request(
        &self,
        query: &query::Query,
        fast: bool,
        enough: impl Fn(&[Value]) -> bool,
    ) -> Answers {
        let expected = self.peers().len();
        if expected == 0 {
            return Answers { answers: Vec::new(), complete: true };
        }
        let id = rand::random::<u64>();
        // Room for every peer's answer; extra answers (a peer answering twice, or forging
        // answers) are dropped rather than queued.
        let (tx, mut rx) = mpsc::channel(expected.saturating_mul(2));
        self.pending.lock().expect("cluster lock").insert(id, tx);
        // Removed however this ends, also when the waiter goes away (an HTTP client that
        // disconnects drops this future mid-wait).
        let _pending = PendingGuard { pending: &self.pending, id };
        self.send_control(CONTROL, Control::Request { id, query: query.to_value() });
        let wait = if fast {
            Duration::from_millis(50 * u64::try_from(expected).unwrap_or(u64::MAX))
                .min(self.settings.requests_timeout)
        } else {
            self.settings.requests_timeout
        };
        let deadline = Instant::now() + wait;
        let mut answers = Vec::with_capacity(expected);
        let mut settled = false;
        while answers.len() < expected {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(answer)) => answers.push(answer),
                _ => break,
            }
            if enough(&answers) {
                settled = true;
                break;
            }
        }
        let complete = settled || answers.len() >= expected;
        tracing::debug!(
            id,
            expected,
            answered = answers.len(),
            complete,
            "A cluster request ended."
        );
        if !complete {
            tracing::warn!(
                expected,
                answered = answers.len(),
                "A cluster request timed out; the answer is partial."
            );
        }
        Answers { answers, complete }
    }

    /// Route an answer to the request waiting for it.
    pub fn answered(&self, id: u64, answer: Value) {
        if let Some(tx) = self.pending.lock().expect("cluster lock").get(&id) {
            let _ = tx.try_send(answer);
        }
    }

    /// Apply a presence change from `node` (ignored if its full state already covers it).
    pub fn apply_presence(
        &self,
        node: u64,
        seq: u64,
        app: String,
        channel: String,
        user: String,
        info: Option<Value>,
    ) {
        let mut presence = self.presence.lock().expect("cluster lock");
        let entry = presence.entry(node).or_default();
        if seq <= entry.snapshot_seq {
            return;
        }
        let key = (app, channel);
        if !entry.members.contains_key(&key) && entry.members.len() >= MAX_PEER_ENTRIES {
            return;
        }
        let users = entry.members.entry(key).or_default();
        match info {
            Some(info) => {
                if users.len() < MAX_PEER_ENTRIES || users.contains_key(&user) {
                    users.insert(user, info);
                }
            }
            None => {
                users.remove(&user);
            }
        }
    }

    /// Replace `node`'s presence with its full state (app -> channel -> user -> info), and
    /// say, by channel, whose presence that changes as far as the other nodes go (whether a
    /// member is also on this node is the caller's to check). Linear in the members before and
    /// after, with no copy of a member who stays: a sync of tens of thousands in one pass.
    pub fn apply_presence_sync(&self, node: u64, seq: u64, state: Value) -> Vec<Changes> {
        let members = bounded_members(state);
        let mut presence = self.presence.lock().expect("cluster lock");
        let old = presence.remove(&node).unwrap_or_default().members;
        let elsewhere = |key: &(String, String), user: &str| {
            presence.values().any(|n| n.members.get(key).is_some_and(|u| u.contains_key(user)))
        };
        let mut changes: HashMap<&(String, String), MemberChanges> = HashMap::new();
        for (key, users) in &members {
            let before = old.get(key);
            for (user, info) in users {
                if !before.is_some_and(|b| b.contains_key(user)) && !elsewhere(key, user) {
                    changes.entry(key).or_default().push((user.clone(), Some(info.clone())));
                }
            }
        }
        for (key, users) in &old {
            let after = members.get(key);
            for user in users.keys() {
                if !after.is_some_and(|a| a.contains_key(user)) && !elsewhere(key, user) {
                    changes.entry(key).or_default().push((user.clone(), None));
                }
            }
        }
        let changes = changes
            .into_iter()
            .map(|((app, channel), members)| Changes {
                app: app.clone(),
                channel: channel.clone(),
                members,
            })
            .collect();
        presence.insert(node, NodePresence { snapshot_seq: seq, members });
        changes
    }

    /// Members of a presence channel on the other nodes: user -> info.
    pub fn remote_members(&self, app: &str, channel: &str) -> HashMap<String, Value> {
        let key = (app.to_string(), channel.to_string());
        let presence = self.presence.lock().expect("cluster lock");
        let mut out = HashMap::new();
        for node in presence.values() {
            if let Some(users) = node.members.get(&key) {
                for (user, info) in users {
                    out.entry(user.clone()).or_insert_with(|| info.clone());
                }
            }
        }
        out
    }

    /// Whether `user` is a member of the channel on another node.
    pub fn present_elsewhere(&self, app: &str, channel: &str, user: &str) -> bool {
        let key = (app.to_string(), channel.to_string());
        self.presence
            .lock()
            .expect("cluster lock")
            .values()
            .any(|n| n.members.get(&key).is_some_and(|u| u.contains_key(user)))
    }
}

/// Removes a request's entry from the pending map when the request ends, however it ends.
struct PendingGuard<'a> {
    pending: &'a Mutex<HashMap<u64, mpsc::Sender<Value>>>,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&self.id);
        }
    }
}

/// Keep topic subscriptions, reference-counted, one change at a time so that a subscribe and an
/// unsubscribe of the same topic cannot overtake each other.
async fn keep_interest(transport: Arc<Transport>, mut ops: mpsc::UnboundedReceiver<InterestOp>) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut failed: HashSet<String> = HashSet::new();
    while let Some((topic, acquire, done)) = ops.recv().await {
        let count = counts.entry(topic.clone()).or_default();
        if acquire {
            *count += 1;
            if *count == 1 || failed.contains(&topic) {
                match transport.subscribe(&topic).await {
                    Ok(()) => {
                        failed.remove(&topic);
                    }
                    Err(error) => {
                        // The transport resubscribes known topics when it is back; keep count.
                        tracing::warn!(%error, topic, "Subscribing to a bus topic failed.");
                        failed.insert(topic.clone());
                    }
                }
            }
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&topic);
                failed.remove(&topic);
                if let Err(error) = transport.unsubscribe(&topic).await
                    && error.code() != Some(ErrorCode::UNAVAILABLE)
                {
                    tracing::warn!(%error, topic, "Unsubscribing from a bus topic failed.");
                }
            }
        }
        let _ = done.send(());
    }
}

/// The local presence state, as sent to a newcomer: app -> channel -> user -> info.
pub fn presence_state(members: Vec<(String, String, String, Value)>) -> Value {
    let mut state = serde_json::Map::new();
    for (app, channel, user, info) in members {
        let channels = state.entry(app).or_insert_with(|| json!({}));
        let users =
            channels.as_object_mut().expect("object").entry(channel).or_insert_with(|| json!({}));
        users.as_object_mut().expect("object").insert(user, info);
    }
    Value::Object(state)
}

/// The members of one presence channel who appeared (with their info) or left (`None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    /// The app.
    pub app: String,
    /// The channel.
    pub channel: String,
    /// (user, info) for each member whose presence changed.
    pub members: MemberChanges,
}

/// (user, info) for each member of a channel who appeared (with their info) or left (`None`).
pub type MemberChanges = Vec<(String, Option<Value>)>;

/// A full presence state from a peer (app -> channel -> user -> info), taken apart without
/// copying and bounded: at most [`MAX_PEER_ENTRIES`] entries, an empty channel counting as one.
fn bounded_members(state: Value) -> HashMap<(String, String), HashMap<String, Value>> {
    let mut members = HashMap::new();
    let mut held = 0usize;
    let Value::Object(apps) = state else { return members };
    for (app, channels) in apps {
        let Value::Object(channels) = channels else { continue };
        for (channel, users) in channels {
            if held >= MAX_PEER_ENTRIES {
                return members;
            }
            let users: HashMap<String, Value> = match users {
                Value::Object(users) => {
                    users.into_iter().take(MAX_PEER_ENTRIES.saturating_sub(held)).collect()
                }
                _ => HashMap::new(),
            };
            held += users.len().max(1);
            members.insert((app.clone(), channel), users);
        }
    }
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Arc<Cluster> {
        let settings = ClusterSettings {
            heartbeat_interval: Duration::from_millis(200),
            node_timeout: Duration::from_secs(2),
            cleanup_interval: Duration::from_millis(100),
            requests_timeout: Duration::from_millis(300),
            socket_counting: true,
            secret: None,
        };
        Cluster::new(Arc::new(Transport::nowhere()), settings, Counter::default())
    }

    fn info(name: &str) -> Option<Value> {
        Some(json!({ "name": name }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_node_expires_after_the_node_timeout_and_leaves_nothing_behind() {
        let cluster = cluster();
        assert!(cluster.saw(7) && !cluster.saw(7));
        cluster.apply_presence(7, 1, "app".into(), "presence-a".into(), "u".into(), info("u"));
        cluster.apply_connections(7, HashMap::from([("app".to_string(), 3)]));
        assert_eq!(cluster.remote_connections("app"), 3);
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert!(cluster.expired().is_empty());
        // Heard again: the timeout starts over.
        cluster.saw(7);
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert!(cluster.expired().is_empty());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(cluster.expired(), [7]);
        let departed = cluster.forget(7);
        assert_eq!(departed.members, [("app".into(), "presence-a".into(), "u".into())]);
        assert!(cluster.peers().is_empty() && cluster.remote_connections("app") == 0);
        assert!(cluster.remote_members("app", "presence-a").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn changes_older_than_a_full_state_are_ignored() {
        let cluster = cluster();
        let (app, channel) = ("app".to_string(), "presence-a".to_string());
        cluster.apply_presence(7, 5, app.clone(), channel.clone(), "early".into(), info("e"));
        // A full state sent at seq 10 replaces everything before it.
        let state = json!({ "app": { "presence-a": { "synced": { "name": "s" } } } });
        let changes = cluster.apply_presence_sync(7, 10, state);
        let mut changed: Vec<(String, bool)> = changes
            .iter()
            .flat_map(|c| c.members.iter().map(|(u, i)| (u.clone(), i.is_some())))
            .collect();
        changed.sort();
        assert_eq!(changed, [("early".to_string(), false), ("synced".to_string(), true)]);
        // A change sent before the state (arriving late) is already in it: ignored.
        cluster.apply_presence(7, 9, app.clone(), channel.clone(), "late".into(), info("l"));
        assert!(!cluster.present_elsewhere("app", "presence-a", "late"));
        // One sent after it applies.
        cluster.apply_presence(7, 11, app.clone(), channel.clone(), "after".into(), info("a"));
        assert!(cluster.present_elsewhere("app", "presence-a", "after"));
        cluster.apply_presence(7, 12, app, channel, "synced".into(), None);
        let members = cluster.remote_members("app", "presence-a");
        assert_eq!(members.keys().collect::<Vec<_>>(), ["after"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_on_two_nodes_is_no_change_when_one_syncs_it_away() {
        let cluster = cluster();
        let both = |user: &str| json!({ "app": { "presence-a": { user: { "n": 1 } } } });
        cluster.apply_presence_sync(7, 1, both("u"));
        cluster.apply_presence_sync(8, 1, both("u"));
        // Node 7 no longer has the user, node 8 still does: nobody left.
        let changes = cluster.apply_presence_sync(7, 2, json!({}));
        assert!(changes.is_empty(), "{changes:?}");
        assert!(cluster.present_elsewhere("app", "presence-a", "u"));
        let changes = cluster.apply_presence_sync(8, 2, json!({}));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].members, [("u".to_string(), None)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_is_the_lowest_live_id() {
        let cluster = cluster();
        assert!(cluster.is_leader());
        cluster.saw(cluster.node_id + 1);
        assert!(cluster.is_leader());
        cluster.saw(cluster.node_id - 1);
        assert!(!cluster.is_leader());
        cluster.forget(cluster.node_id - 1);
        assert!(cluster.is_leader());
    }
}

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

pub(crate) mod envelope;
pub(crate) mod host;
mod interest;
mod membership;
mod presence;
pub(crate) mod query;
pub(crate) mod reader;
mod requests;
pub(crate) mod seal;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tokio::{sync::mpsc, time::Instant};

use self::{
    envelope::{Body, BusPosition, Control, DecodeError, Envelope},
    interest::{InterestOp, keep_interest},
    presence::NodePresence,
    seal::{Seal, SealError},
};
pub(crate) use self::{
    membership::PerNode,
    presence::{Changes, presence_state},
    seal::now_ms,
};
pub(crate) use crate::config::ClusterSettings;
use crate::{plugins::Transport, protocol::Broadcast, telemetry::LogLimiter};

/// The most entries one peer may hold in each map of its replicated state (apps it counts
/// connections for, members, channels, users): a peer (buggy, or writing to the bus without a
/// secret) cannot grow this node's memory without bound. Past it, new entries are ignored.
pub(crate) const MAX_PEER_ENTRIES: usize = 1_000_000;

/// The topic every node listens to.
pub(crate) const CONTROL: &str = "#control";

/// A node's own topic (responses, state for a newcomer).
pub(crate) fn node_topic(node: u64) -> String {
    format!("#node:{node}")
}

/// The topic of a channel's broadcasts.
pub(crate) fn channel_topic(app: &str, channel: &str) -> String {
    format!("#broadcast:{app}:{channel}")
}

/// The bus body of a broadcast to `to`.
fn broadcast_body(to: &Broadcast<'_>, frame: &[u8], position: Option<BusPosition>) -> Body {
    let Broadcast { app, channel, except, tags, compressible } = *to;
    Body::Broadcast {
        app: app.to_string(),
        channel: channel.to_string(),
        except: except.map(str::to_string),
        tags: tags.cloned(),
        compressible,
        position,
        frame: frame.to_vec(),
    }
}

/// The cluster state of this node.
#[derive(Debug)]
pub(crate) struct Cluster {
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
pub(crate) enum Refusal {
    /// Not authenticated by the cluster secret (see [`seal`]).
    #[error("{0}")]
    Seal(#[from] SealError),
    /// Not a readable envelope.
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

impl Cluster {
    /// A cluster layer over `transport`; starts the task that keeps topic subscriptions.
    /// Every publish the transport refuses is counted in `publish_refused`.
    pub(crate) fn new(
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
    pub(crate) fn settings(&self) -> &ClusterSettings {
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
    pub(crate) fn authenticated(&self) -> bool {
        self.seal.is_some()
    }

    /// Read a bus message received at `received` (milliseconds since the epoch, [`now_ms`]):
    /// unseal it (with a secret), read its header, and refuse a replay. A control body is left
    /// undecoded (see [`Control::decode`]).
    pub(crate) fn open<'a>(
        &self,
        message: &'a [u8],
        received: u64,
    ) -> Result<Envelope<&'a [u8]>, Refusal> {
        let (bytes, added) = match &self.seal {
            Some(seal) => {
                let (sealed, added) = envelope::split_stored(message, seal::HEADER);
                (seal.open_at(sealed, received)?, added)
            }
            None => (message, None),
        };
        let envelope = Envelope::read_with(bytes, added)?;
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
    pub(crate) fn carries_control(&self, message: &[u8]) -> bool {
        let envelope = match &self.seal {
            Some(_) => message.get(seal::HEADER..).unwrap_or_default(),
            None => message,
        };
        envelope::is_control(envelope)
    }

    /// Publish a broadcast to the other nodes (none if alone). Never waits.
    pub(crate) fn publish_broadcast(
        &self,
        to: &Broadcast<'_>,
        frame: &[u8],
        position: Option<BusPosition>,
    ) {
        if !self.has_peers() {
            return;
        }
        let body = broadcast_body(to, frame, position);
        if let Err(error) =
            self.transport.try_publish(&channel_topic(to.app, to.channel), self.envelope(body))
        {
            self.refused(&error, to.channel);
        }
    }

    /// An event for the history store to publish to the channel's topic as it positions it:
    /// its envelope (sealed with a secret), without the stream id and serial the store adds
    /// after it (see [`envelope::split_stored`] for why that is safe). `None` when no other
    /// node would get it (alone).
    pub(crate) fn stored_broadcast(
        &self,
        to: &Broadcast<'_>,
        frame: &[u8],
        message_id: &str,
    ) -> Option<Vec<u8>> {
        if !self.has_peers() {
            return None;
        }
        let position =
            BusPosition { stream_id: String::new(), serial: 0, message_id: message_id.to_string() };
        let body = broadcast_body(to, frame, Some(position));
        let envelope =
            Envelope { node: self.node_id, seq: self.seq.fetch_add(1, Ordering::Relaxed), body };
        let envelope = envelope.encode_for_store().expect("a positioned broadcast");
        Some(match &self.seal {
            Some(seal) => seal.seal(&envelope),
            None => envelope,
        })
    }

    /// Count a publish the transport refused; log it at most once a second.
    fn refused(&self, error: &dyn std::fmt::Display, topic: &str) {
        self.publish_refused.inc();
        if self.refusals_logged.allow() {
            tracing::warn!(%error, topic, "Publishes to the other nodes are being refused (counted in bus_publish_refused).");
        }
    }

    /// Tell every other node that an app's record changed.
    pub(crate) fn announce_app_changed(&self, app: &str) {
        self.send_control(CONTROL, Control::AppChanged { app: app.to_string() });
    }

    /// Send a control message to `topic` (enqueued in order with broadcasts).
    pub(crate) fn send_control(&self, topic: &str, control: Control) {
        if let Err(error) = self.transport.try_publish(topic, self.envelope(Body::Control(control)))
        {
            self.refused(&error, topic);
        }
    }

    /// Send a control message and wait for the transport to take it.
    pub(crate) async fn send_control_awaited(&self, topic: &str, control: Control) {
        if let Err(error) =
            self.transport.publish(topic, self.envelope(Body::Control(control))).await
        {
            tracing::warn!(%error, topic, "A control message could not be published.");
        }
    }
}

//! The one interface between the cluster layer and the node it runs in.
//!
//! The cluster layer reads the bus, keeps membership and the replicated state, and decides when
//! the cluster-wide view changed; it tells the host through [`Host`] and never reaches above it
//! (no sockets, webhooks or metrics here). The host answers the few questions about its own
//! state that deciding a change needs. As with centrifuge's broker event handler, the host side
//! is one small implementation (`cluster_events.rs`) and the cluster layer can be driven by
//! anything that implements the trait.

use std::collections::HashMap;

use serde_json::Value;

use super::{Refusal, envelope::BusPosition};
use crate::protocol::Broadcast;

/// This node's own shared state, as sent to a node that has just appeared.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Snapshot {
    /// Presence members, as (app, channel, user, info).
    pub members: Vec<(String, String, String, Value)>,
    /// Channels with a local subscriber, as (app, channel).
    pub occupied: Vec<(String, String)>,
    /// Users signed in on this node, as (app, user).
    pub online: Vec<(String, String)>,
}

/// What the cluster layer asks of the node and tells it. Called from the cluster's tasks, never
/// from a connection's; every method returns promptly (no waiting on the network).
pub(crate) trait Host: Send + Sync + 'static {
    /// Whether `user` is a presence member of the channel on this node.
    fn has_member(&self, app: &str, channel: &str, user: &str) -> bool;
    /// Whether the channel has a subscriber on this node.
    fn occupied(&self, app: &str, channel: &str) -> bool;
    /// Whether `user` is signed in on this node.
    fn online(&self, app: &str, user: &str) -> bool;
    /// This node's presence members, occupied channels and signed-in users.
    fn snapshot(&self) -> Snapshot;
    /// Connections per app on this node (apps with none left out).
    fn connections(&self) -> HashMap<String, u64>;
    /// This node's answer to another node's request.
    fn answer(&self, query: super::query::Query) -> Value;

    /// A frame for the channel's local subscribers (except the socket `except`); with `tags`,
    /// only for those whose tag filter the event passes; with a `position`, in its channel's
    /// serial order, with the position for the sockets that track them.
    fn broadcast(&self, to: &Broadcast<'_>, frame: String, position: Option<BusPosition>);
    /// A frame for every local connection of a signed-in user.
    fn to_user(&self, app: &str, user: &str, frame: String);
    /// A user joined (`info` given) or left a presence channel, cluster-wide as this node sees
    /// it.
    fn member_changed(&self, app: &str, channel: &str, user: &str, info: Option<&Value>);
    /// A channel gained its first subscriber or lost its last, cluster-wide as this node sees it.
    fn occupancy_changed(&self, app: &str, channel: &str, occupied: bool);
    /// A user came online or went offline, cluster-wide as this node sees it.
    fn user_status_changed(&self, app: &str, user: &str, online: bool);
    /// Another node changed the app's record: look it up again (off the caller's task).
    fn app_changed(&self, app: &str);
    /// `node` has a debug console open on the app's log.
    fn console_watched(&self, node: u64, app: &str);
    /// Log entries `node` sent for the consoles open here.
    fn console_entries(&self, node: u64, app: &str, entries: Vec<Value>);
    /// Another node published an event of the channel without a recovery position
    /// (`degraded`), or started the channel's stream again after one (`!degraded`).
    fn history_degraded(&self, app: &str, channel: &str, degraded: bool);
    /// The number of live nodes, this one included, changed.
    fn nodes_changed(&self, nodes: usize);
    /// A node stopped answering and was removed.
    fn node_died(&self, node: u64);
    /// A bus message was refused (unauthenticated, or unreadable). Logged by the cluster layer.
    fn refused(&self, refusal: Refusal);
}

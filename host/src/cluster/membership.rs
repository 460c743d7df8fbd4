//! Membership: which other nodes are alive, what each holds (occupied channels, signed-in
//! users, connections per app), who leads the cleanup, and what a departed node leaves.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use tokio::time::Instant;

use super::{Cluster, MAX_PEER_ENTRIES};

/// Pairs of names (app and channel, or app and user) that each other node holds.
#[derive(Debug, Default)]
pub(crate) struct PerNode(Mutex<HashMap<u64, HashSet<(String, String)>>>);

impl PerNode {
    /// Record whether `node` holds `key`.
    pub(crate) fn set(&self, node: u64, key: (String, String), held: bool) {
        let mut all = self.0.lock().expect("cluster lock");
        let keys = all.entry(node).or_default();
        if held && keys.len() < MAX_PEER_ENTRIES {
            keys.insert(key);
        } else {
            keys.remove(&key);
        }
    }

    /// What replacing `node`'s keys with `new` touches: its keys now and those in `new`.
    pub(crate) fn touched(&self, node: u64, new: &[(String, String)]) -> Vec<(String, String)> {
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
    pub(crate) fn replace(&self, node: u64, keys: Vec<(String, String)>) {
        let keys = keys.into_iter().take(MAX_PEER_ENTRIES).collect();
        self.0.lock().expect("cluster lock").insert(node, keys);
    }

    /// Whether another node holds (`a`, `b`).
    pub(crate) fn elsewhere(&self, a: &str, b: &str) -> bool {
        let key = (a.to_string(), b.to_string());
        self.0.lock().expect("cluster lock").values().any(|k| k.contains(&key))
    }

    /// Forget `node`; what it held.
    pub(crate) fn remove(&self, node: u64) -> Vec<(String, String)> {
        self.0.lock().expect("cluster lock").remove(&node).unwrap_or_default().into_iter().collect()
    }
}

/// What a departed node leaves behind.
#[derive(Debug, Default)]
pub(crate) struct Departed {
    /// Its presence members, as (app, channel, user).
    pub members: Vec<(String, String, String)>,
    /// The channels it had subscribers for, as (app, channel).
    pub channels: Vec<(String, String)>,
    /// The users signed in on it, as (app, user).
    pub users: Vec<(String, String)>,
}

impl Cluster {
    /// Whether another live node is known.
    pub(crate) fn has_peers(&self) -> bool {
        !self.members.lock().expect("cluster lock").is_empty()
    }

    /// The other live nodes.
    pub(crate) fn peers(&self) -> Vec<u64> {
        self.members.lock().expect("cluster lock").keys().copied().collect()
    }

    /// Record that `node` is alive; whether it was unknown.
    pub(crate) fn saw(&self, node: u64) -> bool {
        self.members.lock().expect("cluster lock").insert(node, Instant::now()).is_none()
    }

    /// Record `node`'s connections per app.
    pub(crate) fn apply_connections(&self, node: u64, mut counts: HashMap<String, u64>) {
        if counts.len() > MAX_PEER_ENTRIES {
            counts = counts.into_iter().take(MAX_PEER_ENTRIES).collect();
        }
        self.connections.lock().expect("cluster lock").insert(node, counts);
    }

    /// The app's connections on the other nodes, as their last heartbeats said.
    pub(crate) fn remote_connections(&self, app: &str) -> u64 {
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
    pub(crate) fn forget(&self, node: u64) -> Departed {
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
    pub(crate) fn expired(&self) -> Vec<u64> {
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
    pub(crate) fn is_leader(&self) -> bool {
        self.members.lock().expect("cluster lock").keys().all(|id| *id > self.node_id)
    }
}

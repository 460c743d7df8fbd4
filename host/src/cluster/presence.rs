//! The presence registry: each other node's members, replicated by its changes (stamped with
//! its own increasing sequence numbers) and its full state.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Cluster, MAX_PEER_ENTRIES};

/// Remote presence: for one node, app -> channel -> user -> info.
#[derive(Debug, Default)]
pub(super) struct NodePresence {
    /// The sequence number of the last full state applied; older incremental changes are
    /// already in it.
    pub(super) snapshot_seq: u64,
    pub(super) members: HashMap<(String, String), HashMap<String, Value>>,
}

impl Cluster {
    /// Apply a presence change from `node` (ignored if its full state already covers it).
    pub(crate) fn apply_presence(
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
    pub(crate) fn apply_presence_sync(&self, node: u64, seq: u64, state: Value) -> Vec<Changes> {
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
    pub(crate) fn remote_members(&self, app: &str, channel: &str) -> HashMap<String, Value> {
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
    pub(crate) fn present_elsewhere(&self, app: &str, channel: &str, user: &str) -> bool {
        let key = (app.to_string(), channel.to_string());
        self.presence
            .lock()
            .expect("cluster lock")
            .values()
            .any(|n| n.members.get(&key).is_some_and(|u| u.contains_key(user)))
    }
}

/// The local presence state, as sent to a newcomer: app -> channel -> user -> info.
pub(crate) fn presence_state(members: Vec<(String, String, String, Value)>) -> Value {
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
pub(crate) struct Changes {
    /// The app.
    pub app: String,
    /// The channel.
    pub channel: String,
    /// (user, info) for each member whose presence changed.
    pub members: MemberChanges,
}

/// (user, info) for each member of a channel who appeared (with their info) or left (`None`).
pub(crate) type MemberChanges = Vec<(String, Option<Value>)>;

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

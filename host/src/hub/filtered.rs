//! A channel's subscribers grouped by tag filter.

use std::{collections::HashMap, sync::Arc};

use super::{Conn, SocketId};
use crate::protocol::filter::{Filter, Tags};

/// A channel's subscribers by tag filter, so that a published event reaches those without a
/// filter and those whose one equality it satisfies without testing anyone else, and every
/// other distinct filter is evaluated once however many subscribers share it.
///
/// Filters arrive interned ([`Interner`]): equal filters are one `Arc`, and its address
/// names its group. A broadcast evaluates the groups' filters outside the channels' lock
/// (see [`Hub::broadcast`]).
#[derive(Debug, Default)]
pub(super) struct Filtered {
    plain: HashMap<SocketId, Conn>,
    /// Tag name -> value -> the subscribers whose filter is that one equality (nested, so an
    /// event's tags are looked up without building a key per tag).
    equal: HashMap<String, HashMap<String, HashMap<SocketId, Conn>>>,
    /// Every other filter's group, by the address of its shared filter.
    pub(super) groups: HashMap<usize, Group>,
    /// Each filtered subscriber's filter, so that leaving costs one lookup.
    filter_of: HashMap<SocketId, Arc<Filter>>,
}

/// The subscribers of a channel with one (shared) filter.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) filter: Arc<Filter>,
    pub(super) members: HashMap<SocketId, Conn>,
}

/// The name of a filter's group: its shared copy's address (stable while the group holds it).
fn group_key(filter: &Arc<Filter>) -> usize {
    Arc::as_ptr(filter) as usize
}

impl Filtered {
    pub(super) fn insert(&mut self, conn: &Conn, filter: Option<&Arc<Filter>>) {
        let id = conn.socket_id.clone();
        let Some(filter) = filter else {
            self.plain.insert(id, conn.clone());
            return;
        };
        self.filter_of.insert(id.clone(), filter.clone());
        match filter.equality() {
            Some((key, value)) => {
                let values = self.equal.entry(key.to_string()).or_default();
                values.entry(value.to_string()).or_default().insert(id, conn.clone());
            }
            None => {
                let group = self
                    .groups
                    .entry(group_key(filter))
                    .or_insert_with(|| Group { filter: filter.clone(), members: HashMap::new() });
                group.members.insert(id, conn.clone());
            }
        }
    }

    pub(super) fn remove(&mut self, socket_id: &str) {
        if self.plain.remove(socket_id).is_some() {
            return;
        }
        let Some(filter) = self.filter_of.remove(socket_id) else { return };
        match filter.equality() {
            Some((key, value)) => {
                if let Some(values) = self.equal.get_mut(key)
                    && let Some(group) = values.get_mut(value)
                {
                    group.remove(socket_id);
                    if group.is_empty() {
                        values.remove(value);
                        if values.is_empty() {
                            self.equal.remove(key);
                        }
                    }
                }
            }
            None => {
                let key = group_key(&filter);
                if let Some(group) = self.groups.get_mut(&key) {
                    group.members.remove(socket_id);
                    if group.members.is_empty() {
                        self.groups.remove(&key);
                    }
                }
            }
        }
    }

    pub(super) fn has_filters(&self) -> bool {
        !self.filter_of.is_empty()
    }

    /// The distinct filters to evaluate for an event (each shared copy, cloned).
    pub(super) fn snapshot(&self) -> Vec<Arc<Filter>> {
        self.groups.values().map(|g| g.filter.clone()).collect()
    }

    /// Every subscriber an event with `tags` is for, where `passed` are the groups' filters
    /// the event passes (evaluated beforehand, outside the lock; a group made since is not
    /// in them, and its members joined after the event).
    pub(super) fn recipients<'a>(
        &'a self,
        tags: &'a Tags,
        passed: &'a [Arc<Filter>],
    ) -> impl Iterator<Item = (&'a SocketId, &'a Conn)> {
        let equal = tags
            .iter()
            .filter_map(|(k, v)| self.equal.get(k)?.get(v))
            .flat_map(|group| group.iter());
        let other = passed
            .iter()
            .filter_map(|f| self.groups.get(&group_key(f)))
            .flat_map(|group| group.members.iter());
        self.plain.iter().chain(equal).chain(other)
    }
}

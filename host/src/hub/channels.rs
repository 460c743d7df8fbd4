//! Channels: subscriptions, presence members, delta streams and the broadcast.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, atomic::Ordering},
};

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;

use super::{
    Channel, ChannelFull, Claims, Conn, Delivery, DeltaWish, Filtered, Hub, Join, Member,
    Positioned, SocketId, Subscribed, Unsubscribed, Wants, is_congested,
};
use crate::{delta::Deltas, protocol::Broadcast};

/// How many subscribers ahead a broadcast asks for their closers' lines (see
/// [`crate::prefetch`]): a miss takes a few sockets' queueing.
const PREFETCH_AHEAD: usize = 4;

impl Hub {
    /// Subscribe `conn` to `channel`, joining presence if `join` is given. `ack` builds the
    /// frames that acknowledge the subscription from the members as they are after it (the
    /// acknowledgement, then a resumed channel's replay); they are enqueued before the socket
    /// becomes visible to broadcasts, so they always precede the channel's events.
    pub(crate) fn subscribe(
        &self,
        app_id: &str,
        channel: &str,
        conn: &Conn,
        join: Option<Join>,
        wants: Wants,
        ack: impl FnOnce(&mut dyn Iterator<Item = (&str, &Value)>) -> Vec<Utf8Bytes>,
    ) -> Result<Subscribed, ChannelFull> {
        let app = self.app(app_id);
        let mut channels = app.channels.write().expect("hub lock");
        let entry = channels.entry(channel.to_string()).or_default();
        let occupied = entry.subscribers.is_empty();
        let mut first_for_user = false;
        if let Some(join) = join {
            let members = entry.members.get_or_insert_with(HashMap::new);
            match members.get_mut(&join.user_id) {
                Some(member) => {
                    member.sockets.insert(conn.socket_id.clone());
                    member.info = join.user_info;
                }
                None => {
                    // Distinct users on every node; a user already present elsewhere adds none.
                    let others = join.elsewhere.iter().filter(|id| !members.contains_key(*id));
                    let distinct = members.len() + others.count();
                    if !join.elsewhere.contains(&join.user_id) && distinct >= join.max_members {
                        if entry.subscribers.is_empty() && members.is_empty() {
                            channels.remove(channel);
                        }
                        return Err(ChannelFull { max: join.max_members });
                    }
                    first_for_user = true;
                    let member = Member {
                        info: join.user_info,
                        sockets: HashSet::from([conn.socket_id.clone()]),
                    };
                    members.insert(join.user_id, member);
                }
            }
        }
        let frames = match &entry.members {
            Some(members) => ack(&mut members.iter().map(|(id, m)| (id.as_str(), &m.info))),
            None => ack(&mut std::iter::empty()),
        };
        for frame in &frames {
            conn.send(frame);
        }
        let new_subscriber =
            entry.subscribers.insert(conn.socket_id.clone(), conn.clone()).is_none();
        let Wants { filter, delta } = wants;
        if entry.filtered.is_none() && filter.is_some() {
            // The first filter: group everyone subscribed so far as without one.
            let mut filtered = Filtered::default();
            for (id, other) in &entry.subscribers {
                if **id != *conn.socket_id {
                    filtered.insert(other, None);
                }
            }
            entry.filtered = Some(Box::new(filtered));
        }
        if let Some(filtered) = entry.filtered.as_mut() {
            if !new_subscriber {
                filtered.remove(&conn.socket_id);
            }
            filtered.insert(conn, filter.as_ref());
        }
        match delta {
            Some(wish) => Self::add_deltas(entry, &conn.socket_id, wish),
            None if !new_subscriber => Self::drop_deltas(entry, &conn.socket_id),
            None => {}
        }
        Ok(Subscribed { new_subscriber, occupied, first_for_user })
    }

    /// Unsubscribe `socket_id` from `channel`, and from presence as `user_id` if given.
    pub(crate) fn unsubscribe(
        &self,
        app_id: &str,
        channel: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) -> Unsubscribed {
        let Some(app) = self.existing(app_id) else { return Unsubscribed::default() };
        let mut channels = app.channels.write().expect("hub lock");
        let Some(entry) = channels.get_mut(channel) else { return Unsubscribed::default() };
        let was_subscribed = entry.subscribers.remove(socket_id).is_some();
        Self::drop_deltas(entry, socket_id);
        if let Some(filtered) = entry.filtered.as_mut() {
            filtered.remove(socket_id);
            if !filtered.has_filters() {
                entry.filtered = None;
            }
        }
        let mut removed_user = None;
        if let (Some(members), Some(user_id)) = (entry.members.as_mut(), user_id)
            && let Some(member) = members.get_mut(user_id)
        {
            member.sockets.remove(socket_id);
            if member.sockets.is_empty() {
                members.remove(user_id);
                removed_user = Some(user_id.to_string());
            }
        }
        let vacated = was_subscribed && entry.subscribers.is_empty();
        if entry.subscribers.is_empty() {
            channels.remove(channel);
        }
        Unsubscribed { was_subscribed, vacated, removed_user }
    }

    /// Send `socket_id` deltas on `entry` as `wish` says, making the channel's streams with
    /// its first delta subscriber.
    fn add_deltas(entry: &mut Channel, socket_id: &SocketId, wish: DeltaWish) {
        let deltas =
            entry.deltas.get_or_insert_with(|| Box::new(Mutex::new(Deltas::new(wish.settings))));
        deltas.get_mut().expect("deltas lock").add(socket_id, wish.algorithm);
    }

    /// Stop sending `socket_id` deltas on `entry`, dropping the channel's streams with its
    /// last delta subscriber.
    fn drop_deltas(entry: &mut Channel, socket_id: &str) {
        if let Some(deltas) = &entry.deltas
            && !deltas.lock().expect("deltas lock").remove(socket_id)
        {
            entry.deltas = None;
        }
    }

    /// Send `socket_id` deltas on `channel` from now on (it enabled them for its connection
    /// after subscribing); whether it is subscribed.
    pub(crate) fn enable_deltas(
        &self,
        app_id: &str,
        channel: &str,
        socket_id: &str,
        wish: DeltaWish,
    ) -> bool {
        let Some(app) = self.existing(app_id) else { return false };
        let mut channels = app.channels.write().expect("hub lock");
        let Some(entry) = channels.get_mut(channel) else { return false };
        let Some(id) = entry.subscribers.get_key_value(socket_id).map(|(id, _)| id.clone()) else {
            return false;
        };
        Self::add_deltas(entry, &id, wish);
        true
    }

    /// `socket_id` could not apply a delta on `channel`: its next event there goes whole.
    pub(crate) fn resync_deltas(&self, app_id: &str, channel: &str, socket_id: &str) {
        let Some(app) = self.existing(app_id) else { return };
        let channels = app.channels.read().expect("hub lock");
        if let Some(deltas) = channels.get(channel).and_then(|c| c.deltas.as_ref()) {
            deltas.lock().expect("deltas lock").resync(socket_id);
        }
    }

    /// Enqueue `frame` to every subscriber of `channel` except `except`; how many got it. An
    /// event published with `tags` goes only to the subscribers whose tag filter it passes
    /// (and to those without one); without `tags` (protocol frames, client events) to all.
    /// A `compressible` frame (an app's event on a channel that is not encrypted) goes to
    /// delta subscribers as a delta or a full frame of their stream.
    pub(crate) fn broadcast(&self, to: &Broadcast<'_>, frame: &Utf8Bytes) -> usize {
        self.broadcast_positioned(to, frame, None)
    }

    /// [`Hub::broadcast`] of an event with a recovery position: `positioned` is its frame with
    /// the position appended, for the connections that want positions (protocol 2), and the
    /// stream's published serial is raised to the event's *while the channel's lock is held
    /// for the delivery*. A subscription made visible under that lock therefore reads a head
    /// that says exactly which events it did not get live: those up to it. Never sent as a
    /// delta (its position would not survive the encoding), and its filters are evaluated
    /// under the lock, so that no subscriber comes between.
    pub(crate) fn broadcast_positioned(
        &self,
        to: &Broadcast<'_>,
        frame: &Utf8Bytes,
        positioned: Option<Positioned<'_>>,
    ) -> usize {
        let Broadcast { app: app_id, channel, except, tags, compressible } = *to;
        let compressible = compressible && positioned.is_none();
        // With a position the app's hub is made if missing, so that the lock exists for a
        // subscriber that comes next.
        let app = match positioned {
            Some(_) => self.app(app_id),
            None => match self.existing(app_id) {
                Some(app) => app,
                None => return 0,
            },
        };
        // Filters are evaluated with no lock held: under the read lock the channel's
        // distinct filters are taken (shared copies), then evaluated once each while other
        // channels subscribe and publish freely, then delivery takes the lock again. A
        // subscriber that came or went in between is harmless: it joined after the event or
        // left before it. The copies are held until delivery is over, so no group's key (the
        // filter's address) can be reused by another filter meanwhile.
        //
        // The idle sockets this broadcast claims, to write their frames without waking their
        // tasks. Declared before the lock's guard, so that they are written once it is let
        // go, and on the way out of a broadcast cut short.
        let mut claims = Claims::default();
        let mut channels = app.channels.read().expect("hub lock");
        let mut passed = Vec::new();
        if let Some(tags) = tags {
            let filters = channels.get(channel).and_then(|c| c.filtered.as_ref());
            let snapshot = filters.map(|f| f.snapshot()).unwrap_or_default();
            if !snapshot.is_empty() {
                if positioned.is_none() {
                    drop(channels);
                    passed = snapshot.into_iter().filter(|f| f.matches(tags)).collect();
                    channels = app.channels.read().expect("hub lock");
                } else {
                    passed = snapshot.into_iter().filter(|f| f.matches(tags)).collect();
                }
            }
        }
        if let Some(Positioned { published, serial, .. }) = positioned {
            published.store(serial, Ordering::Release);
        }
        let positioned = positioned.map(|p| p.frame);
        let Some(entry) = channels.get(channel) else { return 0 };
        if entry.filtered.is_none() || tags.is_none() {
            // Every subscriber is a recipient (a filtered event may reach only a few).
            claims.expect(entry.subscribers.len());
        }
        let mut deltas = match &entry.deltas {
            Some(deltas) if compressible => Some(deltas.lock().expect("deltas lock")),
            _ => None,
        };
        let mut publication = deltas.as_mut().and_then(|d| d.publish(channel, frame));
        let (mut sent, mut behind) = (0, 0);
        // Whether the socket's frame was claimed (its queue was empty: a quiet socket).
        let mut deliver = |socket_id: &SocketId, conn: &Conn| -> bool {
            if except.is_some_and(|e| e == &**socket_id) {
                return false;
            }
            let own = publication.as_mut().and_then(|p| p.frame_for(socket_id));
            let plain = match positioned {
                Some(positioned) if conn.wants_positions() => positioned,
                _ => frame,
            };
            let frame = own.as_ref().unwrap_or(plain);
            match conn.deliver_into(frame, &mut claims) {
                Delivery::Queued { behind: b } => {
                    sent += 1;
                    behind += usize::from(b);
                    false
                }
                Delivery::Claimed => {
                    sent += 1;
                    true
                }
                Delivery::Refused => false,
            }
        };
        match (&entry.filtered, tags) {
            (Some(filtered), Some(tags)) => {
                filtered.recipients(tags, &passed).for_each(|(id, conn)| {
                    deliver(id, conn);
                });
            }
            _ => {
                // The closers a few sockets ahead are asked for while this one's frame is
                // queued, as long as the sockets are quiet (A's case, where each line is a
                // miss). Where queues are busy (C), their tasks on the other cores are using
                // those lines, and taking them early only moves them back and forth.
                let mut ahead = entry.subscribers.values();
                ahead.by_ref().take(PREFETCH_AHEAD).for_each(Conn::prefetch);
                let mut quiet = true;
                for (id, conn) in &entry.subscribers {
                    if let Some(next) = ahead.next()
                        && quiet
                    {
                        next.prefetch();
                    }
                    quiet = deliver(id, conn);
                }
            }
        }
        if let Some(publication) = publication {
            let counted = publication.finish();
            self.delta_counters.deltas.inc_by(counted.deltas);
            self.delta_counters.full.inc_by(counted.full);
            self.delta_counters.saved_bytes.inc_by(counted.saved_bytes);
        }
        let congested = is_congested(behind, sent);
        if entry.congested.load(Ordering::Relaxed) != congested {
            entry.congested.store(congested, Ordering::Relaxed);
        }
        drop(deltas);
        drop(channels);
        if !claims.is_empty() {
            match &self.runtime {
                Some(runtime) => claims.write_soon(runtime, self.sent_counters.clone()),
                None => self.sent_counters.count(claims.write()),
            }
        }
        sent
    }

    /// Close with `code` the channel's connections that track recovery positions: they missed
    /// events this node cannot give them in order, and reconnect to resume. How many.
    pub(crate) fn close_positioned(&self, app_id: &str, channel: &str, code: u16) -> usize {
        let Some(app) = self.existing(app_id) else { return 0 };
        let channels = app.channels.read().expect("hub lock");
        let Some(entry) = channels.get(channel) else { return 0 };
        let positioned = entry.subscribers.values().filter(|c| c.wants_positions());
        positioned.map(|conn| conn.close(code)).count()
    }

    /// Whether `channel`'s subscribers are mostly behind. With `recheck`, their queues are
    /// looked at now (and the answer kept); otherwise the last broadcast's finding is told.
    pub(crate) fn congested(&self, app_id: &str, channel: &str, recheck: bool) -> bool {
        let Some(app) = self.existing(app_id) else { return false };
        let channels = app.channels.read().expect("hub lock");
        let Some(entry) = channels.get(channel) else { return false };
        if !recheck || !entry.congested.load(Ordering::Relaxed) {
            return entry.congested.load(Ordering::Relaxed);
        }
        let behind = entry.subscribers.values().filter(|c| c.behind()).count();
        let congested = is_congested(behind, entry.subscribers.len());
        entry.congested.store(congested, Ordering::Relaxed);
        congested
    }

    /// Subscribers of `channel` on this node.
    pub(crate) fn subscription_count(&self, app_id: &str, channel: &str) -> usize {
        self.existing(app_id).map_or(0, |app| {
            app.channels.read().expect("hub lock").get(channel).map_or(0, |c| c.subscribers.len())
        })
    }

    /// Distinct users in presence `channel` on this node.
    pub(crate) fn user_ids(&self, app_id: &str, channel: &str) -> Vec<String> {
        self.existing(app_id).map_or_else(Vec::new, |app| {
            let channels = app.channels.read().expect("hub lock");
            channels
                .get(channel)
                .and_then(|c| c.members.as_ref())
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Occupied channels of the app whose name starts with `prefix`: (name, subscribers,
    /// distinct presence users).
    pub(crate) fn channels(&self, app_id: &str, prefix: &str) -> Vec<(String, usize, usize)> {
        self.existing(app_id).map_or_else(Vec::new, |app| {
            let channels = app.channels.read().expect("hub lock");
            channels
                .iter()
                .filter(|(name, c)| name.starts_with(prefix) && !c.subscribers.is_empty())
                .map(|(name, c)| {
                    (name.clone(), c.subscribers.len(), c.members.as_ref().map_or(0, HashMap::len))
                })
                .collect()
        })
    }
}

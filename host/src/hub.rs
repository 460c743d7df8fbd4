//! The hub: this node's sockets and what they subscribe to. The only code that holds sockets.
//!
//! Each connection task owns its socket and registers a [`Conn`] handle here: a bounded queue of
//! ready-made frames plus a way to close it. A broadcast walks a channel's subscribers and
//! enqueues the same frame (a reference-counted buffer) to each, without waiting: a connection
//! whose queue is full is too slow and is closed with 4100, never allowed to grow memory.
//!
//! Locks are plain `RwLock`s, never held across an `.await` (nothing here is async).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use crate::{
    delta::{Algorithm, Deltas, StreamSettings},
    protocol::{
        Broadcast, codes,
        filter::{Filter, Interner, Tags},
    },
};

pub(crate) use crate::protocol::SocketId;

/// A connection's state shared between its task and the hub: why it is being closed, and how
/// many bytes wait in its queue.
#[derive(Debug)]
pub(crate) struct Closer {
    /// The close code, 0 while open.
    code: AtomicU16,
    notify: Notify,
    /// Bytes of counted frames enqueued and not yet taken by the connection's task.
    queued_bytes: AtomicUsize,
    /// Frames of at most this many bytes are not counted: the frame bound already bounds
    /// them, and counting costs two atomic operations shared between the publishing thread
    /// and the connection's task on every delivery. `usize::MAX` with no byte bound.
    small: usize,
    /// The bound on counted bytes: with the small frames' most, the queue's byte bound.
    max_counted: usize,
    /// Above this many queued bytes the connection counts as behind (congestion).
    behind_bytes: usize,
    /// Below this many free places in the queue the connection counts as behind.
    behind_free: usize,
}

impl Closer {
    /// A closer for a queue of `max_frames` frames and `max_bytes` bytes (0 = no byte bound),
    /// which counts as behind when fuller than `watermark_percent`.
    pub(crate) fn new(max_frames: usize, max_bytes: usize, watermark_percent: u8) -> Self {
        let free = 100 - usize::from(watermark_percent.min(99));
        // Small frames fill at most a quarter of the byte bound, counted ones the rest.
        let small = if max_bytes == 0 { usize::MAX } else { max_bytes / max_frames.max(1) / 4 };
        let max_counted = if max_bytes == 0 {
            usize::MAX
        } else {
            max_bytes - small.saturating_mul(max_frames).min(max_bytes)
        };
        Self {
            small,
            max_counted,
            behind_bytes: max_counted.saturating_mul(usize::from(watermark_percent)) / 100,
            behind_free: max_frames.saturating_mul(free) / 100,
            code: AtomicU16::new(0),
            notify: Notify::new(),
            queued_bytes: AtomicUsize::new(0),
        }
    }

    /// Ask the connection's task to close with `code`; the first request wins.
    pub(crate) fn close(&self, code: u16) {
        if self.code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.notify.notify_one();
        }
    }

    /// The requested close code, if any.
    pub(crate) fn requested(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Resolves once a close is requested.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.requested().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Whether a frame of `len` bytes counts against the byte bound.
    pub(crate) fn counts(&self, len: usize) -> bool {
        len > self.small
    }

    /// The connection's task took counted frames of `bytes` off its queue.
    pub(crate) fn dequeued(&self, bytes: usize) {
        if bytes > 0 {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// What enqueueing a frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Enqueued; `behind` if the queue is now above the congestion watermark.
    Queued {
        /// The queue is above the watermark.
        behind: bool,
    },
    /// Not enqueued: the queue was full (the connection is being closed with 4100) or the
    /// connection is gone.
    Refused,
}

/// What the hub holds of a connection: its id, its outbound queue and its closer.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// The socket id.
    pub socket_id: SocketId,
    queue: mpsc::Sender<Utf8Bytes>,
    closer: Arc<Closer>,
}

impl Conn {
    /// A handle over a connection's queue and closer.
    pub(crate) fn new(
        socket_id: SocketId,
        queue: mpsc::Sender<Utf8Bytes>,
        closer: Arc<Closer>,
    ) -> Self {
        Self { socket_id, queue, closer }
    }

    /// Enqueue a frame without waiting. A full queue (in frames or bytes) means the client
    /// cannot keep up: it is closed with 4100. Answers whether the frame was enqueued.
    pub(crate) fn send(&self, frame: &Utf8Bytes) -> bool {
        matches!(self.deliver(frame), Delivery::Queued { .. })
    }

    /// [`Conn::send`], also telling whether the queue is above the congestion watermark.
    pub(crate) fn deliver(&self, frame: &Utf8Bytes) -> Delivery {
        let closer = &*self.closer;
        let len = if closer.counts(frame.len()) { frame.len() } else { 0 };
        let mut queued = 0;
        if len > 0 {
            queued = closer.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
            if queued > closer.max_counted {
                closer.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                closer.close(codes::OVER_CAPACITY);
                return Delivery::Refused;
            }
        }
        match self.queue.try_send(frame.clone()) {
            Ok(()) => Delivery::Queued {
                behind: queued > closer.behind_bytes || self.queue.capacity() < closer.behind_free,
            },
            Err(error) => {
                closer.dequeued(len);
                if matches!(error, mpsc::error::TrySendError::Full(_)) {
                    closer.close(codes::OVER_CAPACITY);
                }
                Delivery::Refused
            }
        }
    }

    /// Whether the queue is above the congestion watermark now.
    fn behind(&self) -> bool {
        self.closer.queued_bytes.load(Ordering::Acquire) > self.closer.behind_bytes
            || self.queue.capacity() < self.closer.behind_free
    }

    /// Ask the connection to close with `code`.
    pub(crate) fn close(&self, code: u16) {
        self.closer.close(code);
    }
}

/// A presence member: one user, possibly on several connections.
#[derive(Debug, Clone)]
struct Member {
    info: Value,
    sockets: HashSet<SocketId>,
}

#[derive(Debug, Default)]
struct Channel {
    subscribers: HashMap<SocketId, Conn>,
    /// Presence channels only: members by user id.
    members: Option<HashMap<String, Member>>,
    /// Most subscribers were behind at the last broadcast: publishers are pushed back.
    congested: AtomicBool,
    /// The subscribers grouped by tag filter, while any has one.
    filtered: Option<Box<Filtered>>,
    /// The delta subscribers and streams, while any subscriber wants deltas. Locked by a
    /// broadcast for its whole delivery, so that every socket sees a stream's events in the
    /// order their seqs were given.
    deltas: Option<Box<Mutex<Deltas>>>,
}

/// A channel's subscribers by tag filter, so that a published event reaches those without a
/// filter and those whose one equality it satisfies without testing anyone else, and every
/// other distinct filter is evaluated once however many subscribers share it.
///
/// Filters arrive interned ([`Interner`]): equal filters are one `Arc`, and its address
/// names its group. A broadcast evaluates the groups' filters outside the channels' lock
/// (see [`Hub::broadcast`]).
#[derive(Debug, Default)]
struct Filtered {
    plain: HashMap<SocketId, Conn>,
    /// Tag name -> value -> the subscribers whose filter is that one equality (nested, so an
    /// event's tags are looked up without building a key per tag).
    equal: HashMap<String, HashMap<String, HashMap<SocketId, Conn>>>,
    /// Every other filter's group, by the address of its shared filter.
    groups: HashMap<usize, Group>,
    /// Each filtered subscriber's filter, so that leaving costs one lookup.
    filter_of: HashMap<SocketId, Arc<Filter>>,
}

/// The subscribers of a channel with one (shared) filter.
#[derive(Debug)]
struct Group {
    filter: Arc<Filter>,
    members: HashMap<SocketId, Conn>,
}

/// The name of a filter's group: its shared copy's address (stable while the group holds it).
fn group_key(filter: &Arc<Filter>) -> usize {
    Arc::as_ptr(filter) as usize
}

impl Filtered {
    fn insert(&mut self, conn: &Conn, filter: Option<&Arc<Filter>>) {
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

    fn remove(&mut self, socket_id: &str) {
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

    fn has_filters(&self) -> bool {
        !self.filter_of.is_empty()
    }

    /// The distinct filters to evaluate for an event (each shared copy, cloned).
    fn snapshot(&self) -> Vec<Arc<Filter>> {
        self.groups.values().map(|g| g.filter.clone()).collect()
    }

    /// Every subscriber an event with `tags` is for, where `passed` are the groups' filters
    /// the event passes (evaluated beforehand, outside the lock; a group made since is not
    /// in them, and its members joined after the event).
    fn recipients<'a>(
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

/// Whether most of `sent` recipients are `behind`: the channel's publishers, not one slow
/// reader, are the cause.
fn is_congested(behind: usize, sent: usize) -> bool {
    sent > 0 && behind * 2 > sent
}

#[derive(Debug, Default)]
struct AppHub {
    channels: RwLock<HashMap<String, Channel>>,
    connections: AtomicU64,
    /// Signed-in connections by user id.
    users: RwLock<HashMap<String, HashMap<SocketId, Conn>>>,
    /// Connections watching a user (watchlists), by the watched user id.
    watchers: RwLock<HashMap<String, HashMap<SocketId, Conn>>>,
    /// Cancelled when the app is disabled or deleted: every connection of the app waits on
    /// the token it was opened under. Replaced after cancelling, for the app's next life.
    ended: RwLock<tokio_util::sync::CancellationToken>,
}

/// A presence join to make along with a subscription.
#[derive(Debug, Clone)]
pub(crate) struct Join {
    /// The user id.
    pub user_id: String,
    /// The user info.
    pub user_info: Value,
    /// How many distinct users the channel may hold, on every node together.
    pub max_members: usize,
    /// The channel's members on other nodes (from the replicated registry), so the limit
    /// counts them too.
    pub elsewhere: HashSet<String>,
}

/// What a subscription did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscribed {
    /// The socket was not subscribed before.
    pub new_subscriber: bool,
    /// The channel had no subscriber before (it became occupied).
    pub occupied: bool,
    /// Presence: this is the user's first connection in the channel (announce them).
    pub first_for_user: bool,
}

/// What an unsubscription did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Unsubscribed {
    /// The socket was subscribed.
    pub was_subscribed: bool,
    /// The channel has no subscriber left (it was vacated).
    pub vacated: bool,
    /// Presence: the user's last connection left; announce their departure.
    pub removed_user: Option<String>,
}

/// A presence channel refused a member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the presence channel is full ({max} members)")]
pub(crate) struct ChannelFull {
    /// The limit.
    pub max: usize,
}

/// What a subscriber asks of a channel's events besides receiving them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wants {
    /// Only the events with tags this filter passes.
    pub filter: Option<Arc<Filter>>,
    /// Events as deltas.
    pub delta: Option<DeltaWish>,
}

/// A subscriber's wish for deltas on a channel.
#[derive(Debug, Clone)]
pub(crate) struct DeltaWish {
    /// The algorithm it asked for; the channel's if none.
    pub algorithm: Option<Algorithm>,
    /// The channel's settings (the server's with the app's overrides).
    pub settings: Arc<StreamSettings>,
}

/// What delta compression sent, for the metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeltaCounters {
    /// Events sent as deltas.
    pub deltas: Counter,
    /// Events sent whole on a delta stream.
    pub full: Counter,
    /// Bytes the deltas saved against sending those events whole.
    pub saved_bytes: Counter,
}

/// This node's sockets and subscriptions, by app.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    apps: RwLock<HashMap<String, Arc<AppHub>>>,
    delta_counters: DeltaCounters,
    /// The node's distinct tag filters, each held once.
    filters: Interner,
}

impl Hub {
    /// An empty hub counting its deltas in `delta_counters`.
    pub(crate) fn new(delta_counters: DeltaCounters) -> Self {
        Self { apps: RwLock::default(), delta_counters, filters: Interner::default() }
    }

    /// The node's shared copy of `filter`: subscriptions pass it in [`Wants`], so that equal
    /// filters are held once and grouped in their channels.
    pub(crate) fn intern(&self, filter: Filter) -> Arc<Filter> {
        self.filters.intern(filter)
    }

    fn app(&self, app_id: &str) -> Arc<AppHub> {
        if let Some(app) = self.apps.read().expect("hub lock").get(app_id) {
            return app.clone();
        }
        self.apps.write().expect("hub lock").entry(app_id.to_string()).or_default().clone()
    }

    fn existing(&self, app_id: &str) -> Option<Arc<AppHub>> {
        self.apps.read().expect("hub lock").get(app_id).cloned()
    }

    /// Count a new connection if the app, with `elsewhere` connections on other nodes, is under
    /// `max` (0 = unlimited); whether it was.
    pub(crate) fn admit(&self, app_id: &str, max: u64, elsewhere: u64) -> bool {
        let app = self.app(app_id);
        app.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n.saturating_add(elsewhere) < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Forget a connection counted by [`Hub::admit`].
    pub(crate) fn release(&self, app_id: &str) {
        if let Some(app) = self.existing(app_id) {
            let _ = app
                .connections
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// What a new connection of the app waits on to learn that the app was disabled.
    pub(crate) fn app_ending(&self, app_id: &str) -> tokio_util::sync::CancellationToken {
        self.app(app_id).ended.read().expect("hub lock").clone()
    }

    /// The app was disabled or deleted: its connections on this node close; later ones (should
    /// it be enabled again) do not.
    pub(crate) fn end_app(&self, app_id: &str) {
        if let Some(app) = self.existing(app_id) {
            let ended = std::mem::take(&mut *app.ended.write().expect("hub lock"));
            ended.cancel();
        }
    }

    /// Connections per app on this node (apps without any left out).
    pub(crate) fn connection_counts(&self) -> HashMap<String, u64> {
        let apps = self.apps.read().expect("hub lock");
        apps.iter()
            .map(|(id, app)| (id.clone(), app.connections.load(Ordering::Acquire)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }

    /// The app's connections on this node.
    pub(crate) fn connection_count(&self, app_id: &str) -> u64 {
        self.existing(app_id).map_or(0, |a| a.connections.load(Ordering::Acquire))
    }

    /// Subscribe `conn` to `channel`, joining presence if `join` is given. `ack` builds the
    /// frame that acknowledges the subscription from the members as they are after it; it is
    /// enqueued before the socket becomes visible to broadcasts, so the acknowledgement always
    /// precedes the channel's events.
    pub(crate) fn subscribe(
        &self,
        app_id: &str,
        channel: &str,
        conn: &Conn,
        join: Option<Join>,
        wants: Wants,
        ack: impl FnOnce(&mut dyn Iterator<Item = (&str, &Value)>) -> Utf8Bytes,
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
        let frame = match &entry.members {
            Some(members) => ack(&mut members.iter().map(|(id, m)| (id.as_str(), &m.info))),
            None => ack(&mut std::iter::empty()),
        };
        conn.send(&frame);
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
        let Broadcast { app: app_id, channel, except, tags, compressible } = *to;
        let Some(app) = self.existing(app_id) else { return 0 };
        // Filters are evaluated with no lock held: under the read lock the channel's
        // distinct filters are taken (shared copies), then evaluated once each while other
        // channels subscribe and publish freely, then delivery takes the lock again. A
        // subscriber that came or went in between is harmless: it joined after the event or
        // left before it. The copies are held until delivery is over, so no group's key (the
        // filter's address) can be reused by another filter meanwhile.
        let mut channels = app.channels.read().expect("hub lock");
        let mut passed = Vec::new();
        if let Some(tags) = tags {
            let filters = channels.get(channel).and_then(|c| c.filtered.as_ref());
            let snapshot = filters.map(|f| f.snapshot()).unwrap_or_default();
            if !snapshot.is_empty() {
                drop(channels);
                passed = snapshot.into_iter().filter(|f| f.matches(tags)).collect();
                channels = app.channels.read().expect("hub lock");
            }
        }
        let Some(entry) = channels.get(channel) else { return 0 };
        let mut deltas = match &entry.deltas {
            Some(deltas) if compressible => Some(deltas.lock().expect("deltas lock")),
            _ => None,
        };
        let mut publication = deltas.as_mut().and_then(|d| d.publish(channel, frame));
        let (mut sent, mut behind) = (0, 0);
        let mut deliver = |socket_id: &SocketId, conn: &Conn| {
            if except.is_some_and(|e| e == &**socket_id) {
                return;
            }
            let own = publication.as_mut().and_then(|p| p.frame_for(socket_id));
            if let Delivery::Queued { behind: b } = conn.deliver(own.as_ref().unwrap_or(frame)) {
                sent += 1;
                behind += usize::from(b);
            }
        };
        match (&entry.filtered, tags) {
            (Some(filtered), Some(tags)) => {
                filtered.recipients(tags, &passed).for_each(|(id, conn)| deliver(id, conn));
            }
            _ => entry.subscribers.iter().for_each(|(id, conn)| deliver(id, conn)),
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
        sent
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

    /// Record that `conn` signed in as `user_id`; whether it is the user's first connection
    /// (the user came online).
    pub(crate) fn sign_in(&self, app_id: &str, user_id: &str, conn: &Conn) -> bool {
        let app = self.app(app_id);
        let mut users = app.users.write().expect("hub lock");
        let sockets = users.entry(user_id.to_string()).or_default();
        let first = sockets.is_empty();
        sockets.insert(conn.socket_id.clone(), conn.clone());
        first
    }

    /// Forget a signed-in connection; whether it was the user's last (the user went offline).
    pub(crate) fn sign_out(&self, app_id: &str, user_id: &str, socket_id: &str) -> bool {
        let Some(app) = self.existing(app_id) else { return false };
        let mut users = app.users.write().expect("hub lock");
        let Some(sockets) = users.get_mut(user_id) else { return false };
        let removed = sockets.remove(socket_id).is_some();
        let last = removed && sockets.is_empty();
        if sockets.is_empty() {
            users.remove(user_id);
        }
        last
    }

    /// The connections signed in as `user_id`.
    pub(crate) fn user_connections(&self, app_id: &str, user_id: &str) -> Vec<Conn> {
        self.existing(app_id).map_or_else(Vec::new, |app| {
            app.users
                .read()
                .expect("hub lock")
                .get(user_id)
                .map(|s| s.values().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Enqueue `frame` to every connection signed in as `user_id`; how many got it.
    pub(crate) fn send_to_user(&self, app_id: &str, user_id: &str, frame: &Utf8Bytes) -> usize {
        self.user_connections(app_id, user_id).iter().filter(|conn| conn.send(frame)).count()
    }

    /// Which of `user_ids` have a signed-in connection on this node.
    pub(crate) fn online(&self, app_id: &str, user_ids: &[String]) -> Vec<String> {
        self.existing(app_id).map_or_else(Vec::new, |app| {
            let users = app.users.read().expect("hub lock");
            user_ids.iter().filter(|id| users.contains_key(*id)).cloned().collect()
        })
    }

    /// Make `conn` a watcher of each of `user_ids`.
    pub(crate) fn watch(&self, app_id: &str, conn: &Conn, user_ids: &[String]) {
        let app = self.app(app_id);
        let mut watchers = app.watchers.write().expect("hub lock");
        for id in user_ids {
            watchers.entry(id.clone()).or_default().insert(conn.socket_id.clone(), conn.clone());
        }
    }

    /// Stop `socket_id` watching `user_ids`.
    pub(crate) fn unwatch(&self, app_id: &str, socket_id: &str, user_ids: &[String]) {
        let Some(app) = self.existing(app_id) else { return };
        let mut watchers = app.watchers.write().expect("hub lock");
        for id in user_ids {
            if let Some(set) = watchers.get_mut(id) {
                set.remove(socket_id);
                if set.is_empty() {
                    watchers.remove(id);
                }
            }
        }
    }

    /// Enqueue `frame` to every watcher of `user_id`.
    pub(crate) fn send_to_watchers(&self, app_id: &str, user_id: &str, frame: &Utf8Bytes) {
        let Some(app) = self.existing(app_id) else { return };
        let watchers: Vec<Conn> = app
            .watchers
            .read()
            .expect("hub lock")
            .get(user_id)
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        for conn in watchers {
            conn.send(frame);
        }
    }

    /// Every app's hub, taken out of the lock.
    fn all_apps(&self) -> Vec<(String, Arc<AppHub>)> {
        self.apps
            .read()
            .expect("hub lock")
            .iter()
            .map(|(id, app)| (id.clone(), app.clone()))
            .collect()
    }

    /// Every presence member on this node: (app, channel, user, info).
    pub(crate) fn presence_members(&self) -> Vec<(String, String, String, Value)> {
        let apps = self.all_apps();
        let mut out = Vec::new();
        for (app_id, app) in apps {
            for (name, channel) in app.channels.read().expect("hub lock").iter() {
                for (user, member) in channel.members.iter().flatten() {
                    out.push((app_id.clone(), name.clone(), user.clone(), member.info.clone()));
                }
            }
        }
        out
    }

    /// Whether `user_id` is a presence member of `channel` on this node.
    pub(crate) fn has_member(&self, app_id: &str, channel: &str, user_id: &str) -> bool {
        self.existing(app_id).is_some_and(|app| {
            app.channels
                .read()
                .expect("hub lock")
                .get(channel)
                .and_then(|c| c.members.as_ref())
                .is_some_and(|m| m.contains_key(user_id))
        })
    }

    /// Every channel with a subscriber on this node, as (app, channel).
    pub(crate) fn occupied_channels(&self) -> Vec<(String, String)> {
        let apps = self.all_apps();
        let mut out = Vec::new();
        for (app_id, app) in apps {
            for (name, channel) in app.channels.read().expect("hub lock").iter() {
                if !channel.subscribers.is_empty() {
                    out.push((app_id.clone(), name.clone()));
                }
            }
        }
        out
    }

    /// Every signed-in user on this node, as (app, user).
    pub(crate) fn signed_in_users(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (app_id, app) in self.all_apps() {
            for user in app.users.read().expect("hub lock").keys() {
                out.push((app_id.clone(), user.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(
        id: &str,
        frames: usize,
        bytes: usize,
    ) -> (Conn, mpsc::Receiver<Utf8Bytes>, Arc<Closer>) {
        let (tx, rx) = mpsc::channel(frames);
        let closer = Arc::new(Closer::new(frames, bytes, 50));
        (Conn::new(id.into(), tx, closer.clone()), rx, closer)
    }

    #[test]
    fn a_queue_is_bounded_in_bytes_and_says_when_it_is_behind() {
        let (conn, _rx, closer) = conn("1.1", 100, 100);
        let frame = Utf8Bytes::from("x".repeat(20));
        assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: false });
        assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: false });
        assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: true });
        assert!(conn.send(&frame) && conn.send(&frame));
        assert_eq!(closer.requested(), None);
        assert_eq!(conn.deliver(&frame), Delivery::Refused);
        assert_eq!(closer.requested(), Some(codes::OVER_CAPACITY));
    }

    #[test]
    fn a_queue_is_bounded_in_frames() {
        let (conn, mut rx, closer) = conn("1.1", 4, 0);
        let frame = Utf8Bytes::from("x");
        assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: false });
        assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: false });
        assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: true });
        assert!(conn.send(&frame));
        assert!(!conn.send(&frame));
        assert_eq!(closer.requested(), Some(codes::OVER_CAPACITY));
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn a_channel_is_congested_only_when_most_subscribers_are_behind() {
        let hub = Hub::default();
        let (fast, mut fast_rx, fast_closer) = conn("1.1", 4, 0);
        let (slow, _slow_rx, _) = conn("1.2", 4, 0);
        let (third, mut third_rx, third_closer) = conn("1.3", 4, 0);
        for c in [&fast, &slow, &third] {
            hub.subscribe("app", "ch", c, None, Wants::default(), |_| Utf8Bytes::from("ack"))
                .unwrap();
        }
        let frame = Utf8Bytes::from("e");
        // The acknowledgement and two events: three of four places taken everywhere.
        hub.broadcast(&Broadcast::to("app", "ch"), &frame);
        hub.broadcast(&Broadcast::to("app", "ch"), &frame);
        assert!(hub.congested("app", "ch", false));
        // Two readers catch up; one behind of three is not congestion.
        for (rx, closer) in [(&mut fast_rx, &fast_closer), (&mut third_rx, &third_closer)] {
            while let Ok(f) = rx.try_recv() {
                closer.dequeued(if closer.counts(f.len()) { f.len() } else { 0 });
            }
        }
        assert!(!hub.congested("app", "ch", true));
        assert!(!hub.congested("app", "ch", false));
    }

    #[test]
    fn tagged_events_reach_the_subscribers_whose_filter_passes_them() {
        use crate::protocol::filter::{Filter, Tags};
        let hub = Hub::default();
        let filter = |v: serde_json::Value| Some(Arc::new(Filter::compile(&v).unwrap()));
        let (plain, mut plain_rx, _) = conn("1.1", 16, 0);
        let (btc, mut btc_rx, _) = conn("1.2", 16, 0);
        let (dear, mut dear_rx, _) = conn("1.3", 16, 0);
        let ack = |_: &mut dyn Iterator<Item = (&str, &Value)>| Utf8Bytes::from("ack");
        hub.subscribe("app", "ch", &plain, None, Wants::default(), ack).unwrap();
        let eq = serde_json::json!({ "key": "sym", "cmp": "eq", "val": "BTC" });
        hub.subscribe("app", "ch", &btc, None, Wants { filter: filter(eq), delta: None }, ack)
            .unwrap();
        let gt = serde_json::json!({ "key": "px", "cmp": "gt", "val": 100 });
        hub.subscribe("app", "ch", &dear, None, Wants { filter: filter(gt), delta: None }, ack)
            .unwrap();
        for rx in [&mut plain_rx, &mut btc_rx, &mut dear_rx] {
            assert_eq!(rx.try_recv().unwrap().as_str(), "ack");
        }
        let tags = |pairs: &[(&str, &str)]| -> Tags {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let send = |name: &str, t: Tags| {
            hub.broadcast(&Broadcast::to("app", "ch").tagged(Some(&t)), &Utf8Bytes::from(name))
        };
        assert_eq!(send("btc", tags(&[("sym", "BTC"), ("px", "5")])), 2);
        assert_eq!(send("eth", tags(&[("sym", "ETH"), ("px", "500")])), 2);
        // Protocol frames (no tags) reach everyone.
        assert_eq!(hub.broadcast(&Broadcast::to("app", "ch"), &Utf8Bytes::from("internal")), 3);
        let got = |rx: &mut mpsc::Receiver<Utf8Bytes>| -> Vec<String> {
            std::iter::from_fn(|| rx.try_recv().ok()).map(|f| f.as_str().to_string()).collect()
        };
        assert_eq!(got(&mut plain_rx), ["btc", "eth", "internal"]);
        assert_eq!(got(&mut btc_rx), ["btc", "internal"]);
        assert_eq!(got(&mut dear_rx), ["eth", "internal"]);
        // Leaving empties the groups; the last filter gone, the channel is plain again.
        hub.unsubscribe("app", "ch", "1.2", None);
        hub.unsubscribe("app", "ch", "1.3", None);
        assert_eq!(send("after", tags(&[("sym", "BTC")])), 1);
        assert_eq!(got(&mut plain_rx), ["after"]);
    }

    #[test]
    fn subscribers_with_equal_filters_share_one_group_and_one_copy() {
        let hub = Hub::default();
        let ack = |_: &mut dyn Iterator<Item = (&str, &Value)>| Utf8Bytes::from("ack");
        let compile = |v: serde_json::Value| Filter::compile(&v).unwrap();
        let dear = || {
            serde_json::json!({ "op": "or", "nodes": [
            { "key": "px", "cmp": "gt", "val": 100 }, { "key": "sym", "cmp": "nex" }
        ] })
        };
        // The same filter written in another order is the same filter.
        let dear_too = serde_json::json!({ "op": "or", "nodes": [
            { "key": "sym", "cmp": "nex" }, { "key": "px", "cmp": "gt", "val": "100" }
        ] });
        let cheap = serde_json::json!({ "key": "px", "cmp": "lt", "val": 10 });
        let mut rxs = Vec::new();
        for (i, (channel, filter)) in [
            ("ch", dear()),
            ("ch", dear_too),
            ("ch", dear()),
            ("ch", cheap.clone()),
            ("other", dear()),
        ]
        .into_iter()
        .enumerate()
        {
            let (c, rx, _) = conn(&format!("1.{i}"), 16, 0);
            let wants = Wants { filter: Some(hub.intern(compile(filter))), delta: None };
            hub.subscribe("app", channel, &c, None, wants, ack).unwrap();
            rxs.push(rx);
        }
        {
            let app = hub.existing("app").unwrap();
            let channels = app.channels.read().unwrap();
            let ch = channels["ch"].filtered.as_ref().unwrap();
            let sizes: Vec<usize> = {
                let mut s: Vec<usize> = ch.groups.values().map(|g| g.members.len()).collect();
                s.sort_unstable();
                s
            };
            assert_eq!(sizes, [1, 3], "one group per distinct filter");
            let other = channels["other"].filtered.as_ref().unwrap();
            let shared = ch.groups.values().find(|g| g.members.len() == 3).unwrap();
            let elsewhere = other.groups.values().next().unwrap();
            assert!(Arc::ptr_eq(&shared.filter, &elsewhere.filter), "held once on the node");
        }
        let tags: Tags = [("px".to_string(), "500".to_string())].into();
        assert_eq!(
            hub.broadcast(&Broadcast::to("app", "ch").tagged(Some(&tags)), &Utf8Bytes::from("e")),
            3
        );
        let got: Vec<usize> =
            rxs.iter_mut().map(|rx| std::iter::from_fn(|| rx.try_recv().ok()).count()).collect();
        assert_eq!(got, [2, 2, 2, 1, 1], "acks, and the event for the three that passed it");
        // The group goes with its last member.
        for i in 0..3 {
            hub.unsubscribe("app", "ch", &format!("1.{i}"), None);
        }
        let app = hub.existing("app").unwrap();
        assert_eq!(app.channels.read().unwrap()["ch"].filtered.as_ref().unwrap().groups.len(), 1);
    }

    #[test]
    fn presence_counts_users_not_sockets_and_holds_its_limit() {
        let hub = Hub::default();
        let ack = |_: &mut dyn Iterator<Item = (&str, &Value)>| Utf8Bytes::from("ack");
        let join = |user: &str| Join {
            user_id: user.into(),
            user_info: serde_json::json!({ "name": user }),
            max_members: 2,
            elsewhere: HashSet::new(),
        };
        let (a1, _a1_rx, _) = conn("1.1", 8, 0);
        let (a2, _a2_rx, _) = conn("1.2", 8, 0);
        let (b, _b_rx, _) = conn("1.3", 8, 0);
        let (c, _c_rx, _) = conn("1.4", 8, 0);
        let first = hub
            .subscribe("app", "presence-x", &a1, Some(join("a")), Wants::default(), ack)
            .unwrap();
        assert_eq!(
            first,
            Subscribed { new_subscriber: true, occupied: true, first_for_user: true }
        );
        let again = hub
            .subscribe("app", "presence-x", &a2, Some(join("a")), Wants::default(), ack)
            .unwrap();
        assert!(again.new_subscriber && !again.occupied && !again.first_for_user);
        hub.subscribe("app", "presence-x", &b, Some(join("b")), Wants::default(), ack).unwrap();
        // Two users, two allowed: a third user is refused, a known one is not.
        let refused =
            hub.subscribe("app", "presence-x", &c, Some(join("c")), Wants::default(), ack);
        assert_eq!(refused, Err(ChannelFull { max: 2 }));
        assert_eq!(hub.user_ids("app", "presence-x").len(), 2);
        assert_eq!(hub.subscription_count("app", "presence-x"), 3);
        // A user leaves with their last socket, the channel with its last subscriber.
        let left = hub.unsubscribe("app", "presence-x", "1.1", Some("a"));
        assert_eq!(left, Unsubscribed { was_subscribed: true, vacated: false, removed_user: None });
        let left = hub.unsubscribe("app", "presence-x", "1.2", Some("a"));
        assert_eq!(left.removed_user.as_deref(), Some("a"));
        let last = hub.unsubscribe("app", "presence-x", "1.3", Some("b"));
        assert!(last.vacated && last.removed_user.as_deref() == Some("b"));
        assert_eq!(hub.subscription_count("app", "presence-x"), 0);
        assert!(hub.occupied_channels().is_empty());
    }

    #[test]
    fn a_full_queue_closes_its_connection_with_4100_and_others_still_get_the_event() {
        let hub = Hub::default();
        let ack = |_: &mut dyn Iterator<Item = (&str, &Value)>| Utf8Bytes::from("ack");
        let (slow, _slow_rx, slow_closer) = conn("1.1", 2, 0);
        let (fast, mut fast_rx, fast_closer) = conn("1.2", 8, 0);
        hub.subscribe("app", "ch", &slow, None, Wants::default(), ack).unwrap();
        hub.subscribe("app", "ch", &fast, None, Wants::default(), ack).unwrap();
        let frame = Utf8Bytes::from("e");
        assert_eq!(hub.broadcast(&Broadcast::to("app", "ch"), &frame), 2);
        // The slow reader's queue (two frames: the ack and one event) is full now.
        assert_eq!(hub.broadcast(&Broadcast::to("app", "ch"), &frame), 1);
        assert_eq!(slow_closer.requested(), Some(codes::OVER_CAPACITY));
        assert_eq!(fast_closer.requested(), None);
        let got: Vec<Utf8Bytes> = std::iter::from_fn(|| fast_rx.try_recv().ok()).collect();
        assert_eq!(got.len(), 3);
        // The socket named in `except` is skipped.
        assert_eq!(hub.broadcast(&Broadcast::to("app", "ch").except(Some("1.2")), &frame), 0);
    }
}

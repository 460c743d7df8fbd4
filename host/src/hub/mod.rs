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
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use prometheus_client::metrics::counter::Counter;
use serde_json::Value;

use crate::{
    delta::{Algorithm, Deltas, StreamSettings},
    protocol::filter::{Filter, Interner},
};

pub(crate) use crate::protocol::SocketId;

mod channels;
mod conn;
mod filtered;
mod snapshot;
#[cfg(test)]
mod tests;
mod users;

pub(crate) use conn::{Claims, Closer, Conn, Delivery, Next, Outbound, Sent};
use filtered::Filtered;

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

/// An event with a recovery position, as the hub delivers it: its frame with the position
/// appended, and the stream's published serial that the delivery raises to `serial` (see
/// [`Hub::broadcast_positioned`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Positioned<'a> {
    /// The frame with the position appended.
    pub frame: &'a axum::extract::ws::Utf8Bytes,
    /// The stream's last published serial.
    pub published: &'a AtomicU64,
    /// The event's serial.
    pub serial: u64,
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

/// What broadcasts wrote to sockets themselves, for the metrics (the connections' tasks count
/// what they write).
#[derive(Debug, Clone, Default)]
pub(crate) struct SentCounters {
    /// WebSocket messages.
    pub messages: Counter,
    /// Their bytes.
    pub bytes: Counter,
}

impl SentCounters {
    fn count(&self, sent: Sent) {
        if sent.frames > 0 {
            self.messages.inc_by(sent.frames);
            self.bytes.inc_by(sent.bytes);
        }
    }
}

/// This node's sockets and subscriptions, by app.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    apps: RwLock<HashMap<String, Arc<AppHub>>>,
    delta_counters: DeltaCounters,
    sent_counters: SentCounters,
    /// The node's distinct tag filters, each held once.
    filters: Interner,
    /// The runtime the hub was made on, whose tasks write the sockets broadcasts claim (see
    /// [`Claims::write_soon`]); without one they are written at once.
    runtime: Option<tokio::runtime::Handle>,
}

impl Hub {
    /// An empty hub counting its deltas in `delta_counters`, and the frames its broadcasts
    /// write themselves in `sent_counters`. Made on a runtime, it writes claimed sockets on
    /// that runtime's tasks.
    pub(crate) fn new(delta_counters: DeltaCounters, sent_counters: SentCounters) -> Self {
        let filters = Interner::default();
        let runtime = tokio::runtime::Handle::try_current().ok();
        Self { apps: RwLock::default(), delta_counters, sent_counters, filters, runtime }
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
}

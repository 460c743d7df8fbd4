//! The live event log's tap: what happens to an app (connections, subscriptions, events,
//! webhooks, errors), recorded only while somebody watches it.
//!
//! Off, a record call is one relaxed atomic load. On, each app's entries are bounded per second
//! on each node (the rest are counted and reported as one `skipped` entry), each viewer has a
//! bounded queue and is dropped when it falls behind (the server never waits for a browser),
//! and entries for viewers on other nodes leave in batches on the bus (see [`Tap::tick`]).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::cluster::now_ms;

/// Live logs open on one node at once, over every app.
pub(crate) const MAX_VIEWERS: i64 = 64;
/// Entries one viewer may have waiting; a viewer further behind is dropped.
pub(crate) const VIEWER_QUEUE: usize = 512;
/// Entries an app's tap records per second on one node; the rest are counted as skipped.
pub(crate) const ENTRIES_PER_SECOND: u32 = 200;
/// The most event data an entry carries, in bytes; longer data is cut (and marked so).
pub(crate) const MAX_DATA: usize = 2048;
/// The longest name (channel, event, socket id) or detail an entry carries, in bytes.
const MAX_TEXT: usize = 512;
/// How long another node's watch lasts unless renewed.
pub(crate) const LEASE: Duration = Duration::from_secs(15);
/// How often a node renews its watches on the other nodes.
pub(crate) const RENEW: Duration = Duration::from_secs(5);
/// The most entries one bus message carries (and a node accepts in one).
pub(crate) const MAX_BATCH: usize = 256;
/// The most apps watched on a node at once (its own viewers' and other nodes'): a peer
/// writing made-up watches to the bus cannot grow this without bound.
const MAX_WATCHED: usize = 1000;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A connection was opened.
    Connected,
    /// A connection closed.
    Disconnected,
    /// A subscription was made.
    Subscribed,
    /// A subscription ended.
    Unsubscribed,
    /// An event published through the HTTP API (or the console's form).
    ApiEvent,
    /// A client event.
    ClientEvent,
    /// A webhook was delivered, retried or given up.
    Webhook,
    /// An error sent to a client.
    Error,
    /// Entries left out because the app went over its entries per second.
    Skipped,
    /// A node began feeding the log.
    Watching,
}

/// One line of the live log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// When, in milliseconds since the epoch.
    #[serde(default)]
    pub t: u64,
    /// The node it happened on (set by the receiving node for other nodes' entries).
    #[serde(default)]
    pub node: String,
    /// What happened.
    pub kind: Kind,
    /// The channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
    /// The event's data, cut at [`MAX_DATA`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Anything else worth saying (a close code, an error, a webhook's outcome).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Whether `data` was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// `text` cut to at most `max` bytes, at a character boundary; whether it was cut.
fn cut(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_string(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), true)
}

impl Entry {
    /// An entry of `kind`, its other fields empty.
    pub(crate) fn new(kind: Kind) -> Self {
        Self {
            t: 0,
            node: String::new(),
            kind,
            channel: None,
            event: None,
            socket_id: None,
            data: None,
            detail: None,
            truncated: false,
        }
    }

    /// With the channel.
    pub(crate) fn channel(mut self, channel: &str) -> Self {
        self.channel = Some(cut(channel, MAX_TEXT).0);
        self
    }

    /// With the event name.
    pub(crate) fn event(mut self, event: &str) -> Self {
        self.event = Some(cut(event, MAX_TEXT).0);
        self
    }

    /// With the connection.
    pub(crate) fn socket(mut self, socket_id: &str) -> Self {
        self.socket_id = Some(cut(socket_id, MAX_TEXT).0);
        self
    }

    /// With the event's data (cut at [`MAX_DATA`] bytes).
    pub(crate) fn data(mut self, data: &str) -> Self {
        let (data, truncated) = cut(data, MAX_DATA);
        (self.data, self.truncated) = (Some(data), truncated);
        self
    }

    /// With a detail.
    pub(crate) fn detail(mut self, detail: impl AsRef<str>) -> Self {
        self.detail = Some(cut(detail.as_ref(), MAX_TEXT).0);
        self
    }

    /// Whether an entry another node sent stays within what this node would have written.
    fn bounded(&self) -> bool {
        let short = |s: &Option<String>| s.as_ref().is_none_or(|s| s.len() <= MAX_TEXT);
        short(&self.channel)
            && short(&self.event)
            && short(&self.socket_id)
            && short(&self.detail)
            && self.data.as_ref().is_none_or(|d| d.len() <= MAX_DATA)
    }
}

/// One open live log counted in the viewers gauge, for as long as either end of it (the
/// viewer's sender in a watch, its feed in the HTTP response) lives. The count is given back on
/// drop, so whatever removes a viewer (its browser leaving, falling behind, the watch ending,
/// shutdown) cannot leak a place under [`MAX_VIEWERS`].
struct Slot(Gauge);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A viewer's end of the log: entries as JSON text, until it is dropped.
pub(crate) struct Feed {
    entries: mpsc::Receiver<Arc<str>>,
    _slot: Arc<Slot>,
}

impl Feed {
    /// The next entry; `None` once the viewer was dropped (it fell behind or the watch ended).
    pub(crate) async fn recv(&mut self) -> Option<Arc<str>> {
        self.entries.recv().await
    }

    #[cfg(test)]
    fn try_recv(&mut self) -> Result<Arc<str>, mpsc::error::TryRecvError> {
        self.entries.try_recv()
    }
}

/// A viewer as its app's watch holds it.
struct Viewer {
    entries: mpsc::Sender<Arc<str>>,
    _slot: Arc<Slot>,
}

/// One app's watch on this node.
#[derive(Default)]
struct Watch {
    /// This node's viewers.
    viewers: Vec<Viewer>,
    /// Other nodes watching, until their lease ends.
    remote: HashMap<u64, Instant>,
    /// Entries waiting to go to the other nodes.
    outbox: Vec<Entry>,
    /// The current second: when it began, entries recorded in it, entries skipped.
    window: Option<Instant>,
    recorded: u32,
    skipped: u64,
}

impl Watch {
    fn idle(&self) -> bool {
        self.viewers.is_empty() && self.remote.is_empty()
    }

    /// Give `entry` to every viewer; drop those that are gone or too far behind.
    fn show(&mut self, entry: &Entry, dropped: &Counter) {
        if self.viewers.is_empty() {
            return;
        }
        // Entries are plain strings and numbers: serializing cannot fail.
        let text: Arc<str> = serde_json::to_string(entry).unwrap_or_default().into();
        self.viewers.retain(|viewer| match viewer.entries.try_send(text.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped.inc();
                false
            }
        });
    }

    /// Whether one more entry fits this second's allowance (counted as skipped if not).
    fn admit(&mut self, now: Instant) -> bool {
        if self.window.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1)) {
            self.window = Some(now);
            self.recorded = 0;
        }
        if self.recorded >= ENTRIES_PER_SECOND {
            self.skipped += 1;
            return false;
        }
        self.recorded += 1;
        true
    }
}

/// What a [`Tap::tick`] leaves for the caller to send on the bus.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    /// Apps this node's viewers watch: renew them on the other nodes.
    pub renew: Vec<String>,
    /// (app, watching nodes, entries) to send to each of those nodes.
    pub batches: Vec<(String, Vec<u64>, Vec<Entry>)>,
}

/// The tap.
pub(crate) struct Tap {
    /// This node's label in the log.
    node: String,
    /// Apps in `apps`: zero means every record call returns at once.
    watched: AtomicUsize,
    apps: RwLock<HashMap<String, Arc<Mutex<Watch>>>>,
    last_renew: Mutex<Option<Instant>>,
    viewers: Gauge,
    dropped: Counter,
    refused: Counter,
}

impl Tap {
    /// A tap labelling this node's entries `node`, counting viewers in `viewers`, those
    /// dropped for falling behind in `dropped`, and other nodes' watches refused (too many
    /// apps watched) in `refused`.
    pub(crate) fn new(node: String, viewers: Gauge, dropped: Counter, refused: Counter) -> Self {
        Self {
            node,
            watched: AtomicUsize::new(0),
            apps: RwLock::default(),
            last_renew: Mutex::new(None),
            viewers,
            dropped,
            refused,
        }
    }

    /// This node's label.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Whether anybody (here or on another node) watches the app.
    #[cfg(test)]
    fn watched(&self, app: &str) -> bool {
        self.watched.load(Ordering::Relaxed) != 0
            && self.apps.read().expect("tap lock").contains_key(app)
    }

    /// Record what `make` describes, if anybody watches the app. `make` runs only then, so
    /// building the entry costs nothing otherwise.
    pub(crate) fn record(&self, app: &str, make: impl FnOnce() -> Entry) {
        if self.watched.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(watch) = self.apps.read().expect("tap lock").get(app).cloned() else { return };
        let mut watch = watch.lock().expect("tap lock");
        if !watch.admit(Instant::now()) {
            return;
        }
        let mut entry = make();
        (entry.t, entry.node) = (now_ms(), self.node.clone());
        watch.show(&entry, &self.dropped);
        if !watch.remote.is_empty() && watch.outbox.len() < MAX_BATCH * 4 {
            watch.outbox.push(entry);
        }
    }

    /// The watch of `app`, made if there is room.
    fn watch_of(&self, app: &str) -> Option<Arc<Mutex<Watch>>> {
        let mut apps = self.apps.write().expect("tap lock");
        if let Some(watch) = apps.get(app) {
            return Some(watch.clone());
        }
        if apps.len() >= MAX_WATCHED {
            return None;
        }
        let watch = Arc::new(Mutex::new(Watch::default()));
        apps.insert(app.to_string(), watch.clone());
        self.watched.store(apps.len(), Ordering::Relaxed);
        Some(watch)
    }

    /// A new viewer of the app on this node: its feed, or `None` when too many apps are
    /// watched or too many logs are open already.
    pub(crate) fn view(&self, app: &str) -> Option<Feed> {
        // Taken first and given back by the slot's drop on every way out, so two viewers
        // arriving at once cannot both take the last place.
        let taken = self.viewers.inc();
        let slot = Arc::new(Slot(self.viewers.clone()));
        if taken >= MAX_VIEWERS {
            return None;
        }
        let watch = self.watch_of(app)?;
        let (tx, rx) = mpsc::channel(VIEWER_QUEUE);
        let viewer = Viewer { entries: tx, _slot: slot.clone() };
        watch.lock().expect("tap lock").viewers.push(viewer);
        Some(Feed { entries: rx, _slot: slot })
    }

    /// `node` watches the app (renewed every [`RENEW`]): send it the app's entries until its
    /// lease ends. A node that starts watching is told so in the log.
    pub(crate) fn watched_by(&self, node: u64, app: &str) {
        let Some(watch) = self.watch_of(app) else {
            self.refused.inc();
            return;
        };
        let mut watch = watch.lock().expect("tap lock");
        let new = watch.remote.insert(node, Instant::now() + LEASE).is_none();
        if new && watch.outbox.len() < MAX_BATCH * 4 {
            let mut entry = Entry::new(Kind::Watching).detail("this node feeds the log");
            (entry.t, entry.node) = (now_ms(), self.node.clone());
            watch.outbox.push(entry);
        }
    }

    /// Entries `node` sent for the app's viewers here: shown labelled with that node; the
    /// ones outside the bounds, and all of them past [`MAX_BATCH`], are left out.
    pub(crate) fn received(&self, node: &str, app: &str, entries: Vec<serde_json::Value>) {
        let Some(watch) = self.apps.read().expect("tap lock").get(app).cloned() else { return };
        let mut watch = watch.lock().expect("tap lock");
        let entries = entries.into_iter().take(MAX_BATCH);
        let entries = entries.filter_map(|e| Entry::deserialize(e).ok()).filter(Entry::bounded);
        for mut entry in entries {
            entry.node = node.to_string();
            watch.show(&entry, &self.dropped);
        }
    }

    /// Run every few hundred milliseconds: report skipped entries, forget viewers that left
    /// and leases that ended, and hand back what must go on the bus.
    pub(crate) fn tick(&self) -> Outgoing {
        let now = Instant::now();
        let renew_due = {
            let mut last = self.last_renew.lock().expect("tap lock");
            let due = last.is_none_or(|l| now.duration_since(l) >= RENEW);
            if due {
                *last = Some(now);
            }
            due
        };
        let mut out = Outgoing::default();
        let mut apps = self.apps.write().expect("tap lock");
        apps.retain(|app, watch| {
            let mut watch = watch.lock().expect("tap lock");
            self.report_skipped(&mut watch, now);
            watch.viewers.retain(|v| !v.entries.is_closed());
            watch.remote.retain(|_, until| *until > now);
            if watch.remote.is_empty() {
                watch.outbox.clear();
            } else if !watch.outbox.is_empty() {
                let nodes = watch.remote.keys().copied().collect();
                out.batches.push((app.clone(), nodes, std::mem::take(&mut watch.outbox)));
            }
            if renew_due && !watch.viewers.is_empty() {
                out.renew.push(app.clone());
            }
            !watch.idle()
        });
        self.watched.store(apps.len(), Ordering::Relaxed);
        out
    }

    /// When the second an app went over its allowance is over, say how many entries it lost.
    fn report_skipped(&self, watch: &mut Watch, now: Instant) {
        let over = watch.window.is_some_and(|w| now.duration_since(w) >= Duration::from_secs(1));
        if watch.skipped == 0 || !over {
            return;
        }
        let skipped = std::mem::take(&mut watch.skipped);
        let mut entry = Entry::new(Kind::Skipped).detail(format!(
            "{skipped} entries left out: over {ENTRIES_PER_SECOND} a second on this node"
        ));
        (entry.t, entry.node) = (now_ms(), self.node.clone());
        watch.show(&entry, &self.dropped);
        if !watch.remote.is_empty() {
            watch.outbox.push(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap() -> Tap {
        Tap::new("n1".into(), Gauge::default(), Counter::default(), Counter::default())
    }

    fn next(feed: &mut Feed) -> Entry {
        serde_json::from_str(&feed.try_recv().expect("an entry")).expect("an entry's JSON")
    }

    #[test]
    fn nothing_is_built_while_nobody_watches() {
        let tap = tap();
        tap.record("a", || panic!("built an entry nobody watches"));
        let _feed = tap.view("b");
        tap.record("a", || panic!("built an entry for another app's viewer"));
    }

    #[test]
    fn a_viewer_sees_its_apps_entries_labelled_with_the_node() {
        let tap = tap();
        let mut feed = tap.view("a").expect("a feed");
        tap.record("a", || Entry::new(Kind::ApiEvent).channel("c").event("e").data("{}"));
        let entry = next(&mut feed);
        assert_eq!((entry.kind, entry.node.as_str()), (Kind::ApiEvent, "n1"));
        assert_eq!(entry.channel.as_deref(), Some("c"));
        assert!(entry.t > 0);
    }

    #[test]
    fn long_data_is_cut_at_a_character_boundary_and_marked() {
        let entry = Entry::new(Kind::ApiEvent).data(&"é".repeat(MAX_DATA));
        assert!(entry.truncated);
        assert!(
            entry.data.as_ref().is_some_and(|d| d.len() <= MAX_DATA && d.len() >= MAX_DATA - 1)
        );
    }

    #[test]
    fn a_viewer_that_falls_behind_is_dropped_and_the_tap_turns_off() {
        let tap = tap();
        let feed = tap.view("a").expect("a feed");
        // Seconds go by (each with its allowance) while the viewer reads nothing.
        for _ in 0..=VIEWER_QUEUE / ENTRIES_PER_SECOND as usize {
            tap.apps.read().expect("tap lock")["a"].lock().expect("tap lock").window = None;
            for _ in 0..ENTRIES_PER_SECOND {
                tap.record("a", || Entry::new(Kind::Connected));
            }
        }
        assert_eq!(tap.dropped.get(), 1);
        tap.tick();
        assert!(!tap.watched("a"));
        assert_eq!(tap.viewers.get(), 1, "its browser still holds the feed");
        drop(feed);
        assert_eq!(tap.viewers.get(), 0, "a dropped viewer gives its place back");
    }

    #[test]
    fn viewers_that_leave_however_they_leave_never_use_up_the_places() {
        let tap = tap();
        for round in 0..(MAX_VIEWERS * 2) {
            let mut feed = tap.view("a").expect("a place for every viewer in turn");
            tap.record("a", || Entry::new(Kind::Connected));
            assert!(feed.try_recv().is_ok());
            // Leave by closing the feed, with the watch noticing at the next entry or tick.
            drop(feed);
            if round % 2 == 0 {
                tap.record("a", || Entry::new(Kind::Connected));
            } else {
                tap.tick();
            }
        }
        assert_eq!(tap.viewers.get(), 0);
        let refused: Vec<Option<Feed>> = (0..=MAX_VIEWERS).map(|_| tap.view("a")).collect();
        assert!(refused.last().is_some_and(Option::is_none));
        drop(refused);
        tap.tick();
        assert_eq!(tap.viewers.get(), 0, "a refused viewer holds no place");
    }

    #[test]
    fn entries_over_the_allowance_are_counted_then_reported() {
        let tap = tap();
        let mut feed = tap.view("a").expect("a feed");
        for _ in 0..ENTRIES_PER_SECOND + 5 {
            tap.record("a", || Entry::new(Kind::Connected));
        }
        let seen = std::iter::from_fn(|| feed.try_recv().ok()).count();
        assert_eq!(seen, ENTRIES_PER_SECOND as usize);
        let apps = tap.apps.read().expect("tap lock");
        let mut watch = apps["a"].lock().expect("tap lock");
        assert_eq!(watch.skipped, 5);
        tap.report_skipped(&mut watch, Instant::now() + Duration::from_secs(1));
        drop(watch);
        let entry = next(&mut feed);
        assert_eq!(entry.kind, Kind::Skipped);
        assert!(entry.detail.is_some_and(|d| d.starts_with("5 entries")));
    }

    #[test]
    fn other_nodes_get_batches_until_their_lease_ends() {
        let tap = tap();
        tap.watched_by(7, "a");
        tap.record("a", || Entry::new(Kind::Subscribed).channel("c"));
        let out = tap.tick();
        let (app, nodes, entries) = &out.batches[0];
        assert_eq!((app.as_str(), nodes.as_slice()), ("a", &[7][..]));
        let kinds: Vec<Kind> = entries.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [Kind::Watching, Kind::Subscribed]);
        assert!(out.renew.is_empty(), "no viewer here, nothing to renew");
        let apps = tap.apps.read().expect("tap lock");
        apps["a"].lock().expect("tap lock").remote.insert(7, Instant::now());
        drop(apps);
        tap.tick();
        assert!(!tap.watched("a"));
    }

    #[test]
    fn received_entries_are_relabelled_and_bounded() {
        let tap = tap();
        let mut feed = tap.view("a").expect("a feed");
        let mut forged = Entry::new(Kind::ApiEvent);
        forged.node = "n1".into();
        let mut huge = Entry::new(Kind::ApiEvent);
        huge.data = Some("x".repeat(MAX_DATA + 1));
        let values =
            [forged, huge].iter().map(|e| serde_json::to_value(e).expect("JSON")).collect();
        tap.received("n2", "a", values);
        assert_eq!(next(&mut feed).node, "n2");
        assert!(feed.try_recv().is_err(), "an entry over the bounds is left out");
        tap.received("n2", "a", vec![serde_json::json!({ "kind": "made_up" })]);
        assert!(feed.try_recv().is_err(), "an entry that does not read is left out");
        tap.received(
            "n2",
            "b",
            vec![serde_json::to_value(Entry::new(Kind::ApiEvent)).expect("JSON")],
        );
        assert!(feed.try_recv().is_err());
    }

    #[test]
    fn watched_apps_are_bounded() {
        let tap = tap();
        for i in 0..MAX_WATCHED {
            tap.watched_by(1, &i.to_string());
        }
        tap.watched_by(1, "one-more");
        assert_eq!(tap.refused.get(), 1);
        assert!(tap.view("one-more").is_none());
        let feeds: Vec<Feed> = (0..MAX_VIEWERS).filter_map(|_| tap.view("0")).collect();
        assert_eq!(feeds.len() as i64, MAX_VIEWERS);
        assert!(tap.view("0").is_none(), "viewers are bounded");
    }
}

//! Connection recovery on one node: each channel's stream (an epoch, `stream_id`, and a dense
//! `serial` per event) and its recent events, so that a client that reconnects gets exactly
//! what it missed, in order, or is told it cannot.
//!
//! A channel's publish takes its stream's order lock, gives the event the next serial, keeps
//! the positioned frame and delivers it before letting go: delivery order is serial order, and
//! a replay made under the same lock can neither miss nor double an event. A subscription's
//! acknowledgement carries the head as the hub makes the subscription visible (under the
//! hub's lock on the channel), read from [`Head`], which the hub raises to an event's serial
//! under that same lock as it delivers the event: every event up to the acknowledged head
//! was not delivered to the new subscriber (a waiting resume replays them right after the
//! acknowledgement), and every later one is.
//! Bounded: per channel in events ([`RecoverySettings::max_events`]) and bytes, in age, and
//! node-wide in channels; a channel past the node's limit publishes without a position.
//! Without history, positions come from this node's memory: configuration allows it with the
//! `local` transport only (a resume on another node could not be vouched for). With history,
//! the store assigns them for the whole cluster and every node delivers each channel's events
//! in serial order ([`durable`]).

mod degraded;
mod durable;
mod record;
mod rewind;

pub(crate) use durable::{Durable, Event, Fetched, GateCounters};
pub(crate) use record::Record;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use axum::extract::ws::Utf8Bytes;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{AppRecovery, RecoverySettings},
    hub::Positioned,
    protocol::{
        filter::{Filter, Tags},
        recovery::{Failure, FailureCode, Position, Recovered, Source, Wanted, with_position},
    },
};

/// Bytes of events one channel keeps at most; older ones go first past it.
const MAX_CHANNEL_BYTES: usize = 256 * 1024;
/// Channels the node keeps streams for at most; a new channel past it publishes without a
/// position (counted), so a flood of channels cannot grow memory.
const MAX_STREAMS: usize = 100_000;
/// The ids of replaced streams a channel's stream remembers: a reset comes seldom, and its
/// late events come within moments.
const MAX_RETIRED: usize = 4;

/// A channel's stream id and the serial of its last event, as a subscription's
/// acknowledgement reads them without the stream's locks.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    /// The stream (epoch).
    pub stream_id: Arc<str>,
    serial: Arc<AtomicU64>,
}

impl Head {
    /// The serial of the last event published (0: none yet).
    pub(crate) fn serial(&self) -> u64 {
        self.serial.load(Ordering::Acquire)
    }
}

/// One kept event.
#[derive(Debug)]
struct Kept {
    serial: u64,
    message_id: String,
    frame: Utf8Bytes,
    /// The tags subscribers' filters judge it by (`None`: every subscriber gets it).
    tags: Option<Arc<Tags>>,
    at: Instant,
}

impl Kept {
    /// What it holds, as counted against the channel's and the node's bytes: its frame, its
    /// id and itself (its tags are shared with the event's other holders).
    fn cost(&self) -> usize {
        self.frame.len() + self.message_id.len() + std::mem::size_of::<Self>()
    }
}

/// A channel's kept events, oldest first.
#[derive(Debug)]
struct Buffer {
    kept: VecDeque<Kept>,
    bytes: usize,
    /// When the stream was last published to or resumed from.
    used: Option<Instant>,
    /// The node's kept bytes over every buffer, which this one's are counted in (also when
    /// it is dropped with its stream).
    node: Gauge,
}

impl Buffer {
    fn push(&mut self, kept: Kept) {
        self.bytes += kept.cost();
        self.node.inc_by(bytes_i64(kept.cost()));
        self.kept.push_back(kept);
    }

    fn forget_before(&mut self, oldest: Instant) {
        while self.kept.front().is_some_and(|k| k.at < oldest) {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(kept) = self.kept.pop_front() {
            self.bytes -= kept.cost();
            self.node.dec_by(bytes_i64(kept.cost()));
        }
    }

    /// Forget every kept event.
    fn clear(&mut self) {
        self.node.dec_by(bytes_i64(self.bytes));
        self.kept.clear();
        self.bytes = 0;
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.node.dec_by(bytes_i64(self.bytes));
    }
}

fn bytes_i64(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// A stream's order: the serial of the last event delivered on this node, and, with history,
/// the events that came early (a serial beyond the next) waiting for the gap before them to be
/// filled from the store.
#[derive(Debug, Default)]
pub(crate) struct Order {
    last: u64,
    pending: BTreeMap<u64, Event>,
    /// A task is filling the gap.
    repairing: bool,
}

/// One channel's stream on this node. Two locks: `order` is held by a publish from its serial
/// to its delivery (so delivery order is serial order), `buffer` only while events are added
/// or read, so that a subscription being made visible under the hub's lock can read what it
/// must replay without waiting for a publish that waits for the hub.
#[derive(Debug)]
pub(crate) struct Stream {
    stream_id: Arc<str>,
    /// The ids of the streams of the channel this one replaced, newest first (at most
    /// [`MAX_RETIRED`]): a late event of one of them is not a stream started again.
    retired: Vec<Arc<str>>,
    order: Mutex<Order>,
    /// The last serial, raised after the event is kept and before it is delivered.
    published: Arc<AtomicU64>,
    buffer: Mutex<Buffer>,
}

impl Stream {
    /// Stream `stream_id`, of which this node delivered up to `last`; its kept bytes counted
    /// in `node`.
    fn new(stream_id: Arc<str>, last: u64, node: Gauge) -> Self {
        Self {
            stream_id,
            retired: Vec::new(),
            order: Mutex::new(Order { last, ..Order::default() }),
            published: Arc::new(AtomicU64::new(last)),
            // Used from its start, so that a stream nobody publishes to is swept too.
            buffer: Mutex::new(Buffer {
                kept: VecDeque::new(),
                bytes: 0,
                used: Some(Instant::now()),
                node,
            }),
        }
    }

    /// Whether `id` is the id of a stream this one replaced.
    pub(crate) fn retired(&self, id: &str) -> bool {
        self.retired.iter().any(|r| **r == *id)
    }

    /// The stream's head for an acknowledgement.
    pub(crate) fn head(&self) -> Head {
        Head { stream_id: self.stream_id.clone(), serial: self.published.clone() }
    }
}

/// Each channel's stream, by app then channel (looked up without building a key), and how
/// many there are.
#[derive(Debug, Default)]
struct Streams {
    by_app: HashMap<String, HashMap<String, Arc<Stream>>>,
    count: usize,
}

/// The stream and the head a subscription was acknowledged at.
pub(crate) type Acked = (Arc<str>, u64);

/// What a replay sends: the events, and what to tell the client of them.
pub(crate) type Replay = (Vec<Utf8Bytes>, Recovered);

/// The node's streams.
#[derive(Debug)]
pub(crate) struct Recovery {
    settings: RecoverySettings,
    streams: RwLock<Streams>,
    /// Events published without a position because the node holds [`MAX_STREAMS`].
    untracked: Counter,
    /// The history store, when positions come from it.
    durable: Option<Durable>,
    /// With it, each channel's appends under way and the events waiting for a slot (see
    /// [`Recovery::append`]); a channel is here while an append of it is under way.
    appends: Mutex<HashMap<(String, String), durable::Appending>>,
    /// Bytes of the events waiting in `appends`, over every channel.
    waiting_bytes: AtomicUsize,
    /// Bytes of the events kept in every stream's buffer (bounded by the settings' `max_bytes`).
    kept: Gauge,
    /// Channels whose kept events were forgotten to bring the node under its bytes.
    evicted: Counter,
    /// A publish is forgetting channels: the others need not.
    evicting: AtomicBool,
    /// Channels whose events went out without a position (best effort): their resumes fail.
    pub(crate) degraded: degraded::Degraded,
}

impl Recovery {
    /// Streams kept as `settings` say; events past the node's limit counted in `untracked`.
    /// Positions from this node's memory unless `durable` gives a history store.
    pub(crate) fn new(
        settings: RecoverySettings,
        untracked: Counter,
        durable: Option<Durable>,
    ) -> Self {
        Self {
            settings,
            streams: RwLock::default(),
            untracked,
            durable,
            appends: Mutex::default(),
            waiting_bytes: AtomicUsize::new(0),
            kept: Gauge::default(),
            evicted: Counter::default(),
            evicting: AtomicBool::new(false),
            degraded: degraded::Degraded::new(Gauge::default()),
        }
    }

    /// The bytes kept in buffers shown in `kept`, and channels forgotten for the node's
    /// bytes counted in `evicted` (before any stream is made).
    pub(crate) fn with_buffer_metrics(mut self, kept: Gauge, evicted: Counter) -> Self {
        self.kept = kept;
        self.evicted = evicted;
        self
    }

    /// The number of degraded channels shown in `gauge`.
    pub(crate) fn with_degraded_gauge(mut self, gauge: Gauge) -> Self {
        self.degraded = degraded::Degraded::new(gauge);
        self
    }

    /// The channel's stream, if this node has one.
    fn find(&self, app: &str, channel: &str) -> Option<Arc<Stream>> {
        // A publish on a known channel takes the read lock and allocates nothing.
        let streams = self.streams.read().expect("recovery lock");
        streams.by_app.get(app)?.get(channel).cloned()
    }

    /// Whether `stream` is still the channel's: not forgotten, nor replaced by a stream
    /// started again.
    fn is_current(&self, app: &str, channel: &str, stream: &Stream) -> bool {
        self.find(app, channel).is_some_and(|s| std::ptr::eq(Arc::as_ptr(&s), stream))
    }

    /// The channel's stream if it has one and `keep` accepts it, else a new one from `make`
    /// (in its place), when the node has room.
    fn find_or_make(
        &self,
        app: &str,
        channel: &str,
        keep: impl Fn(&Stream) -> bool,
        make: impl FnOnce() -> Stream,
    ) -> Option<Arc<Stream>> {
        if let Some(stream) = self.find(app, channel).filter(|s| keep(s)) {
            return Some(stream);
        }
        let mut streams = self.streams.write().expect("recovery lock");
        let existing = streams.by_app.get(app).and_then(|c| c.get(channel)).cloned();
        match existing {
            Some(stream) if keep(&stream) => return Some(stream),
            Some(_) => {}
            None if streams.count >= MAX_STREAMS => return None,
            None => streams.count += 1,
        }
        let mut stream = make();
        if let Some(replaced) = existing.filter(|old| old.stream_id != stream.stream_id) {
            let older = replaced.retired.iter().take(MAX_RETIRED - 1).cloned();
            stream.retired = std::iter::once(replaced.stream_id.clone()).chain(older).collect();
        }
        let stream = Arc::new(stream);
        let channels = streams.by_app.entry(app.to_string()).or_default();
        channels.insert(channel.to_string(), stream.clone());
        Some(stream)
    }

    /// The channel's stream, made if it has none and the node has room (positions from this
    /// node's memory); with history, only the one the node has (see [`Recovery::prepare`]).
    pub(crate) fn stream(&self, app: &str, channel: &str) -> Option<Arc<Stream>> {
        if self.durable.is_some() {
            return self.find(app, channel);
        }
        let fresh = || Stream::new(uuid::Uuid::new_v4().to_string().into(), 0, self.kept.clone());
        self.find_or_make(app, channel, |_| true, fresh)
    }

    /// Keep `frame`, the event `serial` with its position, in the stream's buffer.
    fn keep(
        &self,
        stream: &Stream,
        serial: u64,
        message_id: String,
        frame: Utf8Bytes,
        tags: Option<Arc<Tags>>,
    ) {
        let now = Instant::now();
        let mut buffer = stream.buffer.lock().expect("recovery lock");
        buffer.forget_before(now.checked_sub(self.settings.ttl).unwrap_or(now));
        buffer.used = Some(now);
        buffer.push(Kept { serial, message_id, frame, tags, at: now });
        while buffer.kept.len() > self.settings.max_events
            || (buffer.bytes > MAX_CHANNEL_BYTES && buffer.kept.len() > 1)
        {
            buffer.drop_oldest();
        }
        drop(buffer);
        if self.kept.get() > bytes_i64(self.settings.max_bytes) {
            self.evict();
        }
    }

    /// Forget whole channels' kept events, those used longest ago first, until the node
    /// holds seven eighths of its bytes or less (so that the channels are not scanned on
    /// every publish past the limit). Their resumes then read the store, or are told
    /// `position_expired`. One publish does it at a time; a buffer busy now is in use, and
    /// skipped.
    fn evict(&self) {
        if self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let target = bytes_i64(self.settings.max_bytes / 8 * 7);
        let mut by_use: Vec<(Instant, Arc<Stream>)> = {
            let streams = self.streams.read().expect("recovery lock");
            let all = streams.by_app.values().flat_map(HashMap::values);
            all.filter_map(|stream| {
                let buffer = stream.buffer.try_lock().ok()?;
                let used = buffer.used.filter(|_| !buffer.kept.is_empty())?;
                Some((used, stream.clone()))
            })
            .collect()
        };
        by_use.sort_unstable_by_key(|(used, _)| *used);
        for (_, stream) in by_use {
            if self.kept.get() <= target {
                break;
            }
            if let Ok(mut buffer) = stream.buffer.try_lock() {
                buffer.clear();
                self.evicted.inc();
            }
        }
        self.evicting.store(false, Ordering::Release);
    }

    /// Give an app event on the channel its position, keep it, and `deliver` the positioned
    /// frame while holding the stream's order (see the module's comment). Past the node's
    /// limit of channels the event goes without a position.
    pub(crate) fn publish<R>(
        &self,
        app: &str,
        channel: &str,
        plain: &str,
        message_id: String,
        tags: Option<&Tags>,
        deliver: impl FnOnce(Option<Positioned<'_>>) -> R,
    ) -> R {
        let Some(stream) = self.stream(app, channel) else {
            self.untracked.inc();
            return deliver(None);
        };
        let mut order = stream.order.lock().expect("recovery lock");
        order.last += 1;
        let serial = order.last;
        let frame = Utf8Bytes::from(with_position(plain, &message_id, &stream.stream_id, serial));
        self.keep(&stream, serial, message_id, frame.clone(), tags.cloned().map(Arc::new));
        // The hub raises `published` as it delivers (see `Hub::broadcast_positioned`).
        deliver(Some(Positioned { frame: &frame, published: &stream.published, serial }))
    }

    /// Replay to `send` the events after `wanted` on the channel up to the head the socket's
    /// subscription was `acked` at (it got the later ones live; all of them if the stream
    /// started again since), holding the stream's order so that no publish interleaves; what
    /// was recovered, or why not. `fetched`: what the history store answered, when this node's
    /// buffer could not cover the gap ([`Recovery::fetch`]).
    pub(crate) fn replay(
        &self,
        app: &str,
        channel: &str,
        wanted: &Wanted,
        acked: &Acked,
        with: With<'_>,
        mut send: impl FnMut(&Utf8Bytes),
    ) -> Result<Recovered, Box<Failure>> {
        let Some(stream) = self.stream(app, channel) else {
            return Err(failure(
                channel,
                wanted,
                FailureCode::PositionExpired,
                "recovery_buffer_full",
                None,
            ));
        };
        let _order = stream.order.lock().expect("recovery lock");
        let upto = if acked.0 == stream.stream_id { acked.1 } else { 0 };
        let (frames, recovered) = self.collect(&stream, app, channel, wanted, upto, with)?;
        frames.iter().for_each(&mut send);
        Ok(recovered)
    }

    /// The events after `wanted` up to `upto` (at most the published head), without taking
    /// the stream's order: for a subscription being made visible, whose acknowledgement read
    /// `upto`. From this node's buffer, and from `fetched` (the store's answer) for what the
    /// buffer no longer holds. Nothing is returned unless every missed event is held: a gap is
    /// never replayed in part. With the subscription's tag `filter`, only the events it passes
    /// are replayed (the position still moves past the others, as Sockudo does).
    pub(crate) fn collect(
        &self,
        stream: &Stream,
        app: &str,
        channel: &str,
        wanted: &Wanted,
        upto: u64,
        with: With<'_>,
    ) -> Result<Replay, Box<Failure>> {
        let With { fetched, filter, app: limits } = with;
        if self.degraded.holds(app, channel, self.degraded_lapse()) {
            let (code, reason) = (FailureCode::PersistenceUnavailable, "durable_history_degraded");
            return Err(failure(channel, wanted, code, reason, None));
        }
        let head = stream.published.load(Ordering::Acquire);
        let mut buffer = stream.buffer.lock().expect("recovery lock");
        let now = Instant::now();
        buffer.forget_before(now.checked_sub(self.settings.ttl).unwrap_or(now));
        let durable = self.durable.is_some();
        // As Sockudo answers: on its hot path without history, the current stream only for a
        // reset, and no available serials.
        let expired = |reason| failure(channel, wanted, FailureCode::PositionExpired, reason, None);
        let lost = if durable {
            "retained_history_floor_is_ahead_of_requested_serial"
        } else {
            "hot_replay_expired_and_durable_history_disabled"
        };
        let serial = match wanted {
            Wanted::Position(p) if *p.stream_id != *stream.stream_id => {
                let reason =
                    if durable { "durable_stream_id_mismatch" } else { "stream_id_mismatch" };
                let current = Some(&*stream.stream_id);
                return Err(failure(channel, wanted, FailureCode::StreamReset, reason, current));
            }
            Wanted::Position(p) => p.serial,
            Wanted::Serial(serial) => *serial,
        };
        // Only what the store answered for this very stream counts.
        let fetched = fetched.filter(|f| *f.stream_id == *stream.stream_id);
        if serial > head {
            // Seen through another node, not delivered here yet: the store vouches for it,
            // and the rest comes live.
            if fetched.is_some_and(|f| f.head >= serial) {
                let recovered = Recovered {
                    channel: channel.to_string(),
                    source: Source::Cold,
                    replayed: 0,
                    position: None,
                };
                return Ok((Vec::new(), recovered));
            }
            return Err(if durable {
                let reason = "position_ahead_of_durable_stream";
                failure(channel, wanted, FailureCode::ContinuityUnverifiable, reason, None)
            } else {
                expired(lost)
            });
        }
        let upto = upto.min(head);
        let missed = upto.saturating_sub(serial);
        let max =
            limits.max_replay.map_or(self.settings.max_events, |m| m.min(self.settings.max_events));
        if missed > max as u64 {
            return Err(expired(if durable { "recovery_window_exceeded" } else { lost }));
        }
        buffer.used = Some(now);
        // An app may keep its events recoverable for less than the server's TTL: what is older
        // counts as gone.
        let oldest = limits.ttl.filter(|ttl| *ttl < self.settings.ttl).map(|ttl| {
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            (now.checked_sub(ttl).unwrap_or(now), crate::cluster::now_ms().saturating_sub(ms))
        });
        let found = gather(&buffer, fetched, serial, upto, oldest);
        if found.len() as u64 != missed {
            return Err(expired(lost));
        }
        let cold = found.values().any(|event| event.source == Source::Cold);
        let passed: Vec<Utf8Bytes> =
            found.values().filter(|e| e.passes(filter)).map(|e| e.frame.clone()).collect();
        let recovered = Recovered {
            channel: channel.to_string(),
            source: if cold { Source::Cold } else { Source::Hot },
            replayed: passed.len(),
            position: found.iter().next_back().map(|(serial, event)| Position {
                stream_id: stream.stream_id.to_string(),
                serial: *serial,
                last_message_id: Some(event.message_id.to_string()),
            }),
        };
        Ok((passed, recovered))
    }

    /// Forget the streams unused for the TTL, every quarter of it, until `shutdown`. A
    /// forgotten stream starts again with a new id, which a later resume is told
    /// (`stream_reset`).
    ///
    /// With history, a stream whose channel still has subscribers here, appends under way or
    /// events waiting for a gap is kept (its expired events are dropped): its next event
    /// would otherwise make it again at that event's serial, and an event of the same
    /// channel appended just before but answered just after would then count as delivered,
    /// and be lost to those subscribers.
    pub(crate) async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let every = self.settings.ttl / 4;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let now = Instant::now();
            let Some(oldest) = now.checked_sub(self.settings.ttl) else { continue };
            // Chosen under the read lock, judged without it (the hub is asked, and a
            // subscription asks for streams under the hub's lock), forgotten under the write
            // lock if still the channel's.
            let unused: Vec<(String, String, Arc<Stream>)> = {
                let streams = self.streams.read().expect("recovery lock");
                let all = streams.by_app.iter().flat_map(|(app, channels)| {
                    channels.iter().map(move |(channel, stream)| (app, channel, stream))
                });
                all.filter(|(_, _, stream)| {
                    // Busy now: in use, so kept.
                    stream.buffer.try_lock().is_ok_and(|b| b.used.is_some_and(|u| u < oldest))
                })
                .map(|(app, channel, stream)| (app.clone(), channel.clone(), stream.clone()))
                .collect()
            };
            let forgotten: Vec<_> = unused
                .into_iter()
                .filter(|(app, channel, stream)| {
                    let forget = self.may_forget(app, channel, stream);
                    if !forget && let Ok(mut buffer) = stream.buffer.try_lock() {
                        buffer.forget_before(oldest);
                    }
                    forget
                })
                .collect();
            if forgotten.is_empty() {
                continue;
            }
            let mut streams = self.streams.write().expect("recovery lock");
            for (app, channel, stream) in forgotten {
                let Some(channels) = streams.by_app.get_mut(&app) else { continue };
                if channels.get(&channel).is_some_and(|s| Arc::ptr_eq(s, &stream)) {
                    channels.remove(&channel);
                    if channels.is_empty() {
                        streams.by_app.remove(&app);
                    }
                    streams.count -= 1;
                }
            }
        }
    }

    /// Whether the sweep may forget the channel's unused stream (see [`Recovery::sweep`]).
    fn may_forget(&self, app: &str, channel: &str, stream: &Stream) -> bool {
        let Some(store) = &self.durable else { return true };
        let idle = stream.order.try_lock().is_ok_and(|o| o.pending.is_empty() && !o.repairing);
        idle && !self.appending(app, channel) && store.hub.subscription_count(app, channel) == 0
    }
}

/// What a replay reads beside this node's buffer, and judges by.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct With<'a> {
    /// The history store's answer, when the buffer could not cover the gap
    /// ([`Recovery::fetch`]).
    pub fetched: Option<&'a Fetched>,
    /// The subscription's tag filter: only the events it passes are sent.
    pub filter: Option<&'a Filter>,
    /// The app's recovery settings: its TTL and the most one resume replays.
    pub app: AppRecovery,
}

/// One event a replay may send, from the buffer or the store.
struct Found<'a> {
    message_id: &'a str,
    frame: &'a Utf8Bytes,
    tags: Option<&'a Tags>,
    source: Source,
}

impl Found<'_> {
    /// Whether a subscriber with `filter` gets it.
    fn passes(&self, filter: Option<&Filter>) -> bool {
        match (filter, self.tags) {
            (Some(filter), Some(tags)) => filter.matches(tags),
            _ => true,
        }
    }
}

/// The events in (`after`, `upto`] that the buffer holds, else that `fetched` has, by serial;
/// with `oldest` (an instant, and the same in ms since the Unix epoch), none older.
fn gather<'a>(
    buffer: &'a Buffer,
    fetched: Option<&'a Fetched>,
    after: u64,
    upto: u64,
    oldest: Option<(Instant, u64)>,
) -> BTreeMap<u64, Found<'a>> {
    let mut found = BTreeMap::new();
    let (oldest, oldest_ms) = oldest.map_or((None, 0), |(at, ms)| (Some(at), ms));
    for event in fetched.iter().flat_map(|f| &f.events) {
        if event.serial > after && event.serial <= upto && event.at_ms >= oldest_ms {
            let tags = event.tags.as_ref();
            let (message_id, frame) = (event.message_id.as_str(), &event.frame);
            found.insert(event.serial, Found { message_id, frame, tags, source: Source::Cold });
        }
    }
    for kept in &buffer.kept {
        if kept.serial > after && kept.serial <= upto && oldest.is_none_or(|o| kept.at >= o) {
            let (message_id, frame, tags) =
                (kept.message_id.as_str(), &kept.frame, kept.tags.as_deref());
            found.insert(kept.serial, Found { message_id, frame, tags, source: Source::Hot });
        }
    }
    found
}

/// A failure of the channel's recovery, with what the client asked for.
fn failure(
    channel: &str,
    wanted: &Wanted,
    code: FailureCode,
    reason: &'static str,
    current: Option<&str>,
) -> Box<Failure> {
    Box::new(Failure {
        expected_stream_id: match wanted {
            Wanted::Position(p) => Some(p.stream_id.clone()),
            Wanted::Serial(_) => None,
        },
        current_stream_id: current.map(str::to_string),
        ..Failure::new(channel, code, reason)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn recovery(max_events: usize) -> Recovery {
        let settings = RecoverySettings {
            ttl: Duration::from_secs(60),
            max_events,
            max_bytes: 64 << 20,
            history: None,
        };
        Recovery::new(settings, Counter::default(), None)
    }

    fn publish(recovery: &Recovery, n: u64) {
        for i in 0..n {
            let plain = format!(r#"{{"event":"e","channel":"c","data":"{i}"}}"#);
            // As the hub does when it delivers.
            recovery.publish("app", "c", &plain, format!("m{i}"), None, |positioned| {
                if let Some(Positioned { published, serial, .. }) = positioned {
                    published.store(serial, Ordering::Release);
                }
            });
        }
    }

    /// Acknowledged at the stream's current id, with no bound: every missed event is replayed.
    fn stream_id_of(recovery: &Recovery) -> Arc<str> {
        recovery.stream("app", "c").unwrap().head().stream_id
    }

    fn head(recovery: &Recovery) -> (String, u64) {
        let head = recovery.stream("app", "c").unwrap().head();
        (head.stream_id.to_string(), head.serial())
    }

    /// A stream that replaces another (the store started it again) remembers the ids it
    /// replaced, the newest few, so that a late event of one of them is known for what it is;
    /// the one replaced is no longer the channel's.
    #[test]
    fn a_replacing_stream_remembers_the_ids_it_replaced() {
        let recovery = recovery(10);
        let make = |id: &str| {
            let (id, kept) = (Arc::<str>::from(id), recovery.kept.clone());
            recovery
                .find_or_make(
                    "app",
                    "c",
                    |s| *s.stream_id == *id,
                    || Stream::new(id.clone(), 0, kept),
                )
                .unwrap()
        };
        let first = make("s1");
        assert!(first.retired.is_empty());
        assert!(recovery.is_current("app", "c", &first));
        let second = make("s2");
        assert!(second.retired("s1") && !second.retired("s2"));
        assert!(
            !recovery.is_current("app", "c", &first) && recovery.is_current("app", "c", &second)
        );
        assert!(Arc::ptr_eq(&make("s2"), &second), "the same id made a new stream");
        for id in ["s3", "s4", "s5", "s6"] {
            make(id);
        }
        let last = recovery.find("app", "c").unwrap();
        let retired: Vec<&str> = last.retired.iter().map(|r| &**r).collect();
        assert_eq!(retired, ["s5", "s4", "s3", "s2"], "newest first, at most {MAX_RETIRED}");
    }

    /// Past the node's bytes, whole channels are forgotten, those used longest ago first,
    /// until it is at seven eighths of the limit or less; the count of kept bytes follows
    /// every change, also a stream dropped with its buffer.
    #[test]
    fn the_node_keeps_its_bytes_by_forgetting_the_channels_used_longest_ago() {
        let node = |max_bytes| {
            let settings = RecoverySettings {
                ttl: Duration::from_secs(60),
                max_events: 100,
                max_bytes,
                history: None,
            };
            let (kept, evicted) = (Gauge::default(), Counter::default());
            let recovery = Recovery::new(settings, Counter::default(), None)
                .with_buffer_metrics(kept.clone(), evicted.clone());
            (recovery, kept, evicted)
        };
        let data = "x".repeat(900);
        let fill = |recovery: &Recovery, channel: &str, n: usize| {
            for i in 0..n {
                let plain = format!(r#"{{"event":"e","channel":"{channel}","data":"{data}"}}"#);
                recovery.publish("app", channel, &plain, format!("m{i}"), None, |_| ());
            }
        };
        // What one event costs; the node then holds eight and a half.
        let (one, kept, _) = node(usize::MAX);
        fill(&one, "oldest", 1);
        let cost = usize::try_from(kept.get()).unwrap();
        let (recovery, kept, evicted) = node(cost * 17 / 2);
        let fill = |channel: &str, n: usize| fill(&recovery, channel, n);
        let held = |channel: &str| {
            recovery.stream("app", channel).unwrap().buffer.lock().unwrap().kept.len()
        };
        fill("oldest", 3);
        fill("older", 3);
        fill("newer", 2);
        assert_eq!((held("oldest"), held("older"), held("newer")), (3, 3, 2));
        assert_eq!(evicted.get(), 0);
        // The ninth event takes the node over, and the channel used longest ago goes.
        fill("newest", 2);
        assert_eq!((held("oldest"), held("older"), held("newer"), held("newest")), (0, 3, 2, 2));
        assert_eq!(evicted.get(), 1);
        // The next time, the one used longest ago of those left ("newer" was used since).
        fill("newer", 3);
        assert_eq!((held("oldest"), held("older"), held("newer"), held("newest")), (0, 0, 5, 2));
        assert_eq!(evicted.get(), 2);
        assert!(kept.get() <= i64::try_from(cost * 17 / 2).unwrap(), "{}", kept.get());
        let counted: usize = ["oldest", "older", "newer", "newest"]
            .iter()
            .map(|c| recovery.stream("app", c).unwrap().buffer.lock().unwrap().bytes)
            .sum();
        assert_eq!(kept.get(), counted as i64);
        drop(recovery);
        assert_eq!(kept.get(), 0, "the dropped streams' bytes are no longer counted");
    }

    #[test]
    fn a_resume_gets_exactly_what_it_missed_in_order() {
        let recovery = recovery(10);
        publish(&recovery, 3);
        let (stream_id, serial) = head(&recovery);
        assert_eq!(serial, 3);
        publish(&recovery, 4);
        let wanted = Wanted::Position(Position { stream_id, serial, last_message_id: None });
        let mut got = Vec::new();
        let recovered = recovery
            .replay(
                "app",
                "c",
                &wanted,
                &(stream_id_of(&recovery), u64::MAX),
                With::default(),
                |f| got.push(f.to_string()),
            )
            .unwrap();
        assert_eq!(recovered.replayed, 4);
        assert_eq!(recovered.position.unwrap().serial, 7);
        let serials: Vec<u64> = got
            .iter()
            .map(|f| {
                serde_json::from_str::<serde_json::Value>(f).unwrap()["serial"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(serials, [4, 5, 6, 7]);
        // Nothing missed: nothing replayed, still a success.
        let now = Wanted::Serial(7);
        assert_eq!(
            recovery
                .replay(
                    "app",
                    "c",
                    &now,
                    &(stream_id_of(&recovery), u64::MAX),
                    With::default(),
                    |_| { panic!("sent") }
                )
                .unwrap()
                .replayed,
            0
        );
    }

    #[test]
    fn a_resume_that_cannot_be_complete_fails_with_sockudos_codes() {
        let recovery = recovery(5);
        publish(&recovery, 20);
        let (stream_id, _) = head(&recovery);
        let at = |serial| {
            Wanted::Position(Position {
                stream_id: stream_id.clone(),
                serial,
                last_message_id: None,
            })
        };
        let code = |wanted: &Wanted| {
            recovery
                .replay(
                    "app",
                    "c",
                    wanted,
                    &(stream_id_of(&recovery), u64::MAX),
                    With::default(),
                    |_| panic!("sent"),
                )
                .unwrap_err()
        };
        let expired = code(&at(10));
        let reason = "hot_replay_expired_and_durable_history_disabled";
        assert_eq!((expired.code, expired.reason), (FailureCode::PositionExpired, reason));
        assert_eq!(expired.current_stream_id, None);
        // Ahead of the head: the same answer, as Sockudo gives it.
        let ahead = code(&at(21));
        assert_eq!((ahead.code, ahead.reason), (FailureCode::PositionExpired, reason));
        // A subscription acknowledged on a stream since replaced got all of the new one live.
        let replaced = (Arc::from("old"), 20);
        let at_15 = at(15);
        assert_eq!(
            recovery
                .replay("app", "c", &at_15, &replaced, With::default(), |_| panic!("sent"))
                .unwrap()
                .replayed,
            0
        );
        let other = Wanted::Position(Position {
            stream_id: "old".into(),
            serial: 19,
            last_message_id: None,
        });
        assert_eq!(code(&other).code, FailureCode::StreamReset);
        assert_eq!(
            recovery
                .replay(
                    "app",
                    "c",
                    &at(15),
                    &(stream_id_of(&recovery), u64::MAX),
                    With::default(),
                    |_| ()
                )
                .unwrap()
                .replayed,
            5
        );
    }
}

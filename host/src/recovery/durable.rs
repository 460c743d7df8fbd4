//! Recovery across nodes: the history store assigns each app event its position once for the
//! cluster, and every node delivers a channel's events in serial order, whether they come from
//! its own publishes or over the bus.
//!
//! A node keeps, per channel, the serial of the last event it delivered. A duplicate (a serial
//! not above it) is dropped. An event that comes early (a serial beyond the next: another
//! node's publish still on its way, or a bus message lost) waits, and a task fills the gap:
//! after a short reorder window it reads the missing events from the store and delivers them,
//! then the waiting ones. A gap the store cannot fill (trimmed, a stream reset, the store down
//! three times) is given up: the channel's position-tracking sockets on this node are closed
//! with 4210, so they reconnect and resume (and are told `resume_failed` for what is gone),
//! and delivery goes on from the waiting events. Never a silent hole.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::sync::oneshot;

use axum::extract::ws::Utf8Bytes;
use prometheus_client::metrics::counter::Counter;

use super::{Order, Recovery, Stream, failure};
use crate::{
    cluster::{channel_topic, envelope::BusPosition},
    hub::{Hub, Positioned},
    plugins::{DriverError, DriverKind, History, PluginError, Retention, StoredEvent},
    protocol::{
        Broadcast,
        channel::ChannelKind,
        codes,
        filter::Tags,
        recovery::{Failure, FailureCode, Wanted, with_position},
    },
};

use super::record::Record;

/// How long an early event waits for the ones before it to arrive on their own before they
/// are read from the store (another node's publish may simply be a little behind).
const REORDER_WINDOW: Duration = Duration::from_millis(30);
/// Early events a channel holds at most while its gap is filled; past it, the gap is given up.
const MAX_PENDING: usize = 10_000;
/// Events one repair reads at most; a larger gap takes several reads.
const MAX_REPAIR_READ: u32 = 1000;
/// Events one batched append carries at most.
const MAX_BATCH: usize = 256;
/// Appends of one channel under way at once; the events that come past it are batched.
/// Eight: S's publisher (32 requests in flight over 10 channels) then never waits behind
/// another append, and a flood of publishers on one channel still goes as batches.
const MAX_APPENDS_IN_FLIGHT: usize = 8;
/// Events of one channel that may wait for an append slot at most. Past it a publish is
/// refused at once: the store is not keeping up (it stalls, or a publisher floods the
/// channel), and while it stalls a batch frees a slot only when its call times out, so the
/// queue would otherwise grow for as long as publishers go on.
const MAX_WAITING: usize = 4 * MAX_BATCH;
/// Bytes of events that may wait for an append slot on the node at most, over every channel.
const MAX_WAITING_BYTES: usize = 64 * 1024 * 1024;
/// How long a gap the store cannot fill waits at most for this node's own appends of the
/// channel under way (see [`Recovery::repair`]): the store's call timeout, by default.
const MAX_OWN_WAIT: Duration = Duration::from_secs(2);
/// Failed store reads after which a gap is given up.
const MAX_REPAIR_FAILURES: u32 = 3;

/// An event waiting for its channel's append in flight, its bus message, and where its
/// position goes.
pub(super) type Waiter =
    (Record, Option<Outgoing>, oneshot::Sender<Result<Option<Event>, DriverError>>);

/// An event's bus message (the envelope without the stream id and serial the store adds),
/// for the store to publish to the channel's topic in the step that gives it its position
/// ([`History::append_publishing`]): other nodes then get a channel's events in serial order,
/// and no separate publish is made.
type Outgoing = Vec<u8>;

/// A channel's appends: how many are under way, and the events waiting for a slot.
#[derive(Debug, Default)]
pub(super) struct Appending {
    in_flight: usize,
    waiting: Vec<Waiter>,
}

/// A channel's append slot, handed on ([`Recovery::next_batch`]) when dropped, whether its
/// append finished or was dropped unfinished.
struct Slot {
    recovery: Arc<Recovery>,
    key: (String, String),
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.recovery.clone().next_batch(std::mem::take(&mut self.key));
    }
}

/// What an event waiting for an append slot holds, as counted against [`MAX_WAITING_BYTES`].
fn waiting_size(record: &Record, outgoing: Option<&Outgoing>) -> usize {
    record.frame.len() + record.message_id.len() + outgoing.map_or(0, Vec::len)
}

/// What the gates count.
#[derive(Debug, Clone, Default)]
pub(crate) struct GateCounters {
    /// Events dropped because this node had delivered their serial already, or because
    /// their stream had been replaced (a late event from before a reset).
    pub duplicates: Counter,
    /// Events read from the store to fill a gap.
    pub repaired: Counter,
    /// Events a gap lost for good (the store no longer had them).
    pub lost: Counter,
    /// Failed calls to the history store.
    pub store_errors: Counter,
    /// Events the store published to the other nodes as it appended them.
    pub published: Counter,
    /// Events refused because too many waited for the store ([`MAX_WAITING`],
    /// [`MAX_WAITING_BYTES`]).
    pub backlog_refused: Counter,
}

/// The history store and what delivering from it needs.
#[derive(Debug)]
pub(crate) struct Durable {
    /// The store.
    pub history: Arc<History>,
    /// What it keeps of each channel.
    pub retention: Retention,
    /// This node's sockets.
    pub hub: Arc<Hub>,
    /// Whether events' tags are judged against subscribers' filters.
    pub tag_filtering: bool,
    /// What the gates count.
    pub counters: GateCounters,
}

/// An event with its position, on its way to this node's subscribers.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// Its stream.
    pub stream_id: Arc<str>,
    /// Its serial.
    pub serial: u64,
    /// The event.
    pub record: Record,
    /// Whether the store published it to the other nodes as it appended it.
    pub published: bool,
}

impl Event {
    /// The position other nodes get beside the frame.
    pub(crate) fn bus_position(&self) -> BusPosition {
        BusPosition {
            stream_id: self.stream_id.to_string(),
            serial: self.serial,
            message_id: self.record.message_id.clone(),
        }
    }
}

/// One event the store answered, ready to replay.
#[derive(Debug)]
pub(crate) struct FetchedEvent {
    pub serial: u64,
    pub message_id: String,
    /// The frame with its position.
    pub frame: Utf8Bytes,
    /// The tags subscribers' filters judge it by.
    pub tags: Option<Tags>,
    /// When the store kept it (ms since the Unix epoch).
    pub at_ms: u64,
}

/// The store's answer for a resume that this node's buffer could not serve.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The store's stream.
    pub stream_id: Arc<str>,
    /// Its head.
    pub head: u64,
    /// The events after the resume's position, ascending without holes (a record that cannot
    /// be read ends them).
    pub events: Vec<FetchedEvent>,
}

impl Recovery {
    /// Whether positions come from a history store.
    pub(crate) fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// The history store and what it keeps, when positions come from one.
    pub(crate) fn history(&self) -> Option<(Arc<History>, Retention)> {
        self.durable.as_ref().map(|d| (d.history.clone(), d.retention))
    }

    fn store(&self) -> &Durable {
        self.durable.as_ref().expect("called with history on only")
    }

    /// Whether the store may publish events itself as it positions them (it has a way onto
    /// the bus; whether it does for a given event, it answers).
    pub(crate) fn store_publishes(&self) -> bool {
        self.durable.as_ref().is_some_and(|store| store.history.can_publish())
    }

    /// Append an app event to its channel's stream in the store, and deliver it here with its
    /// position. Answers the event when the store did not publish it too, for the caller to
    /// send to the other nodes.
    ///
    /// The event is delivered before its append counts as ended: while this node's appends
    /// of a channel are under way, a gap in its serials may be theirs, and a repair waits
    /// for them rather than give it up (see [`Recovery::repair`]).
    ///
    /// Up to [`MAX_APPENDS_IN_FLIGHT`] appends of a channel go to the store at once, so a
    /// publisher with requests in flight pays one round trip per event, not a wait behind the
    /// ones before it (serials are given in the order the store takes them; the gates deliver
    /// in that order). Past the window, the events that come wait and go together as one
    /// append when a slot frees (at most [`MAX_BATCH`]), each answered with its own position:
    /// a flood on one channel costs one store call per batch instead of one per event.
    pub(crate) async fn append(
        self: &Arc<Self>,
        app: &str,
        channel: &str,
        record: Record,
        outgoing: Option<Outgoing>,
    ) -> Result<Option<Event>, DriverError> {
        let key = (app.to_string(), channel.to_string());
        let size = waiting_size(&record, outgoing.as_ref());
        let mut record = Some((record, outgoing));
        let waiting = {
            let mut appends = self.appends.lock().expect("recovery lock");
            let appending = appends.entry(key.clone()).or_default();
            if appending.in_flight < MAX_APPENDS_IN_FLIGHT {
                appending.in_flight += 1;
                None
            } else if appending.waiting.len() >= MAX_WAITING
                || self.waiting_bytes.load(Ordering::Relaxed) + size > MAX_WAITING_BYTES
            {
                drop(appends);
                self.store().counters.backlog_refused.inc();
                return Err(self.unavailable(format!(
                    "too many events wait for the history store (at most {MAX_WAITING} a channel, {} MiB on the node)",
                    MAX_WAITING_BYTES >> 20
                )));
            } else {
                let (answer, answered) = oneshot::channel();
                let (record, outgoing) = record.take().expect("taken once");
                appending.waiting.push((record, outgoing, answer));
                // Under the lock, so that the check above and the count agree.
                self.waiting_bytes.fetch_add(size, Ordering::Relaxed);
                Some(answered)
            }
        };
        if let Some(answered) = waiting {
            // The sender is dropped only if the batch's task ended without answering.
            return answered.await.unwrap_or_else(|_| {
                Err(self.unavailable("the batched append ended without an answer".into()))
            });
        }
        // The slot is handed on when this append ends, even dropped unfinished (publishes run
        // their appends on tasks of their own, but a node shutting down drops them): a slot
        // kept by a dropped append would never come back, and the channel's appends would
        // wait for good.
        let _slot = Slot { recovery: self.clone(), key };
        let (record, outgoing) = record.expect("kept by an append in the window");
        let (stream_id, serial, published) =
            self.store_append(app, channel, &[&record], vec![outgoing]).await?;
        Ok(self.deliver_own(app, channel, Event { stream_id, serial, record, published }))
    }

    /// Deliver an event this node appended; a copy for the other nodes when the store did not
    /// publish it.
    fn deliver_own(self: &Arc<Self>, app: &str, channel: &str, event: Event) -> Option<Event> {
        let copy = (!event.published).then(|| event.clone());
        self.deliver(app, channel, event);
        copy
    }

    /// Whether appends of the channel by this node are under way (their events are delivered
    /// before they end).
    pub(super) fn appending(&self, app: &str, channel: &str) -> bool {
        let appends = self.appends.lock().expect("recovery lock");
        appends.contains_key(&(app.to_string(), channel.to_string()))
    }

    /// The store is unavailable for an append, for `why`.
    fn unavailable(&self, why: String) -> DriverError {
        DriverError::Plugin {
            kind: DriverKind::HISTORY,
            name: self.store().history.name().into(),
            error: PluginError::unavailable(why),
        }
    }

    /// Append `records` to the store in one call, counting a failure: the stream, the first
    /// record's serial, and whether the store published them too (when every one has its
    /// bus message in `outgoing`).
    async fn store_append(
        &self,
        app: &str,
        channel: &str,
        records: &[&Record],
        outgoing: Vec<Option<Outgoing>>,
    ) -> Result<(Arc<str>, u64, bool), DriverError> {
        let store = self.store();
        let outgoing: Option<Vec<Outgoing>> = outgoing.into_iter().collect();
        let appended = match outgoing {
            Some(outgoing) if !outgoing.is_empty() => {
                let topic = channel_topic(app, channel);
                let events = records.iter().map(|record| record.encode()).zip(outgoing).collect();
                store.history.append_publishing(app, channel, &topic, events, store.retention).await
            }
            _ => {
                let encoded = records.iter().map(|record| record.encode()).collect();
                let appended = store.history.append(app, channel, encoded, store.retention).await;
                appended.map(|appended| (appended, false))
            }
        };
        let (appended, published) = appended.inspect_err(|_| {
            store.counters.store_errors.inc();
        })?;
        if published {
            store.counters.published.inc_by(records.len() as u64);
        }
        Ok((appended.stream_id.into(), appended.serial, published))
    }

    /// An append of the channel ended: its slot goes to what waits, as batches one after the
    /// other on a task of its own (so that the append that ended returns at once), and is
    /// given back when nothing waits.
    fn next_batch(self: Arc<Self>, key: (String, String)) {
        // Without a runtime (the node is being torn down) nothing can carry a batch: what
        // waits is answered with its sender dropped, which its append reports as an error.
        if tokio::runtime::Handle::try_current().is_err() {
            let removed = self.appends.lock().expect("recovery lock").remove(&key);
            let sizes = removed
                .iter()
                .flat_map(|a| &a.waiting)
                .map(|(r, o, _)| waiting_size(r, o.as_ref()));
            self.waiting_bytes.fetch_sub(sizes.sum(), Ordering::Relaxed);
            return;
        }
        let batch = {
            let mut appends = self.appends.lock().expect("recovery lock");
            let Some(appending) = appends.get_mut(&key) else { return };
            if appending.waiting.is_empty() {
                appending.in_flight -= 1;
                if appending.in_flight == 0 {
                    appends.remove(&key);
                }
                return;
            }
            let take = appending.waiting.len().min(MAX_BATCH);
            let batch = appending.waiting.drain(..take).collect::<Vec<Waiter>>();
            let size = batch.iter().map(|(r, o, _)| waiting_size(r, o.as_ref())).sum();
            self.waiting_bytes.fetch_sub(size, Ordering::Relaxed);
            batch
        };
        tokio::spawn(async move {
            // Handed on when the batch is done, or if delivering it panics.
            let slot = Slot { recovery: self.clone(), key };
            let (app, channel) = (&slot.key.0, &slot.key.1);
            let mut batch = batch;
            let outgoing = batch.iter_mut().map(|(_, outgoing, _)| outgoing.take()).collect();
            let records: Vec<&Record> = batch.iter().map(|(record, _, _)| record).collect();
            match self.store_append(app, channel, &records, outgoing).await {
                Ok((stream_id, first, published)) => {
                    // Delivered here, in serial order: the publishers, woken all at once,
                    // would run in any order, and on a loaded node a gap waiting for one of
                    // them could outlast the reorder window, then be read from a store that
                    // has trimmed it (a backlog past the channel's retention, after a stall).
                    for (serial, (record, _, answer)) in (first..).zip(batch) {
                        let event =
                            Event { stream_id: stream_id.clone(), serial, record, published };
                        let _ = answer.send(Ok(self.deliver_own(app, channel, event)));
                    }
                }
                Err(error) => {
                    for (_, _, answer) in batch {
                        let _ = answer.send(Err(error.clone()));
                    }
                }
            }
        });
    }

    /// Bring the channel's stream on this node up to the store's head before a subscription
    /// is acknowledged: made at the head when the node has none, and caught up when the node
    /// stopped hearing the channel (it had no subscriber, so its bus topic was let go) while
    /// others published. `None` when the store cannot be read (the subscription goes without
    /// a position) or the node is full.
    pub(crate) async fn prepare(&self, app: &str, channel: &str) -> Option<Arc<Stream>> {
        let Some(store) = &self.durable else { return self.stream(app, channel) };
        let known = self.find(app, channel);
        let after = known.as_ref().map_or(0, |s| s.order.lock().expect("recovery lock").last);
        let limit = if known.is_some() { MAX_REPAIR_READ } else { 0 };
        let page = match store.history.read(app, channel, after, limit, store.retention).await {
            Ok(page) => page,
            Err(error) => {
                store.counters.store_errors.inc();
                tracing::warn!(%error, channel, "The history store could not be read; the subscription goes without a position.");
                return None;
            }
        };
        let id: Arc<str> = page.stream_id.into();
        let stream = self.find_or_make(
            app,
            channel,
            |s| *s.stream_id == *id,
            || Stream::new(id.clone(), page.head, self.kept.clone()),
        )?;
        let mut order = stream.order.lock().expect("recovery lock");
        self.deliver_stored(app, channel, &stream, &mut order, page.events);
        if order.last < page.head && order.pending.is_empty() {
            // More behind than one read, or no longer kept: what is missing is told to
            // whoever resumes from before it; the new subscription starts at the head.
            store.counters.lost.inc_by(page.head - order.last);
            store.hub.close_positioned(app, channel, codes::RESUME);
            order.last = page.head;
            stream.published.store(page.head, std::sync::atomic::Ordering::Release);
        }
        self.drain(app, channel, &stream, &mut order);
        drop(order);
        Some(stream)
    }

    /// What the store holds after `wanted`, when this node's buffer cannot cover the gap;
    /// `None` when it can (or without history), a failure when the store cannot be read.
    ///
    /// A legacy serial (no stream id) is never read from the store, as Sockudo refuses it:
    /// the store's stream may have started again since the client's events, and its serials
    /// then name other events, so a replay could succeed with a hole. Only a node that still
    /// holds the stream in its buffer serves it (the same stream it delivered from).
    pub(crate) async fn fetch(
        &self,
        app: &str,
        channel: &str,
        wanted: &Wanted,
    ) -> Option<Result<Fetched, Box<Failure>>> {
        self.durable.as_ref()?;
        let serial = match wanted {
            Wanted::Position(p) => p.serial,
            Wanted::Serial(serial) => *serial,
        };
        if let Some(stream) = self.find(app, channel) {
            let mut buffer = stream.buffer.lock().expect("recovery lock");
            let head = stream.published.load(std::sync::atomic::Ordering::Acquire);
            // A client's serial: any number, so never `+ 1` unchecked.
            let covered = buffer.kept.front().is_some_and(|k| k.serial <= serial.saturating_add(1));
            if serial == head || (serial < head && covered) {
                // Used now: the node's bound forgets the channels used longest ago first, and
                // the replay this answers reads the buffer a little later.
                buffer.used = Some(std::time::Instant::now());
                return None;
            }
        }
        if let Wanted::Serial(_) = wanted {
            let (code, reason) = (
                FailureCode::ContinuityUnverifiable,
                "legacy_serial_only_position_cannot_use_cold_recovery",
            );
            return Some(Err(failure(channel, wanted, code, reason, None)));
        }
        let limit = u32::try_from(self.settings.max_events + 1).unwrap_or(u32::MAX);
        Some(self.read_fetched(app, channel, serial, limit).await.map_err(|error| {
            tracing::warn!(%error, channel, "The history store could not be read for a resume.");
            let (code, reason) =
                (FailureCode::PersistenceUnavailable, "durable_history_read_failed");
            failure(channel, wanted, code, reason, None)
        }))
    }

    /// At most `limit` events after `after` from the store, ready to replay (a record that
    /// cannot be read ends them).
    pub(super) async fn read_fetched(
        &self,
        app: &str,
        channel: &str,
        after: u64,
        limit: u32,
    ) -> Result<Fetched, DriverError> {
        let store = self.store();
        let page = store.history.read(app, channel, after, limit, store.retention).await;
        let page = page.inspect_err(|_| {
            store.counters.store_errors.inc();
        })?;
        let stream_id: Arc<str> = page.stream_id.into();
        let mut events = Vec::with_capacity(page.events.len());
        for stored in page.events {
            let Ok(record) = Record::decode(&stored.record) else { break };
            let frame = with_position(&record.frame, &record.message_id, &stream_id, stored.serial);
            events.push(FetchedEvent {
                serial: stored.serial,
                message_id: record.message_id,
                frame: frame.into(),
                tags: record.tags,
                at_ms: stored.at_ms,
            });
        }
        Ok(Fetched { stream_id, head: page.head, events })
    }

    /// Deliver `event` to this node's subscribers of the channel in its stream's serial order:
    /// now if it is the next, later if it came early (its gap is filled from the store first),
    /// never if it was delivered already.
    pub(crate) fn deliver(self: &Arc<Self>, app: &str, channel: &str, event: Event) {
        let store = self.store();
        let (id, serial) = (event.stream_id.clone(), event.serial);
        let current = self.find(app, channel);
        // A late event of a stream the channel's replaced (an append or a bus message from
        // before a reset): it would otherwise replace the stream that replaced it.
        if current.as_ref().is_some_and(|s| s.retired(&id)) {
            store.counters.duplicates.inc();
            return;
        }
        // A stream this node has not seen starts at this event; another id than the node's is
        // a stream started again (the store lost its state): from its first event. (Serials
        // start at 1; a 0 from the bus or the store is dropped below as delivered already.)
        let stream = current.filter(|s| *s.stream_id == *id).or_else(|| {
            self.find_or_make(
                app,
                channel,
                |s| *s.stream_id == *id,
                || Stream::new(id.clone(), serial.saturating_sub(1), self.kept.clone()),
            )
        });
        let Some(stream) = stream else {
            // The node holds as many streams as it may: delivered without a position.
            self.untracked.inc();
            let Record { frame, tags, except, .. } = event.record;
            let to = self.destination(app, channel, except.as_deref(), tags.as_ref());
            store.hub.broadcast(&to, &Utf8Bytes::from(frame));
            return;
        };
        let mut order = stream.order.lock().expect("recovery lock");
        if serial <= order.last {
            store.counters.duplicates.inc();
            return;
        }
        if serial == order.last + 1 {
            self.deliver_now(app, channel, &stream, &mut order, event);
            return self.drain(app, channel, &stream, &mut order);
        }
        if order.pending.len() >= MAX_PENDING {
            self.give_up_gap(app, channel, &stream, &mut order);
        }
        order.pending.insert(serial, event);
        if !order.repairing {
            order.repairing = true;
            let (this, app, channel) = (self.clone(), app.to_string(), channel.to_string());
            let stream = stream.clone();
            tokio::spawn(async move { this.repair(&app, &channel, &stream).await });
        }
    }

    /// Where an event goes: the channel's subscribers but `except`, judged by `tags` when
    /// filtering is on.
    fn destination<'a>(
        &self,
        app: &'a str,
        channel: &'a str,
        except: Option<&'a str>,
        tags: Option<&'a Tags>,
    ) -> Broadcast<'a> {
        let tags = tags.filter(|_| self.store().tag_filtering);
        // Encrypted channels' events never go as deltas: their ciphertexts do not shrink.
        let compressible = ChannelKind::of(channel) != ChannelKind::PrivateEncrypted;
        Broadcast::to(app, channel).except(except).tagged(tags).compressible(compressible)
    }

    /// Deliver the stream's next event, holding its order.
    fn deliver_now(
        &self,
        app: &str,
        channel: &str,
        stream: &Stream,
        order: &mut Order,
        event: Event,
    ) {
        let Event { serial, record, .. } = event;
        let Record { message_id, frame, tags, except } = record;
        let positioned = with_position(&frame, &message_id, &stream.stream_id, serial);
        let positioned = Utf8Bytes::from(positioned);
        let tags = tags.map(Arc::new);
        // Kept before it is delivered: a replay reads up to the head the delivery raises.
        self.keep(stream, serial, message_id, positioned.clone(), tags.clone());
        let plain = Utf8Bytes::from(frame);
        let to = self.destination(app, channel, except.as_deref(), tags.as_deref());
        let at = Positioned { frame: &positioned, published: &stream.published, serial };
        self.store().hub.broadcast_positioned(&to, &plain, Some(at));
        order.last = serial;
    }

    /// Deliver the events read from the store (ascending) that come next in the stream, up
    /// to the first hole or the first record that cannot be read.
    fn deliver_stored(
        &self,
        app: &str,
        channel: &str,
        stream: &Stream,
        order: &mut Order,
        events: Vec<StoredEvent>,
    ) {
        for stored in events {
            if stored.serial <= order.last {
                continue;
            }
            if stored.serial != order.last + 1 {
                break;
            }
            let Ok(record) = Record::decode(&stored.record) else { break };
            self.store().counters.repaired.inc();
            let event = Event {
                stream_id: stream.stream_id.clone(),
                serial: stored.serial,
                record,
                published: false,
            };
            self.deliver_now(app, channel, stream, order, event);
        }
    }

    /// Deliver the waiting events that are next, in order.
    fn drain(&self, app: &str, channel: &str, stream: &Stream, order: &mut Order) {
        while let Some(entry) = order.pending.first_entry() {
            match *entry.key() {
                serial if serial <= order.last => {
                    entry.remove();
                    self.store().counters.duplicates.inc();
                }
                serial if serial == order.last + 1 => {
                    let event = entry.remove();
                    self.deliver_now(app, channel, stream, order, event);
                }
                _ => return,
            }
        }
    }

    /// The events before the first waiting one cannot be had: the sockets that track
    /// positions reconnect and resume (and are told what is gone), and delivery goes on.
    fn give_up_gap(&self, app: &str, channel: &str, stream: &Stream, order: &mut Order) {
        let Some(&first) = order.pending.keys().next() else { return };
        let store = self.store();
        store.counters.lost.inc_by(first - order.last - 1);
        let closed = store.hub.close_positioned(app, channel, codes::RESUME);
        tracing::warn!(
            channel,
            from = order.last + 1,
            to = first - 1,
            closed,
            "Events of a channel could not be had from the history store; its position-tracking sockets were sent to reconnect and resume."
        );
        order.last = first - 1;
        self.drain(app, channel, stream, order);
    }

    /// Fill the stream's gaps from the store until nothing waits.
    async fn repair(self: Arc<Self>, app: &str, channel: &str, stream: &Stream) {
        let store = self.store();
        let mut failures = 0;
        // The gap (the last serial delivered before it) waiting for this node's own appends,
        // and since when.
        let mut waiting_own: Option<(u64, tokio::time::Instant)> = None;
        tokio::time::sleep(REORDER_WINDOW).await;
        loop {
            let (after, missing) = {
                let mut order = stream.order.lock().expect("recovery lock");
                if self.abandoned(app, channel, stream, &mut order) {
                    return;
                }
                self.drain(app, channel, stream, &mut order);
                match order.pending.keys().next() {
                    None => {
                        order.repairing = false;
                        return;
                    }
                    Some(&first) => (order.last, first - order.last - 1),
                }
            };
            let limit = u32::try_from(missing).unwrap_or(u32::MAX).min(MAX_REPAIR_READ);
            let read = store.history.read(app, channel, after, limit, store.retention).await;
            let pause = {
                let mut order = stream.order.lock().expect("recovery lock");
                if self.abandoned(app, channel, stream, &mut order) {
                    return;
                }
                match read {
                    Ok(page) if *page.stream_id == *stream.stream_id => {
                        self.deliver_stored(app, channel, stream, &mut order, page.events);
                        // Nothing moved, by this read or by the events that came meanwhile:
                        // the store does not have what is missing. While this node's own
                        // appends of the channel are under way it may be theirs, on its way
                        // here (a task not yet run on a loaded node): waited for, within a
                        // bound. (Locks: `order`, then `appends`; never the other way round.)
                        if order.last != after {
                            None
                        } else if own_wait_left(&mut waiting_own, after)
                            && self.appending(app, channel)
                        {
                            Some(REORDER_WINDOW)
                        } else {
                            self.give_up_gap(app, channel, stream, &mut order);
                            None
                        }
                    }
                    // The store's stream is another one: what this one missed is gone.
                    Ok(_) => {
                        self.give_up_gap(app, channel, stream, &mut order);
                        None
                    }
                    Err(error) => {
                        store.counters.store_errors.inc();
                        failures += 1;
                        if failures >= MAX_REPAIR_FAILURES {
                            tracing::warn!(%error, channel, "The history store could not fill a gap.");
                            self.give_up_gap(app, channel, stream, &mut order);
                            failures = 0;
                            None
                        } else {
                            Some(REORDER_WINDOW * (1 << failures))
                        }
                    }
                }
            };
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Whether `stream` was replaced while its gap was being filled (the store's stream
    /// started again): its waiting events belong to a stream the channel no longer has, and go
    /// nowhere; its repair ends.
    fn abandoned(&self, app: &str, channel: &str, stream: &Stream, order: &mut Order) -> bool {
        if self.is_current(app, channel, stream) {
            return false;
        }
        order.pending.clear();
        order.repairing = false;
        true
    }
}

/// Whether the gap after `after` may still wait for this node's own appends: `waiting` holds
/// the gap being waited for and since when, started again when the gap is another one.
fn own_wait_left(waiting: &mut Option<(u64, tokio::time::Instant)>, after: u64) -> bool {
    let since = match *waiting {
        Some((gap, since)) if gap == after => since,
        _ => waiting.insert((after, tokio::time::Instant::now())).1,
    };
    since.elapsed() < MAX_OWN_WAIT
}

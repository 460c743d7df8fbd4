//! Channel history: each channel's stream of events, with the position every event gets once
//! for the whole cluster, so that a client may resume on any node.

use abi_stable::{
    StableAbi, sabi_trait,
    std_types::{RBox, RStr, RString, RVec},
};
use async_ffi::FfiFuture;

use crate::PResult;

/// How much of a stream a driver keeps: events past either bound go, oldest first. The host
/// passes it with every append, so that one driver serves apps with different settings.
/// The largest record a store answers from a read, and the host reads back: the host writes
/// none larger, so a larger one is another writer's, answered empty (unreadable) rather than
/// carried across whole.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Events kept per channel at most.
    pub max_events: u64,
    /// Milliseconds an event is kept at most; a stream with no append for twice as long may be
    /// forgotten whole (its next append starts a new stream, with a new id).
    pub max_age_ms: u64,
}

/// Where appended events went.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stream (the channel's epoch): a new one whenever the driver lost the stream's state.
    pub stream_id: RString,
    /// The first event's serial: one more than the stream's previous event, 1 for its first;
    /// the events after it have the serials after it.
    pub serial: u64,
}

/// One stored event.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Its serial.
    pub serial: u64,
    /// When the driver stored it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The host's record, as appended.
    pub record: RVec<u8>,
}

/// A read of a stream.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The stream's id.
    pub stream_id: RString,
    /// The serial of its last event (0: none yet).
    pub head: u64,
    /// The events asked for that are still kept, in ascending serial order, without holes:
    /// the first one's serial is above the one asked after when older ones were dropped.
    pub events: RVec<Stored>,
}

/// A store of channel streams, shared by every node of a cluster (except `memory`).
///
/// A stream is named by its app and channel. The driver assigns serials: an append and the
/// serial it gets are one atomic step, so two nodes appending at once get two consecutive
/// serials and never the same one. Records are the host's bytes; the driver stores them and
/// answers them back, bounded by [`Retention`].
#[sabi_trait]
pub trait History: Send + Sync {
    /// Append `records` (at least one), in their order, to the channel's stream, with
    /// consecutive serials in one atomic step, starting the stream (with a new id) if it has
    /// none, and drop what `retention` no longer allows. The host sends the events that wait
    /// while one append of a channel is under way as the next one, so a busy channel costs
    /// one call per batch.
    fn append(
        &self,
        app: RStr<'_>,
        channel: RStr<'_>,
        records: RVec<RVec<u8>>,
        retention: Retention,
    ) -> FfiFuture<PResult<Appended>>;

    /// The events after serial `after` (at most `limit`; 0 reads only the head) that
    /// `retention` still allows, starting the stream if it has none, so that its id can be
    /// handed out before its first event.
    fn read(
        &self,
        app: RStr<'_>,
        channel: RStr<'_>,
        after: u64,
        limit: u32,
        retention: Retention,
    ) -> FfiFuture<PResult<Page>>;

    /// Forget the channel's stream: its next append or read starts a new one.
    fn reset(&self, app: RStr<'_>, channel: RStr<'_>) -> FfiFuture<PResult<()>>;

    /// Whether the backend answers now.
    fn health(&self) -> FfiFuture<PResult<()>>;

    /// Release the backend; later calls answer `UNAVAILABLE`. Idempotent.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> FfiFuture<PResult<()>>;
}

/// A history store as the host owns it.
pub type HistoryBox = History_TO<'static, RBox<()>>;

/// An event to append and publish ([`HistoryBus::append_publishing`]).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The host's record, stored as [`History::append`] stores it.
    pub record: RVec<u8>,
    /// The host's bus message for the event, to which the store adds its position.
    pub message: RVec<u8>,
}

/// What [`HistoryBus::append_publishing`] did.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Where the events went.
    pub appended: Appended,
    /// Whether the store published them too; when not, the host publishes them itself.
    pub published: bool,
}

/// A history store's way onto the bus, for a store that writes to the server (or cluster)
/// that carries the bus: it can publish each event to the other nodes in the atomic step that gives it its
/// position, so that the event costs no publish of its own and the bus carries a channel's
/// events in the order of their serials. Made by the root module's `history_bus`
/// constructor from the history store's own driver name and configuration (a kind of its
/// own, so that plugins built before it keep loading).
#[sabi_trait]
pub trait HistoryBus: Send + Sync {
    /// Append `events` to the channel's stream as [`History::append`] does and, when this
    /// store writes to the server (or cluster) on which a transport of the same plugin carries
    /// `topic`, publish each event's message to that topic in the same atomic step, in serial
    /// order, with its position added after it: the stream id's bytes, the serial in decimal
    /// digits, then one byte each for those two lengths. `published` says whether it did.
    fn append_publishing(
        &self,
        app: RStr<'_>,
        channel: RStr<'_>,
        topic: RStr<'_>,
        events: RVec<Outgoing>,
        retention: Retention,
    ) -> FfiFuture<PResult<Published>>;

    /// Release the backend; later calls answer `UNAVAILABLE`. Idempotent.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> FfiFuture<PResult<()>>;
}

/// A history store's way onto the bus, as the host owns it.
pub type HistoryBusBox = HistoryBus_TO<'static, RBox<()>>;

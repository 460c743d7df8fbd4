//! The history store handle.

use sockhost_plugin_api::{
    HistoryBox, HistoryBusBox, Outgoing, Retention,
    abi::{RStr, RVec},
};

use super::{DriverError, call::Named};

/// Where appended events went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream.
    pub stream_id: String,
    /// The first event's serial (the others follow it).
    pub serial: u64,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its serial.
    pub serial: u64,
    /// When the store kept it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The host's record, as appended (untrusted: the store may hold anything).
    pub record: Vec<u8>,
}

/// A read of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPage {
    /// The stream.
    pub stream_id: String,
    /// The serial of its last event.
    pub head: u64,
    /// The events asked for that are kept, ascending and without holes.
    pub events: Vec<StoredEvent>,
}

/// The history store, as the host uses it: the store, and its way onto the bus when its
/// plugin has one.
#[derive(Debug)]
pub struct History(pub(super) Named<HistoryBox>, pub(super) Option<Named<HistoryBusBox>>);

impl History {
    /// The driver name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Append `records` (at least one), in order, to the channel's stream; the first one's
    /// position (the others follow it).
    pub async fn append(
        &self,
        app: &str,
        channel: &str,
        records: Vec<Vec<u8>>,
        retention: Retention,
    ) -> Result<Appended, DriverError> {
        let records = records.into_iter().map(RVec::from).collect();
        let call =
            self.0.inner.append(RStr::from_str(app), RStr::from_str(channel), records, retention);
        let appended = self.0.call(call).await?;
        Ok(Appended { stream_id: appended.stream_id.into_string(), serial: appended.serial })
    }

    /// Whether the store may publish events to the other nodes as it appends them
    /// ([`History::append_publishing`]).
    pub fn can_publish(&self) -> bool {
        self.1.is_some()
    }

    /// [`History::append`], and each event's bus message (`events`: the records and their
    /// messages) published to `topic` in the same step with its position added, when the
    /// store writes to the bus's server: the first event's position, and whether it
    /// published them (when not, the caller does). Without a way onto the bus, a plain append.
    pub async fn append_publishing(
        &self,
        app: &str,
        channel: &str,
        topic: &str,
        events: Vec<(Vec<u8>, Vec<u8>)>,
        retention: Retention,
    ) -> Result<(Appended, bool), DriverError> {
        let Some(bus) = &self.1 else {
            let records = events.into_iter().map(|(record, _)| record).collect();
            return Ok((self.append(app, channel, records, retention).await?, false));
        };
        let events = events
            .into_iter()
            .map(|(record, message)| Outgoing {
                record: RVec::from(record),
                message: RVec::from(message),
            })
            .collect();
        let call = bus.inner.append_publishing(
            RStr::from_str(app),
            RStr::from_str(channel),
            RStr::from_str(topic),
            events,
            retention,
        );
        let done = bus.call(call).await?;
        let appended = Appended {
            stream_id: done.appended.stream_id.into_string(),
            serial: done.appended.serial,
        };
        Ok((appended, done.published))
    }

    /// At most `limit` events after `after` (0: the head only).
    pub async fn read(
        &self,
        app: &str,
        channel: &str,
        after: u64,
        limit: u32,
        retention: Retention,
    ) -> Result<StreamPage, DriverError> {
        let call = self.0.inner.read(
            RStr::from_str(app),
            RStr::from_str(channel),
            after,
            limit,
            retention,
        );
        let page = self.0.call(call).await?;
        Ok(StreamPage {
            stream_id: page.stream_id.into_string(),
            head: page.head,
            events: page
                .events
                .into_iter()
                .map(|e| StoredEvent {
                    serial: e.serial,
                    at_ms: e.at_ms,
                    record: e.record.into_vec(),
                })
                .collect(),
        })
    }

    /// Start the channel's stream again: a new stream id, nothing kept.
    pub async fn reset(&self, app: &str, channel: &str) -> Result<(), DriverError> {
        let call = self.0.inner.reset(RStr::from_str(app), RStr::from_str(channel));
        self.0.call(call).await
    }

    /// Whether the backend answers.
    pub async fn health(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.health()).await
    }

    /// Release the backend (and the store's way onto the bus).
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        if let Some(bus) = &self.1 {
            bus.call(bus.inner.shutdown()).await?;
        }
        self.0.call(self.0.inner.shutdown()).await
    }
}

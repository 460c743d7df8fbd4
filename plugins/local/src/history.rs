//! The `memory` history store: each channel's stream in this process, for one node (the
//! server refuses it with any transport but `local`). Lost on restart: every stream starts
//! again with a new id, which a resume is told (`stream_reset`).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use serde::Deserialize;
use sockhost_plugin_api::{
    Appended, Page, PluginError, Retention, Stored,
    abi::{RString, RVec},
    sdk::{self, HistoryDriver},
};

/// Settings of the `memory` history store.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MemoryHistoryConfig {
    /// Channels it keeps streams for at most; past it, the app with the most forgets its
    /// stream used least recently (its channel starts again with a new id): one app's
    /// channels do not push out another's. Default: 100000.
    max_streams: usize,
    /// Bytes of records one stream keeps at most, oldest dropped first. Default: 1 MiB.
    max_bytes_per_stream: usize,
}

impl Default for MemoryHistoryConfig {
    fn default() -> Self {
        Self { max_streams: 100_000, max_bytes_per_stream: 1024 * 1024 }
    }
}

/// One channel's stream.
struct Stream {
    id: String,
    head: u64,
    events: VecDeque<Stored>,
    bytes: usize,
    used_ms: u64,
}

impl Stream {
    fn new(now_ms: u64) -> Self {
        Self { id: new_stream_id(), head: 0, events: VecDeque::new(), bytes: 0, used_ms: now_ms }
    }

    /// Drop what the bounds no longer allow, oldest first.
    fn trim(&mut self, retention: Retention, max_bytes: usize, now_ms: u64) {
        let oldest = now_ms.saturating_sub(retention.max_age_ms);
        while let Some(first) = self.events.front() {
            let too_many = self.events.len() as u64 > retention.max_events;
            let too_big = self.bytes > max_bytes && self.events.len() > 1;
            if !(too_many || too_big || first.at_ms < oldest) {
                break;
            }
            self.bytes -= first.record.len();
            self.events.pop_front();
        }
    }
}

/// Each app's streams by channel, and how many there are.
#[derive(Default)]
struct Streams {
    by_app: HashMap<String, HashMap<String, Stream>>,
    count: usize,
}

impl Streams {
    /// Forget the stream used least recently of the app that has the most: an app flooding
    /// the store with channels pushes out its own, not another's.
    fn forget_one(&mut self) {
        let biggest = self.by_app.iter().max_by_key(|(_, channels)| channels.len());
        let victim = biggest.and_then(|(app, channels)| {
            let lru = channels.iter().min_by_key(|(_, s)| s.used_ms);
            lru.map(|(channel, _)| (app.clone(), channel.clone()))
        });
        if let Some((app, channel)) = victim {
            self.remove(&app, &channel);
        }
    }

    fn remove(&mut self, app: &str, channel: &str) {
        let Some(channels) = self.by_app.get_mut(app) else { return };
        if channels.remove(channel).is_some() {
            self.count -= 1;
        }
        if channels.is_empty() {
            self.by_app.remove(app);
        }
    }
}

/// Streams by app and channel, bounded in count and per stream.
pub struct MemoryHistory {
    streams: Mutex<Streams>,
    config: MemoryHistoryConfig,
    closed: AtomicBool,
}

impl std::fmt::Debug for MemoryHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHistory").field("config", &self.config).finish_non_exhaustive()
    }
}

fn new_stream_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl MemoryHistory {
    /// A store configured by `config` (`[history.memory]`).
    pub fn new(config: &str) -> Result<Self, PluginError> {
        let config: MemoryHistoryConfig =
            sockhost_plugin_api::sdk::config::parse("history.memory", config)?;
        if config.max_streams == 0 || config.max_bytes_per_stream == 0 {
            return Err(PluginError::config(
                "history.memory: max_streams and max_bytes_per_stream must be at least 1",
            ));
        }
        Ok(Self { streams: Mutex::default(), config, closed: AtomicBool::new(false) })
    }

    /// Run `f` on the channel's stream, started if it has none (forgetting the least recently
    /// used stream when the store is full).
    fn with_stream<T>(
        &self,
        app: &str,
        channel: &str,
        f: impl FnOnce(&mut Stream, u64) -> T,
    ) -> Result<T, PluginError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PluginError::unavailable("the memory history store is shut down"));
        }
        let now = sdk::unix_ms();
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let known = streams.by_app.get(app).is_some_and(|c| c.contains_key(channel));
        if !known {
            if streams.count >= self.config.max_streams {
                streams.forget_one();
            }
            streams.count += 1;
        }
        let channels = streams.by_app.entry(app.to_string()).or_default();
        let stream = channels.entry(channel.to_string()).or_insert_with(|| Stream::new(now));
        stream.used_ms = now;
        Ok(f(stream, now))
    }
}

impl HistoryDriver for MemoryHistory {
    async fn append(
        &self,
        app: &str,
        channel: &str,
        records: Vec<Vec<u8>>,
        retention: Retention,
    ) -> Result<Appended, PluginError> {
        let max_bytes = self.config.max_bytes_per_stream;
        self.with_stream(app, channel, |stream, now| {
            let first = stream.head + 1;
            for record in records {
                stream.head += 1;
                stream.bytes += record.len();
                let stored = Stored { serial: stream.head, at_ms: now, record: RVec::from(record) };
                stream.events.push_back(stored);
            }
            stream.trim(retention, max_bytes, now);
            Appended { stream_id: RString::from(stream.id.as_str()), serial: first }
        })
    }

    async fn read(
        &self,
        app: &str,
        channel: &str,
        after: u64,
        limit: u32,
        retention: Retention,
    ) -> Result<Page, PluginError> {
        let max_bytes = self.config.max_bytes_per_stream;
        self.with_stream(app, channel, |stream, now| {
            stream.trim(retention, max_bytes, now);
            let events: RVec<Stored> = stream
                .events
                .iter()
                .filter(|e| e.serial > after)
                .take(limit as usize)
                .cloned()
                .collect();
            Page { stream_id: RString::from(stream.id.as_str()), head: stream.head, events }
        })
    }

    async fn reset(&self, app: &str, channel: &str) -> Result<(), PluginError> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.remove(app, channel);
        Ok(())
    }

    async fn health(&self) -> Result<(), PluginError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PluginError::unavailable("the memory history store is shut down"));
        }
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

//! Connection recovery on one node: each channel's stream (an epoch, `stream_id`, and a dense
//! `serial` per event) and its recent events, so that a client that reconnects gets exactly
//! what it missed, in order, or is told it cannot.
//!
//! A channel's publish takes its stream's lock, gives the event the next serial, keeps the
//! positioned frame and delivers it before letting go: delivery order is serial order, and a
//! replay made under the same lock can neither miss nor double an event. A subscription's
//! acknowledgement carries the head as the hub makes the subscription visible (under the
//! hub's lock on the channel), read from [`Head`], which a publish raises *before* it
//! delivers: every event after the acknowledged head reaches the new subscriber live.
//! Bounded: per channel in events ([`RecoverySettings::max_events`]) and bytes, in age, and
//! node-wide in channels; a channel past the node's limit publishes without a position.
//! Positions come from this node's memory: configuration allows it with the `local` transport
//! only (a resume on another node could not be vouched for).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::extract::ws::Utf8Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::{
    config::RecoverySettings,
    protocol::recovery::{
        Failure, FailureCode, Position, Recovered, Source, Wanted, with_position,
    },
};

/// Bytes of events one channel keeps at most; older ones go first past it.
const MAX_CHANNEL_BYTES: usize = 256 * 1024;
/// Channels the node keeps streams for at most; a new channel past it publishes without a
/// position (counted), so a flood of channels cannot grow memory.
const MAX_STREAMS: usize = 100_000;

/// One kept event.
#[derive(Debug)]
struct Kept {
    serial: u64,
    message_id: String,
    frame: Utf8Bytes,
    at: Instant,
}

/// A channel's stream id and the serial of its last event, as a subscription's
/// acknowledgement reads them without the stream's lock.
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

/// One channel's stream on this node.
#[derive(Debug)]
pub(crate) struct Stream {
    stream_id: Arc<str>,
    /// The serial of the last event (0: none yet).
    head: u64,
    /// `head`, for acknowledgements; raised before the event is delivered.
    published: Arc<AtomicU64>,
    kept: VecDeque<Kept>,
    bytes: usize,
    used: Instant,
}

impl Stream {
    fn new() -> Self {
        Self {
            stream_id: uuid::Uuid::new_v4().to_string().into(),
            head: 0,
            published: Arc::default(),
            kept: VecDeque::new(),
            bytes: 0,
            used: Instant::now(),
        }
    }

    fn forget_before(&mut self, oldest: Instant) {
        while self.kept.front().is_some_and(|k| k.at < oldest) {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(kept) = self.kept.pop_front() {
            self.bytes -= kept.frame.len();
        }
    }
}

/// Each channel's stream, by (app, channel).
type Streams = HashMap<(String, String), Arc<Mutex<Stream>>>;

/// The node's streams.
#[derive(Debug)]
pub(crate) struct Recovery {
    settings: RecoverySettings,
    streams: Mutex<Streams>,
    /// Events published without a position because the node holds [`MAX_STREAMS`].
    untracked: Counter,
}

impl Recovery {
    /// Streams kept as `settings` say; events past the node's limit counted in `untracked`.
    pub(crate) fn new(settings: RecoverySettings, untracked: Counter) -> Self {
        Self { settings, streams: Mutex::default(), untracked }
    }

    /// The channel's stream, made if it has none and the node has room.
    fn stream(&self, app: &str, channel: &str) -> Option<Arc<Mutex<Stream>>> {
        let mut streams = self.streams.lock().expect("recovery lock");
        let key = (app.to_string(), channel.to_string());
        if let Some(stream) = streams.get(&key) {
            return Some(stream.clone());
        }
        if streams.len() >= MAX_STREAMS {
            return None;
        }
        Some(streams.entry(key).or_insert_with(|| Arc::new(Mutex::new(Stream::new()))).clone())
    }

    /// Give an app event on the channel its position, keep it, and `deliver` the plain frame
    /// and the positioned one under the stream's lock (see the module's comment). Past the
    /// node's limit of channels the event goes without a position.
    pub(crate) fn publish<R>(
        &self,
        app: &str,
        channel: &str,
        plain: &str,
        deliver: impl FnOnce(Option<&Utf8Bytes>) -> R,
    ) -> R {
        let Some(stream) = self.stream(app, channel) else {
            self.untracked.inc();
            return deliver(None);
        };
        let mut stream = stream.lock().expect("recovery lock");
        let now = Instant::now();
        stream.forget_before(now.checked_sub(self.settings.ttl).unwrap_or(now));
        stream.head += 1;
        stream.published.store(stream.head, Ordering::Release);
        stream.used = now;
        let message_id = uuid::Uuid::new_v4().to_string();
        let frame =
            Utf8Bytes::from(with_position(plain, &message_id, &stream.stream_id, stream.head));
        stream.bytes += frame.len();
        let serial = stream.head;
        stream.kept.push_back(Kept { serial, message_id, frame: frame.clone(), at: now });
        while stream.kept.len() > self.settings.max_events
            || (stream.bytes > MAX_CHANNEL_BYTES && stream.kept.len() > 1)
        {
            stream.drop_oldest();
        }
        deliver(Some(&frame))
    }

    /// The channel's head, for a subscription's acknowledgement (read it as the subscription
    /// becomes visible); `None` past the node's limit of channels.
    pub(crate) fn head(&self, app: &str, channel: &str) -> Option<Head> {
        let stream = self.stream(app, channel)?;
        let stream = stream.lock().expect("recovery lock");
        Some(Head { stream_id: stream.stream_id.clone(), serial: stream.published.clone() })
    }

    /// Replay to `send` the events after `wanted` on the channel up to serial `upto` (the head
    /// the socket's subscription was acknowledged with: it got the later ones live), under
    /// the stream's lock; what was recovered, or why not. Nothing is sent unless every missed
    /// event is held: a gap is never replayed in part.
    pub(crate) fn replay(
        &self,
        app: &str,
        channel: &str,
        wanted: &Wanted,
        upto: u64,
        mut send: impl FnMut(&Utf8Bytes),
    ) -> Result<Recovered, Box<Failure>> {
        let failure = |code, reason, current: Option<&Stream>| {
            Box::new(Failure {
                channel: channel.to_string(),
                code,
                reason,
                expected_stream_id: match wanted {
                    Wanted::Position(p) => Some(p.stream_id.clone()),
                    Wanted::Serial(_) => None,
                },
                current_stream_id: current.map(|s| s.stream_id.to_string()),
                oldest_available_serial: current.and_then(|s| s.kept.front().map(|k| k.serial)),
                newest_available_serial: current.and_then(|s| s.kept.back().map(|k| k.serial)),
            })
        };
        let Some(stream) = self.stream(app, channel) else {
            return Err(failure(FailureCode::PositionExpired, "recovery_buffer_full", None));
        };
        let mut stream = stream.lock().expect("recovery lock");
        let now = Instant::now();
        stream.forget_before(now.checked_sub(self.settings.ttl).unwrap_or(now));
        let serial = match wanted {
            Wanted::Position(p) if *p.stream_id != *stream.stream_id => {
                return Err(failure(FailureCode::StreamReset, "stream_id_mismatch", Some(&stream)));
            }
            Wanted::Position(p) => p.serial,
            Wanted::Serial(serial) => *serial,
        };
        let upto = upto.min(stream.head);
        if serial > stream.head {
            let reason = "position_ahead_of_stream_head";
            return Err(failure(FailureCode::ContinuityUnverifiable, reason, Some(&stream)));
        }
        let missed = upto.saturating_sub(serial);
        if missed > self.settings.max_events as u64 {
            let reason = "recovery_window_exceeded";
            return Err(failure(FailureCode::PositionExpired, reason, Some(&stream)));
        }
        let oldest = stream.kept.front().map_or(upto + 1, |k| k.serial);
        if missed > 0 && oldest > serial + 1 {
            let reason = "hot_replay_expired_and_durable_history_disabled";
            return Err(failure(FailureCode::PositionExpired, reason, Some(&stream)));
        }
        stream.used = now;
        let mut last = None;
        for kept in stream.kept.iter().filter(|k| k.serial > serial && k.serial <= upto) {
            send(&kept.frame);
            last = Some(kept);
        }
        Ok(Recovered {
            channel: channel.to_string(),
            source: Source::Hot,
            replayed: usize::try_from(missed).unwrap_or(usize::MAX),
            position: last.map(|k| Position {
                stream_id: stream.stream_id.to_string(),
                serial: k.serial,
                last_message_id: Some(k.message_id.clone()),
            }),
        })
    }

    /// Forget the streams whose last event is older than the TTL, every quarter of it, until
    /// `shutdown`. A forgotten stream starts again with a new id, which a later resume is told
    /// (`stream_reset`).
    pub(crate) async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let every = self.settings.ttl / 4;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let now = Instant::now();
            let Some(oldest) = now.checked_sub(self.settings.ttl) else { continue };
            let mut streams = self.streams.lock().expect("recovery lock");
            streams.retain(|_, stream| match stream.try_lock() {
                Ok(stream) => stream.used >= oldest,
                // Busy now: in use, so kept.
                Err(_) => true,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn recovery(max_events: usize) -> Recovery {
        let settings = RecoverySettings { ttl: Duration::from_secs(60), max_events };
        Recovery::new(settings, Counter::default())
    }

    fn publish(recovery: &Recovery, n: u64) {
        for i in 0..n {
            let plain = format!(r#"{{"event":"e","channel":"c","data":"{i}"}}"#);
            recovery.publish("app", "c", &plain, |_| ());
        }
    }

    fn head(recovery: &Recovery) -> (String, u64) {
        let head = recovery.head("app", "c").unwrap();
        (head.stream_id.to_string(), head.serial())
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
        let recovered =
            recovery.replay("app", "c", &wanted, u64::MAX, |f| got.push(f.to_string())).unwrap();
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
            recovery.replay("app", "c", &now, u64::MAX, |_| panic!("sent")).unwrap().replayed,
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
            recovery.replay("app", "c", wanted, u64::MAX, |_| panic!("sent")).unwrap_err()
        };
        let expired = code(&at(10));
        assert_eq!(
            (expired.code, expired.reason),
            (FailureCode::PositionExpired, "recovery_window_exceeded")
        );
        assert_eq!(
            (expired.oldest_available_serial, expired.newest_available_serial),
            (Some(16), Some(20))
        );
        assert_eq!(code(&at(21)).code, FailureCode::ContinuityUnverifiable);
        let other = Wanted::Position(Position {
            stream_id: "old".into(),
            serial: 19,
            last_message_id: None,
        });
        assert_eq!(code(&other).code, FailureCode::StreamReset);
        assert_eq!(recovery.replay("app", "c", &at(15), u64::MAX, |_| ()).unwrap().replayed, 5);
    }
}

//! Delta compression: a subscriber that asks for it gets an event as the difference from the
//! previous event of its stream (same channel, event name and conflation key) instead of whole.
//!
//! The work is done once per broadcast on each node, not once per socket: a channel's
//! [`Deltas`] holds one stream per (event, conflation key) with the last frame sent on it,
//! and a [`Publication`] computes each frame (the full one, and one delta per algorithm in use)
//! at most once, then hands the same bytes to every socket on the stream. A socket gets the
//! delta only if it holds the stream's previous frame; one that joined mid-stream, missed an
//! event (a tag filter, a resync) or asked for a resync gets the full frame and is on the stream
//! from then on.
//!
//! Wire format (Sockudo's, kept byte-compatible): a full frame is the ordinary frame with
//! `,"__delta_seq":N` (and `,"__conflation_key":"K"`) appended as its last members; a delta is
//! `pusher:delta` (`sockudo:delta` on protocol 2) whose data names the event, the base64 delta,
//! its `seq`, `base_index` (the base's seq), the algorithm and the conflation key. Base and
//! target are whole frame texts without the two appended members.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, value::RawValue};

pub(crate) use crate::config::{Algorithm, StreamSettings};
use crate::protocol::{SocketId, frames};

/// How delta compression encodes with an algorithm (the choice itself is configuration:
/// [`Algorithm`]).
trait Encode {
    fn encode(self, base: &[u8], target: &[u8]) -> Option<Vec<u8>>;
    fn index(self) -> usize;
}

impl Encode for Algorithm {
    /// The delta that rebuilds `target` from `base`.
    fn encode(self, base: &[u8], target: &[u8]) -> Option<Vec<u8>> {
        match self {
            // The crate's arguments are (target, base): `apply(base, delta)` gives target.
            Self::Fossil => Some(fossil_delta::delta(target, base)),
            Self::Xdelta3 => {
                let options = oxidelta::engine::EncodeOptions {
                    checksum: false,
                    ..oxidelta::engine::EncodeOptions::default()
                };
                let mut out = Vec::with_capacity(target.len() / 4 + 32);
                oxidelta::engine::encode_with_options(base, target, &mut out, &options).ok()?;
                Some(out)
            }
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Fossil => 0,
            Self::Xdelta3 => 1,
        }
    }
}

/// A conflation key longer than this is not one: such events share their event's stream.
const MAX_CONFLATION_KEY: usize = 128;
/// Events in a row sent whole at the start of a stream.
const FIRST_FULL: u64 = 2;

/// One stream's state on this node.
#[derive(Debug)]
struct Stream {
    /// The seq the next event gets.
    next_seq: u64,
    /// Deltas since the last full frame.
    deltas: u32,
    /// The last frame (without delta members) and its seq.
    base: Option<(u64, Utf8Bytes)>,
    /// The seq of the last frame each subscriber got on this stream, by its slot
    /// ([`NONE`] for none): a vector, not a map, because it is written once per delivery.
    received: Vec<u64>,
    used: Instant,
}

/// No frame received on a stream.
const NONE: u64 = u64::MAX;

impl Stream {
    fn new(now: Instant) -> Self {
        Self { next_seq: 0, deltas: 0, base: None, received: Vec::new(), used: now }
    }

    /// Forget what the subscriber in `slot` got.
    fn forget(&mut self, slot: usize) {
        if let Some(seq) = self.received.get_mut(slot) {
            *seq = NONE;
        }
    }
}

/// A delta subscriber: its algorithm and its slot in the streams' `received`.
#[derive(Debug, Clone, Copy)]
struct Subscriber {
    algorithm: Algorithm,
    slot: usize,
}

/// A channel's delta subscribers and streams on this node.
#[derive(Debug)]
pub(crate) struct Deltas {
    settings: Arc<StreamSettings>,
    /// Each delta subscriber's algorithm and slot.
    subscribers: HashMap<SocketId, Subscriber>,
    /// Slots freed by subscribers that left, to reuse before growing.
    free_slots: Vec<usize>,
    /// Streams by (event, conflation key).
    streams: HashMap<(String, Option<String>), Stream>,
    swept: Instant,
}

/// The head of an event frame: its name and data.
#[derive(Deserialize)]
struct Head<'a> {
    event: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

impl Deltas {
    /// No subscriber yet, with the channel's settings.
    pub(crate) fn new(settings: Arc<StreamSettings>) -> Self {
        Self {
            settings,
            subscribers: HashMap::new(),
            free_slots: Vec::new(),
            streams: HashMap::new(),
            swept: Instant::now(),
        }
    }

    /// Send `socket_id` deltas in `algorithm` (or the channel's).
    pub(crate) fn add(&mut self, socket_id: &SocketId, algorithm: Option<Algorithm>) {
        let algorithm = algorithm.unwrap_or(self.settings.algorithm);
        if let Some(subscriber) = self.subscribers.get_mut(socket_id) {
            subscriber.algorithm = algorithm;
            return;
        }
        let slot = self.free_slots.pop().unwrap_or(self.subscribers.len());
        self.subscribers.insert(socket_id.clone(), Subscriber { algorithm, slot });
    }

    /// Forget `socket_id`; whether any delta subscriber is left.
    pub(crate) fn remove(&mut self, socket_id: &str) -> bool {
        if let Some(Subscriber { slot, .. }) = self.subscribers.remove(socket_id) {
            self.streams.values_mut().for_each(|stream| stream.forget(slot));
            self.free_slots.push(slot);
        }
        !self.subscribers.is_empty()
    }

    /// `socket_id` lost its bases (a client could not apply a delta): its next event on each
    /// stream goes whole.
    pub(crate) fn resync(&mut self, socket_id: &str) {
        if let Some(Subscriber { slot, .. }) = self.subscribers.get(socket_id) {
            self.streams.values_mut().for_each(|stream| stream.forget(*slot));
        }
    }

    /// Begin delivering `frame` (an app's event): `None` if it is not an event frame, which
    /// then goes to everyone as it is.
    pub(crate) fn publish<'a>(
        &'a mut self,
        channel: &'a str,
        frame: &'a Utf8Bytes,
    ) -> Option<Publication<'a>> {
        let head: Head<'_> = serde_json::from_str(frame.as_str()).ok()?;
        let key = self.conflation_key(head.data);
        let now = Instant::now();
        self.sweep(now);
        let stream_key = (head.event, key);
        let stream = match self.streams.remove(&stream_key) {
            Some(stream) => stream,
            None => {
                self.make_room();
                Stream::new(now)
            }
        };
        let settings = &*self.settings;
        let seq = stream.next_seq;
        let base = stream.base.clone().filter(|_| {
            seq >= FIRST_FULL
                && stream.deltas < settings.full_message_interval
                && frame.len() >= settings.min_message_size
        });
        Some(Publication {
            deltas: self,
            channel,
            frame,
            key: stream_key,
            stream,
            seq,
            base,
            full: None,
            encoded: [None, None],
            sent: Sent::default(),
        })
    }

    fn conflation_key(&self, data: Option<&RawValue>) -> Option<String> {
        let path = self.settings.conflation_key_path.as_ref()?;
        let data = data?;
        // The HTTP API's data is a string holding JSON; a client event's may be JSON itself.
        let parsed: Value = match serde_json::from_str::<Value>(data.get()).ok()? {
            Value::String(text) => serde_json::from_str(&text).ok()?,
            other => other,
        };
        let mut at = &parsed;
        for part in path {
            at = at.get(part)?;
        }
        let key = match at {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        (key.len() <= MAX_CONFLATION_KEY).then_some(key)
    }

    /// Forget streams unused for `max_state_age`, looking at most once a minute.
    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.swept) < Duration::from_secs(60) {
            return;
        }
        self.swept = now;
        let max_age = self.settings.max_state_age;
        self.streams.retain(|_, stream| now.duration_since(stream.used) < max_age);
    }

    /// Keep the streams under `max_conflation_keys`, forgetting the least recently used.
    fn make_room(&mut self) {
        while self.streams.len() >= self.settings.max_conflation_keys.max(1) {
            let oldest = self.streams.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| k.clone());
            match oldest {
                Some(key) => self.streams.remove(&key),
                None => return,
            };
        }
    }
}

/// How many frames of each kind a publication sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Deltas.
    pub deltas: u64,
    /// Full frames (with their delta members).
    pub full: u64,
    /// Bytes the deltas saved against sending those events whole.
    pub saved_bytes: u64,
}

/// One event on its way to a channel's delta subscribers on this node.
#[derive(Debug)]
pub(crate) struct Publication<'a> {
    deltas: &'a mut Deltas,
    channel: &'a str,
    frame: &'a Utf8Bytes,
    key: (String, Option<String>),
    stream: Stream,
    seq: u64,
    /// The base to send deltas against, when this event may go as a delta.
    base: Option<(u64, Utf8Bytes)>,
    full: Option<Utf8Bytes>,
    /// Each algorithm's delta frame once computed (`Some(None)`: not worth sending).
    encoded: [Option<Option<Utf8Bytes>>; 2],
    sent: Sent,
}

impl Publication<'_> {
    /// The frame for `socket_id`: `None` if it is no delta subscriber (it gets the event as
    /// it is), else the delta if it holds the base, or the full frame.
    pub(crate) fn frame_for(&mut self, socket_id: &SocketId) -> Option<Utf8Bytes> {
        let Subscriber { algorithm, slot } = *self.deltas.subscribers.get(socket_id)?;
        let received = &mut self.stream.received;
        if received.len() <= slot {
            received.resize(slot + 1, NONE);
        }
        let had = std::mem::replace(&mut received[slot], self.seq);
        if let Some((base_seq, _)) = &self.base
            && had == *base_seq
            && let Some(delta) = self.delta(algorithm)
        {
            self.sent.deltas += 1;
            self.sent.saved_bytes += (self.frame.len() as u64).saturating_sub(delta.len() as u64);
            return Some(delta);
        }
        self.sent.full += 1;
        Some(self.full().clone())
    }

    fn full(&mut self) -> &Utf8Bytes {
        let (frame, seq) = (self.frame.as_str(), self.seq);
        let conflation_key = self.key.1.as_deref();
        self.full.get_or_insert_with(|| frames::with_delta_seq(frame, seq, conflation_key).into())
    }

    fn delta(&mut self, algorithm: Algorithm) -> Option<Utf8Bytes> {
        let slot = &mut self.encoded[algorithm.index()];
        if let Some(done) = slot {
            return done.clone();
        }
        let (base_seq, base) = self.base.as_ref()?;
        let delta = algorithm.encode(base.as_bytes(), self.frame.as_bytes());
        let frame = delta
            .map(|d| {
                let algorithm = (!self.deltas.settings.omit_algorithm).then_some(algorithm);
                frames::delta(
                    self.channel,
                    &frames::DeltaData {
                        event: &self.key.0,
                        delta: base64::engine::general_purpose::STANDARD.encode(d),
                        seq: self.seq,
                        algorithm: algorithm.map(Algorithm::name),
                        conflation_key: self.key.1.as_deref(),
                        base_index: *base_seq,
                    },
                )
            })
            // A delta no shorter than the event is not worth its decoding.
            .filter(|d| d.len() < self.frame.len())
            .map(Utf8Bytes::from);
        *slot = Some(frame.clone());
        frame
    }

    /// Put the stream back with this event as its base; what was sent.
    pub(crate) fn finish(mut self) -> Sent {
        let stream = &mut self.stream;
        stream.deltas = if self.base.is_some() { stream.deltas + 1 } else { 0 };
        stream.base = Some((self.seq, self.frame.clone()));
        stream.next_seq = self.seq + 1;
        stream.used = Instant::now();
        self.deltas.streams.insert(self.key, self.stream);
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(event: &str, data: &str) -> Utf8Bytes {
        frames::channel_event(event, "ticker", &Value::String(data.into()), None).into()
    }

    fn settings(path: Option<&str>) -> Arc<StreamSettings> {
        Arc::new(StreamSettings {
            min_message_size: 0,
            conflation_key_path: path.map(|p| p.split('.').map(str::to_string).collect()),
            ..StreamSettings::default()
        })
    }

    /// Rebuild an event from a delta frame as a client would.
    fn apply(base: &str, delta_frame: &str) -> (String, Value) {
        let parsed: Value = serde_json::from_str(delta_frame).unwrap();
        let data = &parsed["data"];
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data["delta"].as_str().unwrap())
            .unwrap();
        let rebuilt = match data["algorithm"].as_str().unwrap() {
            "fossil" => fossil_delta::apply(base, &bytes).unwrap(),
            "xdelta3" => oxidelta::engine::decode(base.as_bytes(), &bytes).unwrap(),
            other => panic!("algorithm {other}"),
        };
        (String::from_utf8(rebuilt).unwrap(), data.clone())
    }

    fn send(deltas: &mut Deltas, f: &Utf8Bytes, socket: &SocketId) -> (String, Sent) {
        let mut publication = deltas.publish("ticker", f).unwrap();
        let out = publication.frame_for(socket).unwrap();
        (out.as_str().to_string(), publication.finish())
    }

    fn price(n: u32, sym: &str) -> String {
        format!(r#"{{"sym":"{sym}","price":{n},"pad":"{}"}}"#, "x".repeat(300))
    }

    #[test]
    fn two_full_then_ten_deltas_then_full_again() {
        for algorithm in [Algorithm::Fossil, Algorithm::Xdelta3] {
            let mut deltas = Deltas::new(settings(None));
            let socket: SocketId = "1.1".into();
            deltas.add(&socket, Some(algorithm));
            let mut kinds = String::new();
            let mut base = String::new();
            for n in 0..14 {
                let f = frame("price", &price(n, "BTC"));
                let (out, _) = send(&mut deltas, &f, &socket);
                if out.starts_with(r#"{"event":"pusher:delta""#) {
                    let (rebuilt, data) = apply(&base, &out);
                    assert_eq!(rebuilt, f.as_str());
                    assert_eq!(data["seq"], u64::from(n));
                    assert_eq!(data["base_index"], u64::from(n - 1));
                    assert_eq!(data["event"], "price");
                    kinds.push('d');
                } else {
                    let whole = f.as_str();
                    let tail = format!(r#","__delta_seq":{n}}}"#);
                    assert_eq!(out, format!("{}{tail}", &whole[..whole.len() - 1]));
                    kinds.push('F');
                }
                base = f.as_str().to_string();
            }
            assert_eq!(kinds, "FFddddddddddFd", "{algorithm:?}");
        }
    }

    #[test]
    fn a_socket_without_the_base_gets_the_full_frame_and_then_deltas() {
        let mut deltas = Deltas::new(settings(None));
        let (early, late): (SocketId, SocketId) = ("1.1".into(), "1.2".into());
        deltas.add(&early, None);
        for n in 0..3 {
            send(&mut deltas, &frame("price", &price(n, "BTC")), &early);
        }
        deltas.add(&late, None);
        let f = frame("price", &price(3, "BTC"));
        let mut publication = deltas.publish("ticker", &f).unwrap();
        let to_early = publication.frame_for(&early).unwrap();
        let to_late = publication.frame_for(&late).unwrap();
        // Not a subscriber of deltas: the event as it is.
        assert!(publication.frame_for(&"1.3".into()).is_none());
        let sent = publication.finish();
        assert!(to_early.as_str().contains("pusher:delta"));
        assert!(to_late.as_str().ends_with(r#","__delta_seq":3}"#));
        assert_eq!((sent.deltas, sent.full), (1, 1));
        let (out, _) = send(&mut deltas, &frame("price", &price(4, "BTC")), &late);
        assert!(out.contains("pusher:delta"));
        // An event it did not get (its tag filter passed it over): the next goes whole.
        send(&mut deltas, &frame("price", &price(40, "BTC")), &early);
        let (out, _) = send(&mut deltas, &frame("price", &price(41, "BTC")), &late);
        assert!(out.ends_with(r#","__delta_seq":6}"#), "{out}");
        let (out, _) = send(&mut deltas, &frame("price", &price(42, "BTC")), &late);
        assert!(out.contains("pusher:delta"));
        // A resync (the client lost its base): whole again.
        deltas.resync("1.2");
        let (out, _) = send(&mut deltas, &frame("price", &price(5, "BTC")), &late);
        assert!(out.ends_with(r#","__delta_seq":8}"#));
        // A newcomer in the slot of one that left holds nothing of its predecessor's.
        assert!(deltas.remove("1.1"));
        let newcomer: SocketId = "1.9".into();
        deltas.add(&newcomer, None);
        let (out, _) = send(&mut deltas, &frame("price", &price(6, "BTC")), &newcomer);
        assert!(out.ends_with(r#","__delta_seq":9}"#), "{out}");
        assert!(deltas.remove("1.2") && !deltas.remove("1.9"));
    }

    #[test]
    fn conflation_keys_keep_a_stream_each() {
        let mut deltas = Deltas::new(settings(Some("sym")));
        let socket: SocketId = "1.1".into();
        deltas.add(&socket, None);
        let mut bases: HashMap<&str, String> = HashMap::new();
        for n in 0..8 {
            let sym = if n % 2 == 0 { "BTC" } else { "ETH" };
            let f = frame("price", &price(n, sym));
            let (out, _) = send(&mut deltas, &f, &socket);
            if n < 4 {
                // Two full frames per key first.
                let tail = format!(r#","__delta_seq":{},"__conflation_key":"{sym}"}}"#, n / 2);
                assert!(out.ends_with(&tail), "{out}");
            } else {
                let (rebuilt, data) = apply(&bases[sym], &out);
                assert_eq!(rebuilt, f.as_str());
                assert_eq!(data["conflation_key"], sym);
                assert_eq!(data["seq"], u64::from(n / 2));
            }
            bases.insert(sym, f.as_str().to_string());
        }
    }

    #[test]
    fn streams_are_bounded() {
        let mut deltas = Deltas::new(Arc::new(StreamSettings {
            max_conflation_keys: 3,
            ..(*settings(Some("sym"))).clone()
        }));
        let socket: SocketId = "1.1".into();
        deltas.add(&socket, None);
        for n in 0..50 {
            send(&mut deltas, &frame("price", &price(n, &format!("S{n}"))), &socket);
        }
        assert_eq!(deltas.streams.len(), 3);
        // A key too long to be one shares the event's stream.
        let long = "k".repeat(MAX_CONFLATION_KEY + 1);
        let (out, _) = send(&mut deltas, &frame("price", &price(0, &long)), &socket);
        assert!(out.ends_with(r#","__delta_seq":0}"#));
    }

    #[test]
    fn a_frame_that_is_no_event_goes_as_it_is() {
        let mut deltas = Deltas::new(settings(None));
        assert!(deltas.publish("ticker", &Utf8Bytes::from("not json")).is_none());
    }
}

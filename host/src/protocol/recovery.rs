//! Connection recovery on the wire, as Sockudo's protocol 2 speaks it: the position an event
//! carries (`message_id`, `stream_id`, `serial`), the resume a reconnected client sends, and
//! the answers (`resume_failed` per channel, then one `resume_success`). Pure functions: what
//! a position means and where it comes from is the recovery layer's business.
//!
//! Frames are built in Pusher's names (`pusher:resume_failed`) like every server frame, and
//! renamed for a protocol-2 socket as they are written (`sockudo:resume_failed`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Channels one resume may name at most: a connection subscribes to at most
/// `max_channels_per_connection`, which is smaller.
pub const MAX_RESUME_CHANNELS: usize = 1_000;
/// The longest `stream_id` or `last_message_id` a resume may carry (ours are 36-character
/// UUIDs); a longer one is refused before it is kept.
pub const MAX_ID_LENGTH: usize = 128;

/// Where a client was in a channel's stream: the stream (the channel's epoch), the serial of
/// the last event it got, and that event's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The channel's stream (epoch); a new one means the serials started again.
    pub stream_id: String,
    /// The serial of the last event received.
    pub serial: u64,
    /// The id of that event, when the client kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<String>,
}

/// What a resume asks for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A full position (`channel_positions`).
    Position(Position),
    /// A serial alone (the legacy `channel_serials`): only a node that still holds the stream
    /// can vouch for it.
    Serial(u64),
}

/// Why a resume was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// It named no channel (code 4302).
    #[error("No channel recovery positions provided")]
    NoPositions,
    /// It is not a resume this server can read (code 4000, as Sockudo answers it).
    #[error("Invalid message format: {0}")]
    Malformed(&'static str),
}

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    channel_positions: Option<BTreeMap<String, Position>>,
    #[serde(default)]
    channel_serials: Option<BTreeMap<String, u64>>,
}

/// The channels a resume's `data` names, with what it asks for each, in channel order. `data`
/// may be the object or a JSON string of it, as clients send either. Positions win over legacy
/// serials for the same channel.
///
/// # Errors
/// [`ResumeError::NoPositions`] when it names none; [`ResumeError::Malformed`] when it cannot
/// be read, names too many channels or carries an id that is too long.
pub fn parse_resume(data: &Value) -> Result<Vec<(String, Wanted)>, ResumeError> {
    let parsed: Result<Request, _> = match data {
        Value::String(text) => serde_json::from_str(text),
        other => Request::deserialize(other),
    };
    let request = parsed.map_err(|_| ResumeError::Malformed("not a resume object"))?;
    // Sockudo tells "no positions" (4302) from a resume that names neither field (4000).
    if request.channel_positions.is_none() && request.channel_serials.is_none() {
        return Err(ResumeError::Malformed("no channel_positions"));
    }
    let positions = request.channel_positions.unwrap_or_default();
    let serials = request.channel_serials.unwrap_or_default();
    if positions.len() + serials.len() > MAX_RESUME_CHANNELS {
        return Err(ResumeError::Malformed("too many channels"));
    }
    let too_long = |id: &str| id.len() > MAX_ID_LENGTH;
    if positions
        .values()
        .any(|p| too_long(&p.stream_id) || p.last_message_id.as_deref().is_some_and(too_long))
    {
        return Err(ResumeError::Malformed("an id is too long"));
    }
    let mut wanted: BTreeMap<String, Wanted> =
        serials.into_iter().map(|(channel, serial)| (channel, Wanted::Serial(serial))).collect();
    wanted.extend(positions.into_iter().map(|(channel, p)| (channel, Wanted::Position(p))));
    if wanted.is_empty() {
        return Err(ResumeError::NoPositions);
    }
    Ok(wanted.into_iter().collect())
}

/// Why a channel could not be recovered, as Sockudo names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The events after the position are no longer held (too old, or more than a resume
    /// replays).
    PositionExpired,
    /// Nothing can prove the events after the position are complete (a legacy serial on a
    /// node that does not hold the stream, a position ahead of the stream).
    ContinuityUnverifiable,
    /// The channel's stream started again (another `stream_id`).
    StreamReset,
    /// The history store cannot be read now.
    PersistenceUnavailable,
}

/// One channel's failed recovery: the code, a reason for people, and what the server holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The channel.
    #[serde(skip)]
    pub channel: String,
    /// Why, as a code clients act on.
    pub code: FailureCode,
    /// Why, in Sockudo's words (`recovery_window_exceeded`, `stream_id_mismatch`, ...).
    pub reason: &'static str,
    /// The stream the client named. Every field is sent, `null` when unknown, as Sockudo does.
    pub expected_stream_id: Option<String>,
    /// The channel's stream now.
    pub current_stream_id: Option<String>,
    /// The oldest serial still held.
    pub oldest_available_serial: Option<u64>,
    /// The newest serial held.
    pub newest_available_serial: Option<u64>,
}

impl Failure {
    /// The channel's failure with `code` and `reason`, nothing else known (every other field
    /// goes as `null`).
    pub fn new(channel: &str, code: FailureCode, reason: &'static str) -> Self {
        Self {
            channel: channel.to_string(),
            code,
            reason,
            expected_stream_id: None,
            current_stream_id: None,
            oldest_available_serial: None,
            newest_available_serial: None,
        }
    }
}

/// Where a recovered channel's events came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// This node's memory.
    Hot,
    /// The history store.
    Cold,
}

/// One channel's successful recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recovered {
    /// The channel.
    pub channel: String,
    /// Where the replayed events came from.
    pub source: Source,
    /// How many events were replayed.
    pub replayed: usize,
    /// The position after the last replayed event; `None` when nothing was replayed.
    pub position: Option<Position>,
}

#[derive(Serialize)]
struct ChannelFrame<'a> {
    event: &'a str,
    channel: &'a str,
    data: String,
}

#[derive(Serialize)]
struct Frame<'a> {
    event: &'a str,
    data: String,
}

#[derive(Serialize)]
struct FailedEntry<'a> {
    channel: &'a str,
    #[serde(flatten)]
    failure: &'a Failure,
}

fn json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings and numbers: serializing cannot fail.
    serde_json::to_string(value).expect("a recovery frame serializes")
}

/// `pusher:resume_failed` for one channel; its data is a JSON string, as Sockudo sends it.
pub fn resume_failed(failure: &Failure) -> String {
    json(&ChannelFrame {
        event: "pusher:resume_failed",
        channel: &failure.channel,
        data: json(failure),
    })
}

/// `pusher:resume_success`, sent once after every channel's replay or failure (even when all
/// failed); its data is a JSON string.
pub fn resume_success(recovered: &[Recovered], failed: &[Failure]) -> String {
    let failed: Vec<FailedEntry<'_>> =
        failed.iter().map(|failure| FailedEntry { channel: &failure.channel, failure }).collect();
    let data = serde_json::json!({ "recovered": recovered, "failed": failed });
    json(&Frame { event: "pusher:resume_success", data: data.to_string() })
}

/// A subscription's `rewind` (Sockudo's forms): the channel's last events, sent right after the
/// acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewind {
    /// The last `n` (`10`, `"10"`, `{"count": 10}`).
    Count(u64),
    /// Those of the last seconds (`{"seconds": 30}`, `{"duration_seconds": 30}`).
    Seconds(u64),
}

impl Rewind {
    /// The subscription data's `rewind`; `None` when it is none of the accepted forms (zero and
    /// negative numbers included, as Sockudo refuses them).
    pub fn parse(value: &Value) -> Option<Self> {
        let positive = |v: &Value| match v {
            Value::Number(n) => n.as_u64().filter(|n| *n > 0),
            Value::String(s) => s.parse::<u64>().ok().filter(|n| *n > 0),
            _ => None,
        };
        match value {
            Value::Object(fields) => {
                if let Some(count) = fields.get("count") {
                    return positive(count).map(Self::Count);
                }
                ["seconds", "duration_seconds"]
                    .iter()
                    .find_map(|name| fields.get(*name))
                    .and_then(|v| v.as_u64().filter(|n| *n > 0))
                    .map(Self::Seconds)
            }
            other => positive(other).map(Self::Count),
        }
    }
}

/// What a rewind sent, for `pusher:rewind_complete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rewound {
    /// Events replayed from history.
    pub historical_count: usize,
    /// Live events that came during the replay (none: the replay is made as the subscription
    /// becomes visible, and live events follow it).
    pub live_count: usize,
    /// Whether everything asked for was sent.
    pub complete: bool,
    /// Whether older events asked for are no longer kept.
    pub truncated_by_retention: bool,
    /// Whether more was asked for than one rewind sends.
    pub truncated_by_limit: bool,
}

/// `pusher:rewind_complete` after a rewind's events; its data is a JSON object, as Sockudo
/// sends it.
pub fn rewind_complete(channel: &str, rewound: &Rewound) -> String {
    #[derive(Serialize)]
    struct Complete<'a> {
        event: &'a str,
        channel: &'a str,
        data: &'a Rewound,
    }
    json(&Complete { event: "pusher:rewind_complete", channel, data: rewound })
}

/// An app event's frame with its position appended as its last members (`message_id`,
/// `stream_id`, `serial`), the order Sockudo writes them in. `frame` is a JSON object.
pub fn with_position(frame: &str, message_id: &str, stream_id: &str, serial: u64) -> String {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    let message_id = json(&message_id);
    let stream_id = json(&stream_id);
    format!(r#"{body},"message_id":{message_id},"stream_id":{stream_id},"serial":{serial}}}"#)
}

/// A subscription's acknowledgement with the channel's head appended (`stream_id`, and
/// `serial`: the last event's), as Sockudo acknowledges on a channel with recovery.
pub fn with_head(frame: &str, stream_id: &str, serial: u64) -> String {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    let stream_id = json(&stream_id);
    format!(r#"{body},"stream_id":{stream_id},"serial":{serial}}}"#)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rewinds_are_read_in_sockudos_forms() {
        for (value, expected) in [
            (json!(10), Some(Rewind::Count(10))),
            (json!("10"), Some(Rewind::Count(10))),
            (json!({ "count": 3 }), Some(Rewind::Count(3))),
            (json!({ "seconds": 30 }), Some(Rewind::Seconds(30))),
            (json!({ "duration_seconds": 5 }), Some(Rewind::Seconds(5))),
            (json!(0), None),
            (json!(-1), None),
            (json!("30s"), None),
            (json!({}), None),
            (json!({ "count": 0 }), None),
            (json!(null), None),
        ] {
            assert_eq!(Rewind::parse(&value), expected, "{value}");
        }
    }

    #[test]
    fn a_resume_is_read_from_an_object_or_a_string_and_positions_win() {
        let object = json!({
            "channel_positions": { "chat": { "stream_id": "s1", "serial": 42, "last_message_id": "m" } },
            "channel_serials": { "chat": 7, "news": 3 },
        });
        let expected = vec![
            (
                "chat".to_string(),
                Wanted::Position(Position {
                    stream_id: "s1".into(),
                    serial: 42,
                    last_message_id: Some("m".into()),
                }),
            ),
            ("news".to_string(), Wanted::Serial(3)),
        ];
        assert_eq!(parse_resume(&object).unwrap(), expected);
        assert_eq!(parse_resume(&Value::String(object.to_string())).unwrap(), expected);
    }

    #[test]
    fn a_resume_that_names_nothing_or_too_much_is_refused() {
        assert!(matches!(parse_resume(&json!({})), Err(ResumeError::Malformed(_))));
        assert_eq!(
            parse_resume(&json!({ "channel_positions": {} })),
            Err(ResumeError::NoPositions)
        );
        assert!(matches!(parse_resume(&json!("not json")), Err(ResumeError::Malformed(_))));
        assert!(matches!(parse_resume(&json!([1, 2])), Err(ResumeError::Malformed(_))));
        let serial_as_text =
            json!({ "channel_positions": { "c": { "stream_id": "s", "serial": "1" } } });
        assert!(matches!(parse_resume(&serial_as_text), Err(ResumeError::Malformed(_))));
        let long = "x".repeat(MAX_ID_LENGTH + 1);
        let too_long = json!({ "channel_positions": { "c": { "stream_id": long, "serial": 1 } } });
        assert!(matches!(parse_resume(&too_long), Err(ResumeError::Malformed(_))));
        let many: serde_json::Map<String, Value> =
            (0..=MAX_RESUME_CHANNELS).map(|i| (format!("c{i}"), json!(1))).collect();
        let too_many = json!({ "channel_serials": many });
        assert!(matches!(parse_resume(&too_many), Err(ResumeError::Malformed(_))));
    }

    #[test]
    fn the_answers_have_sockudos_shape() {
        let failure = Failure {
            channel: "news".into(),
            code: FailureCode::PositionExpired,
            reason: "recovery_window_exceeded",
            expected_stream_id: Some("a".into()),
            current_stream_id: Some("a".into()),
            oldest_available_serial: Some(10),
            newest_available_serial: Some(400),
        };
        let failed = resume_failed(&failure);
        let frame: Value = serde_json::from_str(&failed).unwrap();
        assert_eq!(frame["event"], "pusher:resume_failed");
        assert_eq!(frame["channel"], "news");
        let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data,
            json!({ "code": "position_expired", "reason": "recovery_window_exceeded",
                    "expected_stream_id": "a", "current_stream_id": "a",
                    "oldest_available_serial": 10, "newest_available_serial": 400 })
        );
        let unknown =
            Failure { current_stream_id: None, oldest_available_serial: None, ..failure.clone() };
        let data: Value = serde_json::from_str(
            serde_json::from_str::<Value>(&resume_failed(&unknown)).unwrap()["data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (data["current_stream_id"].clone(), data["oldest_available_serial"].clone()),
            (Value::Null, Value::Null)
        );
        assert_eq!(data.as_object().unwrap().len(), 6, "every field, null when unknown: {data}");
        // Every field is sent, null when unknown, as Sockudo sends it.
        let unknown =
            Failure { current_stream_id: None, oldest_available_serial: None, ..failure.clone() };
        let frame: Value = serde_json::from_str(&resume_failed(&unknown)).unwrap();
        let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["current_stream_id"], Value::Null);
        assert_eq!(data.as_object().unwrap().len(), 6, "{data}");
        let recovered = Recovered {
            channel: "chat".into(),
            source: Source::Hot,
            replayed: 3,
            position: Some(Position { stream_id: "s".into(), serial: 45, last_message_id: None }),
        };
        let success = resume_success(&[recovered], &[failure]);
        let frame: Value = serde_json::from_str(&success).unwrap();
        assert_eq!(frame["event"], "pusher:resume_success");
        let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["recovered"][0]["source"], "hot");
        assert_eq!(data["recovered"][0]["position"]["serial"], 45);
        assert_eq!(data["failed"][0]["channel"], "news");
        assert_eq!(data["failed"][0]["code"], "position_expired");
    }

    #[test]
    fn a_position_goes_last_in_the_event() {
        let frame = r#"{"event":"e","channel":"c","data":"x"}"#;
        assert_eq!(
            with_position(frame, "m-1", "s-\"1", 7),
            r#"{"event":"e","channel":"c","data":"x","message_id":"m-1","stream_id":"s-\"1","serial":7}"#
        );
    }
}

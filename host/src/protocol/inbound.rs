//! The messages clients send.

use serde::Deserialize;
use serde_json::Value;

/// A message from a client, understood.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `pusher:ping`.
    Ping,
    /// `pusher:pong`.
    Pong,
    /// `pusher:subscribe`.
    Subscribe {
        /// The channel.
        channel: String,
        /// `<key>:<signature>` for private and presence channels.
        auth: Option<String>,
        /// For presence channels: a JSON string with `user_id` and `user_info`.
        channel_data: Option<String>,
        /// A tag filter (`filter`, or `tags_filter`), not yet compiled.
        filter: Option<Value>,
        /// What the subscription asks of delta compression (`delta`), if anything.
        delta: Option<DeltaRequest>,
        /// `rewind`, as sent (read by [`super::recovery::Rewind::parse`]); `None` when absent
        /// or null.
        rewind: Option<Value>,
    },
    /// `pusher:enable_delta_compression`: deltas on every channel of the connection.
    EnableDeltaCompression {
        /// The algorithms the client can decode, in its order of preference (may be empty).
        algorithms: Vec<String>,
    },
    /// `pusher:delta_sync_error`: the client could not apply a delta on a channel.
    DeltaSyncError {
        /// The channel.
        channel: String,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// `pusher:signin`.
    Signin {
        /// `<key>:<signature>` over `socket_id::user::user_data`.
        auth: String,
        /// A JSON string with at least `id`.
        user_data: String,
    },
    /// `pusher:resume` (`sockudo:resume`): a reconnected client asks for what it missed; the
    /// data as sent, read by [`super::recovery::parse_resume`].
    Resume {
        /// `channel_positions` and/or the legacy `channel_serials`.
        data: Value,
    },
    /// A `client-` event.
    ClientEvent {
        /// The event name.
        event: String,
        /// The channel.
        channel: String,
        /// The data, as sent.
        data: Value,
    },
}

/// A subscription's `delta` field: `true`, `false`, an algorithm name, `"disabled"`, or
/// `{"enabled": bool, "algorithm": name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaRequest {
    /// No deltas on this channel, whatever the connection asked.
    Off,
    /// Deltas, in the algorithm named if the server has it.
    On(Option<String>),
}

impl DeltaRequest {
    fn parse(value: &Value) -> Result<Option<Self>, ParseError> {
        let invalid =
            || ParseError::InvalidField { event: "pusher:subscribe", field: "data.delta" };
        Ok(Some(match value {
            Value::Null => return Ok(None),
            Value::Bool(false) => Self::Off,
            Value::Bool(true) => Self::On(None),
            Value::String(name) if name.eq_ignore_ascii_case("disabled") => Self::Off,
            Value::String(name) => Self::On(Some(name.clone())),
            Value::Object(fields) => {
                let enabled = match fields.get("enabled") {
                    None | Some(Value::Null) => true,
                    Some(Value::Bool(enabled)) => *enabled,
                    Some(_) => return Err(invalid()),
                };
                let algorithm = match fields.get("algorithm") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(name)) => Some(name.clone()),
                    Some(_) => return Err(invalid()),
                };
                if enabled { Self::On(algorithm) } else { Self::Off }
            }
            _ => return Err(invalid()),
        }))
    }
}

/// Why a message was not understood; sent back as `pusher:error` 4300.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, or not an object with an `event`.
    #[error("the message is not a JSON object with an event name: {0}")]
    Malformed(String),
    /// An event the server does not know.
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
    /// A known event without a field it needs.
    #[error("{event} needs {field}")]
    MissingField {
        /// The event.
        event: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A known event with a field of the wrong shape.
    #[error("{event} has an invalid {field}")]
    InvalidField {
        /// The event.
        event: &'static str,
        /// The field.
        field: &'static str,
    },
}

#[derive(Deserialize)]
struct Raw {
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    channel: Option<String>,
}

/// Parse one text frame.
pub fn parse(text: &str) -> Result<ClientMessage, ParseError> {
    let mut raw: Raw =
        serde_json::from_str(text).map_err(|e| ParseError::Malformed(e.to_string()))?;
    // Protocol 2 (Sockudo's) names the same events `sockudo:`; any connection may use either.
    if let Some(rest) = raw.event.strip_prefix("sockudo:") {
        raw.event = format!("pusher:{rest}");
    }
    // Some clients encode `data` as a JSON string; accept both.
    let data = match raw.data {
        Value::String(s) if raw.event.starts_with("pusher:") => {
            serde_json::from_str(&s).unwrap_or(Value::String(s))
        }
        other => other,
    };
    let field = |name: &str| data.get(name).and_then(Value::as_str).map(str::to_string);
    match raw.event.as_str() {
        "pusher:ping" => Ok(ClientMessage::Ping),
        "pusher:pong" => Ok(ClientMessage::Pong),
        "pusher:subscribe" => Ok(ClientMessage::Subscribe {
            channel: field("channel").ok_or(ParseError::MissingField {
                event: "pusher:subscribe",
                field: "data.channel",
            })?,
            auth: field("auth"),
            channel_data: field("channel_data"),
            // A null filter is none.
            filter: ["filter", "tags_filter"]
                .iter()
                .filter_map(|name| data.get(*name))
                .find(|f| !f.is_null())
                .cloned(),
            delta: data.get("delta").map(DeltaRequest::parse).transpose()?.flatten(),
            rewind: data.get("rewind").filter(|r| !r.is_null()).cloned(),
        }),
        "pusher:enable_delta_compression" => Ok(ClientMessage::EnableDeltaCompression {
            // Anything but a list of names names none.
            algorithms: data
                .get("algorithms")
                .and_then(Value::as_array)
                .map(|names| {
                    names.iter().filter_map(Value::as_str).take(8).map(str::to_string).collect()
                })
                .unwrap_or_default(),
        }),
        "pusher:delta_sync_error" => Ok(ClientMessage::DeltaSyncError {
            channel: field("channel").ok_or(ParseError::MissingField {
                event: "pusher:delta_sync_error",
                field: "data.channel",
            })?,
        }),
        "pusher:unsubscribe" => Ok(ClientMessage::Unsubscribe {
            channel: field("channel").ok_or(ParseError::MissingField {
                event: "pusher:unsubscribe",
                field: "data.channel",
            })?,
        }),
        "pusher:signin" => Ok(ClientMessage::Signin {
            auth: field("auth")
                .ok_or(ParseError::MissingField { event: "pusher:signin", field: "data.auth" })?,
            user_data: field("user_data").ok_or(ParseError::MissingField {
                event: "pusher:signin",
                field: "data.user_data",
            })?,
        }),
        "pusher:resume" => Ok(ClientMessage::Resume { data }),
        event if event.starts_with("client-") => Ok(ClientMessage::ClientEvent {
            channel: raw
                .channel
                .ok_or(ParseError::MissingField { event: "client event", field: "channel" })?,
            event: raw.event,
            data,
        }),
        _ => Err(ParseError::UnknownEvent(raw.event)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_client_events() {
        assert_eq!(parse(r#"{"event":"pusher:ping","data":{}}"#), Ok(ClientMessage::Ping));
        assert_eq!(
            parse(
                r#"{"event":"pusher:subscribe","data":{"channel":"presence-a","auth":"k:s","channel_data":"{}"}}"#
            ),
            Ok(ClientMessage::Subscribe {
                channel: "presence-a".into(),
                auth: Some("k:s".into()),
                channel_data: Some("{}".into()),
                filter: None,
                delta: None,
                rewind: None
            })
        );
        assert_eq!(
            parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(ClientMessage::Subscribe {
                channel: "a".into(),
                auth: None,
                channel_data: None,
                filter: None,
                delta: None,
                rewind: None
            })
        );
        assert_eq!(
            parse(r#"{"event":"client-x","channel":"private-a","data":{"n":1}}"#),
            Ok(ClientMessage::ClientEvent {
                event: "client-x".into(),
                channel: "private-a".into(),
                data: serde_json::json!({"n": 1})
            })
        );
    }

    #[test]
    fn parses_the_delta_requests() {
        let delta = |d: &str| {
            let text =
                format!(r#"{{"event":"sockudo:subscribe","data":{{"channel":"a","delta":{d}}}}}"#);
            match parse(&text) {
                Ok(ClientMessage::Subscribe { delta, .. }) => Ok(delta),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        };
        assert_eq!(delta("true"), Ok(Some(DeltaRequest::On(None))));
        assert_eq!(delta("false"), Ok(Some(DeltaRequest::Off)));
        assert_eq!(delta("null"), Ok(None));
        assert_eq!(delta(r#""xdelta3""#), Ok(Some(DeltaRequest::On(Some("xdelta3".into())))));
        assert_eq!(delta(r#""disabled""#), Ok(Some(DeltaRequest::Off)));
        assert_eq!(
            delta(r#"{"enabled":true,"algorithm":"fossil"}"#),
            Ok(Some(DeltaRequest::On(Some("fossil".into()))))
        );
        assert_eq!(delta(r#"{"enabled":false}"#), Ok(Some(DeltaRequest::Off)));
        assert!(matches!(delta("7"), Err(ParseError::InvalidField { .. })));
        assert!(matches!(delta(r#"{"enabled":"yes"}"#), Err(ParseError::InvalidField { .. })));
        assert_eq!(
            parse(
                r#"{"event":"pusher:enable_delta_compression","data":{"algorithms":["xdelta3",1]}}"#
            ),
            Ok(ClientMessage::EnableDeltaCompression { algorithms: vec!["xdelta3".into()] })
        );
        assert_eq!(
            parse(r#"{"event":"sockudo:delta_sync_error","data":{"channel":"c"}}"#),
            Ok(ClientMessage::DeltaSyncError { channel: "c".into() })
        );
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert!(matches!(parse("not json"), Err(ParseError::Malformed(_))));
        assert!(matches!(parse(r#"{"data":{}}"#), Err(ParseError::Malformed(_))));
        assert_eq!(
            parse(r#"{"event":"pusher:nope"}"#),
            Err(ParseError::UnknownEvent("pusher:nope".into()))
        );
        assert_eq!(
            parse(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(ParseError::MissingField { event: "pusher:subscribe", field: "data.channel" })
        );
        assert!(matches!(
            parse(r#"{"event":"client-x","data":{}}"#),
            Err(ParseError::MissingField { .. })
        ));
    }
}

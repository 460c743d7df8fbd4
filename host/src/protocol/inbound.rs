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
                filter: None
            })
        );
        assert_eq!(
            parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(ClientMessage::Subscribe {
                channel: "a".into(),
                auth: None,
                channel_data: None,
                filter: None
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

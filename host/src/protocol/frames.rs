//! The frames the server sends, serialized once each: a broadcast's frame is built once and the
//! same bytes go to every recipient.

use serde::Serialize;
use serde_json::Value;

/// How a connection names the server's events: Pusher's protocol (`pusher:`,
/// `pusher_internal:`), or Sockudo's protocol 2 (`?protocol=2`: `sockudo:`,
/// `sockudo_internal:`). Frames are built once in Pusher's names (a broadcast's bytes are
/// shared by sockets of either kind) and renamed for a protocol-2 socket as they are written;
/// the app's own events are never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Protocol 5 to 7.
    Pusher,
    /// Sockudo's protocol 2.
    V2,
}

impl Dialect {
    /// The dialect the `protocol` query parameter asks for.
    pub fn of(protocol: Option<&str>) -> Self {
        if protocol == Some("2") { Self::V2 } else { Self::Pusher }
    }

    /// `frame` renamed for this dialect, when it needs to be. Every frame begins with its
    /// event (the private `Frame` serializes it first), so only that name is looked at.
    pub fn rename(self, frame: &str) -> Option<String> {
        if self == Self::Pusher {
            return None;
        }
        let rest = frame.strip_prefix(r#"{"event":"pusher"#)?;
        if rest.starts_with(':') || rest.starts_with("_internal:") {
            Some(format!(r#"{{"event":"sockudo{rest}"#))
        } else {
            None
        }
    }
}

fn to_text<T: Serialize>(frame: &T) -> String {
    // Serializing these plain structs of strings and numbers cannot fail.
    serde_json::to_string(frame).expect("a frame serializes")
}

#[derive(Serialize)]
struct Frame<'a, D: Serialize> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: D,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

fn frame<D: Serialize>(event: &str, channel: Option<&str>, data: D) -> String {
    to_text(&Frame { event, channel, data, user_id: None })
}

/// `pusher:connection_established`; its data is a JSON string, as the protocol wants.
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    let data = to_text(&serde_json::json!({
        "socket_id": socket_id,
        "activity_timeout": activity_timeout_secs,
    }));
    frame("pusher:connection_established", None, data)
}

/// `pusher:error` with a code.
pub fn error(code: u16, message: &str) -> String {
    frame("pusher:error", None, serde_json::json!({ "code": code, "message": message }))
}

/// `pusher:pong`.
pub fn pong() -> String {
    frame("pusher:pong", None, serde_json::json!({}))
}

/// `pusher:ping`, sent after a silence.
pub fn ping() -> String {
    frame("pusher:ping", None, serde_json::json!({}))
}

/// `pusher_internal:subscription_succeeded` for a channel without members.
pub fn subscription_succeeded(channel: &str) -> String {
    frame("pusher_internal:subscription_succeeded", Some(channel), "{}")
}

/// `pusher_internal:subscription_succeeded` for a presence channel.
pub fn presence_subscription_succeeded(
    channel: &str,
    members: &mut dyn Iterator<Item = (&str, &Value)>,
) -> String {
    let mut ids = Vec::new();
    let mut hash = serde_json::Map::new();
    for (id, info) in members {
        ids.push(Value::String(id.to_string()));
        hash.insert(id.to_string(), info.clone());
    }
    let count = ids.len();
    let data = to_text(&serde_json::json!({
        "presence": { "ids": ids, "hash": hash, "count": count }
    }));
    frame("pusher_internal:subscription_succeeded", Some(channel), data)
}

/// `pusher:subscription_error`, which pusher-js surfaces as the channel's error event.
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    frame(
        "pusher:subscription_error",
        Some(channel),
        serde_json::json!({ "type": kind, "error": error, "status": status }),
    )
}

/// `pusher_internal:member_added`.
pub fn member_added(channel: &str, user_id: &str, user_info: &Value) -> String {
    let data = to_text(&serde_json::json!({ "user_id": user_id, "user_info": user_info }));
    frame("pusher_internal:member_added", Some(channel), data)
}

/// `pusher_internal:member_removed`.
pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = to_text(&serde_json::json!({ "user_id": user_id }));
    frame("pusher_internal:member_removed", Some(channel), data)
}

/// An event on a channel: `data` as given (a string from the HTTP API; whatever JSON a client
/// sent for client events), and `user_id` for client events on presence channels.
pub fn channel_event(event: &str, channel: &str, data: &Value, user_id: Option<&str>) -> String {
    to_text(&Frame { event, channel: Some(channel), data, user_id })
}

/// `pusher:signin_success`, echoing the signed user data.
pub fn signin_success(user_data: &str) -> String {
    let data = to_text(&serde_json::json!({ "user_data": user_data }));
    frame("pusher:signin_success", None, data)
}

/// `pusher:cache_miss`: a cache channel had nothing to replay.
pub fn cache_miss(channel: &str) -> String {
    frame("pusher:cache_miss", Some(channel), "{}")
}

/// `pusher_internal:subscription_count`.
pub fn subscription_count(channel: &str, count: usize) -> String {
    let data = to_text(&serde_json::json!({ "subscription_count": count }));
    frame("pusher_internal:subscription_count", Some(channel), data)
}

/// `pusher_internal:watchlist_events` with one event: `online` or `offline` for `user_ids`.
pub fn watchlist_event(name: &str, user_ids: &[String]) -> String {
    let data = to_text(&serde_json::json!({ "events": [{ "name": name, "user_ids": user_ids }] }));
    frame("pusher_internal:watchlist_events", None, data)
}

/// An event frame with the delta members appended (a full frame on a delta stream):
/// `,"__delta_seq":N` and, on a conflated stream, `,"__conflation_key":"K"`. Appended as the
/// last members so that a client strips them byte for byte and keeps the frame the next delta
/// is computed against.
pub fn with_delta_seq(frame: &str, seq: u64, conflation_key: Option<&str>) -> String {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    let mut out = String::with_capacity(frame.len() + 48);
    out.push_str(body);
    out.push_str(r#","__delta_seq":"#);
    out.push_str(&seq.to_string());
    if let Some(key) = conflation_key {
        out.push_str(r#","__conflation_key":"#);
        out.push_str(&to_text(&key));
    }
    out.push('}');
    out
}

/// The data of a `pusher:delta` frame.
#[derive(Debug, Serialize)]
pub struct DeltaData<'a> {
    /// The event the delta rebuilds.
    pub event: &'a str,
    /// The delta, base64.
    pub delta: String,
    /// The rebuilt frame's seq.
    pub seq: u64,
    /// The algorithm, unless the server omits it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<&'a str>,
    /// The stream's conflation key, on conflated streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflation_key: Option<&'a str>,
    /// The seq of the frame the delta applies to.
    pub base_index: u64,
}

/// `pusher:delta` (`sockudo:delta` on protocol 2): an event as a delta.
pub fn delta(channel: &str, data: &DeltaData<'_>) -> String {
    frame("pusher:delta", Some(channel), data)
}

/// `pusher:delta_compression_enabled`, the answer to `enable_delta_compression`: the
/// algorithm granted, or `{"enabled":false}` where the server grants none.
pub fn delta_compression_enabled(algorithm: Option<&str>) -> String {
    let data = match algorithm {
        Some(algorithm) => serde_json::json!({ "enabled": true, "algorithm": algorithm }),
        None => serde_json::json!({ "enabled": false }),
    };
    frame("pusher:delta_compression_enabled", None, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_protocol_shape() {
        assert_eq!(
            connection_established("1.2", 120),
            r#"{"event":"pusher:connection_established","data":"{\"activity_timeout\":120,\"socket_id\":\"1.2\"}"}"#
        );
        assert_eq!(
            error(4301, "no"),
            r#"{"event":"pusher:error","data":{"code":4301,"message":"no"}}"#
        );
        assert_eq!(
            subscription_succeeded("a"),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"a","data":"{}"}"#
        );
        let info = serde_json::json!({"name": "x"});
        assert_eq!(
            presence_subscription_succeeded("presence-a", &mut [("1", &info)].into_iter()),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-a","data":"{\"presence\":{\"count\":1,\"hash\":{\"1\":{\"name\":\"x\"}},\"ids\":[\"1\"]}}"}"#
        );
        assert_eq!(
            channel_event("e", "c", &Value::String("d".into()), Some("u")),
            r#"{"event":"e","channel":"c","data":"d","user_id":"u"}"#
        );
    }

    #[test]
    fn protocol_two_renames_the_servers_events_only() {
        let v2 = Dialect::V2;
        assert_eq!(v2.rename(&pong()).unwrap(), r#"{"event":"sockudo:pong","data":{}}"#);
        let ack = subscription_succeeded("c");
        assert!(
            v2.rename(&ack)
                .unwrap()
                .starts_with(r#"{"event":"sockudo_internal:subscription_succeeded""#)
        );
        let app_event = channel_event("pusherish", "c", &Value::String("d".into()), None);
        assert_eq!(v2.rename(&app_event), None);
        assert_eq!(Dialect::Pusher.rename(&pong()), None);
        assert_eq!(Dialect::of(Some("2")), Dialect::V2);
        assert_eq!(Dialect::of(Some("7")), Dialect::Pusher);
    }
}

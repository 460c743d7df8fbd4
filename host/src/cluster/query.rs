//! The questions one node asks the others, and their answers: closed types on both sides,
//! sent as JSON tagged by `kind` (the format of earlier builds, so nodes of both can share a
//! bus during a rolling upgrade). A question this build does not know is answered with an
//! error, and an answer that does not read as its type is left out, never trusted.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

/// A question for every other node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Query {
    /// A channel's subscribers on the node: [`ChannelCount`].
    Channel {
        /// The app.
        app: String,
        /// The channel.
        channel: String,
    },
    /// The node's occupied channels starting with `prefix`: [`ChannelList`].
    Channels {
        /// The app.
        app: String,
        /// The prefix of the names.
        prefix: String,
    },
    /// Close a user's connections on the node with `code`: [`Closed`].
    Terminate {
        /// The app.
        app: String,
        /// The user.
        user: String,
        /// The close code.
        code: u16,
    },
    /// Which of `ids` are signed in on the node: [`Online`]. Nodes of this build answer
    /// watchlists from replicated sign-ins and no longer ask; older nodes may.
    Online {
        /// The app.
        app: String,
        /// The users.
        ids: Vec<String>,
    },
    /// The node's figures for the app's debug console (answered by the host).
    Figures {
        /// The app.
        app: String,
    },
}

impl Query {
    /// The question a peer sent, or why it cannot be answered.
    pub(crate) fn read(value: &Value) -> Result<Self, String> {
        Self::deserialize(value).map_err(|e| format!("unknown or malformed request: {e}"))
    }

    /// The question as it goes on the bus.
    pub(crate) fn to_value(&self) -> Value {
        // Serializing a plain enum of strings and numbers cannot fail.
        serde_json::to_value(self).expect("a query serializes")
    }
}

/// The answer to [`Query::Channel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChannelCount {
    /// Subscribers on the answering node.
    pub subscription_count: usize,
}

/// The answer to [`Query::Channels`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChannelList {
    /// (name, subscribers) on the answering node.
    pub channels: Vec<(String, usize)>,
}

/// The answer to [`Query::Terminate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Closed {
    /// Connections closed on the answering node.
    pub closed: usize,
}

/// The answer to [`Query::Online`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Online {
    /// The users signed in on the answering node.
    pub online: Vec<String>,
}

/// An answer as it goes on the bus.
pub(crate) fn answer_value<T: Serialize>(answer: &T) -> Value {
    // The answers are plain structs of strings and numbers.
    serde_json::to_value(answer).expect("an answer serializes")
}

/// The answers that read as `T`; the others (a peer's error, a forged or garbled answer) are
/// left out.
pub(crate) fn parse<T: DeserializeOwned>(answers: &[Value]) -> impl Iterator<Item = T> + '_ {
    answers.iter().filter_map(|a| T::deserialize(a).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_keep_the_wire_format_of_earlier_builds() {
        let query = Query::Terminate { app: "a".into(), user: "u".into(), code: 4009 };
        assert_eq!(
            query.to_value(),
            serde_json::json!({ "kind": "terminate", "app": "a", "user": "u", "code": 4009 })
        );
        let channels = serde_json::json!({ "kind": "channels", "app": "a", "prefix": "p-" });
        assert_eq!(
            Query::read(&channels),
            Ok(Query::Channels { app: "a".into(), prefix: "p-".into() })
        );
        assert!(Query::read(&serde_json::json!({ "kind": "shutdown" })).is_err());
        assert!(Query::read(&serde_json::json!({ "kind": "channel", "app": 1 })).is_err());
    }

    #[test]
    fn answers_that_do_not_read_are_left_out() {
        let answers = [
            serde_json::json!({ "subscription_count": 3 }),
            serde_json::json!({ "subscription_count": "many" }),
            serde_json::json!({ "error": "unknown" }),
            answer_value(&ChannelCount { subscription_count: 4 }),
        ];
        let counts: Vec<usize> =
            parse::<ChannelCount>(&answers).map(|c| c.subscription_count).collect();
        assert_eq!(counts, [3, 4]);
        let list = answer_value(&ChannelList { channels: vec![("c".into(), 2)] });
        assert_eq!(list, serde_json::json!({ "channels": [["c", 2]] }));
    }
}

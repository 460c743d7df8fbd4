//! Webhook events as Pusher sends them: their kinds, as endpoints name them in `event_types`,
//! and each event with its fields.

use serde::Serialize;

/// A kind of webhook event, as endpoints name them in `event_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
    CacheMiss,
    SubscriptionCount,
}

impl Kind {
    /// Every kind.
    pub(crate) const ALL: [Self; 7] = [
        Self::ChannelOccupied,
        Self::ChannelVacated,
        Self::MemberAdded,
        Self::MemberRemoved,
        Self::ClientEvent,
        Self::CacheMiss,
        Self::SubscriptionCount,
    ];

    /// The name on the wire and in `event_types`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
            Self::ClientEvent => "client_event",
            Self::CacheMiss => "cache_miss",
            Self::SubscriptionCount => "subscription_count",
        }
    }

    /// The kind `name` names.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A webhook event with its fields, serialized as Pusher sends it (`name` and the fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub(crate) enum Hook {
    ChannelOccupied {
        channel: String,
    },
    ChannelVacated {
        channel: String,
    },
    MemberAdded {
        channel: String,
        user_id: String,
    },
    MemberRemoved {
        channel: String,
        user_id: String,
    },
    ClientEvent {
        channel: String,
        event: String,
        /// The event data as text (a client's JSON re-encoded when it was not a string).
        data: String,
        socket_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    CacheMiss {
        channel: String,
    },
    SubscriptionCount {
        channel: String,
        subscription_count: usize,
    },
}

impl Hook {
    /// Its kind.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Self::ChannelOccupied { .. } => Kind::ChannelOccupied,
            Self::ChannelVacated { .. } => Kind::ChannelVacated,
            Self::MemberAdded { .. } => Kind::MemberAdded,
            Self::MemberRemoved { .. } => Kind::MemberRemoved,
            Self::ClientEvent { .. } => Kind::ClientEvent,
            Self::CacheMiss { .. } => Kind::CacheMiss,
            Self::SubscriptionCount { .. } => Kind::SubscriptionCount,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hooks_serialize_as_pusher_sends_them_and_kinds_round_trip() {
        let hook = Hook::ClientEvent {
            channel: "private-a".into(),
            event: "client-x".into(),
            data: "{}".into(),
            socket_id: "1.2".into(),
            user_id: None,
        };
        assert_eq!(
            serde_json::to_value(&hook).unwrap(),
            json!({ "name": "client_event", "channel": "private-a", "event": "client-x",
                    "data": "{}", "socket_id": "1.2" })
        );
        let count = Hook::SubscriptionCount { channel: "c".into(), subscription_count: 3 };
        assert_eq!(
            serde_json::to_value(&count).unwrap(),
            json!({ "name": "subscription_count", "channel": "c", "subscription_count": 3 })
        );
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()), Some(kind));
        }
        assert_eq!(Kind::parse("channel_exploded"), None);
    }
}

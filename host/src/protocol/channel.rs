//! Channel names and what their prefixes mean.

/// What a channel's prefix makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// No auth.
    Public,
    /// `private-`: auth over `socket_id:channel`.
    Private,
    /// `private-encrypted-`: auth as private; payloads end-to-end encrypted; no client events.
    PrivateEncrypted,
    /// `presence-`: auth over `socket_id:channel:channel_data`; members.
    Presence,
}

impl ChannelKind {
    /// The kind of `name`, from its prefix (cache variants take the kind they wrap).
    pub fn of(name: &str) -> Self {
        if name.starts_with("private-encrypted-") {
            Self::PrivateEncrypted
        } else if name.starts_with("private-") {
            Self::Private
        } else if name.starts_with("presence-") {
            Self::Presence
        } else {
            Self::Public
        }
    }

    /// Whether subscribing needs a signature.
    pub fn needs_auth(self) -> bool {
        !matches!(self, Self::Public)
    }
}

/// Whether `name` is a cache channel (`cache-`, `private-cache-`, `presence-cache-`,
/// `private-encrypted-cache-`): its last event is kept and replayed to new subscribers.
pub fn is_cache(name: &str) -> bool {
    ["cache-", "private-cache-", "presence-cache-", "private-encrypted-cache-"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The prefix of the channel that addresses one signed-in user's connections.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// The longest user id (the Pusher limit), for presence members, sign-ins and
/// `#server-to-user-` channels.
pub const MAX_USER_ID_LENGTH: usize = 128;

/// A user id as the client wrote it: a non-empty string, or a number kept as its JSON text
/// (`-0` and `1e308` stay what they were, never rewritten by a float round trip). `None` for
/// anything else.
pub fn user_id(raw: &serde_json::value::RawValue) -> Option<String> {
    let text = raw.get();
    if text.starts_with('"') {
        return serde_json::from_str::<String>(text).ok().filter(|id| !id.is_empty());
    }
    serde_json::from_str::<serde_json::Number>(text).ok().map(|_| text.to_string())
}

/// Why a channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty.
    #[error("the channel name is empty")]
    Empty,
    /// Over the limit.
    #[error("the channel name is {len} characters long; the limit is {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character outside `A-Z a-z 0-9 _ - = @ , . ;`.
    #[error("the channel name contains {0:?}; only letters, digits and _-=@,.; are allowed")]
    BadCharacter(char),
}

/// Check a channel name a client or API caller gave.
pub fn validate(name: &str, max_len: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let len = name.chars().count();
    if len > max_len {
        return Err(NameError::TooLong { len, max: max_len });
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_-=@,.;".contains(*c))) {
        Some(c) => Err(NameError::BadCharacter(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_prefix() {
        let cases = [
            ("chat", ChannelKind::Public),
            ("cache-chat", ChannelKind::Public),
            ("private-chat", ChannelKind::Private),
            ("private-cache-chat", ChannelKind::Private),
            ("private-encrypted-chat", ChannelKind::PrivateEncrypted),
            ("private-encrypted-cache-chat", ChannelKind::PrivateEncrypted),
            ("presence-room", ChannelKind::Presence),
            ("presence-cache-room", ChannelKind::Presence),
            ("privatechat", ChannelKind::Public),
        ];
        for (name, kind) in cases {
            assert_eq!(ChannelKind::of(name), kind, "{name}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(validate("private-a_b-c=d@e,f.g;h", 200), Ok(()));
        assert_eq!(validate("", 200), Err(NameError::Empty));
        assert_eq!(validate("abc", 2), Err(NameError::TooLong { len: 3, max: 2 }));
        assert_eq!(validate("a b", 200), Err(NameError::BadCharacter(' ')));
        assert_eq!(validate("#server-to-user-1", 200), Err(NameError::BadCharacter('#')));
        assert_eq!(validate("é", 200), Err(NameError::BadCharacter('é')));
    }
}

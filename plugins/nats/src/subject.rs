//! Topics as NATS subjects.
//!
//! A topic carries a Pusher channel name, which may hold `.`, `*`, `>` and other characters
//! NATS gives meaning to (token separator, wildcards) or refuses (white space). Every byte
//! outside a plain set is written as `%XX`, so each topic is exactly one subject token after
//! the prefix, distinct topics stay distinct, and the mapping reverses.

/// Bytes kept as they are: letters, digits, and punctuation NATS treats as plain.
fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(byte, b'-' | b'_' | b':' | b'#' | b'@' | b'=' | b',' | b';' | b'+' | b'!')
}

/// The subject for `topic` under `prefix`.
pub fn encode(prefix: &str, topic: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + topic.len() + 8);
    subject.push_str(prefix);
    for &byte in topic.as_bytes() {
        if plain(byte) {
            subject.push(char::from(byte));
        } else {
            subject.push('%');
            subject.push_str(&format!("{byte:02X}"));
        }
    }
    subject
}

/// The topic of `subject`, if it is one of ours. (Each subscription knows its topic, so
/// only tests need the way back; it shows the mapping loses nothing.)
#[cfg(test)]
pub fn decode(prefix: &str, subject: &str) -> Option<String> {
    let encoded = subject.strip_prefix(prefix)?.as_bytes();
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        if encoded[i] == b'%' {
            let hex = std::str::from_utf8(encoded.get(i + 1..i + 3)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(encoded[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_become_one_legal_token_and_come_back() {
        for topic in [
            "#broadcast:app-1:private-chat.room.1",
            "#broadcast:app:a*b>c d",
            "#node:42",
            "#control",
            "#broadcast:app:ünïcode%",
        ] {
            let subject = encode("sockudo_adapter:", topic);
            assert!(
                !subject.contains(['.', '*', '>', ' ']) && subject.is_ascii(),
                "{topic} -> {subject}"
            );
            assert_eq!(decode("sockudo_adapter:", &subject).as_deref(), Some(topic));
        }
        assert_ne!(encode("p", "a.b"), encode("p", "a%2Eb"));
    }

    #[test]
    fn foreign_subjects_are_not_ours() {
        assert_eq!(decode("mine:", "theirs:x"), None);
        assert_eq!(decode("mine:", "mine:%Z"), None);
    }
}

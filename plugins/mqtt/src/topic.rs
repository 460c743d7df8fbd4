//! Topics as MQTT topic names.
//!
//! A sockhost topic carries a Pusher channel name, which may hold `/` (MQTT's level
//! separator), `#` and `+` (wildcards, forbidden in names), `$` (the broker's own topics when
//! first) and more. Every byte outside a plain set is written as `%XX`, so each topic is one
//! level under the prefix, distinct topics stay distinct, and the mapping reverses.

/// Bytes kept as they are.
fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(byte, b'-' | b'_' | b'=' | b'@' | b',' | b'.' | b';' | b':')
}

/// The topic name for `topic` under `prefix`.
pub fn encode(prefix: &str, topic: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + 1 + topic.len() * 3);
    name.push_str(prefix);
    name.push('/');
    for &byte in topic.as_bytes() {
        if plain(byte) {
            name.push(char::from(byte));
        } else {
            name.push('%');
            name.push_str(&format!("{byte:02X}"));
        }
    }
    name
}

/// The topic of `name`, if it is one of ours under `prefix`.
pub fn decode(prefix: &str, name: &[u8]) -> Option<String> {
    let rest = name.strip_prefix(prefix.as_bytes())?.strip_prefix(b"/")?;
    let mut out = Vec::with_capacity(rest.len());
    let mut bytes = rest.iter();
    while let Some(&byte) = bytes.next() {
        if byte == b'%' {
            let high = char::from(*bytes.next()?).to_digit(16)?;
            let low = char::from(*bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            out.push(byte);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awkward_topics_round_trip_as_one_level() {
        for topic in
            ["#broadcast:app:a/b+c#d$e%f", "#server-to-user-42", "$SYS/x", "é ü", "#control"]
        {
            let name = encode("p", topic);
            assert!(!name[2..].contains(['/', '#', '+', '$']), "{name}");
            assert_eq!(decode("p", name.as_bytes()).as_deref(), Some(topic));
        }
        assert_eq!(decode("p", b"other/x"), None);
    }
}

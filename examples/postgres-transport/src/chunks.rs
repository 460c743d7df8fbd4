//! Messages as NOTIFY payloads: base64 text in chunks under PostgreSQL's 8000-byte limit, and
//! their reassembly.

use std::collections::HashMap;

use base64::{Engine as _, engine::general_purpose::STANDARD};

/// Base64 characters per notification (the header adds a few dozen more).
pub const CHUNK: usize = 7000;

/// The notification payloads of one message, in order.
pub fn split(id: &str, payload: &[u8]) -> Vec<String> {
    let text = STANDARD.encode(payload);
    let count = text.len().div_ceil(CHUNK).max(1);
    (0..count)
        .map(|i| {
            let part = &text[(i * CHUNK).min(text.len())..((i + 1) * CHUNK).min(text.len())];
            format!("{id}:{}/{count}:{part}", i + 1)
        })
        .collect()
}

/// Messages whose chunks are still arriving, by channel and message id.
#[derive(Debug, Default)]
pub struct Reassembly {
    partial: HashMap<(String, String), Vec<String>>,
}

impl Reassembly {
    /// Take one notification; the whole message once its last chunk is in. A notification
    /// that is not ours (or is damaged) is ignored.
    pub fn take(&mut self, channel: &str, text: &str) -> Option<Vec<u8>> {
        let mut fields = text.splitn(3, ':');
        let (id, position, part) = (fields.next()?, fields.next()?, fields.next()?);
        let (index, count) = position.split_once('/')?;
        let (index, count): (usize, usize) = (index.parse().ok()?, count.parse().ok()?);
        if count == 1 {
            return STANDARD.decode(part).ok();
        }
        let key = (channel.to_string(), id.to_string());
        let parts = self.partial.entry(key.clone()).or_default();
        if index != parts.len() + 1 {
            // Out of order cannot happen within one transaction; a gap means a lost connection.
            self.partial.remove(&key);
            return None;
        }
        parts.push(part.to_string());
        if parts.len() < count {
            return None;
        }
        let whole = self.partial.remove(&key)?.concat();
        STANDARD.decode(whole).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_message_goes_in_chunks_under_the_limit_and_comes_back() {
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let parts = split("n1-7", &payload);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.len() < 8000));
        let mut reassembly = Reassembly::default();
        let mut out = None;
        for part in &parts {
            out = reassembly.take("c", part);
        }
        assert_eq!(out.as_deref(), Some(payload.as_slice()));
        assert_eq!(reassembly.take("c", &split("n1-8", b"")[0]).as_deref(), Some(&b""[..]));
    }
}

//! The authenticated bus: envelopes sealed with the cluster secret.
//!
//! Anyone who can write to the broker that carries the bus could otherwise act as a node. With
//! `adapter.cluster_secret` set, every envelope goes out sealed: a marker byte, the sending
//! time, and an HMAC-SHA256 over both and the envelope, computed once per publish and checked
//! once per receiving node (never per socket). A receiver refuses a message without a valid
//! tag, one sent outside [`WINDOW`] of its own clock, and one whose sender sequence number it
//! has seen already or that is more than [`REPLAY_SPAN`] behind the sender's newest: a replay.
//!
//! The marker is never a plain envelope's version byte, so a node without the secret refuses
//! sealed messages as unreadable instead of misreading them; nodes with different secrets
//! never act on each other's messages.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The first byte of a sealed message (plain envelopes start with their version, 1).
pub(crate) const SEALED: u8 = 0xA5;
/// How far a message's sending time may be from the receiver's clock.
pub(crate) const WINDOW: Duration = Duration::from_secs(15);
/// How many sequence numbers behind a sender's newest a message may arrive (messages on
/// different topics may overtake each other) before it is taken for a replay.
pub(crate) const REPLAY_SPAN: u64 = 65_536;

const TAG: usize = 32;
/// The length of a sealed message's header: marker, sending time and tag.
pub(crate) const HEADER: usize = 1 + 8 + TAG;

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not sealed (or cut short).
    #[error("the message is not sealed with the cluster secret")]
    Missing,
    /// The tag does not match: another secret, or altered on the way.
    #[error("the message's tag does not match the cluster secret")]
    Tag,
    /// Sent too long ago, or in the future, by the receiver's clock.
    #[error("the message was sent outside the accepted time window")]
    Stale,
    /// Its sequence number was seen already, or is too far behind.
    #[error("the message replays one seen before")]
    Replay,
}

impl SealError {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Tag => "tag",
            Self::Stale => "stale",
            Self::Replay => "replay",
        }
    }
}

/// The sequence numbers seen from one sender: the newest, and which of the [`REPLAY_SPAN`]
/// before it arrived.
struct Seen {
    newest: u64,
    bits: Vec<u64>,
}

impl Seen {
    fn new(seq: u64) -> Self {
        let mut seen = Self { newest: seq, bits: vec![0; (REPLAY_SPAN / 64) as usize] };
        seen.set(seq);
        seen
    }

    fn slot(seq: u64) -> (usize, u64) {
        let at = seq % REPLAY_SPAN;
        ((at / 64) as usize, 1 << (at % 64))
    }

    fn set(&mut self, seq: u64) {
        let (word, bit) = Self::slot(seq);
        self.bits[word] |= bit;
    }

    fn is_set(&self, seq: u64) -> bool {
        let (word, bit) = Self::slot(seq);
        self.bits[word] & bit != 0
    }

    /// Record `seq`; false if it was seen or is too far behind.
    fn accept(&mut self, seq: u64) -> bool {
        if seq > self.newest {
            // Forget the slots the window moves past (all of them after a long jump).
            let advance = seq - self.newest;
            if advance >= REPLAY_SPAN {
                self.bits.fill(0);
            } else {
                for s in self.newest + 1..=seq {
                    let (word, bit) = Self::slot(s);
                    self.bits[word] &= !bit;
                }
            }
            self.newest = seq;
            self.set(seq);
            return true;
        }
        if self.newest - seq >= REPLAY_SPAN || self.is_set(seq) {
            return false;
        }
        self.set(seq);
        true
    }
}

/// Seals and opens envelopes with one cluster secret.
pub struct Seal {
    key: Hmac<Sha256>,
    /// Per sender and stream (broadcasts, control messages: opened on different tasks, so
    /// one must not push the other's window forward).
    seen: Mutex<HashMap<(u64, bool), Seen>>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal").finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch, by this machine's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Seal {
    /// A seal keyed by `secret`.
    pub fn new(secret: &str) -> Self {
        let key = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes a key of any length");
        Self { key, seen: Mutex::default() }
    }

    fn tag(&self, head: &[u8], envelope: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.key.clone();
        mac.update(head);
        mac.update(envelope);
        mac
    }

    /// `envelope`, sealed.
    pub fn seal(&self, envelope: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + envelope.len());
        out.push(SEALED);
        out.extend_from_slice(&now_ms().to_be_bytes());
        let tag = self.tag(&out, envelope).finalize().into_bytes();
        out.extend_from_slice(&tag);
        out.extend_from_slice(envelope);
        out
    }

    /// The envelope inside a sealed message, if its tag and time are right.
    pub fn open<'a>(&self, message: &'a [u8]) -> Result<&'a [u8], SealError> {
        self.open_at(message, now_ms())
    }

    /// As [`Seal::open`], for a message received at `received` (milliseconds since the epoch):
    /// the time window is the message's on the wire, not how long it then waited here.
    pub fn open_at<'a>(&self, message: &'a [u8], received: u64) -> Result<&'a [u8], SealError> {
        if message.len() < HEADER || message[0] != SEALED {
            return Err(SealError::Missing);
        }
        let (head, rest) = message.split_at(9);
        let (tag, envelope) = rest.split_at(TAG);
        self.tag(head, envelope).verify_slice(tag).map_err(|_| SealError::Tag)?;
        let sent = u64::from_be_bytes(head[1..9].try_into().expect("8 bytes"));
        let window = u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX);
        if received.abs_diff(sent) > window {
            return Err(SealError::Stale);
        }
        Ok(envelope)
    }

    /// Record that `node` sent `seq` (on its control stream, or its broadcasts); a replay if
    /// it was seen before or is too far behind the newest of that stream.
    pub fn check_replay(&self, node: u64, control: bool, seq: u64) -> Result<(), SealError> {
        let mut seen = self.seen.lock().expect("seal lock");
        match seen.get_mut(&(node, control)) {
            Some(window) => window.accept(seq).then_some(()).ok_or(SealError::Replay),
            None => {
                seen.insert((node, control), Seen::new(seq));
                Ok(())
            }
        }
    }

    /// Forget a node that left or died.
    pub fn forget(&self, node: u64) {
        let mut seen = self.seen.lock().expect("seal lock");
        seen.remove(&(node, false));
        seen.remove(&(node, true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_envelope_opens_only_with_the_same_secret() {
        let seal = Seal::new("one secret");
        let sealed = seal.seal(b"envelope");
        assert_eq!(seal.open(&sealed), Ok(&b"envelope"[..]));
        assert_eq!(Seal::new("another").open(&sealed), Err(SealError::Tag));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(seal.open(&altered), Err(SealError::Tag));
        assert_eq!(seal.open(b"\x01plain envelope"), Err(SealError::Missing));
        assert_eq!(seal.open(&sealed[..HEADER - 1]), Err(SealError::Missing));
    }

    #[test]
    fn a_message_from_outside_the_window_is_stale() {
        let seal = Seal::new("s");
        let old = now_ms() - 2 * u64::try_from(WINDOW.as_millis()).unwrap();
        let mut head = vec![SEALED];
        head.extend_from_slice(&old.to_be_bytes());
        let tag = seal.tag(&head, b"e").finalize().into_bytes();
        let message = [head, tag.to_vec(), b"e".to_vec()].concat();
        assert_eq!(seal.open(&message), Err(SealError::Stale));
    }

    #[test]
    fn sequence_numbers_are_accepted_once_and_may_come_out_of_order() {
        let seal = Seal::new("s");
        for seq in [10, 12, 11, 13] {
            assert_eq!(seal.check_replay(7, false, seq), Ok(()), "{seq}");
        }
        assert_eq!(seal.check_replay(7, false, 12), Err(SealError::Replay));
        assert_eq!(seal.check_replay(8, false, 12), Ok(()), "another sender");
        assert_eq!(seal.check_replay(7, true, 12), Ok(()), "the sender's other stream");
        // Far ahead: the window moves; everything seen before is now too far behind, what was
        // never seen and is still inside the window is accepted once.
        assert_eq!(seal.check_replay(7, false, 13 + REPLAY_SPAN), Ok(()));
        assert_eq!(seal.check_replay(7, false, 13), Err(SealError::Replay));
        assert_eq!(seal.check_replay(7, false, 14), Ok(()));
        assert_eq!(seal.check_replay(7, false, 14), Err(SealError::Replay));
        seal.forget(7);
        assert_eq!(seal.check_replay(7, false, 12), Ok(()), "a forgotten sender starts afresh");
    }
}

//! What the history store keeps of an event: enough to deliver it again on any node (its id,
//! its frame without a position, its tags and the socket it leaves out). The store is another
//! system: what it answers is read as untrusted input, bounded before it is parsed.

use serde::{Deserialize, Serialize};

// The largest record read back from the store; anything larger is refused unread.
use crate::{plugins::MAX_RECORD_BYTES, protocol::filter::Tags};

/// One event as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The event's id (`message_id`), the same on every node and in every replay.
    #[serde(rename = "m")]
    pub message_id: String,
    /// The Pusher frame without its position.
    #[serde(rename = "f")]
    pub frame: String,
    /// The tags it was published with, when tag filtering judges it.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    /// The socket that must not get it.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
}

/// A record the store answered that this node will not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("a history record of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not a record.
    #[error("a history record is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl Record {
    /// The bytes the store keeps.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Strings and a map of strings always serialize.
        serde_json::to_vec(self).expect("a record serializes")
    }

    /// A record the store answered.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_hostile_ones_are_refused() {
        let record = Record {
            message_id: "m".into(),
            frame: r#"{"event":"e","channel":"c","data":"\"x\""}"#.into(),
            tags: Some(Tags::from([("k".into(), "v".into())])),
            except: None,
        };
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        assert!(matches!(Record::decode(b"{\"m\":1}"), Err(RecordError::Malformed(_))));
        let huge = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(matches!(Record::decode(&huge), Err(RecordError::TooLarge(_))));
    }
}

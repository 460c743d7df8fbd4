//! A client's side of delta compression, for tests: keeps the last frame of each stream and
//! rebuilds events from `pusher:delta` / `sockudo:delta` frames with the real decoders, so a
//! test compares what arrives with what was published.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::Value;

/// What one frame was.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A full event on a delta stream (`__delta_seq`), its members stripped.
    Full {
        /// The event frame as the client keeps it.
        event: Value,
        /// Its seq.
        seq: u64,
    },
    /// An event rebuilt from a delta.
    Delta {
        /// The rebuilt event frame.
        event: Value,
        /// Its seq.
        seq: u64,
        /// The algorithm named in the frame.
        algorithm: String,
        /// The delta frame's length against the rebuilt frame's.
        sizes: (usize, usize),
    },
    /// Any other frame, as sent.
    Plain(Value),
    /// A delta whose base the client does not hold: it should ask for a resync.
    MissingBase {
        /// The channel.
        channel: String,
    },
}

/// A client's delta state: each stream's last frame text and seq.
#[derive(Debug, Default)]
pub struct Decoder {
    bases: HashMap<(String, String, String), (u64, String)>,
}

impl Decoder {
    /// Read one text frame.
    ///
    /// # Panics
    /// If the frame is not JSON or a delta does not decode.
    pub fn receive(&mut self, text: &str) -> Frame {
        let frame: Value = serde_json::from_str(text).expect("a JSON frame");
        let channel = frame["channel"].as_str().unwrap_or_default().to_string();
        let event = frame["event"].as_str().unwrap_or_default();
        if event == "pusher:delta" || event == "sockudo:delta" {
            let data = &frame["data"];
            let key = (
                channel.clone(),
                data["event"].as_str().unwrap().to_string(),
                data["conflation_key"].as_str().unwrap_or_default().to_string(),
            );
            let Some((seq, base)) = self.bases.get(&key) else {
                return Frame::MissingBase { channel };
            };
            if Some(*seq) != data["base_index"].as_u64() {
                return Frame::MissingBase { channel };
            }
            let delta = base64::engine::general_purpose::STANDARD
                .decode(data["delta"].as_str().unwrap())
                .expect("base64");
            let algorithm = data["algorithm"].as_str().unwrap_or("fossil").to_string();
            let rebuilt = match algorithm.as_str() {
                "xdelta3" => oxidelta::engine::decode(base.as_bytes(), &delta).expect("VCDIFF"),
                _ => fossil_delta::apply(base, &delta).expect("a fossil delta"),
            };
            let rebuilt = String::from_utf8(rebuilt).expect("UTF-8");
            let seq = data["seq"].as_u64().unwrap();
            let event = serde_json::from_str(&rebuilt).expect("the rebuilt frame is JSON");
            let sizes = (text.len(), rebuilt.len());
            self.bases.insert(key, (seq, rebuilt));
            return Frame::Delta { event, seq, algorithm, sizes };
        }
        let Some(seq) = frame.get("__delta_seq").and_then(Value::as_u64) else {
            return Frame::Plain(frame);
        };
        let conflation = frame.get("__conflation_key").and_then(Value::as_str).unwrap_or_default();
        // The members are the frame's last: cut them off byte for byte.
        let at = text.rfind(r#","__delta_seq":"#).expect("the delta members come last");
        let plain = format!("{}}}", &text[..at]);
        let key = (channel, event.to_string(), conflation.to_string());
        self.bases.insert(key, (seq, plain.clone()));
        let event = serde_json::from_str(&plain).expect("the stripped frame is JSON");
        Frame::Full { event, seq }
    }

    /// Read one frame per entry of `datas` from `client`: each must be an event of a delta
    /// stream (whole or rebuilt) with that data. Answers their kinds, `F` whole, `d` delta.
    ///
    /// # Panics
    /// If a frame is something else or its data differs.
    pub async fn read_kinds<'a>(
        &mut self,
        client: &mut crate::pusher::Client,
        datas: impl IntoIterator<Item = &'a str>,
    ) -> String {
        let mut kinds = String::new();
        for data in datas {
            let (event, kind) = match self.receive(&client.next_text().await) {
                Frame::Full { event, .. } => (event, 'F'),
                Frame::Delta { event, .. } => (event, 'd'),
                other => panic!("expected an event of a delta stream, got {other:?}"),
            };
            assert_eq!(event["data"], data);
            kinds.push(kind);
        }
        kinds
    }
}

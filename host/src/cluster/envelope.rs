//! The bus envelope: what nodes send each other through the transport.
//!
//! A compact binary header (version, kind, sender node, sender sequence) and a body. A
//! broadcast's body is binary too (app, channel, excluded socket) followed by the Pusher frame
//! exactly as local sockets get it, so receivers forward it without parsing or re-encoding.
//! Control messages (membership, requests, presence) are rare and carry JSON bodies. The bus
//! reader leaves those bodies as bytes ([`Envelope::read`]): a presence sync can be megabytes,
//! and it is decoded where it is applied ([`Control::decode`]), off the reader.
//!
//! The version byte lets a node refuse a frame it cannot read, with a log line, instead of
//! misreading it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The tags an event was published with (name -> value).
pub type Tags = BTreeMap<String, String>;

/// An event's recovery position as it travels beside its frame: the receiving node appends it
/// to the frame for the sockets that track positions, and delivers in serial order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusPosition {
    /// The channel's stream.
    pub stream_id: String,
    /// The event's serial in it.
    pub serial: u64,
    /// The event's id.
    pub message_id: String,
}

/// The envelope format this build writes and reads.
pub(crate) const VERSION: u8 = 1;

/// What an envelope carries; `C` is a control message, or its undecoded bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Body<C = Control> {
    /// A frame for a channel's subscribers on every node.
    Broadcast {
        /// The app.
        app: String,
        /// The channel.
        channel: String,
        /// A socket that must not get it.
        except: Option<String>,
        /// The tags it was published with, which receiving nodes filter their subscribers by;
        /// `None` for frames every subscriber gets.
        tags: Option<Tags>,
        /// An app's event that may go to delta subscribers as a delta (each node keeps its own
        /// streams); `false` for protocol frames, client events and encrypted channels.
        compressible: bool,
        /// The event's recovery position, assigned by the history store; `None` for frames
        /// without one.
        position: Option<BusPosition>,
        /// The serialized Pusher frame.
        frame: Vec<u8>,
    },
    /// A control message.
    Control(C),
}

/// Control messages between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// "I am here": sent at start; answered by every node with its own `hello` (to the new
    /// node's topic) and its presence state.
    Hello {
        /// Whether the receiver should answer with its own hello.
        reply: bool,
    },
    /// Sent every heartbeat interval, with the sender's connections per app when socket
    /// counting is on.
    Heartbeat {
        /// app -> connections on the sender.
        #[serde(default)]
        connections: std::collections::HashMap<String, u64>,
    },
    /// Sent at graceful shutdown.
    Goodbye,
    /// A question for every other node; answers go to `reply_to`'s node topic.
    Request {
        /// Correlation id.
        id: u64,
        /// The question.
        query: Value,
    },
    /// An answer to a request.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        answer: Value,
    },
    /// A presence member joined (their first connection on the sender) or left (their last).
    Presence {
        /// The app.
        app: String,
        /// The channel.
        channel: String,
        /// The user.
        user_id: String,
        /// Their info, on joins; `None` means the user left.
        info: Option<Value>,
    },
    /// The sender's whole presence state: app -> channel -> user -> info, and the channels it
    /// has subscribers for.
    PresenceSync {
        /// The state.
        state: Value,
        /// (app, channel) pairs with a subscriber on the sender.
        #[serde(default)]
        occupied: Vec<(String, String)>,
        /// (app, user) pairs signed in on the sender.
        #[serde(default)]
        online: Vec<(String, String)>,
    },
    /// A user's first connection on the sender signed in (`true`), or their last left (`false`).
    UserStatus {
        /// The app.
        app: String,
        /// The user.
        user_id: String,
        /// Whether the user is now signed in on the sender.
        online: bool,
    },
    /// A channel gained its first subscriber on the sender (`true`) or lost its last (`false`).
    Occupancy {
        /// The app.
        app: String,
        /// The channel.
        channel: String,
        /// Whether the sender now has a subscriber.
        occupied: bool,
    },
    /// A frame for every connection of a signed-in user.
    ToUser {
        /// The app.
        app: String,
        /// The user.
        user_id: String,
        /// The serialized frame.
        frame: String,
    },
    /// The app manager's record of an app changed (through the sender's admin API): forget
    /// the cached app, and close its connections if it is now disabled or gone.
    AppChanged {
        /// The app id.
        app: String,
    },
    /// The sender has a debug console open on the app's live log: send it the app's log
    /// entries until this lapses (renewed every few seconds while the console stays open).
    ConsoleWatch {
        /// The app id.
        app: String,
    },
    /// Log entries of the app for the consoles open on the receiver.
    ConsoleEntries {
        /// The app id.
        app: String,
        /// The entries (JSON objects; the receiver checks each).
        entries: Vec<Value>,
    },
    /// An event of the channel went out without a recovery position (the history store did
    /// not take it, and the app publishes best effort): its resumes must fail until the
    /// sender started its stream again (`degraded = false`).
    HistoryDegraded {
        /// The app id.
        app: String,
        /// The channel.
        channel: String,
        /// Degraded now (`true`), or its stream was started again (`false`).
        degraded: bool,
    },
}

/// An envelope: who sent it, their sequence number, and the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<C = Control> {
    /// The sending node.
    pub node: u64,
    /// The sender's sequence number, increasing per sender.
    pub seq: u64,
    /// The content.
    pub body: Body<C>,
}

/// Why an envelope could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Written by a newer or older node, or sealed with a cluster secret this node lacks.
    #[error(
        "envelope version {0} is not {VERSION} (another build, or sealed with a cluster secret this node lacks)"
    )]
    Version(u8),
    /// Cut short or malformed.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
}

const BROADCAST: u8 = 1;
const CONTROL: u8 = 2;
/// A broadcast with tags (a count, then name and value strings, before the frame). A kind of
/// its own, so nodes that do not know tags refuse it rather than misread it.
const TAGGED: u8 = 3;
/// A compressible broadcast: a byte saying whether tags follow, then as [`TAGGED`]. A kind of
/// its own for the same reason.
const COMPRESSIBLE: u8 = 4;
/// A broadcast with a recovery position: as [`COMPRESSIBLE`] (its flag byte first, then the
/// tags flag and tags), then the stream id, the serial and the message id, then the frame.
const POSITIONED: u8 = 5;
/// A positioned broadcast published by the history store in the step that gave it its
/// position: as [`POSITIONED`] up to the tags, then the message id and the frame (its length
/// first), then what the store adds after it: the stream id's bytes, the serial in decimal
/// digits, and one byte each for those two lengths.
const STORED: u8 = 6;
/// The most digits a stored serial may have (`u64::MAX` has 20).
const MAX_SERIAL_DIGITS: usize = 20;
/// The longest stream or message id a position may carry on the bus.
const MAX_POSITION_ID: usize = 256;
/// The most tags a broadcast may carry on the bus (a peer's message is untrusted input).
pub(crate) const MAX_TAGS: usize = 64;

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).expect("strings on the bus are far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Envelope {
    /// The bytes to publish.
    pub fn encode(&self) -> Vec<u8> {
        self.write(false)
    }

    /// The bytes the history store publishes for a positioned broadcast, its stream id and
    /// serial left for the store to add after them (kind `STORED`); `None` for anything else.
    pub fn encode_for_store(&self) -> Option<Vec<u8>> {
        matches!(self.body, Body::Broadcast { position: Some(_), .. }).then(|| self.write(true))
    }

    fn write(&self, stored: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(VERSION);
        match &self.body {
            Body::Broadcast { position: Some(_), .. } if stored => out.push(STORED),
            Body::Broadcast { position: Some(_), .. } => out.push(POSITIONED),
            Body::Broadcast { compressible: true, .. } => out.push(COMPRESSIBLE),
            Body::Broadcast { tags: None, .. } => out.push(BROADCAST),
            Body::Broadcast { tags: Some(_), .. } => out.push(TAGGED),
            Body::Control(_) => out.push(CONTROL),
        }
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        match &self.body {
            Body::Broadcast { app, channel, except, tags, compressible, position, frame } => {
                out.reserve(frame.len() + app.len() + channel.len() + 16);
                put_str(&mut out, app);
                put_str(&mut out, channel);
                put_str(&mut out, except.as_deref().unwrap_or(""));
                if position.is_some() {
                    out.push(u8::from(*compressible));
                }
                if *compressible || position.is_some() {
                    out.push(u8::from(tags.is_some()));
                }
                if let Some(tags) = tags {
                    let count = u32::try_from(tags.len()).expect("tags are bounded");
                    out.extend_from_slice(&count.to_be_bytes());
                    for (name, value) in tags {
                        put_str(&mut out, name);
                        put_str(&mut out, value);
                    }
                }
                match position {
                    Some(position) if stored => {
                        put_str(&mut out, &position.message_id);
                        let len = u32::try_from(frame.len()).expect("frames are far below 4 GiB");
                        out.extend_from_slice(&len.to_be_bytes());
                    }
                    Some(position) => {
                        put_str(&mut out, &position.stream_id);
                        out.extend_from_slice(&position.serial.to_be_bytes());
                        put_str(&mut out, &position.message_id);
                    }
                    None => {}
                }
                out.extend_from_slice(frame);
            }
            Body::Control(control) => {
                // Serializing a plain enum of strings, numbers and JSON values cannot fail.
                out.extend(serde_json::to_vec(control).expect("a control message serializes"));
            }
        }
        out
    }

    /// Read an envelope, control body included.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Envelope { node, seq, body } = Envelope::read(bytes)?;
        let body = match body {
            Body::Broadcast { app, channel, except, tags, compressible, position, frame } => {
                Body::Broadcast { app, channel, except, tags, compressible, position, frame }
            }
            Body::Control(bytes) => Body::Control(Control::decode(bytes)?),
        };
        Ok(Self { node, seq, body })
    }
}

/// Whether `bytes` (an envelope, not yet checked) says it holds a control message.
pub(crate) fn is_control(bytes: &[u8]) -> bool {
    bytes.get(1) == Some(&CONTROL)
}

impl<'a> Envelope<&'a [u8]> {
    /// Read an envelope's header and broadcast, leaving a control body as bytes for
    /// [`Control::decode`].
    pub fn read(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        Self::read_with(bytes, None)
    }

    /// [`Envelope::read`], with what the history store added after a sealed `STORED`
    /// broadcast (`added`, split off before the seal was opened: see `split_stored`).
    pub fn read_with(bytes: &'a [u8], added: Option<&[u8]>) -> Result<Self, DecodeError> {
        let mut reader = Reader(bytes);
        let version = reader.u8()?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = reader.u8()?;
        let node = reader.u64()?;
        let seq = reader.u64()?;
        let body = match kind {
            BROADCAST | TAGGED | COMPRESSIBLE | POSITIONED | STORED => {
                let app = reader.string()?;
                let channel = reader.string()?;
                let except = reader.string()?;
                let flag = |reader: &mut Reader<'_>, what| match reader.u8()? {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(DecodeError::Malformed(what)),
                };
                let compressible = match kind {
                    POSITIONED | STORED => flag(&mut reader, "compressible flag")?,
                    kind => kind == COMPRESSIBLE,
                };
                let tagged = match kind {
                    COMPRESSIBLE | POSITIONED | STORED => flag(&mut reader, "tags flag")?,
                    kind => kind == TAGGED,
                };
                let tags = if tagged {
                    let count = reader.u32()?;
                    if count as usize > MAX_TAGS {
                        return Err(DecodeError::Malformed("too many tags"));
                    }
                    let mut tags = Tags::new();
                    for _ in 0..count {
                        let name = reader.string()?;
                        tags.insert(name, reader.string()?);
                    }
                    Some(tags)
                } else {
                    None
                };
                let position = match kind {
                    POSITIONED => {
                        let stream_id = reader.string()?;
                        let serial = reader.u64()?;
                        let message_id = reader.string()?;
                        Some(BusPosition { stream_id, serial, message_id })
                    }
                    STORED => {
                        let message_id = reader.string()?;
                        let len = reader.u32()?;
                        let frame = reader.take(
                            usize::try_from(len).map_err(|_| DecodeError::Malformed("length"))?,
                        )?;
                        let added = match added {
                            Some(_) if !reader.0.is_empty() => {
                                return Err(DecodeError::Malformed("stored position"));
                            }
                            Some(added) => added,
                            None => reader.0,
                        };
                        let (stream_id, serial) = stored_position(added)?;
                        reader.0 = frame;
                        Some(BusPosition { stream_id, serial, message_id })
                    }
                    _ => None,
                };
                if let Some(p) = &position
                    && (p.stream_id.len() > MAX_POSITION_ID || p.message_id.len() > MAX_POSITION_ID)
                {
                    return Err(DecodeError::Malformed("position id too long"));
                }
                Body::Broadcast {
                    app,
                    channel,
                    except: (!except.is_empty()).then_some(except),
                    tags,
                    compressible,
                    position,
                    frame: reader.0.to_vec(),
                }
            }
            CONTROL => Body::Control(reader.0),
            _ => return Err(DecodeError::Malformed("unknown kind")),
        };
        Ok(Self { node, seq, body })
    }
}

impl Control {
    /// Decode a control body.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(|_| DecodeError::Malformed("control body"))
    }
}

/// A sealed message (`header`: the seal's length) split into the sealed part and what the
/// history store added after it, when it says it is a [`STORED`] broadcast (the kind byte
/// is read before the seal is checked; the seal then covers it, so a message altered to
/// claim it fails the check). The store's addition is outside the seal: a broker writer
/// without the secret cannot make a message of its own, and a copy of a sealed one with
/// another position is refused as a replay, since the one the store published reached every
/// subscriber first. (In a Redis Cluster the original reaches other nodes' subscribers over
/// the cluster bus, one hop later: a writer subscribed where the script ran could race a copy
/// to another node, a narrow window; such a writer can as well alter the store's records,
/// which no seal covers.)
pub(crate) fn split_stored(message: &[u8], header: usize) -> (&[u8], Option<&[u8]>) {
    let kind = message.get(header + 1);
    let lengths = message.len().checked_sub(2).and_then(|at| message.get(at..));
    let (Some(&STORED), Some(&[id_len, digits])) = (kind, lengths) else {
        return (message, None);
    };
    let added = usize::from(id_len) + usize::from(digits) + 2;
    match message.len().checked_sub(added) {
        Some(at) if at > header => {
            let (sealed, added) = message.split_at(at);
            (sealed, Some(added))
        }
        _ => (message, None),
    }
}

/// The position the history store added after a [`STORED`] broadcast's frame.
fn stored_position(added: &[u8]) -> Result<(String, u64), DecodeError> {
    let malformed = DecodeError::Malformed("stored position");
    let [.., id_len, digits] = *added else { return Err(malformed) };
    let (id_len, digits) = (usize::from(id_len), usize::from(digits));
    if added.len() != id_len + digits + 2 || digits == 0 || digits > MAX_SERIAL_DIGITS {
        return Err(malformed);
    }
    let (id, serial) = added[..id_len + digits].split_at(id_len);
    let id = std::str::from_utf8(id).map_err(|_| malformed)?;
    if !serial.iter().all(u8::is_ascii_digit) {
        return Err(malformed);
    }
    let serial = std::str::from_utf8(serial).ok().and_then(|s| s.parse().ok()).ok_or(malformed)?;
    Ok((id.to_string(), serial))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()?;
        let bytes =
            self.take(usize::try_from(len).map_err(|_| DecodeError::Malformed("length"))?)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Malformed("text is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let cases = [
            Envelope {
                node: 7,
                seq: 42,
                body: Body::Broadcast {
                    app: "app-1".into(),
                    channel: "presence-ünï".into(),
                    except: Some("1.2".into()),
                    tags: None,
                    compressible: false,
                    position: None,
                    frame: br#"{"event":"e"}"#.to_vec(),
                },
            },
            Envelope {
                node: u64::MAX,
                seq: 0,
                body: Body::Broadcast {
                    app: String::new(),
                    channel: "c".into(),
                    except: None,
                    tags: Some(Tags::from([
                        ("sym".into(), "BTC".into()),
                        ("e".into(), String::new()),
                    ])),
                    compressible: false,
                    position: None,
                    frame: Vec::new(),
                },
            },
            Envelope {
                node: 3,
                seq: 4,
                body: Body::Broadcast {
                    app: "a".into(),
                    channel: "c".into(),
                    except: None,
                    tags: None,
                    compressible: true,
                    position: None,
                    frame: br#"{"event":"e"}"#.to_vec(),
                },
            },
            Envelope {
                node: 3,
                seq: 5,
                body: Body::Broadcast {
                    app: "a".into(),
                    channel: "c".into(),
                    except: Some("1.1".into()),
                    tags: Some(Tags::from([("k".into(), "v".into())])),
                    compressible: true,
                    position: None,
                    frame: br#"{"event":"e"}"#.to_vec(),
                },
            },
            Envelope {
                node: 3,
                seq: 6,
                body: Body::Broadcast {
                    app: "a".into(),
                    channel: "c".into(),
                    except: None,
                    tags: Some(Tags::from([("k".into(), "v".into())])),
                    compressible: false,
                    position: Some(BusPosition {
                        stream_id: "s-1".into(),
                        serial: u64::MAX - 1,
                        message_id: "m-1".into(),
                    }),
                    frame: br#"{"event":"e"}"#.to_vec(),
                },
            },
            Envelope {
                node: 3,
                seq: 7,
                body: Body::Broadcast {
                    app: "a".into(),
                    channel: "c".into(),
                    except: None,
                    tags: None,
                    compressible: true,
                    position: Some(BusPosition {
                        stream_id: "s-1".into(),
                        serial: 1,
                        message_id: String::new(),
                    }),
                    frame: Vec::new(),
                },
            },
            Envelope { node: 1, seq: 2, body: Body::Control(Control::Hello { reply: true }) },
            Envelope {
                node: 1,
                seq: 3,
                body: Body::Control(Control::Request {
                    id: 9,
                    query: serde_json::json!({"kind": "x"}),
                }),
            },
        ];
        for envelope in cases {
            assert_eq!(Envelope::decode(&envelope.encode()), Ok(envelope));
        }
    }

    #[test]
    fn unreadable_envelopes_are_refused() {
        let mut bytes = Envelope {
            node: 1,
            seq: 1,
            body: Body::Control(Control::Heartbeat { connections: Default::default() }),
        }
        .encode();
        bytes[0] = 2;
        assert_eq!(Envelope::decode(&bytes), Err(DecodeError::Version(2)));
        assert!(matches!(Envelope::decode(&[1, 1, 0]), Err(DecodeError::Malformed(_))));
        let broadcast = broadcast(None, &[1]).encode();
        assert!(matches!(Envelope::decode(&broadcast[..20]), Err(DecodeError::Malformed(_))));
    }

    /// A broadcast of `frame` to channel `c` of app `a`, with `position` if given.
    fn broadcast(position: Option<BusPosition>, frame: &[u8]) -> Envelope {
        Envelope {
            node: 4,
            seq: 9,
            body: Body::Broadcast {
                app: "a".into(),
                channel: "c".into(),
                except: None,
                tags: None,
                compressible: false,
                position,
                frame: frame.to_vec(),
            },
        }
    }

    /// A broadcast of `{}` with the position `stream_id`, `serial` and message id `m`.
    fn positioned(stream_id: &str, serial: u64) -> Envelope {
        let position = BusPosition { stream_id: stream_id.into(), serial, message_id: "m".into() };
        broadcast(Some(position), b"{}")
    }

    /// What the history store adds after a [`STORED`] broadcast, as its script does.
    fn stored(mut message: Vec<u8>, stream_id: &str, serial: u64) -> Vec<u8> {
        let digits = serial.to_string();
        message.extend_from_slice(stream_id.as_bytes());
        message.extend_from_slice(digits.as_bytes());
        message.push(u8::try_from(stream_id.len()).unwrap());
        message.push(u8::try_from(digits.len()).unwrap());
        message
    }

    #[test]
    fn a_broadcast_the_store_publishes_reads_as_the_positioned_one() {
        for (tags, compressible, serial) in
            [(None, true, 1), (Some(Tags::from([("k".into(), "v".into())])), false, u64::MAX)]
        {
            let envelope = Envelope {
                node: 4,
                seq: 9,
                body: Body::Broadcast {
                    app: "a".into(),
                    channel: "private-c".into(),
                    except: Some("1.2".into()),
                    tags,
                    compressible,
                    position: Some(BusPosition {
                        stream_id: "6f1c-stream".into(),
                        serial,
                        message_id: "m-1".into(),
                    }),
                    frame: br#"{"event":"e","data":"d"}"#.to_vec(),
                },
            };
            let message = envelope.encode_for_store().expect("a positioned broadcast");
            let published = stored(message, "6f1c-stream", serial);
            assert_eq!(Envelope::decode(&published), Ok(envelope));
        }
        let plain =
            Envelope { node: 1, seq: 1, body: Body::Control(Control::Hello { reply: true }) };
        assert_eq!(plain.encode_for_store(), None);
    }

    #[test]
    fn a_stored_position_that_does_not_add_up_is_refused() {
        let message = positioned("s", 1).encode_for_store().unwrap();
        let mut bad = Vec::new();
        // Nothing added; lengths that overrun; a serial that is not digits; one too long.
        bad.push(message.clone());
        let mut overrun = stored(message.clone(), "s", 1);
        *overrun.last_mut().unwrap() = 9;
        bad.push(overrun);
        let mut letters = message.clone();
        letters.extend_from_slice(b"sx\x01\x01");
        bad.push(letters);
        bad.push(stored(message.clone(), "s", 1).into_iter().chain([b'1']).collect());
        let long = "9".repeat(21);
        let mut too_long = message;
        too_long.extend_from_slice(long.as_bytes());
        too_long.extend_from_slice(&[0, 21]);
        bad.push(too_long);
        for (i, bytes) in bad.iter().enumerate() {
            assert!(
                matches!(Envelope::decode(bytes), Err(DecodeError::Malformed(_))),
                "case {i} was read"
            );
        }
    }

    #[test]
    fn a_sealed_broadcast_the_store_publishes_opens_with_its_position() {
        use crate::cluster::seal::{HEADER, Seal, now_ms};
        let seal = Seal::new("a secret of the right length");
        let envelope = positioned("s-1", 42);
        let sealed = seal.seal(&envelope.encode_for_store().unwrap());
        let published = stored(sealed.clone(), "s-1", 42);
        let (part, added) = split_stored(&published, HEADER);
        assert_eq!(part, sealed.as_slice());
        let opened = seal.open_at(part, now_ms()).expect("the seal holds");
        let read = Envelope::read_with(opened, added).expect("it reads");
        let Body::Broadcast { position, frame, .. } = read.body else { panic!("a broadcast") };
        assert_eq!(
            position,
            Some(BusPosition { stream_id: "s-1".into(), serial: 42, message_id: "m".into() })
        );
        assert_eq!(frame, b"{}");
        // The kind byte is under the seal: a message altered to look stored fails it.
        let mut forged = seal.seal(&envelope.encode());
        forged[HEADER + 1] = STORED;
        let forged = stored(forged, "s-1", 1);
        let (part, _) = split_stored(&forged, HEADER);
        assert!(seal.open_at(part, now_ms()).is_err());
        // A plain sealed message is left whole.
        let plain = seal.seal(&envelope.encode());
        assert_eq!(split_stored(&plain, HEADER), (plain.as_slice(), None));
    }
}

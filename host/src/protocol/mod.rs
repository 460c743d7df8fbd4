//! The Pusher wire format: channel names and kinds, the messages clients send, the frames the
//! server sends, error codes, and signatures. No IO and no state: everything here is a pure
//! function of its input.

pub mod broadcast;
pub mod channel;
pub mod codes;
pub mod filter;
pub mod frames;
pub mod inbound;
pub mod recovery;
pub mod signature;
pub mod webhook;

pub use broadcast::Broadcast;

/// A socket id, `<digits>.<digits>`, shared rather than copied by every structure that holds it.
pub(crate) type SocketId = std::sync::Arc<str>;

//! The transport: how sockhost nodes reach each other.

use abi_stable::{
    sabi_trait,
    std_types::{RBox, ROption, RStr, RVec},
};
use async_ffi::FfiFuture;

use crate::PResult;

/// Moves opaque bytes between nodes by topic. It never sees a socket or a Pusher message: the
/// host encodes everything it carries.
///
/// Topic names are the host's (printable, up to a few hundred bytes, possibly containing `.`,
/// `:`, `#`, spaces or any unicode); a transport maps them to its backend's legal names.
///
/// Guarantees every transport gives:
/// - at-most-once delivery of a published message to every *other* instance subscribed to its
///   topic when it is published (delivery back to the publishing instance is allowed; the host
///   discards its own messages);
/// - messages from one instance to one topic arrive in the order they were accepted, whichever of
///   `try_publish` or `publish` accepted them;
/// - incoming messages are handed to [`HostContext::on_message`](crate::HostContext::on_message)
///   of the context the transport was constructed with, from the moment it is constructed;
/// - after `shutdown`, every call answers [`ErrorCode::UNAVAILABLE`](crate::ErrorCode::UNAVAILABLE).
#[sabi_trait]
pub trait Transport: Send + Sync {
    /// The hot path: enqueue a message and return at once. The plugin batches enqueued
    /// messages into its backend writes; the call never waits for IO and never hops threads.
    /// A full queue answers [`ErrorCode::BACKPRESSURE`](crate::ErrorCode::BACKPRESSURE) and
    /// the message is not sent.
    fn try_publish(&self, topic: RStr<'_>, payload: RVec<u8>) -> PResult<()>;

    /// Publish and resolve once the backend has accepted the message (control messages).
    fn publish(&self, topic: RStr<'_>, payload: RVec<u8>) -> FfiFuture<PResult<()>>;

    /// Start receiving messages published to `topic`; resolves once the backend confirms, so a
    /// message published after it resolves is delivered. Subscribing twice is harmless.
    fn subscribe(&self, topic: RStr<'_>) -> FfiFuture<PResult<()>>;

    /// Stop receiving `topic`; resolves once the backend confirms. Unknown topics are harmless.
    fn unsubscribe(&self, topic: RStr<'_>) -> FfiFuture<PResult<()>>;

    /// How many nodes the backend can see, if it can tell (`PUBSUB NUMSUB`, a configured count).
    /// A hint only: cluster membership itself is the host's business.
    fn node_count_hint(&self) -> FfiFuture<PResult<ROption<u64>>>;

    /// Whether the backend answers now (a PING, the connection state).
    fn health(&self) -> FfiFuture<PResult<()>>;

    /// Stop delivering, flush what is queued if the backend allows, release connections.
    /// Calling it again answers `Ok` and does nothing.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> FfiFuture<PResult<()>>;
}

/// A transport as the host owns it.
pub type TransportBox = Transport_TO<'static, RBox<()>>;

//! Where a frame for a channel goes: the one value a broadcast travels as, from the HTTP API or
//! a client event through the adapter to this node's hub and, on the bus, to every other
//! node's.

use super::filter::Tags;

/// A frame's destination and how it is delivered (the frame itself travels beside it, in
/// whatever form each layer holds it: shared bytes, a bus payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broadcast<'a> {
    /// The app.
    pub app: &'a str,
    /// The channel, whose subscribers get the frame.
    pub channel: &'a str,
    /// A socket that must not get it (the one that sent a client event or asked to be left
    /// out).
    pub except: Option<&'a str>,
    /// The tags an event was published with: only subscribers whose filter they pass get it
    /// (and those without a filter). `None` for frames every subscriber gets.
    pub tags: Option<&'a Tags>,
    /// An app's event that may go to delta subscribers as a delta (each node keeps its own
    /// streams); `false` for protocol frames, client events and encrypted channels.
    pub compressible: bool,
}

impl<'a> Broadcast<'a> {
    /// A frame for every subscriber of the channel, never as a delta (a protocol frame).
    pub fn to(app: &'a str, channel: &'a str) -> Self {
        Self { app, channel, except: None, tags: None, compressible: false }
    }

    /// The same, leaving out socket `except`.
    #[must_use]
    pub fn except(self, except: Option<&'a str>) -> Self {
        Self { except, ..self }
    }

    /// The same, for the subscribers whose filter `tags` pass.
    #[must_use]
    pub fn tagged(self, tags: Option<&'a Tags>) -> Self {
        Self { tags, ..self }
    }

    /// The same, as deltas to the subscribers that asked for them when `compressible`.
    #[must_use]
    pub fn compressible(self, compressible: bool) -> Self {
        Self { compressible, ..self }
    }
}

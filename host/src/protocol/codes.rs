//! Pusher error and close codes.
//!
//! The ranges tell clients what to do: 4000-4099 do not reconnect unchanged, 4100-4199 reconnect
//! after a back-off, 4200-4299 reconnect at once, 4300-4399 other (sent in-band, the connection
//! stays open). Close reasons stay under 123 bytes (the RFC 6455 limit on a close frame).

/// A subscribe's tag filter was refused (in-band, as Sockudo's clients expect; the connection
/// stays open and the subscription is not made).
pub const INVALID_FILTER: u16 = 4000;
/// The app key is unknown.
pub const APP_NOT_FOUND: u16 = 4001;
/// The app is disabled.
pub const APP_DISABLED: u16 = 4003;
/// The protocol version is unsupported.
pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
/// No protocol version was given.
pub const NO_PROTOCOL: u16 = 4008;
/// The connection is not authorised (signin required and missing).
pub const UNAUTHORIZED: u16 = 4009;
/// Over capacity: the app's connection quota, or a consumer too slow for its queue.
pub const OVER_CAPACITY: u16 = 4100;
/// The server is going away; reconnect at once (elsewhere).
pub const RECONNECT: u16 = 4200;
/// The client did not answer a ping in time.
pub const PONG_NOT_RECEIVED: u16 = 4201;
/// The node could not give the connection a channel's events in order (the history store no
/// longer had some): reconnect at once and resume, to be told what is gone.
pub const RESUME: u16 = 4210;
/// A watchlist over the limit: the first ids are used; in-band.
pub const WATCHLIST_LIMIT: u16 = 4302;
/// A message was not understood (malformed JSON, unknown event, bad field); in-band.
pub const BAD_MESSAGE: u16 = 4300;
/// A client event was refused (disabled, too large, too many, wrong channel); in-band.
pub const CLIENT_EVENT_REJECTED: u16 = 4301;
/// A message Sockudo's protocol cannot read (a resume that names no positions field); in-band,
/// Sockudo's code and wording ("Invalid message format: ...").
pub const INVALID_FORMAT: u16 = 4000;
/// A resume on a server (or app) without connection recovery; in-band, Sockudo's code.
pub const RECOVERY_DISABLED: u16 = 4301;
/// A resume that names no channel position; in-band, Sockudo's code.
pub const NO_RECOVERY_POSITIONS: u16 = 4302;
/// A subscription's `rewind` refused: history is off, or the socket tracks no positions
/// (Sockudo's "Channel error", sent in-band; the subscription is not made).
pub const REWIND_REFUSED: u16 = 4300;

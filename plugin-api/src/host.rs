//! The calls that go from a plugin back into the host.

use abi_stable::{
    StableAbi, sabi_trait,
    std_types::{RArc, RStr, RVec},
};

/// A log level, as an integer so that the layout never changes.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogLevel(pub u8);

impl LogLevel {
    /// Logging is off.
    pub const OFF: Self = Self(0);
    /// An operator must act.
    pub const ERROR: Self = Self(1);
    /// Something degraded but the driver copes (a reconnect, a dropped message).
    pub const WARN: Self = Self(2);
    /// Lifecycle: connected, subscribed, shut down.
    pub const INFO: Self = Self(3);
    /// Details for diagnosis.
    pub const DEBUG: Self = Self(4);
    /// Per-message details.
    pub const TRACE: Self = Self(5);
}

/// Implemented by the host and handed to every driver it constructs.
///
/// Each method is called on a plugin thread, where the host's async runtime is not entered, so
/// the host's implementation never blocks and never touches runtime-bound resources directly.
#[sabi_trait]
pub trait HostContext: Clone + Send + Sync {
    /// A message arrived on a topic this transport is subscribed to.
    ///
    /// Only enqueues: it never blocks and never calls back into the plugin, so a transport may
    /// call it from its IO task. The buffer moves to the host without a copy.
    fn on_message(&self, topic: RStr<'_>, payload: RVec<u8>);

    /// A log event from the plugin; the host emits it under its `plugin` target.
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>);

    /// Adds `delta` to the plugin's counter `name` (reconnects, drops, slow consumers).
    /// Names are short snake_case words; the host exports them with the plugin name as a label.
    fn metric(&self, name: RStr<'_>, delta: i64);

    /// The most detailed level the host will record, so plugins skip formatting the rest.
    #[sabi(last_prefix_field)]
    fn max_log_level(&self) -> LogLevel;
}

/// The host context as plugins receive it: shared and cheap to clone.
pub type HostContextBox = HostContext_TO<'static, RArc<()>>;

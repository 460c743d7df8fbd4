//! The calls that go from a plugin back into the host.

use abi_stable::{
    StableAbi, sabi_trait,
    std_types::{RArc, RBox, RSlice, RSliceMut, RStr, RVec},
};
use async_ffi::{FfiContext, FfiFuture, FfiPoll};

use crate::PResult;

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

/// The host's runtime, lent to a plugin for the sockets of its per-message round trips:
/// handed once, after loading, to a plugin whose root module has
/// [`PluginModule::host_io`](crate::PluginModule::host_io) (appended within generation 0.1, so
/// `HostContext` itself stays as 0.1.0 laid it out).
///
/// Why: a socket on the plugin's runtime is heard by the plugin's reactor, so every reply
/// wakes a plugin thread, which then wakes the host's task on another thread. On the host's
/// reactor the worker that hears the reply runs the waiting task itself. The history store's
/// append, which the host awaits once per event, uses it (`docs/recovery-cost.md`).
#[sabi_trait]
pub trait HostIo: Send + Sync {
    /// Open a TCP connection to `host:port` on the host's runtime.
    fn connect_tcp(&self, host: RStr<'_>, port: u16) -> FfiFuture<PResult<HostSocketBox>>;

    /// Run `task` on the host's executor until it ends: the driver of a connection over a
    /// [`HostSocket`], so that it runs where the socket's readiness is heard. The task enters
    /// the plugin's runtime itself when it needs its timers, and catches its own panics.
    #[sabi(last_prefix_field)]
    fn spawn(&self, task: FfiFuture<()>);
}

/// The host's runtime as plugins receive it.
pub type HostIoBox = HostIo_TO<'static, RArc<()>>;

/// A TCP connection the host opened for a plugin ([`HostIo::connect_tcp`]). Reads and
/// writes never block: pending, the waker in `cx` is woken when the socket is ready (by the
/// host's reactor). Dropping it closes the connection.
#[sabi_trait]
pub trait HostSocket: Send + Sync {
    /// Read into `buf`: how many bytes (0: the peer closed the connection).
    fn poll_read(&self, buf: RSliceMut<'_, u8>, cx: &mut FfiContext<'_>)
    -> FfiPoll<PResult<usize>>;

    /// Write from `buf`: how many of its bytes were taken.
    #[sabi(last_prefix_field)]
    fn poll_write(&self, buf: RSlice<'_, u8>, cx: &mut FfiContext<'_>) -> FfiPoll<PResult<usize>>;
}

/// A host socket as plugins receive it.
pub type HostSocketBox = HostSocket_TO<'static, RBox<()>>;

/// The host context as plugins receive it: shared and cheap to clone.
pub type HostContextBox = HostContext_TO<'static, RArc<()>>;

//! What a plugin author needs, so that a plugin is a few dozen lines of its own logic.
//!
//! - [`runtime`]: the plugin's own tokio runtime. A `cdylib` carries its own copy of tokio, whose
//!   thread-locals the host's runtime never sets, so all of a plugin's sockets and timers live
//!   on a runtime the plugin owns.
//! - [`guard`], [`enter`], [`spawn`], [`ready`]: every call across the boundary catches panics
//!   and answers [`ErrorCode::PANICKED`](crate::ErrorCode::PANICKED); awaited calls are polled
//!   by the host's executor with the plugin runtime entered (no thread hop), or spawned on the
//!   plugin runtime when they must finish even if the host stops waiting.
//! - [`host_io`]: a TCP connection the host drives, for a round trip per message without a
//!   plugin thread woken for its reply.
//! - [`apps`]: the records an app manager is handed, read and checked.
//! - [`config`]: a driver's table parsed into its config struct, errors naming the field, and
//!   the backend's shared connection table (`[database.<backend>]`) that comes along in it.
//! - [`log`]: a `tracing` subscriber and a panic hook that forward to the host's log.
//! - [`outbox`]: the publish queue in front of a transport's writer task (try_publish with
//!   back-pressure, publish with the writer's outcome).
//! - [`TransportDriver`], [`CacheDriver`], [`QueueDriver`], [`RateLimiterDriver`],
//!   [`AppManagerDriver`]: plain Rust
//!   traits; [`create`] and the `*_box` functions turn them into the FFI trait objects with
//!   every method guarded.
//! - [`export_plugin!`](crate::export_plugin): the root module, `info` and the constructors of
//!   a plugin from one declaration.

pub mod apps;
pub mod config;
mod drivers;
mod export;
mod guard;
mod history;
pub mod host_io;
pub mod log;
pub mod outbox;
mod runtime;

pub use drivers::{
    AppManagerDriver, CacheDriver, CreateArgs, QueueDriver, RateLimiterDriver, TransportDriver,
    UpdateOutcome, app_manager_box, cache_box, create, queue_box, rate_limiter_box, transport_box,
};
pub use export::{builder, expect_driver};
pub use guard::{enter, guard, panic_message, ready, spawn};
pub use history::{HistoryBusDriver, HistoryDriver, history_box, history_bus_box};
pub use runtime::runtime;

/// Milliseconds since the Unix epoch by this machine's clock (0 before 1970), as history
/// records are stamped.
pub fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    u64::try_from(since.unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

//! The contract between the sockhost server (the host) and its driver plugins.
//!
//! A plugin is a `cdylib` that exports one root module, [`PluginModule`]: what it is
//! ([`PluginInfo`]) and one optional constructor per driver kind it provides. The drivers are
//! FFI-safe trait objects: [`Transport`], [`Cache`], [`Queue`], [`RateLimiter`],
//! [`AppManager`] and [`History`]. The host
//! hands every driver a [`HostContext`] for the calls that go the other way (incoming
//! messages, logs, metrics), and lends a plugin that takes it its runtime ([`HostIo`]: sockets
//! its reactor drives, futures its executor runs).
//!
//! # ABI policy
//!
//! The version of this crate IS the ABI version, checked when a plugin is loaded:
//! - `0.MINOR.x` is one ABI generation: a host loads a plugin built against the same minor (and,
//!   after 1.0, the same major) and nothing else.
//! - Within a generation, evolution is append-only: new methods go after the method marked
//!   `#[sabi(last_prefix_field)]` of a trait, new root-module fields after its last field, new
//!   error codes as new [`ErrorCode`] constants, new driver kinds as new [`DriverKind`]
//!   constants. Older plugins then still load; a host calls a newer method only after checking
//!   it is present.
//! - abi_stable refuses a library whose root module has fewer fields than the loader's type, so
//!   the host checks a plugin against the generation's first layout ([`base::PluginModule`],
//!   frozen), then against the current [`PluginModule`], and, when that fails, against each
//!   frozen layout in between ([`with_history_bus::PluginModule`], [`with_history::PluginModule`],
//!   [`with_apps::PluginModule`]) ([`load::open`]): a plugin built
//!   before a field passes the earlier checks only and provides none of the newer kinds
//!   (`tests/tests/abi_mismatch.rs` builds such plugins and loads them).
//! - Changing, removing or reordering anything that exists is a new generation: bump the minor
//!   (or the major after 1.0), record it in `CHANGELOG.md`, and the loader refuses the old plugins.
//! - Only the types of this crate (and the `abi_stable` / `async_ffi` types they are made of)
//!   cross the boundary. No tokio handle, `tracing` dispatcher or other static crosses: each
//!   plugin owns its runtime and forwards its logs through [`HostContext::log`].
//! - Every exported function catches panics and answers [`ErrorCode::PANICKED`]; the `sdk`
//!   feature does this for plugin authors.
//! - Plugins are loaded once and never unloaded.
//!
//! # Features
//! - `sdk`: what a plugin author needs: an owned runtime, panic guards, the log bridge, and safe
//!   Rust traits that become the FFI trait objects.
//! - `conformance`: test suites, written once per driver kind, that any plugin runs against its
//!   own built `.so`.
// abi_stable's derive and sabi_trait macros emit impls that rustc >= 1.80 reports as
// non-local definitions; the code is correct and the lint is about macro hygiene only.
#![allow(non_local_definitions)]
// The `StableAbi` derive and `#[sabi_trait]` expand to unsafe impls and blocks; this crate
// writes no unsafe code of its own.
#![allow(unsafe_code)]

mod app_manager;
mod cache;
mod error;
mod history;
mod host;
#[cfg(feature = "host-tcp")]
pub mod host_tcp;
mod info;
pub mod load;
mod queue;
mod rate_limiter;
mod root;
mod transport;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "sdk")]
pub mod sdk;

pub use app_manager::{AppManager, AppManager_TO, AppManagerBox, CHANGED, IF_VERSION};
pub use cache::{Cache, Cache_TO, CacheBox};
pub use error::{ErrorCode, PResult, PluginError};
pub use history::{
    Appended, History, History_TO, HistoryBox, HistoryBus, HistoryBus_TO, HistoryBusBox,
    MAX_RECORD_BYTES, Outgoing, Page, Published, Retention, Stored,
};
pub use host::{
    HostContext, HostContext_TO, HostContextBox, HostIo, HostIo_TO, HostIoBox, HostSocket,
    HostSocket_TO, HostSocketBox, LogLevel,
};
pub use info::{DriverDecl, DriverKind, PluginInfo};
pub use queue::{Job, Queue, Queue_TO, QueueBox, QueueHandler, QueueHandler_TO, QueueHandlerBox};
pub use rate_limiter::{RateDecision, RateLimiter, RateLimiter_TO, RateLimiterBox};
pub use root::{PluginModule, PluginModule_Ref, base, with_apps, with_history, with_history_bus};
pub use transport::{Transport, Transport_TO, TransportBox};

/// The FFI-safe building blocks, re-exported so that neither the host nor plugins depend on
/// `abi_stable` or `async_ffi` directly (and so cannot pick a different version of them).
pub mod abi {
    pub use abi_stable::{
        StableAbi,
        prefix_type::PrefixTypeTrait,
        sabi_trait::TD_Opaque,
        std_types::{RArc, RBox, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec},
    };
    pub use async_ffi::{ContextExt, FfiContext, FfiFuture, FfiPoll, FutureExt as FfiFutureExt};
}

/// The ABI version this crate defines, `major.minor.patch`.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

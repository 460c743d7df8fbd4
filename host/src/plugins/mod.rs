//! The plugin boundary: the manifest, the loader, the registry of drivers, and the host-side
//! handles over the constructed drivers.
//!
//! Architecture invariant: this module is the only code of the host that names an FFI type
//! (`*_TO`, `RVec`, `RStr`, ...); everything outside it sees plain Rust types.

mod builtin;
mod drivers;
mod host_context;
pub mod loader;
pub mod manifest;
mod registry;

pub use crate::config::{DriverChoice, DriverSelection};
pub use drivers::{
    AppManager, Appended, Cache, Conditional, DriverError, Drivers, History, JobError, JobFuture,
    Queue, QueuedJob, RateLimiter, StoredEvent, StreamPage, Transport,
};
pub use host_context::{Incoming, PluginCounters};
pub use loader::{LoadError, LoadedPlugin};
pub use manifest::{Manifest, ManifestError};
pub use registry::{PluginLine, Refusal, RefusalReason, Registry};
pub use sockhost_plugin_api::{
    DriverKind, ErrorCode, MAX_RECORD_BYTES, PluginError, RateDecision, Retention,
};

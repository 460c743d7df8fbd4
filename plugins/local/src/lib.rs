//! The `local` plugin: everything a single sockhost node needs, with no backend.
//!
//! - transport `local`: an in-process bus. Instances in one process reach each other, which is
//!   what the conformance suite exercises; a sockhost process has one node, so in production its
//!   publishes reach nobody and its node count is 1.
//! - cache `memory`, queue `memory`, rate limiter `memory`, history `memory`: in-process, lost
//!   on restart, and not shared between nodes.
// `#[abi_stable::export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod cache;
mod history;
mod queue;
mod rate_limiter;
mod transport;

pub use cache::MemoryCache;
pub use history::MemoryHistory;
pub use queue::MemoryQueue;
pub use rate_limiter::MemoryRateLimiter;
pub use transport::LocalTransport;

use sockhost_plugin_api::sdk;

sockhost_plugin_api::export_plugin! {
    name: "local",
    transport: ["local"] => |args| async move {
        Ok(sdk::transport_box(args.runtime, LocalTransport::new(&args.config, args.host)?))
    },
    cache: ["memory"] => |args| async move {
        Ok(sdk::cache_box(args.runtime, MemoryCache::new(&args.config)?))
    },
    queue: ["memory"] => |args| async move {
        Ok(sdk::queue_box(args.runtime, MemoryQueue::new(&args.config, args.host)?))
    },
    rate_limiter: ["memory"] => |args| async move {
        Ok(sdk::rate_limiter_box(args.runtime, MemoryRateLimiter::new(&args.config)?))
    },
    history: ["memory"] => |args| async move {
        Ok(sdk::history_box(args.runtime, MemoryHistory::new(&args.config)?))
    },
}

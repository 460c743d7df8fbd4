//! The `local` plugin: everything a single sockhost node needs, with no backend.
//!
//! - transport `local`: an in-process bus. Instances in one process reach each other, which is
//!   what the conformance suite exercises; a sockhost process has one node, so in production its
//!   publishes reach nobody and its node count is 1.
//! - cache `memory`, queue `memory`, rate limiter `memory`: in-process, lost on restart, and not
//!   shared between nodes.
// `#[abi_stable::export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod cache;
mod config;
mod queue;
mod rate_limiter;
mod transport;

pub use cache::MemoryCache;
pub use queue::MemoryQueue;
pub use rate_limiter::MemoryRateLimiter;
pub use transport::LocalTransport;

use sockhost_plugin_api::{
    CacheBox, DriverDecl, DriverKind, HostContextBox, PResult, PluginError, PluginInfo,
    PluginModule, PluginModule_Ref, QueueBox, RateLimiterBox, TransportBox,
    abi::{FfiFuture, PrefixTypeTrait as _, RStr},
    sdk,
};

/// The plugin's name as it appears in the host's log and `sockhost plugins list`.
pub const PLUGIN: &str = "local";

const DRIVERS: &[DriverDecl] = &[
    DriverDecl::new(DriverKind::TRANSPORT, "local"),
    DriverDecl::new(DriverKind::CACHE, "memory"),
    DriverDecl::new(DriverKind::QUEUE, "memory"),
    DriverDecl::new(DriverKind::RATE_LIMITER, "memory"),
];

/// The root module the host loads.
#[abi_stable::export_root_module]
pub fn root_module() -> PluginModule_Ref {
    PluginModule {
        info,
        transport: Some(new_transport),
        cache: Some(new_cache),
        queue: Some(new_queue),
        rate_limiter: Some(new_rate_limiter),
    }
    .leak_into_prefix()
}

extern "C" fn info() -> PluginInfo {
    PluginInfo::new(PLUGIN, env!("CARGO_PKG_VERSION"), DRIVERS)
}

/// Refuse a driver name this plugin does not provide (the host only asks for declared ones, but
/// a constructor must not trust its caller).
fn expect_driver(args: &sdk::CreateArgs, name: &str) -> Result<(), PluginError> {
    if args.driver == name {
        Ok(())
    } else {
        Err(PluginError::config(format!(
            "plugin {PLUGIN} provides no driver `{}` of this kind",
            args.driver
        )))
    }
}

extern "C" fn new_transport(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<TransportBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| async move {
        expect_driver(&args, "local")?;
        let transport = LocalTransport::new(&args.config, args.host)?;
        Ok(sdk::transport_box(args.runtime, transport))
    })
}

extern "C" fn new_cache(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<CacheBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| async move {
        expect_driver(&args, "memory")?;
        Ok(sdk::cache_box(args.runtime, MemoryCache::new(&args.config)?))
    })
}

extern "C" fn new_queue(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<QueueBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| async move {
        expect_driver(&args, "memory")?;
        Ok(sdk::queue_box(args.runtime, MemoryQueue::new(&args.config, args.host)?))
    })
}

extern "C" fn new_rate_limiter(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<RateLimiterBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| async move {
        expect_driver(&args, "memory")?;
        Ok(sdk::rate_limiter_box(args.runtime, MemoryRateLimiter::new(&args.config)?))
    })
}

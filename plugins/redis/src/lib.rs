//! The `redis` plugin: the transport `redis`, over Redis pub/sub, and the cache, queue and
//! rate-limiter drivers `redis` (in `sockhost-redis-drivers`, shared with `redis-cluster`).
//!
//! Topics become Redis channels under a prefix. Enqueued messages are written by one task in
//! pipelines (one round trip per batch, order kept per topic); incoming messages are read by
//! another task on a dedicated subscriber connection, which reconnects with backoff and
//! subscribes again to every topic after a connection loss.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod config;
mod transport;

pub use transport::RedisTransport;

use sockhost_plugin_api::{
    CacheBox, DriverDecl, DriverKind, HostContextBox, PResult, PluginError, PluginInfo,
    PluginModule, PluginModule_Ref, QueueBox, RateLimiterBox, TransportBox,
    abi::{FfiFuture, PrefixTypeTrait as _, RStr},
    sdk,
};
use sockhost_redis_drivers::build::{self, Backend};

/// The plugin's name.
pub const PLUGIN: &str = "redis";

const DRIVERS: &[DriverDecl] = &[
    DriverDecl::new(DriverKind::TRANSPORT, "redis"),
    DriverDecl::new(DriverKind::CACHE, "redis"),
    DriverDecl::new(DriverKind::QUEUE, "redis"),
    DriverDecl::new(DriverKind::RATE_LIMITER, "redis"),
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

extern "C" fn new_transport(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<TransportBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| async move {
        if args.driver != "redis" {
            return Err(PluginError::config(format!(
                "plugin redis provides no transport `{}`",
                args.driver
            )));
        }
        let config = config::TransportConfig::parse(&args.config)?;
        let transport = RedisTransport::connect(config, args.host).await?;
        Ok(sdk::transport_box(args.runtime, transport))
    })
}

extern "C" fn new_cache(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<CacheBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| build::cache(args, Backend::Server))
}

extern "C" fn new_queue(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<QueueBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| build::queue(args, Backend::Server))
}

extern "C" fn new_rate_limiter(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<RateLimiterBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| build::rate_limiter(args, Backend::Server))
}

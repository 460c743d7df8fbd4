//! The `redis-cluster` plugin: the transport `redis-cluster`, over Redis Cluster pub/sub, and
//! the cache, queue and rate-limiter drivers `redis-cluster` (in `sockhost-redis-drivers`).
//!
//! Classic pub/sub (`PUBLISH`, which the cluster copies to every shard) by default; with
//! `use_sharded_pubsub`, `SPUBLISH`/`SSUBSCRIBE`, so each topic lives only on the shard that
//! owns its hash slot and the topics of different channels spread over the shards.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod config;
mod transport;

pub use transport::RedisClusterTransport;

use sockhost_plugin_api::{
    CacheBox, DriverDecl, DriverKind, HostContextBox, PResult, PluginError, PluginInfo,
    PluginModule, PluginModule_Ref, QueueBox, RateLimiterBox, TransportBox,
    abi::{FfiFuture, PrefixTypeTrait as _, RStr},
    sdk,
};
use sockhost_redis_drivers::build::{self, Backend};

/// The plugin's name.
pub const PLUGIN: &str = "redis-cluster";

const DRIVERS: &[DriverDecl] = &[
    DriverDecl::new(DriverKind::TRANSPORT, "redis-cluster"),
    DriverDecl::new(DriverKind::CACHE, "redis-cluster"),
    DriverDecl::new(DriverKind::QUEUE, "redis-cluster"),
    DriverDecl::new(DriverKind::RATE_LIMITER, "redis-cluster"),
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
        if args.driver != "redis-cluster" {
            return Err(PluginError::config(format!(
                "plugin redis-cluster provides no transport `{}`",
                args.driver
            )));
        }
        let config = config::TransportConfig::parse(&args.config)?;
        let transport = RedisClusterTransport::connect(config, args.host).await?;
        Ok(sdk::transport_box(args.runtime, transport))
    })
}

extern "C" fn new_cache(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<CacheBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| build::cache(args, Backend::Cluster))
}

extern "C" fn new_queue(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<QueueBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| build::queue(args, Backend::Cluster))
}

extern "C" fn new_rate_limiter(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<RateLimiterBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| build::rate_limiter(args, Backend::Cluster))
}

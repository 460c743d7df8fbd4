//! The `redis-cluster` plugin: the transport `redis-cluster`, over Redis Cluster pub/sub.
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
    DriverDecl, DriverKind, HostContextBox, PResult, PluginError, PluginInfo, PluginModule,
    PluginModule_Ref, TransportBox,
    abi::{FfiFuture, PrefixTypeTrait as _, RStr},
    sdk,
};

/// The plugin's name.
pub const PLUGIN: &str = "redis-cluster";

const DRIVERS: &[DriverDecl] = &[DriverDecl::new(DriverKind::TRANSPORT, "redis-cluster")];

/// The root module the host loads.
#[abi_stable::export_root_module]
pub fn root_module() -> PluginModule_Ref {
    PluginModule {
        info,
        transport: Some(new_transport),
        cache: None,
        queue: None,
        rate_limiter: None,
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

//! The `redis` plugin: the transport `redis`, over Redis pub/sub.
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
    DriverDecl, DriverKind, HostContextBox, PResult, PluginError, PluginInfo, PluginModule,
    PluginModule_Ref, TransportBox,
    abi::{FfiFuture, PrefixTypeTrait as _, RStr},
    sdk,
};

/// The plugin's name.
pub const PLUGIN: &str = "redis";

const DRIVERS: &[DriverDecl] = &[DriverDecl::new(DriverKind::TRANSPORT, "redis")];

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

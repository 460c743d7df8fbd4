//! The `nats` plugin: the transport `nats`, over NATS core subjects.
//!
//! Topics become subjects under a prefix (escaped so that any channel name is one subject
//! token); the client library reconnects and restores subscriptions; messages a full
//! subscription buffer drops are reported as `slow_consumers`, never silently.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod config;
mod subject;
mod transport;

pub use transport::NatsTransport;

use sockhost_plugin_api::{
    DriverDecl, DriverKind, HostContextBox, PResult, PluginError, PluginInfo, PluginModule,
    PluginModule_Ref, TransportBox,
    abi::{FfiFuture, PrefixTypeTrait as _, RStr},
    sdk,
};

/// The plugin's name.
pub const PLUGIN: &str = "nats";

const DRIVERS: &[DriverDecl] = &[DriverDecl::new(DriverKind::TRANSPORT, "nats")];

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
        if args.driver != "nats" {
            return Err(PluginError::config(format!(
                "plugin nats provides no transport `{}`",
                args.driver
            )));
        }
        let config = config::TransportConfig::parse(&args.config)?;
        let transport = NatsTransport::connect(config, args.host).await?;
        Ok(sdk::transport_box(args.runtime, transport))
    })
}

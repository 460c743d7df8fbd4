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

use sockhost_plugin_api::sdk;

sockhost_plugin_api::export_plugin! {
    name: "nats",
    transport: ["nats"] => |args| async move {
        let config = config::TransportConfig::parse(&args.config)?;
        let transport = NatsTransport::connect(config, args.host).await?;
        Ok(sdk::transport_box(args.runtime, transport))
    },
}

//! The `kafka` plugin: the transport `kafka`, over the Kafka API with a pure-Rust client: a
//! fixed broadcast topic and a topic per node, created if missing; the sockhost topic as the
//! record key; every node reading from the latest offset without consumer groups.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod config;
mod transport;

pub use transport::KafkaTransport;

use sockhost_plugin_api::sdk;

sockhost_plugin_api::export_plugin! {
    name: "kafka",
    transport: ["kafka"] => |args| async move {
        let config = config::TransportConfig::parse(&args.config)?;
        let transport = KafkaTransport::connect(config, args.host).await?;
        Ok(sdk::transport_box(args.runtime, transport))
    },
}

//! The `mqtt` plugin: the transport `mqtt`, over MQTT 5 (Mosquitto, EMQX, HiveMQ, ...), with
//! interest routing (exact-name subscriptions confirmed by SUBACK), No Local, one QoS per
//! connection so each topic keeps its order, and resubscription after a reconnect.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod config;
pub mod topic;
mod transport;

pub use transport::MqttTransport;

use sockhost_plugin_api::sdk;

sockhost_plugin_api::export_plugin! {
    name: "mqtt",
    transport: ["mqtt"] => |args| async move {
        let config = config::TransportConfig::parse(&args.config)?;
        let transport = MqttTransport::connect(config, args.host).await?;
        Ok(sdk::transport_box(args.runtime, transport))
    },
}

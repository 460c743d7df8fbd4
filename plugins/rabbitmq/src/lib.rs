//! The `rabbitmq` plugin: the transport `rabbitmq`, over AMQP 0-9-1 (RabbitMQ), with interest
//! routing (a node's queue is bound only to the topics it serves), confirmed subscriptions and
//! publishes, a capped queue per node, and reconnection with every binding restored.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod config;
mod transport;

pub use transport::{RabbitTransport, routing_key};

use sockhost_plugin_api::sdk;

sockhost_plugin_api::export_plugin! {
    name: "rabbitmq",
    transport: ["rabbitmq", "rabbit-mq"] => |args| async move {
        let config = config::TransportConfig::parse(&args.config)?;
        let transport = RabbitTransport::connect(config, args.host).await?;
        Ok(sdk::transport_box(args.runtime, transport))
    },
}

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

use sockhost_plugin_api::sdk;
use sockhost_redis_drivers::build::{self, Backend};

sockhost_plugin_api::export_plugin! {
    name: "redis",
    transport: ["redis"] => |args| async move {
        let config = config::TransportConfig::parse(&args.config)?;
        let transport = RedisTransport::connect(config, args.host).await?;
        Ok(sdk::transport_box(args.runtime, transport))
    },
    cache: ["redis"] => |args| build::cache(args, Backend::Server),
    queue: ["redis"] => |args| build::queue(args, Backend::Server),
    rate_limiter: ["redis"] => |args| build::rate_limiter(args, Backend::Server),
    history: ["redis"] => |args| build::history(args, Backend::Server),
    history_bus: ["redis"] => |args| build::history_bus(args, Backend::Server),
}

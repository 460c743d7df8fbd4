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

use sockhost_plugin_api::sdk;
use sockhost_redis_drivers::build::{self, Backend};

sockhost_plugin_api::export_plugin! {
    name: "redis-cluster",
    transport: ["redis-cluster"] => |args| async move {
        let config = config::TransportConfig::parse(&args.config)?;
        let transport = RedisClusterTransport::connect(config, args.host).await?;
        Ok(sdk::transport_box(args.runtime, transport))
    },
    cache: ["redis-cluster"] => |args| build::cache(args, Backend::Cluster),
    queue: ["redis-cluster"] => |args| build::queue(args, Backend::Cluster),
    rate_limiter: ["redis-cluster"] => |args| build::rate_limiter(args, Backend::Cluster),
    history: ["redis-cluster"] => |args| build::history(args, Backend::Cluster),
    history_bus: ["redis-cluster"] => |args| build::history_bus(args, Backend::Cluster),
}

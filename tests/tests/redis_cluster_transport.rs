//! The transport conformance suite against the built `libsockhost_redis_cluster.so` and a real
//! three-master Redis Cluster started for each case, with classic and with sharded pub/sub.

use sockhost_plugin_api::conformance::Target;
use sockhost_tests::{backends::RedisCluster, cdylib};

fn target(sharded: bool) -> Target {
    let cluster = RedisCluster::start();
    let nodes: Vec<String> = cluster.seeds().split(',').map(|s| format!("{s:?}")).collect();
    let config = format!(
        "nodes = [{}]\nprefix = \"conformance:\"\nuse_sharded_pubsub = {sharded}\n",
        nodes.join(", ")
    );
    Target::new(cdylib("sockhost_redis_cluster"), "redis-cluster", &config).keep(cluster)
}

fn classic() -> Target {
    target(false)
}

fn sharded() -> Target {
    target(true)
}

mod classic {
    sockhost_plugin_api::transport_suite!(super::classic);
}

mod sharded {
    sockhost_plugin_api::transport_suite!(super::sharded);
}

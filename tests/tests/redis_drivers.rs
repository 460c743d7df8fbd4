//! The cache, queue, rate-limiter and history conformance suites against the built `libsockhost_redis.so`
//! (a real `redis-server` per case) and `libsockhost_redis_cluster.so` (a real three-master
//! Redis Cluster per case).

use sockhost_plugin_api::conformance::Target;
use sockhost_tests::{
    backends::{RedisCluster, RedisServer},
    cdylib,
};

/// Quick retries and polling, so the retry case does not wait a second.
const QUEUE: &str = "retry_base_delay_ms = 10\nretry_max_delay_ms = 50\npoll_interval_ms = 20\n";

fn on_server(driver_config: &str) -> Target {
    let server = RedisServer::start();
    let config = format!("url_override = \"{}\"\n{driver_config}", server.url());
    Target::new(cdylib("sockhost_redis"), "redis", &config).keep(server)
}

fn on_cluster(driver_config: &str) -> Target {
    let cluster = RedisCluster::start();
    let nodes: Vec<String> = cluster.seeds().split(',').map(|s| format!("{s:?}")).collect();
    let config = format!("nodes = [{}]\n{driver_config}", nodes.join(", "));
    Target::new(cdylib("sockhost_redis_cluster"), "redis-cluster", &config).keep(cluster)
}

mod server {
    use super::*;

    fn plain() -> Target {
        on_server("")
    }

    fn queue() -> Target {
        on_server(QUEUE)
    }

    mod cache {
        sockhost_plugin_api::cache_suite!(super::plain);
    }
    mod queue {
        sockhost_plugin_api::queue_suite!(super::queue);
    }
    mod rate_limiter {
        sockhost_plugin_api::rate_limiter_suite!(super::plain);
    }
    mod history {
        sockhost_plugin_api::history_suite!(super::plain);
    }
}

mod cluster {
    use super::*;

    fn plain() -> Target {
        on_cluster("")
    }

    fn queue() -> Target {
        on_cluster(QUEUE)
    }

    mod cache {
        sockhost_plugin_api::cache_suite!(super::plain);
    }
    mod queue {
        sockhost_plugin_api::queue_suite!(super::queue);
    }
    mod rate_limiter {
        sockhost_plugin_api::rate_limiter_suite!(super::plain);
    }
    mod history {
        sockhost_plugin_api::history_suite!(super::plain);
    }
}

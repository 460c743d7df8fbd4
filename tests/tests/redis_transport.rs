//! The transport conformance suite against the built `libsockhost_redis.so` and a real
//! `redis-server` started for each case.

use sockhost_plugin_api::conformance::Target;
use sockhost_tests::{backends::RedisServer, cdylib};

fn redis() -> Target {
    let server = RedisServer::start();
    let config = format!("url = \"{}\"\nprefix = \"conformance:\"\n", server.url());
    Target::new(cdylib("sockhost_redis"), "redis", &config).keep(server)
}

sockhost_plugin_api::transport_suite!(redis);

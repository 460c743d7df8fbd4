//! The transport conformance suite against the built `libsockhost_kafka.so` and a real
//! Kafka-API broker (Tansu) started for each case.

use sockhost_plugin_api::conformance::Target;
use sockhost_tests::{backends::TansuServer, cdylib};

fn kafka() -> Target {
    let server = TansuServer::start();
    // Tansu holds a read's whole wait even when a record comes: a short one.
    let config = format!(
        "brokers = [\"{}\"]\nprefix = \"conformance\"\nfetch_max_wait_ms = 10\n",
        server.broker()
    );
    Target::new(cdylib("sockhost_kafka"), "kafka", &config).keep(server)
}

sockhost_plugin_api::transport_suite!(kafka);

//! The multi-node scenarios over a real Kafka-API broker (Tansu, memory storage), with real
//! `sockhost` processes loading the real `libsockhost_kafka.so`; plus what is this transport's
//! own: the environment variables and its refusals.

use sockhost_tests::{
    backends::TansuServer,
    cluster::{Bus, nodes, refused},
    pusher::{Api, Client, TestApp},
};

fn start() -> (TansuServer, Bus) {
    let tansu = TansuServer::start();
    let bus = Bus::kafka(&tansu.broker());
    (tansu, bus)
}

sockhost_tests::cluster_scenarios!(start);

/// The brokers and prefix from the environment, as Sockudo names them.
#[tokio::test]
async fn the_brokers_and_prefix_come_from_the_environment() {
    let tansu = TansuServer::start();
    let bus = Bus::kafka("127.0.0.1:1")
        .env("KAFKA_BROKERS", &tansu.broker())
        .env("KAFKA_PREFIX", "from-env");
    let servers = nodes(&bus, 2, "").await;
    let app = TestApp::main();
    let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
    on_b.subscribe(&app, "private-room.1;a=b").await;
    let api_a = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api_a.trigger(&["private-room.1;a=b"], "crossed", "yes").await.0, 200);
    assert_eq!(on_b.expect("crossed").await["data"], "yes");
}

/// Brokers that cannot be reached, and a broker that is not host:port, are clear start-up
/// errors.
#[tokio::test]
async fn unreachable_brokers_and_a_bad_address_are_refused_at_start() {
    let (code, log) = refused(&Bus::kafka("127.0.0.1:1"));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("transport driver `kafka`") && log.contains("127.0.0.1:1"), "{log}");

    let (code, log) = refused(&Bus::kafka("kafka://127.0.0.1:9092"));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("adapter.kafka.brokers"), "{log}");
}

//! The multi-node scenarios over a real RabbitMQ node, with real `sockhost` processes loading
//! the real `libsockhost_rabbitmq.so`; plus what is this transport's own: interest routing seen
//! at the broker, the environment variables, and its refusals.

use sockhost_tests::{
    backends::RabbitServer,
    cluster::{self, Bus, nodes, refused},
    pusher::{Api, Client, TestApp},
    tls::Pki,
};

fn start() -> (RabbitServer, Bus) {
    let rabbit = RabbitServer::start();
    let bus = Bus::rabbitmq(&rabbit.url());
    (rabbit, bus)
}

sockhost_tests::cluster_scenarios!(start);

/// The URL and prefix from the environment, as Sockudo names them; one event crosses on a
/// channel whose name holds characters AMQP routing keys keep as they are.
#[tokio::test]
async fn the_url_and_prefix_come_from_the_environment() {
    let rabbit = RabbitServer::start();
    // The table names a broker that does not exist; RABBITMQ_URL overrides it.
    let bus = Bus::rabbitmq("amqp://guest:guest@127.0.0.1:1/%2f")
        .env("RABBITMQ_URL", &rabbit.url())
        .env("RABBITMQ_PREFIX", "from-env");
    let servers = nodes(&bus, 2, "").await;
    let app = TestApp::main();
    let channel = "private-room.1;a=b@c,d";
    let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
    on_b.subscribe(&app, channel).await;
    let api_a = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api_a.trigger(&[channel], "crossed", "yes").await.0, 200);
    assert_eq!(on_b.expect("crossed").await["data"], "yes");
    let queues = rabbit.queues();
    // Each node's queue, beside the queue of what its cap dropped.
    let node_queues = queues.lines().filter(|l| l.starts_with("from-env.node."));
    let (dropped, queues_of_nodes): (Vec<&str>, Vec<&str>) = node_queues
        .partition(|l| l.split_whitespace().next().is_some_and(|n| n.ends_with(".dropped")));
    assert_eq!((queues_of_nodes.len(), dropped.len()), (2, 2), "{queues}");
}

/// A broker that cannot be reached, and a URL that is not AMQP, are clear start-up errors.
#[tokio::test]
async fn an_unreachable_broker_and_a_bad_url_are_refused_at_start() {
    let (code, log) = refused(&Bus::rabbitmq("amqp://guest:guest@127.0.0.1:1/%2f"));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("transport driver `rabbitmq`") && log.contains("127.0.0.1:1"), "{log}");
    assert!(!log.contains("guest:guest"), "the password is shown: {log}");

    let (code, log) = refused(&Bus::rabbitmq("http://127.0.0.1:5672"));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("adapter.rabbitmq.url"), "{log}");
}

/// `amqps://`: the nodes reach a broker that speaks only TLS, by its IP address, trusting a
/// private CA named by `SSL_CERT_FILE`; without it (the system's roots) the broker's
/// certificate is refused at start, with the reason. (lapin without a certificate store's
/// feature speaks plain AMQP to an `amqps://` URL and fails on the broker's first TLS bytes:
/// this is what caught it.)
#[tokio::test]
async fn a_tls_broker_is_reached_through_a_private_ca() {
    let pki = Pki::generate();
    let rabbit = RabbitServer::start_tls(&pki);
    let bus = Bus::rabbitmq(&rabbit.amqps_url());
    cluster::a_tls_broker_is_reached_through_a_private_ca(&bus, &pki.ca(), "rabbitmq").await;
}

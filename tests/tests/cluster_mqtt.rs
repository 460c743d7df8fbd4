//! The multi-node scenarios over a real Mosquitto (MQTT 5), with real `sockhost` processes
//! loading the real `libsockhost_mqtt.so`; plus what is this transport's own: channel names
//! that MQTT gives meaning to, the environment variables, and its refusals.

use sockhost_tests::{
    backends::MosquittoServer,
    cluster::{self, Bus, nodes, refused},
    pusher::{Api, Client, TestApp},
    tls::Pki,
};

fn start() -> (MosquittoServer, Bus) {
    let mosquitto = MosquittoServer::start();
    let bus = Bus::mqtt(&mosquitto.url());
    (mosquitto, bus)
}

sockhost_tests::cluster_scenarios!(start);

/// Channels whose names hold every character Pusher allows cross between nodes (their topics
/// also hold `#` and `:`; `topic.rs` checks `/`, `+`, `$` and `%` too); the URL and prefix come
/// from the environment.
#[tokio::test]
async fn awkward_channel_names_cross_and_the_environment_is_read() {
    let mosquitto = MosquittoServer::start();
    let bus = Bus::mqtt("mqtt://127.0.0.1:1")
        .env("MQTT_URL", &mosquitto.url())
        .env("MQTT_PREFIX", "from-env");
    let servers = nodes(&bus, 2, "").await;
    let app = TestApp::main();
    let api_a = Api::new(&servers[0].http_url(), &app);
    for channel in ["a=b@c,d;e.f_g-h", "private-room.1;a=b"] {
        let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
        on_b.subscribe(&app, channel).await;
        assert_eq!(api_a.trigger(&[channel], "crossed", channel).await.0, 200);
        assert_eq!(on_b.expect("crossed").await["data"], channel);
    }
}

/// A broker that cannot be reached, and a URL that is not MQTT, are clear start-up errors.
#[tokio::test]
async fn an_unreachable_broker_and_a_bad_url_are_refused_at_start() {
    let (code, log) = refused(&Bus::mqtt("mqtt://user:secret@127.0.0.1:1"));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("transport driver `mqtt`") && log.contains("127.0.0.1:1"), "{log}");
    assert!(!log.contains("secret"), "the password is shown: {log}");

    let (code, log) = refused(&Bus::mqtt("http://127.0.0.1:1883"));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("adapter.mqtt.url"), "{log}");
}

/// `mqtts://`: the nodes reach a broker that speaks only TLS, trusting a private CA named by
/// `SSL_CERT_FILE`; without it (the system's roots) the broker's certificate is refused at
/// start, with the reason.
#[tokio::test]
async fn a_tls_broker_is_reached_through_a_private_ca() {
    let pki = Pki::generate();
    let mosquitto = MosquittoServer::start_tls(&pki);
    let bus = Bus::mqtt(&mosquitto.mqtts_url());
    cluster::a_tls_broker_is_reached_through_a_private_ca(&bus, &pki.ca(), "mqtt").await;
}

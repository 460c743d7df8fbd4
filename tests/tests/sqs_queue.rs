//! The `sqs` queue through the built `libsockhost_sqs.so`, against a local SQS-compatible
//! server (moto) started for each test: the queue conformance kit, and webhooks delivered end
//! to end by a real `sockhost` with its credentials from the usual AWS environment variables.

use sockhost_plugin_api::conformance::Target;
use sockhost_tests::{
    backends::SqsServer,
    cdylib,
    pusher::{Client, TestApp},
    server::Server,
    webhook::Receiver,
};

fn sqs() -> Target {
    let server = SqsServer::start();
    let config = format!(
        "endpoint_url = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"test\"\n\
         secret_access_key = \"test\"\nwait_time_seconds = 1\nretry_base_delay_ms = 0\n\
         retry_max_delay_ms = 0\n",
        server.url()
    );
    Target::new(cdylib("sockhost_sqs"), "sqs", &config).keep(server)
}

sockhost_plugin_api::queue_suite!(sqs);

/// A server whose app sends webhooks to `receiver` through the `sqs` queue.
fn server(sqs: &SqsServer, receiver: &Receiver) -> Server {
    Server::builder()
        .config(&format!(
            "[webhooks]\nmax_attempts = 2\n[queue]\ndriver = \"sqs\"\n[queue.sqs]\nendpoint_url = \"{}\"\n\
             wait_time_seconds = 1\nretry_base_delay_ms = 0\nretry_max_delay_ms = 0\n\
             [[app_manager.array.apps]]\nid = \"hooked\"\nkey = \"hooked-key\"\nsecret = \"hooked-secret\"\n\
             [[app_manager.array.apps.webhooks]]\nurl = \"{}\"\n",
            sqs.url(),
            receiver.url
        ))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "eu-west-1")
        .start()
}

#[tokio::test]
async fn webhooks_go_through_sqs_end_to_end() {
    let sqs = SqsServer::start();
    let mut receiver = Receiver::start().await;
    let server = server(&sqs, &receiver);
    let app = TestApp::new("hooked", "hooked-key", "hooked-secret");
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "through-sqs").await;
    assert_eq!(receiver.next().await.names(), ["channel_occupied"]);
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_goes_to_the_dead_letter_queue() {
    let sqs = SqsServer::start();
    let mut receiver = Receiver::start().await;
    receiver.fail_always();
    let server = server(&sqs, &receiver);
    let app = TestApp::new("hooked", "hooked-key", "hooked-secret");
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "doomed").await;
    receiver.next().await;
    receiver.next().await;
    let dead = "sockhost_plugin_events{plugin=\"sqs\",name=\"queue_dead_letters\"}";
    server.wait_for_labelled_metric(dead, sockhost_tests::pusher::PATIENCE, |n| n >= 1.0).await;
}

//! Connection recovery on one node, as Sockudo's protocol 2 speaks it: events carry a position,
//! a reconnected client resumes and gets exactly what it missed, in order, or is told per
//! channel why not; a protocol-7 socket's frames stay Pusher's.

use serde_json::{Value, json};
use sockhost_tests::{
    private_dir,
    pusher::{Api, Client, TestApp},
    server::{Server, run_to_exit},
    workspace_root,
};

fn v2_url(server: &Server, key: &str) -> String {
    format!("ws://127.0.0.1:{}/app/{key}?protocol=2", server.port)
}

fn recovering(max: &str) -> Server {
    Server::builder()
        .env("CONNECTION_RECOVERY_ENABLED", "true")
        .env("CONNECTION_RECOVERY_MAX_BUFFER_SIZE", max)
        .start()
}

/// A protocol-2 client subscribed to `channel` (a private one signed with `app`); the
/// acknowledgement's head.
async fn subscribed(server: &Server, app: &TestApp, channel: &str) -> (Client, String, u64) {
    let mut client = Client::connect_v2(&v2_url(server, &app.key)).await;
    let ack = client.subscribe_v2(app, channel).await;
    let stream_id = ack["stream_id"].as_str().unwrap_or_else(|| panic!("{ack}")).to_string();
    (client, stream_id, ack["serial"].as_u64().unwrap())
}

/// The data of a frame whose data is a JSON string.
fn data(frame: &Value) -> Value {
    serde_json::from_str(frame["data"].as_str().unwrap_or_else(|| panic!("{frame}"))).unwrap()
}

async fn publish(api: &Api, channel: &str, events: std::ops::Range<u32>) {
    for n in events {
        assert_eq!(api.trigger(&[channel], "tick", &n.to_string()).await.0, 200);
    }
}

#[tokio::test]
async fn a_reconnected_client_gets_exactly_what_it_missed_in_order() {
    let server = recovering("100");
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let (mut first, stream_id, head) = subscribed(&server, &app, "news").await;
    assert_eq!(head, 0);
    let mut v7 = Client::connect(&server.ws_url(&app.key)).await;
    v7.subscribe(&app, "news").await;
    publish(&api, "news", 1..4).await;
    let mut last = 0;
    for expected in 1..4 {
        let event = first.expect("tick").await;
        assert_eq!(event["serial"], expected, "{event}");
        assert_eq!(event["stream_id"], stream_id.as_str());
        assert!(event["message_id"].is_string(), "{event}");
        last = expected;
        // Pusher's frames carry no position.
        let plain = v7.expect("tick").await;
        assert!(plain.get("serial").is_none() && plain.get("message_id").is_none(), "{plain}");
    }
    drop(first);
    // Missed while away.
    publish(&api, "news", 4..7).await;
    let (mut again, same, head) = subscribed(&server, &app, "news").await;
    assert_eq!((same.as_str(), head), (stream_id.as_str(), 6));
    let position = json!({ "stream_id": stream_id, "serial": last });
    let resume = json!({ "channel_positions": { "news": position } });
    again.send(json!({ "event": "sockudo:resume", "data": resume.to_string() })).await;
    for expected in 4..7 {
        let event = again.expect_any().await;
        assert_eq!((event["event"].as_str(), &event["serial"]), (Some("tick"), &json!(expected)));
    }
    let success = again.expect("sockudo:resume_success").await;
    let summary = data(&success);
    assert_eq!(summary["recovered"][0]["channel"], "news", "{summary}");
    assert_eq!(summary["recovered"][0]["replayed"], 3);
    assert_eq!(summary["recovered"][0]["position"]["serial"], 6);
    assert_eq!(summary["failed"], json!([]));
    // Live again, after the replay.
    publish(&api, "news", 7..8).await;
    assert_eq!(again.expect("tick").await["serial"], 7);
}

/// A channel subscribed again on the same stream keeps its first acknowledgement's head: what
/// came after it came live, and a resume from before it replays only what came before.
#[tokio::test]
async fn subscribing_again_does_not_make_a_resume_replay_what_came_live() {
    let server = recovering("100");
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let (_early, stream_id, _) = subscribed(&server, &app, "news").await;
    publish(&api, "news", 1..3).await;
    let (mut client, _, head) = subscribed(&server, &app, "news").await;
    assert_eq!(head, 2);
    publish(&api, "news", 3..5).await;
    assert_eq!(client.expect("tick").await["serial"], 3);
    assert_eq!(client.expect("tick").await["serial"], 4);
    let again = client.subscribe_v2(&app, "news").await;
    assert_eq!(again["serial"], 4, "{again}");
    let resume =
        json!({ "channel_positions": { "news": { "stream_id": stream_id, "serial": 0 } } });
    client.send(json!({ "event": "sockudo:resume", "data": resume })).await;
    assert_eq!(client.expect_any().await["serial"], 1);
    assert_eq!(client.expect_any().await["serial"], 2);
    let summary = data(&client.expect_any().await);
    assert_eq!(summary["recovered"][0]["replayed"], 2, "3 and 4 came live: {summary}");
}

/// A resume waiting for a subscribe that is then refused (a wrong signature) is answered at
/// once: the channel failed, not after the 30 s a missing subscribe is waited for.
#[tokio::test]
async fn a_resume_waiting_for_a_refused_subscribe_is_answered_at_once() {
    let server = recovering("100");
    let app = TestApp::main();
    let mut client = Client::connect_raw(&v2_url(&server, &app.key)).await;
    client.expect("sockudo:connection_established").await;
    let position = json!({ "stream_id": "gone", "serial": 3 });
    let resume = json!({ "channel_positions": { "private-orders": position } });
    client.send(json!({ "event": "sockudo:resume", "data": resume })).await;
    let subscribe = json!({ "channel": "private-orders", "auth": format!("{}:0000", app.key) });
    client.send(json!({ "event": "sockudo:subscribe", "data": subscribe })).await;
    let refused = client.expect_any().await;
    assert!(
        refused["event"].as_str().is_some_and(|e| e.ends_with("subscription_error")),
        "{refused}"
    );
    assert_eq!(client.expect("sockudo:resume_failed").await["channel"], "private-orders");
    let summary = data(&client.expect("sockudo:resume_success").await);
    assert_eq!(summary["failed"][0]["channel"], "private-orders", "{summary}");
    assert_eq!(summary["recovered"], json!([]));
}

#[tokio::test]
async fn a_resume_before_its_subscribe_is_answered_when_the_subscribe_lands() {
    let server = recovering("100");
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let (first, stream_id, _) = subscribed(&server, &app, "news").await;
    drop(first);
    publish(&api, "news", 1..3).await;
    let mut client = Client::connect_raw(&v2_url(&server, &app.key)).await;
    client.expect("sockudo:connection_established").await;
    let resume =
        json!({ "channel_positions": { "news": { "stream_id": stream_id, "serial": 0 } } });
    client.send(json!({ "event": "sockudo:resume", "data": resume })).await;
    client.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "news" } })).await;
    assert_eq!(client.expect_any().await["event"], "sockudo_internal:subscription_succeeded");
    assert_eq!(client.expect_any().await["serial"], 1);
    assert_eq!(client.expect_any().await["serial"], 2);
    let summary = data(&client.expect("sockudo:resume_success").await);
    assert_eq!(summary["recovered"][0]["replayed"], 2, "{summary}");
}

#[tokio::test]
async fn a_channel_that_cannot_be_recovered_is_said_so_with_sockudos_codes() {
    let server = recovering("5");
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let (first, stream_id, _) = subscribed(&server, &app, "news").await;
    drop(first);
    publish(&api, "news", 1..11).await;
    // Back, subscribed again at the head (10): five events are held, eight were missed.
    let (mut client, _, head) = subscribed(&server, &app, "news").await;
    assert_eq!(head, 10);
    let cases = [
        (json!({ "stream_id": "another", "serial": 9 }), "stream_reset"),
        (json!({ "stream_id": stream_id, "serial": 2 }), "position_expired"),
        // Ahead of the head: Sockudo says the same.
        (json!({ "stream_id": stream_id, "serial": 99 }), "position_expired"),
    ];
    for (position, code) in cases {
        let resume = json!({ "channel_positions": { "news": position } });
        client.send(json!({ "event": "sockudo:resume", "data": resume })).await;
        let failed = client.expect("sockudo:resume_failed").await;
        assert_eq!(
            (failed["channel"].as_str(), &data(&failed)["code"]),
            (Some("news"), &json!(code))
        );
        let summary = data(&client.expect("sockudo:resume_success").await);
        assert_eq!(
            (summary["recovered"].clone(), &summary["failed"][0]["code"]),
            (json!([]), &json!(code))
        );
    }
    client.send(json!({ "event": "sockudo:resume", "data": { "channel_positions": {} } })).await;
    assert_eq!(client.expect("sockudo:error").await["data"]["code"], 4302);
    client.send(json!({ "event": "sockudo:resume", "data": {} })).await;
    assert_eq!(client.expect("sockudo:error").await["data"]["code"], 4000);
}

/// The node keeps its events for resumes within `connection_recovery.max_memory_mb` (here 1
/// MiB, from the environment): past it, the channels used longest ago are forgotten, and a
/// resume that needed their events is told `position_expired`, never a partial replay.
#[tokio::test]
async fn the_node_forgets_the_channels_used_longest_ago_past_its_memory() {
    let server = Server::builder()
        .env("CONNECTION_RECOVERY_ENABLED", "true")
        .env("CONNECTION_RECOVERY_MAX_MEMORY_MB", "1")
        .start();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let (first, stream_id, _) = subscribed(&server, &app, "quiet").await;
    drop(first);
    publish(&api, "quiet", 1..3).await;
    // 1.35 MB over five busier channels, each within its own 256 KiB.
    let filler = "x".repeat(9000);
    for n in 0..30 {
        for channel in ["busy-0", "busy-1", "busy-2", "busy-3", "busy-4"] {
            assert_eq!(api.trigger(&[channel], "tick", &format!("{n}{filler}")).await.0, 200);
        }
    }
    assert!(server.metric("sockhost_recovery_buffers_evicted_total").await >= 1.0);
    let kept = server.metric("sockhost_recovery_buffer_bytes").await;
    assert!(kept > 0.0 && kept <= 1024.0 * 1024.0, "{kept}");

    let (mut client, _, head) = subscribed(&server, &app, "quiet").await;
    assert_eq!(head, 2);
    let position = json!({ "stream_id": stream_id, "serial": 0 });
    let resume = json!({ "channel_positions": { "quiet": position } });
    client.send(json!({ "event": "sockudo:resume", "data": resume })).await;
    let failed = client.expect("sockudo:resume_failed").await;
    assert_eq!(data(&failed)["code"], "position_expired", "{failed}");
    client.expect("sockudo:resume_success").await;
}

#[test]
fn recovery_is_refused_at_start_on_a_transport_between_nodes() {
    let dir = private_dir();
    let manifest = workspace_root().join("plugins.toml").display().to_string();
    let (code, out) = run_to_exit(
        dir.path(),
        &["--plugins", &manifest],
        &[("CONNECTION_RECOVERY_ENABLED", "true"), ("ADAPTER_DRIVER", "redis")],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("connection_recovery.enabled") && out.contains("local"), "{out}");
}

/// A client that drops after serial 20 of `channel` while 200 events are published, comes
/// back and resumes (before its subscribe, or after it); every serial it got after coming
/// back, in arrival order.
async fn reconnect_during_a_flood(server: &Server, channel: &str, resume_first: bool) -> Vec<u64> {
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let (mut first, stream_id, _) = subscribed(server, &app, channel).await;
    let flood = {
        let (api, channel) = (api.clone(), channel.to_string());
        tokio::spawn(async move { publish(&api, &channel, 1..201).await })
    };
    let mut last = 0;
    while last < 20 {
        last = first.expect("tick").await["serial"].as_u64().unwrap();
    }
    drop(first);
    let mut again = Client::connect_raw(&v2_url(server, &app.key)).await;
    again.expect("sockudo:connection_established").await;
    let position = json!({ "stream_id": stream_id, "serial": last });
    let resume = json!({ "event": "sockudo:resume", "data": { "channel_positions": { channel: position } } });
    let subscribe = json!({ "event": "sockudo:subscribe", "data": { "channel": channel } });
    let order = if resume_first { [resume, subscribe] } else { [subscribe, resume] };
    for message in order {
        again.send(message).await;
    }
    let (mut serials, mut summarized) = (Vec::new(), false);
    while !(summarized && serials.contains(&200)) {
        let message = again.expect_any().await;
        match message["event"].as_str() {
            Some("tick") => serials.push(message["serial"].as_u64().unwrap()),
            Some("sockudo:resume_success") => {
                assert_eq!(data(&message)["failed"], json!([]), "{message}");
                summarized = true;
            }
            Some("sockudo_internal:subscription_succeeded") => {}
            _ => panic!("unexpected {message}"),
        }
    }
    flood.await.unwrap();
    serials.retain(|s| *s > last);
    serials
}

#[tokio::test]
async fn events_published_during_a_reconnect_arrive_exactly_once() {
    let server = recovering("1000");
    // Resumed before its subscribe: replayed right after the acknowledgement, then live; in
    // order.
    let in_order = reconnect_during_a_flood(&server, "first", true).await;
    let expected: Vec<u64> = (in_order[0]..=200).collect();
    assert_eq!(in_order, expected);
    assert_eq!(in_order[0], 21, "nothing after 20 is missing");
    // Resumed after it (as sockudo-js does): the events before the acknowledgement replayed,
    // the later ones live; each once.
    let mut once = reconnect_during_a_flood(&server, "second", false).await;
    once.sort_unstable();
    assert_eq!(once, (21..=200).collect::<Vec<u64>>());
}

#[tokio::test]
async fn sockudos_own_python_client_recovers_through_a_cut() {
    let server = recovering("100");
    let app = TestApp::main();
    let script = workspace_root().join("tests/fixtures/sockudo_python_recovery.py");
    let args = [server.port.to_string(), app.id.clone(), app.key.clone(), app.secret.clone()];
    // sockudo-python 2.2.0 (installed by scripts/deps) through a proxy that cuts the connection
    // while events 3 to 5 are published; the script waits for each event and prints them.
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args(&args)
            .arg("py-recovery")
            .output()
            .expect("python3 runs")
    });
    let output = run.await.unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "[1, 2, 3, 4, 5, 6]", "{stderr}");
    let resumed = server.labelled_metric(r#"sockhost_resumes_total{outcome="started"}"#).await;
    assert!(resumed >= 1.0, "the client came back through a resume: {resumed}");
}

/// Client events take positions as the HTTP API's events do (Sockudo's protocol 2 gives them
/// serials too): a protocol-2 subscriber gets them positioned, a protocol-7 one gets Pusher's
/// frame, the protocol-2 sender gets its own back (protocol 2's echo), and a subscriber that
/// was away gets them in its resume, in order with the API's events.
#[tokio::test]
async fn client_events_take_positions_and_come_back_in_a_resume() {
    let server = recovering("100");
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let channel = "private-chat";
    let typing =
        |n: u32| json!({ "event": "client-typing", "channel": channel, "data": { "n": n } });
    let (mut sender, _, _) = subscribed(&server, &app, channel).await;
    let (mut away, stream_id, head) = subscribed(&server, &app, channel).await;
    assert_eq!(head, 0);
    let mut v7 = Client::connect(&server.ws_url(&app.key)).await;
    v7.subscribe(&app, channel).await;

    sender.send(typing(1)).await;
    assert_eq!(sender.expect("client-typing").await["serial"], 1);
    let got = away.expect("client-typing").await;
    assert_eq!(got["serial"], 1, "{got}");
    assert_eq!(got["stream_id"], stream_id.as_str());
    assert!(got["message_id"].is_string(), "{got}");
    assert_eq!(got["data"], json!({ "n": 1 }));
    let plain = v7.expect("client-typing").await;
    assert!(plain.get("serial").is_none() && plain.get("message_id").is_none(), "{plain}");
    drop(away);

    // Missed while away: a client event, then an API event.
    sender.send(typing(2)).await;
    assert_eq!(v7.expect("client-typing").await["data"], json!({ "n": 2 }));
    publish(&api, channel, 3..4).await;
    assert_eq!(sender.expect("client-typing").await["serial"], 2);
    assert_eq!(sender.expect("tick").await["serial"], 3);

    let (mut again, same, head) = subscribed(&server, &app, channel).await;
    assert_eq!((same.as_str(), head), (stream_id.as_str(), 3));
    let position = json!({ "stream_id": stream_id, "serial": 1 });
    let resume = json!({ "channel_positions": { channel: position } });
    again.send(json!({ "event": "sockudo:resume", "data": resume.to_string() })).await;
    let missed = again.expect_any().await;
    assert_eq!((missed["event"].as_str(), &missed["serial"]), (Some("client-typing"), &json!(2)));
    assert_eq!(missed["data"], json!({ "n": 2 }));
    let missed = again.expect_any().await;
    assert_eq!((missed["event"].as_str(), &missed["serial"]), (Some("tick"), &json!(3)));
    let success = again.expect("sockudo:resume_success").await;
    assert_eq!(data(&success)["recovered"][0]["replayed"], 2, "{success}");
}

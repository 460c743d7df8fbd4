//! Channels: public, private, presence and encrypted subscriptions, their refusals, and
//! delivery of HTTP API triggers to subscribers.

use serde_json::json;
use sockhost_tests::{
    pusher::{Api, Client, TestApp},
    server::Server,
};

fn data_of(message: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(message["data"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn a_public_subscriber_receives_triggers_until_it_unsubscribes() {
    let server = Server::start();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    let ack = client.subscribe(&app, "news").await;
    assert_eq!(ack["channel"], "news");
    assert_eq!(ack["data"], "{}");

    assert_eq!(api.trigger(&["news"], "headline", r#"{"n":1}"#).await.0, 200);
    let event = client.expect("headline").await;
    assert_eq!(event, json!({ "event": "headline", "channel": "news", "data": "{\"n\":1}" }));

    client.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "news" } })).await;
    client.subscribe(&app, "marker").await;
    api.trigger(&["news"], "headline", "after").await;
    api.trigger(&["marker"], "marker", "m").await;
    // The marker was triggered after the event to the unsubscribed channel, so it proves that
    // event was not delivered.
    assert_eq!(client.expect("marker").await["channel"], "marker");
    client.expect_nothing().await;
}

#[tokio::test]
async fn private_channels_need_the_right_signature() {
    let server = Server::start();
    let app = TestApp::main();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    let sid = client.socket_id.clone();

    let missing = client.subscribe_raw("private-a", None, None).await;
    assert_eq!(missing["event"], "pusher:subscription_error");
    assert_eq!(missing["channel"], "private-a");
    assert_eq!(missing["data"]["type"], "AuthError");
    assert_eq!(missing["data"]["status"], 401);

    let other_socket = app.auth("1.1", "private-a", None);
    assert_eq!(
        client.subscribe_raw("private-a", Some(other_socket), None).await["data"]["status"],
        401
    );
    let other_channel = app.auth(&sid, "private-b", None);
    assert_eq!(
        client.subscribe_raw("private-a", Some(other_channel), None).await["data"]["status"],
        401
    );
    let wrong_secret =
        TestApp::new("app-1", "key-1", "not-the-secret").auth(&sid, "private-a", None);
    assert_eq!(
        client.subscribe_raw("private-a", Some(wrong_secret), None).await["data"]["status"],
        401
    );
    let wrong_key = TestApp::new("app-1", "key-2", "secret-1").auth(&sid, "private-a", None);
    assert_eq!(
        client.subscribe_raw("private-a", Some(wrong_key), None).await["data"]["status"],
        401
    );

    let ok = client.subscribe_raw("private-a", Some(app.auth(&sid, "private-a", None)), None).await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let api = Api::new(&server.http_url(), &app);
    api.trigger(&["private-a"], "secret", "s").await;
    assert_eq!(client.expect("secret").await["data"], "s");
}

#[tokio::test]
async fn encrypted_channels_authorise_like_private_ones() {
    let server = Server::start();
    let app = TestApp::main();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    let channel = "private-encrypted-vault";
    assert_eq!(client.subscribe_raw(channel, None, None).await["data"]["status"], 401);
    client.subscribe(&app, channel).await;
}

#[tokio::test]
async fn invalid_channel_names_are_refused() {
    let server = Server::start();
    let app = TestApp::limited();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    for name in ["has space", "#private", "ünïcode", &"x".repeat(31)] {
        let answer = client.subscribe_raw(name, None, None).await;
        assert_eq!(answer["event"], "pusher:subscription_error", "{name}");
        assert_eq!(answer["data"]["type"], "InvalidChannel", "{name}");
        assert_eq!(answer["data"]["status"], 400, "{name}");
    }
    // A user's server-to-user channel is only for that user, signed in.
    let answer = client.subscribe_raw("#server-to-user-1", None, None).await;
    assert_eq!(answer["event"], "pusher:subscription_error");
    assert_eq!(answer["data"]["status"], 403);
    client.subscribe(&app, &"x".repeat(30)).await;
    client.subscribe(&app, "a-b_c=d@e,f.g;h").await;
}

#[tokio::test]
async fn presence_members_join_and_leave_and_a_user_counts_once() {
    let server = Server::start();
    let app = TestApp::main();
    let channel = "presence-room";
    let mut alice = Client::connect(&server.ws_url(&app.key)).await;
    let joined = alice.join(&app, channel, "alice", json!({ "name": "Alice" })).await;
    assert_eq!(
        joined,
        json!({ "presence": { "ids": ["alice"], "hash": { "alice": { "name": "Alice" } }, "count": 1 } })
    );

    let mut bob = Client::connect(&server.ws_url(&app.key)).await;
    let joined = bob.join(&app, channel, "bob", json!({ "name": "Bob" })).await;
    assert_eq!(joined["presence"]["count"], 2);
    assert_eq!(joined["presence"]["hash"]["alice"], json!({ "name": "Alice" }));
    let added = alice.expect("pusher_internal:member_added").await;
    assert_eq!(added["channel"], channel);
    assert_eq!(data_of(&added), json!({ "user_id": "bob", "user_info": { "name": "Bob" } }));

    // Bob again on a second connection: counted once, announced to nobody.
    let mut bob_again = Client::connect(&server.ws_url(&app.key)).await;
    let joined = bob_again.join(&app, channel, "bob", json!({ "name": "Bob" })).await;
    assert_eq!(joined["presence"]["count"], 2);
    let api = Api::new(&server.http_url(), &app);
    let (status, info) = api
        .get(&format!("/channels/{channel}"), &[("info", "user_count,subscription_count")])
        .await;
    assert_eq!(status, 200);
    assert_eq!(info, json!({ "occupied": true, "user_count": 2, "subscription_count": 3 }));

    // Bob's first connection leaves: he is still there on the other one.
    bob.close().await;
    // Bob's last connection leaves: now he is gone, and alice is told.
    bob_again.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } })).await;
    let removed = alice.expect("pusher_internal:member_removed").await;
    assert_eq!(data_of(&removed), json!({ "user_id": "bob" }));
    let (_, users) = api.get(&format!("/channels/{channel}/users"), &[]).await;
    assert_eq!(users, json!({ "users": [{ "id": "alice" }] }));
}

#[tokio::test]
async fn presence_refuses_bad_channel_data_and_enforces_its_limits() {
    let server = Server::start();
    let app = TestApp::small();
    let channel = "presence-small";
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    let sid = client.socket_id.clone();

    let no_data = client.subscribe_raw(channel, Some(app.auth(&sid, channel, None)), None).await;
    assert_eq!(no_data["event"], "pusher:subscription_error");
    // channel_data is part of what is signed: a signature without it does not cover it.
    let data = json!({ "user_id": "u1" }).to_string();
    let unsigned = client
        .subscribe_raw(channel, Some(app.auth(&sid, channel, None)), Some(data.clone()))
        .await;
    assert_eq!(unsigned["data"]["status"], 401);
    for bad in [
        json!({ "user_info": {} }).to_string(),
        "not json".to_string(),
        json!({ "user_id": "x".repeat(129) }).to_string(),
    ] {
        let answer = client
            .subscribe_raw(channel, Some(app.auth(&sid, channel, Some(&bad))), Some(bad.clone()))
            .await;
        assert_eq!(answer["data"]["type"], "InvalidChannelData", "{bad}");
        assert_eq!(answer["data"]["status"], 400, "{bad}");
    }
    let big = json!({ "user_id": "u1", "user_info": { "bio": "x".repeat(1100) } }).to_string();
    let answer = client
        .subscribe_raw(channel, Some(app.auth(&sid, channel, Some(&big))), Some(big.clone()))
        .await;
    assert_eq!(answer["data"]["status"], 413, "{answer}");

    // The limited app allows two members.
    client.join(&app, channel, "u1", json!({})).await;
    let mut second = Client::connect(&server.ws_url(&app.key)).await;
    second.join(&app, channel, "u2", json!({})).await;
    client.expect("pusher_internal:member_added").await;

    let mut third = Client::connect(&server.ws_url(&app.key)).await;
    let u3 = json!({ "user_id": "u3" }).to_string();
    let auth = app.auth(&third.socket_id, channel, Some(&u3));
    let full = third.subscribe_raw(channel, Some(auth.clone()), Some(u3.clone())).await;
    assert_eq!(full["data"]["type"], "LimitReached", "{full}");
    assert_eq!(full["data"]["status"], 403);

    // A user already present may add a connection to a full channel.
    let mut u1_again = Client::connect(&server.ws_url(&app.key)).await;
    assert_eq!(u1_again.join(&app, channel, "u1", json!({})).await["presence"]["count"], 2);

    second.close().await;
    client.expect("pusher_internal:member_removed").await;
    let answer = third.subscribe_raw(channel, Some(auth), Some(u3)).await;
    assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
}

//! Cache channels: the last event is kept through the cache driver and replayed to new
//! subscribers; an empty cache says `pusher:cache_miss`. Private and presence cache channels
//! authorise exactly like their plain counterparts.

use serde_json::json;
use sockhost_tests::{
    pusher::{Api, Client, TestApp},
    server::Server,
};

#[tokio::test]
async fn the_last_event_is_replayed_to_a_new_subscriber() {
    let server = Server::start();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let mut first = Client::connect(&server.ws_url(&app.key)).await;
    first.subscribe(&app, "cache-prices").await;
    assert_eq!(first.expect("pusher:cache_miss").await["channel"], "cache-prices");
    let (_, info) = api.get("/channels/cache-prices", &[("info", "cached")]).await;
    assert_eq!(info["cached"], false, "{info}");

    api.trigger(&["cache-prices"], "price", "1").await;
    api.trigger(&["cache-prices"], "price", "2").await;
    assert_eq!(first.expect("price").await["data"], "1");
    assert_eq!(first.expect("price").await["data"], "2");

    let mut late = Client::connect(&server.ws_url(&app.key)).await;
    late.subscribe(&app, "cache-prices").await;
    let replayed = late.expect("price").await;
    assert_eq!(replayed, json!({ "event": "price", "channel": "cache-prices", "data": "2" }));
    let (_, info) = api.get("/channels/cache-prices", &[("info", "cached")]).await;
    assert_eq!(info["cached"], true, "{info}");
    let (status, _) = api.get("/channels/plain", &[("info", "cached")]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn private_and_presence_cache_channels_need_their_signatures() {
    let server = Server::start();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let mut client = Client::connect(&server.ws_url(&app.key)).await;

    for channel in ["private-cache-ledger", "presence-cache-room", "private-encrypted-cache-vault"]
    {
        let refused = client.subscribe_raw(channel, None, None).await;
        assert_eq!(refused["event"], "pusher:subscription_error", "{channel}: {refused}");
        assert_eq!(refused["data"]["status"], 401, "{channel}");
    }
    api.trigger(&["private-cache-ledger"], "entry", "secret").await;
    client.subscribe(&app, "private-cache-ledger").await;
    assert_eq!(client.expect("entry").await["data"], "secret");

    let members = client.join(&app, "presence-cache-room", "m1", json!({})).await;
    assert_eq!(members["presence"]["count"], 1);
    client.expect("pusher:cache_miss").await;
}

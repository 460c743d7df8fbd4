//! Redis Sentinel, the reference's way (`[database.redis]` `sentinels` and `name`): two real
//! `sockhost` nodes find the master through three real sentinels, and when the master is
//! killed and the sentinels promote its replica, the transport and the queue driver follow it:
//! delivery across nodes and webhooks resume, with the time it took in the test log.

use std::time::Instant;

use serde_json::json;
use sockhost_tests::{
    backends::SentinelGroup,
    cluster::{Bus, CLUSTER_SECRET, nodes},
    pusher::{Api, Client, PATIENCE, TestApp},
};

fn bus(group: &SentinelGroup) -> Bus {
    Bus {
        adapter: format!(
            "[adapter]\ndriver = \"redis\"\n[adapter.redis]\nprefix = \"sentinel-test:\"\n\
             [queue]\ndriver = \"redis\"\n[queue.redis]\nprefix = \"sentinel-test:\"\n\
             [database.redis]\nname = \"mymaster\"\n{}\n",
            group.sentinels_toml()
        ),
        plugin: "redis",
        env: vec![("ADAPTER_CLUSTER_SECRET".into(), CLUSTER_SECRET.into())],
        manifest: None,
        history: None,
    }
}

#[tokio::test]
async fn nodes_follow_the_master_the_sentinels_promote() {
    let mut group = SentinelGroup::start();
    let mut receiver = sockhost_tests::webhook::Receiver::start().await;
    let hooks = format!(
        "[[app_manager.array.apps]]\nid = \"hooked\"\nkey = \"hooked-key\"\nsecret = \"hooked-secret\"\n\
         [[app_manager.array.apps.webhooks]]\nurl = \"{}\"\nevent_types = [\"channel_occupied\"]\n",
        receiver.url
    );
    let servers = nodes(&bus(&group), 2, &hooks).await;
    for server in &servers {
        assert!(server.log().contains("Sentinels named the Redis master"), "{}", server.log());
    }
    let app = TestApp::new("hooked", "hooked-key", "hooked-secret");
    let mut on_a = Client::connect(&servers[0].ws_url(&app.key)).await;
    on_a.subscribe(&app, "before").await;
    assert_eq!(
        receiver.next_event().await,
        json!({ "name": "channel_occupied", "channel": "before" })
    );
    let api_b = Api::new(&servers[1].http_url(), &app);
    assert_eq!(api_b.trigger(&["before"], "one", "1").await.0, 200);
    assert_eq!(on_a.expect("one").await["data"], "1");

    let replica = group.replica.port;
    let killed = Instant::now();
    group.master.kill();
    // Each node's redis plugin (transport and queue) hears the sentinels' switch notice, and
    // the transport's subscriber moves to the new master.
    for server in &servers {
        let switches = "sockhost_plugin_events{plugin=\"redis\",name=\"master_switches\"}";
        server.wait_for_labelled_metric(switches, PATIENCE * 3, |n| n >= 2.0).await;
        let reconnects = "sockhost_plugin_events{plugin=\"redis\",name=\"reconnects\"}";
        server.wait_for_labelled_metric(reconnects, PATIENCE, |n| n >= 1.0).await;
    }
    println!(
        "the nodes followed the new master {:?} after the old one was killed",
        killed.elapsed()
    );
    assert_eq!(group.master_port(), Some(replica));

    // Delivery across nodes and webhooks through the queue work again, on the new master.
    on_a.subscribe(&app, "after").await;
    // Replication is asynchronous: a webhook finished just before the kill may not have
    // reached the replica as finished, and is delivered again (webhooks are at least once).
    let before = json!({ "name": "channel_occupied", "channel": "before" });
    let mut next = receiver.next_event().await;
    while next == before {
        next = receiver.next_event().await;
    }
    assert_eq!(next, json!({ "name": "channel_occupied", "channel": "after" }));
    assert_eq!(api_b.trigger(&["after"], "two", "2").await.0, 200);
    assert_eq!(on_a.expect("two").await["data"], "2");
    println!("delivery and webhooks resumed {:?} after the master was killed", killed.elapsed());
}

/// A Sentinel setting the server cannot use is a one-line refusal, not a silent fallback to
/// 127.0.0.1:6379; an unknown `[database.redis]` field is refused by name, and so are the
/// reference's settings that mean nothing here (client options, cluster mode on one server).
#[test]
fn sentinels_that_do_not_answer_and_unknown_fields_are_refused() {
    let dir = sockhost_tests::private_dir();
    let port = sockhost_tests::server::free_port();
    let plugins = sockhost_tests::workspace_root().join("plugins.toml");
    let run = |database: &str| {
        let config = dir.path().join("sockhost.toml");
        // A whole file, or lines for [database.redis] under the redis transport.
        let text = if database.starts_with('[') {
            database.to_string()
        } else {
            format!("[adapter]\ndriver = \"redis\"\n[database.redis]\n{database}\n")
        };
        std::fs::write(&config, text).unwrap();
        sockhost_tests::server::run_to_exit(
            dir.path(),
            &["--config", config.to_str().unwrap(), "--plugins", plugins.to_str().unwrap()],
            &[("PORT", "0"), ("METRICS_ENABLED", "false"), ("REDIS_URL", "")],
        )
    };
    let (code, out) = run(&format!("sentinels = [{{ host = \"127.0.0.1\", port = {port} }}]"));
    assert_ne!(code, Some(0));
    assert!(out.contains("database.redis.sentinels") && out.contains("mymaster"), "{out}");
    let (code, out) = run("sentinel_hosts = [\"x\"]");
    assert_ne!(code, Some(0));
    assert!(out.contains("sentinel_hosts"), "{out}");
    let (code, out) =
        run("[adapter]\ndriver = \"redis\"\n[adapter.redis]\nredis_pub_options = { retry = 1 }\n");
    assert_ne!(code, Some(0));
    assert!(out.contains("adapter.redis.redis_pub_options.retry: not supported"), "{out}");
    let (code, out) = run("[cache]\ndriver = \"redis\"\n[cache.redis]\ncluster_mode = true\n");
    assert_ne!(code, Some(0));
    assert!(out.contains("cache.redis.cluster_mode"), "{out}");
}

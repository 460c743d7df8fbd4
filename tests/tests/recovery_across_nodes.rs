//! Connection recovery across nodes, beyond the scenario every transport runs
//! (`a_client_resumes_on_any_node`): what a node does when the bus loses an event.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use sockhost_plugin_api::{
    Retention,
    abi::{RStr, RVec},
    conformance::Target,
};
use sockhost_tests::{
    backends::{RedisServer, redis_cli},
    cdylib,
    cluster::{Bus, nodes},
    pusher::{Api, Client, PATIENCE, TestApp},
    server::Server,
};

/// The nodes' extra configuration: recovery on, with the bus's Redis as the history store.
fn recovering(bus: &Bus) -> String {
    let history = bus.history.clone().expect("a Redis bus has a history table");
    format!("[connection_recovery]\nenabled = true\n{history}")
}

/// An event the bus lost: in the store (written through the real redis history driver, as a
/// node's publish writes it) but never broadcast. The next event over the bus shows the node
/// the gap, which it fills from the store before delivering: the subscriber gets both, in
/// serial order, and the repair is counted.
#[tokio::test]
async fn a_node_fills_a_gap_the_bus_left_from_the_store() {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "gap:");
    let extra = recovering(&bus);
    let servers = nodes(&bus, 2, &extra).await;
    let app = TestApp::main();
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[0].port, app.key);
    let mut on_a = Client::connect_raw(&url).await;
    on_a.expect("sockudo:connection_established").await;
    on_a.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "news" } })).await;
    let ack = on_a.expect("sockudo_internal:subscription_succeeded").await;
    assert_eq!(ack["serial"], 0, "{ack}");

    // The lost one: appended as a node appends, with no broadcast.
    let config = format!("url_override = \"{}\"\nprefix = \"gap:history:\"\n", redis.url());
    let store = Target::new(cdylib("sockhost_redis"), "redis", &config).history().await;
    let frame = json!({ "event": "tick", "channel": "news", "data": "lost" }).to_string();
    let record = json!({ "m": "lost-1", "f": frame }).to_string();
    let retention = Retention { max_events: 1000, max_age_ms: 86_400_000 };
    let appended = store
        .append(
            RStr::from_str(&app.id),
            RStr::from_str("news"),
            RVec::from(vec![RVec::from(record.into_bytes())]),
            retention,
        )
        .await
        .into_result()
        .unwrap();
    assert_eq!(appended.serial, 1);

    let api_b = Api::new(&servers[1].http_url(), &app);
    assert_eq!(api_b.trigger(&["news"], "tick", "after").await.0, 200);
    let first = on_a.expect("tick").await;
    assert_eq!((first["serial"].as_u64(), first["data"].as_str()), (Some(1), Some("lost")));
    assert_eq!(first["message_id"], "lost-1");
    let second = on_a.expect("tick").await;
    assert_eq!((second["serial"].as_u64(), second["data"].as_str()), (Some(2), Some("after")));
    assert!(servers[0].metric("sockhost_recovery_repaired_total").await >= 1.0);
}

/// With history on and the store down, a publish is refused with 503 rather than broadcast
/// without a position that no resume could recover, and a resume is answered at once with
/// `persistence_unavailable` (the subscription goes on, without a position).
#[tokio::test]
async fn a_publish_the_store_cannot_take_is_refused() {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "down:");
    let extra = recovering(&bus);
    let servers = nodes(&bus, 1, &extra).await;
    let app = TestApp::main();
    let mut v7 = Client::connect(&servers[0].ws_url(&app.key)).await;
    v7.subscribe(&app, "news").await;
    let api = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api.trigger(&["news"], "tick", "kept").await.0, 200);
    assert_eq!(v7.expect("tick").await["data"], "kept");
    assert_eq!(api.trigger(&["cache-news"], "tick", "kept").await.0, 200);
    drop(redis);
    let (status, body) = api.trigger(&["news"], "tick", "not kept").await;
    assert_eq!(status, 503, "{body}");
    assert!(servers[0].metric("sockhost_history_errors_total").await >= 1.0);
    // A cache channel's last event stays the one that went out: the refused one is not
    // handed to the next subscriber.
    let (status, body) = api.trigger(&["cache-news"], "tick", "not kept").await;
    assert_eq!(status, 503, "{body}");
    let mut late = Client::connect(&servers[0].ws_url(&app.key)).await;
    late.subscribe(&app, "cache-news").await;
    assert_eq!(late.expect("tick").await["data"], "kept");

    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[0].port, app.key);
    let mut back = Client::connect_raw(&url).await;
    back.expect("sockudo:connection_established").await;
    let positions = json!({ "elsewhere": { "stream_id": "s", "serial": 1 } });
    let resume = json!({ "channel_positions": positions }).to_string();
    back.send(json!({ "event": "sockudo:resume", "data": resume })).await;
    back.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "elsewhere" } })).await;
    let failed = back.expect("sockudo:resume_failed").await;
    let failure: serde_json::Value =
        serde_json::from_str(failed["data"].as_str().unwrap()).unwrap();
    assert_eq!(failure["code"], "persistence_unavailable", "{failure}");
    back.expect("sockudo:resume_success").await;
    back.expect("sockudo_internal:subscription_succeeded").await;
}

/// One node with recovery on over a Redis of its own (the bus and the history store, whose own
/// timeout is far off, so that publishers give up first), `extra` configuration, and a
/// protocol-2 subscriber of `channels`; then Redis pauses its writers (`CLIENT PAUSE ...
/// WRITE`) until the test unpauses it.
async fn behind_a_paused_store(
    prefix: &str,
    extra: &str,
    channels: &[&str],
) -> (RedisServer, Vec<Server>, TestApp, Client) {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), prefix);
    let extra = format!("{}request_timeout_ms = 600000\n{extra}", recovering(&bus));
    let servers = nodes(&bus, 1, &extra).await;
    let app = TestApp::main();
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[0].port, app.key);
    let mut v2 = Client::connect_v2(&url).await;
    for channel in channels {
        v2.subscribe_v2(&app, channel).await;
    }
    let pause = ["CLIENT", "PAUSE", "600000", "WRITE"];
    redis_cli(redis.port, None, None, &pause).expect("Redis pauses its writers");
    (redis, servers, app, v2)
}

/// Publishers that stop waiting for the store (they hung up, or their own timeout ran out
/// while the store was slow) do not take their events with them, nor their channel's append
/// slots: every event the store positions reaches the subscriber, without a hole, and the
/// channel takes the next publish. Before, a publish dropped with its request left its event
/// undelivered on this node and its slot held; after 8 such, every later publish to the
/// channel on that node waited for good.
#[tokio::test]
async fn publishers_that_stop_waiting_do_not_wedge_their_channel() {
    let (redis, servers, app, mut v2) = behind_a_paused_store("wedge:", "", &["news"]).await;
    let http = servers[0].http_url();
    let publishers: Vec<_> = (0..12)
        .map(|i| {
            let api = Api::new(&http, &app);
            tokio::spawn(async move {
                let data = i.to_string();
                let publish = api.trigger(&["news"], "tick", &data);
                tokio::time::timeout(Duration::from_secs(1), publish).await.is_err()
            })
        })
        .collect();
    for publisher in publishers {
        assert!(publisher.await.unwrap(), "nothing is answered while the store is paused");
    }
    redis_cli(redis.port, None, None, &["CLIENT", "UNPAUSE"]).expect("Redis goes on");

    let after = Api::new(&http, &app);
    let after = tokio::time::timeout(PATIENCE, after.trigger(&["news"], "tick", "after")).await;
    let (status, body) = after.expect("the channel takes publishes again");
    assert_eq!(status, 200, "{body}");
    let mut got = Vec::new();
    for _ in 0..13 {
        let tick = v2.expect("tick").await;
        got.push((tick["serial"].as_u64().unwrap(), tick["data"].as_str().unwrap().to_string()));
    }
    let serials: Vec<u64> = got.iter().map(|(serial, _)| *serial).collect();
    assert_eq!(serials, (1..=13).collect::<Vec<u64>>(), "{got:?}");
    let mut sent: Vec<String> = (0..12).map(|i: u32| i.to_string()).collect();
    sent.push("after".into());
    let mut data: Vec<String> = got.into_iter().map(|(_, data)| data).collect();
    data.sort();
    sent.sort();
    assert_eq!(data, sent);
}

/// A trigger to several channels whose publisher hung up while the store was slow is carried
/// out whole: once the store answers, every channel it named gets the event. Dropped with its
/// request, it reached only the channel whose append was under way.
#[tokio::test]
async fn a_trigger_to_several_channels_is_finished_after_its_publisher_hangs_up() {
    let channels = ["first", "second", "third"];
    let (redis, servers, app, mut v2) = behind_a_paused_store("whole:", "", &channels).await;
    let api = Api::new(&servers[0].http_url(), &app);
    let publish = api.trigger(&channels, "tick", "all");
    let hung_up = tokio::time::timeout(Duration::from_secs(1), publish).await;
    assert!(hung_up.is_err(), "nothing is answered while the store is paused");
    redis_cli(redis.port, None, None, &["CLIENT", "UNPAUSE"]).expect("Redis goes on");

    let mut reached = Vec::new();
    for _ in channels {
        let tick = v2.expect("tick").await;
        assert_eq!(tick["data"], "all", "{tick}");
        reached.push(tick["channel"].as_str().unwrap().to_string());
    }
    assert_eq!(reached, channels, "each channel once, in the trigger's order");
}

/// A stalled store does not make the node hold every publish that comes meanwhile: with 8
/// appends of a channel under way and 1,024 events waiting for them, the next publishes are
/// refused at once (503, counted). Once the store goes on, every event it was given arrives in
/// serial order, and the channel takes publishes again.
#[tokio::test]
async fn a_stalled_store_holds_a_bounded_backlog() {
    // The subscriber's queue holds the whole backlog: the test reads it only once every
    // publisher has its answer (past 1,000 frames, the default, the node would close it, 4100).
    let queue = "[websocket]\nmax_messages = 4000\n";
    let (redis, servers, app, mut v2) = behind_a_paused_store("backlog:", queue, &["news"]).await;
    let (held, refused) = (8 + 1024, 8);
    let api = Arc::new(Api::new(&servers[0].http_url(), &app));
    let publishers: Vec<_> = (0..held + refused)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move { api.trigger(&["news"], "tick", &i.to_string()).await.0 })
        })
        .collect();
    // Eight refusals mean every publish has come: the rest are held.
    let metric = "sockhost_history_backlog_refused_total";
    servers[0].wait_for_metric(metric, |n| n >= refused as f64).await;
    redis_cli(redis.port, None, None, &["CLIENT", "UNPAUSE"]).expect("Redis goes on");

    let mut statuses = std::collections::BTreeMap::new();
    for publisher in publishers {
        *statuses.entry(publisher.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(200, held), (503, refused)].into(), "answers by status");
    assert_eq!(servers[0].metric(metric).await, refused as f64);
    assert_eq!(api.trigger(&["news"], "tick", "after").await.0, 200);
    for serial in 1..=held + 1 {
        let tick = v2.expect("tick").await;
        assert_eq!(tick["serial"].as_u64(), Some(serial as u64), "{tick}");
    }
}

/// A client event takes its position from the store, as an API event does: the other
/// node's subscriber gets it with the store's serial, in order with the API's events, and the
/// channel's history lists it. With the store down, the sender is told its event was not sent
/// (4301) rather than have it go out without a position that no resume could recover.
#[tokio::test]
async fn client_events_take_their_position_from_the_store() {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "client:");
    let extra = recovering(&bus);
    let servers = nodes(&bus, 2, &extra).await;
    let app = TestApp::main();
    let channel = "private-room";
    let mut sender = Client::connect(&servers[0].ws_url(&app.key)).await;
    sender.subscribe(&app, channel).await;
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[1].port, app.key);
    let mut on_b = Client::connect_v2(&url).await;
    on_b.subscribe_v2(&app, channel).await;

    let api = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api.trigger(&[channel], "tick", "1").await.0, 200);
    assert_eq!(on_b.expect("tick").await["serial"], 1);
    sender.expect("tick").await;
    let event = json!({ "event": "client-move", "channel": channel, "data": { "to": "b2" } });
    sender.send(event).await;
    let moved = on_b.expect("client-move").await;
    assert_eq!((&moved["serial"], &moved["data"]["to"]), (&json!(2), &json!("b2")), "{moved}");
    assert_eq!(api.trigger(&[channel], "tick", "3").await.0, 200);
    assert_eq!(on_b.expect("tick").await["serial"], 3);
    sender.expect("tick").await;
    let (status, page) = api.get(&format!("/channels/{channel}/history"), &[]).await;
    assert_eq!(status, 200, "{page}");
    let events: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["event_name"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["tick", "client-move", "tick"]);

    drop(redis);
    sender.send(json!({ "event": "client-move", "channel": channel, "data": {} })).await;
    let error = sender.expect_error(4301).await;
    assert!(error.contains("history store"), "{error}");
}

/// What one resilient client saw.
#[derive(Debug, Default)]
struct Seen {
    /// The data of every `tick` it got, in order.
    ticks: Vec<u64>,
    /// Serials of those ticks, in order.
    serials: Vec<u64>,
    /// Channels it was told could not be recovered.
    failed: Vec<String>,
    /// Times it connected.
    connections: u32,
    /// Whether its first subscription was acknowledged.
    subscribed: bool,
}

/// A protocol-2 client that, whenever its connection ends (a node draining at SIGTERM closes
/// it with 4200, a killed node drops it), connects to another live node and resumes from the
/// last position it got, as sockudo-js does.
async fn resilient_client(
    live: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Seen>>,
    first: usize,
    stop: tokio_util_like::Stop,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut position: Option<(String, u64)> = None;
    let mut turn = first;
    while !stop.is_set() {
        let url = {
            let live = live.lock().unwrap();
            live[turn % live.len()].clone()
        };
        turn += 1;
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else { continue };
        seen.lock().unwrap().connections += 1;
        if let Some((stream_id, serial)) = &position {
            let positions = json!({ "news": { "stream_id": stream_id, "serial": serial } });
            let data = json!({ "channel_positions": positions }).to_string();
            let resume = json!({ "event": "sockudo:resume", "data": data });
            if ws.send(Message::text(resume.to_string())).await.is_err() {
                continue;
            }
        }
        let subscribe = json!({ "event": "sockudo:subscribe", "data": { "channel": "news" } });
        if ws.send(Message::text(subscribe.to_string())).await.is_err() {
            continue;
        }
        loop {
            let frame = tokio::select! {
                frame = ws.next() => frame,
                () = stop.wait() => return,
            };
            let Some(Ok(Message::Text(text))) = frame else {
                match frame {
                    Some(Ok(_)) => continue,
                    // Closed or dropped: to another node.
                    _ => break,
                }
            };
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            match frame["event"].as_str() {
                Some("sockudo_internal:subscription_succeeded") if position.is_none() => {
                    let stream_id = frame["stream_id"].as_str().unwrap().to_string();
                    position = Some((stream_id, frame["serial"].as_u64().unwrap()));
                    seen.lock().unwrap().subscribed = true;
                }
                Some("tick") => {
                    let serial = frame["serial"].as_u64().unwrap();
                    let stream_id = frame["stream_id"].as_str().unwrap().to_string();
                    let n = frame["data"].as_str().unwrap().parse().unwrap();
                    let mut seen = seen.lock().unwrap();
                    seen.ticks.push(n);
                    seen.serials.push(serial);
                    position = Some((stream_id, serial));
                }
                Some("sockudo:resume_failed") => {
                    let channel = frame["channel"].as_str().unwrap_or("?").to_string();
                    seen.lock().unwrap().failed.push(channel);
                }
                _ => {}
            }
        }
    }
}

/// A tiny stop signal the clients wait on.
mod tokio_util_like {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    #[derive(Clone, Default)]
    pub struct Stop(Arc<(AtomicBool, tokio::sync::Notify)>);

    impl Stop {
        pub fn set(&self) {
            self.0.0.store(true, Ordering::Release);
            self.0.1.notify_waiters();
        }
        pub fn is_set(&self) -> bool {
            self.0.0.load(Ordering::Acquire)
        }
        pub async fn wait(&self) {
            let notified = self.0.1.notified();
            if !self.is_set() {
                notified.await;
            }
        }
    }
}

/// A balancer in front of the nodes for the pusher-js clients (which reconnect to the host
/// they were given): each new connection goes to the next live node's port.
async fn balancer(live: Arc<Mutex<Vec<u16>>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut turn = 0usize;
        while let Ok((mut client, _)) = listener.accept().await {
            let node = {
                let live = live.lock().unwrap();
                turn += 1;
                live[turn % live.len()]
            };
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", node)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    port
}

/// `count` pusher-js clients with the recovery helper (tests/pusher-js/lib/rolling-clients.mjs)
/// on 127.0.0.1:`port`, once all are subscribed; [`PusherJs::report`] ends them.
struct PusherJs {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: Option<std::io::Lines<std::io::BufReader<std::process::ChildStdout>>>,
}

/// What one pusher-js client saw.
#[derive(Debug)]
struct JsSeen {
    ticks: Vec<u64>,
    gaps: Vec<String>,
    connections: u32,
}

impl JsSeen {
    fn read(report: &serde_json::Value) -> Self {
        let list = |key: &str| report[key].as_array().cloned().unwrap_or_default();
        Self {
            ticks: list("ticks").iter().filter_map(serde_json::Value::as_u64).collect(),
            gaps: list("gaps").iter().filter_map(|g| g.as_str().map(str::to_string)).collect(),
            connections: u32::try_from(report["connections"].as_u64().unwrap()).unwrap(),
        }
    }
}

impl PusherJs {
    async fn start(port: u16, key: &str, count: usize) -> Self {
        use std::{io::BufRead, process::Stdio};
        let script =
            sockhost_tests::workspace_root().join("tests/pusher-js/lib/rolling-clients.mjs");
        let mut child = std::process::Command::new("node")
            .arg(script)
            .args([port.to_string(), key.to_string(), count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs (scripts/deps installs it, scripts/test the pusher-js packages)");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (ready, lines) =
            tokio::task::spawn_blocking(move || (lines.next(), lines)).await.unwrap();
        assert_eq!(ready.unwrap().unwrap(), "ready");
        let stdin = child.stdin.take().unwrap();
        Self { child, stdin, lines: Some(lines) }
    }

    /// What each client saw, once each has `events` ticks (or a minute passed).
    async fn report(&mut self, events: usize) -> Vec<JsSeen> {
        use std::io::Write;
        self.stdin.write_all(format!("{events}\n").as_bytes()).unwrap();
        let mut lines = self.lines.take().unwrap();
        let (line, lines) =
            tokio::task::spawn_blocking(move || (lines.next(), lines)).await.unwrap();
        self.lines = Some(lines);
        let report: serde_json::Value = serde_json::from_str(&line.unwrap().unwrap()).unwrap();
        report.as_array().unwrap().iter().map(JsSeen::read).collect()
    }

    /// Disconnect the clients.
    fn end(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

/// A rolling restart loses nothing: three nodes over one Redis (transport and history store,
/// with an append-only file), raw protocol-2 clients and pusher-js clients with the recovery
/// helper (through a balancer) on every node, events published through every live node in turn
/// while each node is stopped with SIGTERM and started again, one after the other; then one
/// node killed with SIGKILL, then Redis killed and started again. Every client ends with every
/// event exactly once, in order, and no resume failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_loses_nothing() {
    const CLIENTS: usize = 1000;
    const JS_CLIENTS: usize = 100;
    const PER_STEP: u64 = 20;
    let mut redis = RedisServer::start_durable();
    let bus = Bus::redis(&redis.url(), "rolling:");
    let extra = recovering(&bus);
    let app = TestApp::new("recovering", "recovering-key", "recovering-secret");
    let ws_url = |s: &Server| format!("ws://127.0.0.1:{}/app/{}?protocol=2", s.port, app.key);
    let mut servers: Vec<Option<Server>> =
        nodes(&bus, 3, &extra).await.into_iter().map(Some).collect();
    let live = Arc::new(Mutex::new(servers.iter().flatten().map(ws_url).collect::<Vec<_>>()));
    let ports = Arc::new(Mutex::new(servers.iter().flatten().map(|s| s.port).collect::<Vec<_>>()));
    let leave = |server: &Server| {
        live.lock().unwrap().retain(|url| *url != ws_url(server));
        ports.lock().unwrap().retain(|port| *port != server.port);
    };
    let join = |server: &Server| {
        live.lock().unwrap().push(ws_url(server));
        ports.lock().unwrap().push(server.port);
    };
    let stop = tokio_util_like::Stop::default();
    let mut seen = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let state = Arc::new(Mutex::new(Seen::default()));
        seen.push(state.clone());
        tasks.push(tokio::spawn(resilient_client(live.clone(), state, i, stop.clone())));
    }
    let mut js = PusherJs::start(balancer(ports.clone()).await, &app.key, JS_CLIENTS).await;
    // Every client subscribed before the first event.
    sockhost_plugin_api::conformance::eventually("every client is subscribed", async || {
        let waiting = seen.iter().filter(|s| !s.lock().unwrap().subscribed).count();
        sockhost_plugin_api::conformance::holds(waiting == 0, format!("{waiting} waiting"))
    })
    .await;
    let mut published = 0u64;
    // A publisher retries a 503 (the store reconnecting after its restart), as the API asks.
    let publish = async |through: &Server, published: &mut u64| {
        *published += 1;
        let api = Api::new(&through.http_url(), &app);
        let started = std::time::Instant::now();
        loop {
            let (status, body) = api.trigger(&["news"], "tick", &published.to_string()).await;
            if status == 503 && started.elapsed() < sockhost_tests::pusher::PATIENCE {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            assert_eq!(status, 200, "{body}");
            return;
        }
    };
    for k in 0..3 {
        // Node k leaves the rotation and drains while the others publish.
        let mut leaving = servers[k].take().unwrap();
        leave(&leaving);
        let stopped = tokio::task::spawn_blocking(move || leaving.terminate());
        for i in 0..PER_STEP {
            let through = servers.iter().flatten().nth(i as usize % 2).unwrap();
            publish(through, &mut published).await;
        }
        assert!(stopped.await.unwrap().success());
        let back = sockhost_tests::cluster::node(&bus, &extra);
        back.wait_for_metric("sockhost_cluster_nodes", |n| n as usize == 3).await;
        join(&back);
        servers[k] = Some(back);
        for i in 0..PER_STEP {
            let through = servers.iter().flatten().nth(i as usize % 3).unwrap();
            publish(through, &mut published).await;
        }
    }
    // One node killed outright: its clients lose their connections without a word.
    let mut killed = servers[0].take().unwrap();
    leave(&killed);
    killed.kill();
    for i in 0..PER_STEP {
        let through = servers.iter().flatten().nth(i as usize % 2).unwrap();
        publish(through, &mut published).await;
    }
    // Every client back and caught up before Redis goes (one that came back while the store was
    // down would rightly be told its channel could not be recovered).
    sockhost_plugin_api::conformance::eventually("every client caught up", async || {
        let behind = seen.iter().filter(|s| s.lock().unwrap().ticks.len() < published as usize);
        sockhost_plugin_api::conformance::holds(behind.count() == 0, "clients are behind")
    })
    .await;
    js.report(usize::try_from(published).unwrap()).await;
    // Redis killed and started again: each node's plugin reconnects and subscribes again.
    redis.kill();
    redis.restart();
    let reconnects =
        format!("sockhost_plugin_events{{plugin=\"{}\",name=\"reconnects\"}}", bus.plugin);
    for server in servers.iter().flatten() {
        let patience = sockhost_tests::pusher::PATIENCE * 3;
        server.wait_for_labelled_metric(&reconnects, patience, |n| n >= 1.0).await;
        server.wait_for_metric("sockhost_cluster_nodes", |n| n == 2.0).await;
    }
    for i in 0..PER_STEP {
        let through = servers.iter().flatten().nth(i as usize % 2).unwrap();
        publish(through, &mut published).await;
    }

    let everything: Vec<u64> = (1..=published).collect();
    sockhost_plugin_api::conformance::eventually_within(
        "every client has every event",
        std::time::Duration::from_secs(60),
        async || {
            let behind = seen.iter().filter(|s| s.lock().unwrap().ticks.len() < everything.len());
            sockhost_plugin_api::conformance::holds(behind.count() == 0, "clients are behind")
        },
    )
    .await;
    stop.set();
    for task in tasks {
        task.await.unwrap();
    }
    let mut reconnections = 0;
    for (i, state) in seen.iter().enumerate() {
        let state = state.lock().unwrap();
        assert_eq!(state.failed, Vec::<String>::new(), "client {i} was told of a loss");
        assert_eq!(state.ticks, everything, "client {i}: not every event once, in order");
        let dense = state.serials.windows(2).all(|w| w[1] == w[0] + 1);
        assert!(dense, "client {i}: serials {:?}", state.serials);
        reconnections += state.connections - 1;
    }
    let js_seen = js.report(everything.len()).await;
    let mut js_reconnections = 0;
    for (i, state) in js_seen.iter().enumerate() {
        assert_eq!(
            state.gaps,
            Vec::<String>::new(),
            "pusher-js client {i} was told of a loss; it got {:?}",
            state.ticks
        );
        assert_eq!(state.ticks, everything, "pusher-js client {i}: not every event once, in order");
        js_reconnections += state.connections - 1;
    }
    js.end();
    println!(
        "rolling restart: {CLIENTS} protocol-2 clients ({reconnections} reconnections) and {JS_CLIENTS} pusher-js clients ({js_reconnections} reconnections), {published} events; every event once and in order"
    );
}

/// A signed trigger of `body` through `server`, with `X-Idempotency-Key: header` if given.
async fn trigger_with_key(
    server: &Server,
    body: &serde_json::Value,
    header: Option<&str>,
) -> (u16, serde_json::Value) {
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let path = format!("/apps/{}/events", app.id);
    let bytes = body.to_string().into_bytes();
    let query = api.signed_query("POST", &path, &[], &bytes, Api::now());
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}?{query}", server.http_url()))
        .header("content-type", "application/json")
        .body(bytes);
    if let Some(key) = header {
        request = request.header("X-Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// A trigger retried with the same idempotency key (in the body, or in `X-Idempotency-Key`)
/// through another node gets the first answer and is not published again; the publisher's
/// `message_id` is the event's. The key is claimed and the answer kept through the redis
/// rate limiter and cache, shared by both nodes.
#[tokio::test]
async fn an_idempotent_retry_on_another_node_is_answered_not_published() {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "idem:");
    let url = redis.url();
    let extra = format!(
        "[connection_recovery]\nenabled = true\n{}\n[cache]\ndriver = \"redis\"\n[cache.redis]\nurl_override = \"{url}\"\n[rate_limiter]\ndriver = \"redis\"\n[rate_limiter.redis]\nurl_override = \"{url}\"\n",
        bus.history.clone().unwrap()
    );
    let servers = nodes(&bus, 2, &extra).await;
    let app = TestApp::main();
    let ws = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[0].port, app.key);
    let mut client = Client::connect_raw(&ws).await;
    client.expect("sockudo:connection_established").await;
    client.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "orders" } })).await;
    client.expect("sockudo_internal:subscription_succeeded").await;

    let first = json!({ "name": "placed", "data": "17", "channel": "orders", "idempotency_key": "order-17", "message_id": "order-17", "info": "subscription_count" });
    let answered = trigger_with_key(&servers[0], &first, None).await;
    assert_eq!(answered.0, 200, "{answered:?}");
    let retried = trigger_with_key(&servers[1], &first, None).await;
    assert_eq!(retried, answered, "the retry got another answer");

    let second = json!({ "name": "placed", "data": "18", "channel": "orders" });
    assert_eq!(trigger_with_key(&servers[1], &second, Some("order-18")).await.0, 200);
    assert_eq!(trigger_with_key(&servers[0], &second, Some("order-18")).await.0, 200);
    let too_long = "k".repeat(129);
    assert_eq!(trigger_with_key(&servers[0], &second, Some(&too_long)).await.0, 400);
    // Another event under a key already used is refused, as Sockudo refuses it.
    let other = json!({ "name": "placed", "data": "99", "channel": "orders", "idempotency_key": "order-17" });
    let refused = trigger_with_key(&servers[1], &other, None).await;
    assert_eq!(refused.0, 400, "{refused:?}");
    assert_eq!(refused.1["error"], "idempotency key was already used with a different payload");
    // A `message_id` alone is a key too.
    let by_id =
        json!({ "name": "placed", "data": "19", "channel": "orders", "message_id": "order-19" });
    assert_eq!(trigger_with_key(&servers[0], &by_id, None).await.0, 200);
    assert_eq!(trigger_with_key(&servers[1], &by_id, None).await.0, 200);
    let marker = json!({ "name": "marker", "data": "end", "channel": "orders" });
    assert_eq!(trigger_with_key(&servers[1], &marker, None).await.0, 200);

    let event = client.expect_any().await;
    assert_eq!(
        (event["data"].as_str(), event["message_id"].as_str()),
        (Some("17"), Some("order-17"))
    );
    assert_eq!(client.expect_any().await["data"], "18");
    assert_eq!(client.expect_any().await["message_id"], "order-19");
    assert_eq!(client.expect_any().await["event"], "marker", "a retry was published again");
    let duplicates = r#"sockhost_idempotent_publishes_total{outcome="duplicate"}"#;
    assert_eq!(servers[1].labelled_metric(duplicates).await, 2.0);
    assert_eq!(servers[0].labelled_metric(duplicates).await, 1.0);
    let mismatch = r#"sockhost_idempotent_publishes_total{outcome="mismatch"}"#;
    assert_eq!(servers[1].labelled_metric(mismatch).await, 1.0);
}

/// A publish with a key that failed (the history store was down) lets one retry publish, and
/// only one: retries sent at once after the store is back deliver the event once, each
/// answered with the first retry's answer (or told it is still in progress).
#[tokio::test]
async fn after_a_failed_idempotent_publish_one_retry_publishes() {
    let mut redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "failed:");
    let extra = format!("{}\n[idempotency]\nenabled = true\n", recovering(&bus));
    let servers = nodes(&bus, 1, &extra).await;
    let app = TestApp::main();
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[0].port, app.key);
    let mut v2 = Client::connect_v2(&url).await;
    v2.subscribe_v2(&app, "orders").await;
    let order = json!({ "name": "placed", "data": "20", "channel": "orders", "idempotency_key": "order-20" });

    redis.kill();
    let failed = trigger_with_key(&servers[0], &order, None).await;
    assert_eq!(failed.0, 503, "{failed:?}");
    redis.restart();
    let probe = json!({ "name": "probe", "data": "", "channel": "probes" });
    sockhost_plugin_api::conformance::eventually("the store takes events again", async || {
        let status = trigger_with_key(&servers[0], &probe, None).await.0;
        sockhost_plugin_api::conformance::holds(status == 200, status)
    })
    .await;

    let retries =
        futures_util::future::join_all((0..4).map(|_| trigger_with_key(&servers[0], &order, None)))
            .await;
    let answered: Vec<_> = retries.iter().filter(|(status, _)| *status == 200).collect();
    assert!(!answered.is_empty(), "no retry published: {retries:?}");
    assert!(retries.iter().all(|(status, _)| *status == 200 || *status == 503), "{retries:?}");
    assert!(
        answered.windows(2).all(|w| w[0] == w[1]),
        "retries got different answers: {retries:?}"
    );
    let marker = json!({ "name": "marker", "data": "end", "channel": "orders" });
    assert_eq!(trigger_with_key(&servers[0], &marker, None).await.0, 200);
    assert_eq!(v2.expect("placed").await["data"], "20");
    assert_eq!(v2.expect_any().await["event"], "marker", "a retry was published again");
    let retried = r#"sockhost_idempotent_publishes_total{outcome="retried"}"#;
    assert_eq!(servers[0].labelled_metric(retried).await, 1.0);
}

/// A keyed publish to two channels whose second channel's append fails (its stream's meta in
/// Redis made a string, so the script stops at its first command, writing nothing) answers
/// 503 after the first channel got the event. The retry, once the store takes the second
/// channel again, goes only to the second: the first channel's subscriber gets the event once.
#[tokio::test]
async fn a_retry_after_a_partly_published_event_goes_only_where_it_had_not() {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "partial:");
    let extra = format!("{}\n[idempotency]\nenabled = true\n", recovering(&bus));
    let servers = nodes(&bus, 1, &extra).await;
    let app = TestApp::main();
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[0].port, app.key);
    let mut alpha = Client::connect_v2(&url).await;
    alpha.subscribe_v2(&app, "alpha").await;
    let mut beta = Client::connect_v2(&url).await;
    beta.subscribe_v2(&app, "beta").await;
    let meta = format!("partial:history:{{{}:{}:beta}}:meta", app.id.len(), app.id);
    let spoiled = redis_cli(redis.port, None, None, &["SET", &meta, "not a hash"]);
    assert_eq!(spoiled.as_deref(), Some("OK"));

    let order = json!({ "name": "placed", "data": "30", "channels": ["alpha", "beta"], "idempotency_key": "order-30" });
    let failed = trigger_with_key(&servers[0], &order, None).await;
    assert_eq!(failed.0, 503, "{failed:?}");
    assert_eq!(alpha.expect("placed").await["data"], "30");

    let mended = redis_cli(redis.port, None, None, &["DEL", &meta]);
    assert_eq!(mended.as_deref(), Some("1"));
    let retried = trigger_with_key(&servers[0], &order, None).await;
    assert_eq!(retried.0, 200, "{retried:?}");
    assert_eq!(beta.expect("placed").await["data"], "30");
    let marker = json!({ "name": "marker", "data": "end", "channel": "alpha" });
    assert_eq!(trigger_with_key(&servers[0], &marker, None).await.0, 200);
    assert_eq!(alpha.expect_any().await["event"], "marker", "the retry went to alpha again");
    let retried = r#"sockhost_idempotent_publishes_total{outcome="retried"}"#;
    assert_eq!(servers[0].labelled_metric(retried).await, 1.0);
}

/// An idempotent publish whose publisher hung up while the history store was slow is carried
/// to its end: its event is delivered once the store answers, and the publisher's retry with
/// the same key gets the first answer, not a second publish (nor, for the whole window, a 503
/// saying the first is still in progress, as when the publish was dropped with its request).
#[tokio::test]
async fn an_idempotent_publish_is_finished_after_its_publisher_hangs_up() {
    let idempotency = "[idempotency]\nenabled = true\n";
    let (redis, servers, _, mut v2) =
        behind_a_paused_store("hangup:", idempotency, &["orders"]).await;
    let order = json!({ "name": "placed", "data": "17", "channel": "orders", "idempotency_key": "order-17" });
    let publish = trigger_with_key(&servers[0], &order, None);
    let hung_up = tokio::time::timeout(Duration::from_secs(1), publish).await;
    assert!(hung_up.is_err(), "nothing is answered while the store is paused");
    let first = r#"sockhost_idempotent_publishes_total{outcome="first"}"#;
    assert_eq!(servers[0].labelled_metric(first).await, 1.0);
    redis_cli(redis.port, None, None, &["CLIENT", "UNPAUSE"]).expect("Redis goes on");

    let placed = v2.expect("placed").await;
    assert_eq!((placed["data"].as_str(), placed["serial"].as_u64()), (Some("17"), Some(1)));
    let retried = trigger_with_key(&servers[0], &order, None).await;
    assert_eq!(retried.0, 200, "{retried:?}");
    let duplicates = r#"sockhost_idempotent_publishes_total{outcome="duplicate"}"#;
    assert_eq!(servers[0].labelled_metric(duplicates).await, 1.0);
    let marker = json!({ "name": "marker", "data": "end", "channel": "orders" });
    assert_eq!(trigger_with_key(&servers[0], &marker, None).await.0, 200);
    assert_eq!(v2.expect_any().await["event"], "marker", "the retry was published again");
}

/// A node that never heard a channel serves a rewind, and a resume, from the store; a
/// subscriber's tag filter holds on what is replayed (the position still moves past the rest).
#[tokio::test]
async fn replays_from_the_store_keep_the_subscribers_filter() {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "replay:").env("TAG_FILTERING_ENABLED", "true");
    let extra = recovering(&bus);
    let servers = nodes(&bus, 2, &extra).await;
    let app = TestApp::main();
    let api_a = Api::new(&servers[0].http_url(), &app);
    for (n, sym) in ["BTC", "ETH", "BTC", "ETH"].iter().enumerate() {
        let body = json!({ "name": "tick", "channel": "ticker", "data": n.to_string(), "tags": { "sym": sym } });
        assert_eq!(api_a.post("/events", &body).await.0, 200);
    }
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[1].port, app.key);
    let connect = async |data: serde_json::Value| {
        let mut client = Client::connect_raw(&url).await;
        client.expect("sockudo:connection_established").await;
        client.send(json!({ "event": "sockudo:subscribe", "data": data })).await;
        client.expect("sockudo_internal:subscription_succeeded").await;
        client
    };
    // Rewind on B: the last three, from the store.
    let mut everything = connect(json!({ "channel": "ticker", "rewind": 3 })).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(everything.expect("tick").await["serial"].as_u64().unwrap());
    }
    assert_eq!(got, [2, 3, 4]);
    let complete = everything.expect("sockudo:rewind_complete").await;
    assert_eq!(complete["data"]["complete"], true, "{complete}");
    // With a filter: only what it passes.
    let btc = json!({ "key": "sym", "cmp": "eq", "val": "BTC" });
    let mut filtered = connect(json!({ "channel": "ticker", "rewind": 4, "filter": btc })).await;
    let first = filtered.expect("tick").await;
    let second = filtered.expect("tick").await;
    assert_eq!((first["serial"].as_u64(), second["serial"].as_u64()), (Some(1), Some(3)));
    assert_eq!(filtered.expect("sockudo:rewind_complete").await["data"]["historical_count"], 2);
    // A resume on B from serial 1 with the filter: event 3 only, the position at 4.
    let stream_id = first["stream_id"].as_str().unwrap();
    let mut client = Client::connect_raw(&url).await;
    client.expect("sockudo:connection_established").await;
    let positions = json!({ "ticker": { "stream_id": stream_id, "serial": 1 } });
    let resume = json!({ "channel_positions": positions }).to_string();
    client.send(json!({ "event": "sockudo:resume", "data": resume })).await;
    let data =
        json!({ "channel": "ticker", "filter": { "key": "sym", "cmp": "eq", "val": "BTC" } });
    client.send(json!({ "event": "sockudo:subscribe", "data": data })).await;
    client.expect("sockudo_internal:subscription_succeeded").await;
    assert_eq!(client.expect("tick").await["serial"], 3);
    let success = client.expect("sockudo:resume_success").await;
    let summary: serde_json::Value =
        serde_json::from_str(success["data"].as_str().unwrap()).unwrap();
    assert_eq!(summary["recovered"][0]["position"]["serial"], 4, "{summary}");
    assert_eq!(summary["recovered"][0]["replayed"], 1, "{summary}");
}

/// Publishes racing each other through two nodes (many requests in flight at once) finish in
/// another order than their serials: every subscriber still gets them in serial order, each
/// once, and none is sent away to resume.
#[tokio::test]
async fn racing_publishes_are_delivered_in_serial_order() {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "race:");
    let extra = recovering(&bus);
    let servers = nodes(&bus, 2, &extra).await;
    let app = TestApp::main();
    let mut clients = Vec::new();
    for server in &servers {
        let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", server.port, app.key);
        let mut client = Client::connect_raw(&url).await;
        client.expect("sockudo:connection_established").await;
        client.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "race" } })).await;
        client.expect("sockudo_internal:subscription_succeeded").await;
        clients.push(client);
    }
    let apis: Vec<Api> = servers.iter().map(|s| Api::new(&s.http_url(), &app)).collect();
    const EVENTS: u64 = 200;
    let publishes = (0..EVENTS).map(|n| {
        let api = &apis[(n % 2) as usize];
        async move {
            let (status, body) = api.trigger(&["race"], "tick", &n.to_string()).await;
            assert_eq!(status, 200, "{body}");
        }
    });
    futures_util::future::join_all(publishes).await;
    for client in &mut clients {
        for serial in 1..=EVENTS {
            let event = client.expect("tick").await;
            assert_eq!(event["serial"], serial, "{event}");
        }
    }
    for server in &servers {
        assert_eq!(server.metric("sockhost_recovery_lost_total").await, 0.0);
    }
}

/// A new protocol-2 socket on `url` that resumes `channel` from `position` (before its
/// subscribe, as sockudo-js does): the events it replays, then how its channel ended
/// (`Ok` the recovered entry, `Err` the failure).
async fn resume_from(
    url: &str,
    channel: &str,
    position: serde_json::Value,
) -> (Vec<serde_json::Value>, Result<serde_json::Value, serde_json::Value>) {
    resume_with(url, channel, json!({ "channel_positions": { channel: position } })).await
}

/// [`resume_from`] with the resume's whole data (`request`).
async fn resume_with(
    url: &str,
    channel: &str,
    request: serde_json::Value,
) -> (Vec<serde_json::Value>, Result<serde_json::Value, serde_json::Value>) {
    let mut socket = Client::connect_raw(url).await;
    socket.expect("sockudo:connection_established").await;
    let resume = request.to_string();
    socket.send(json!({ "event": "sockudo:resume", "data": resume })).await;
    socket.send(json!({ "event": "sockudo:subscribe", "data": { "channel": channel } })).await;
    let mut replayed = Vec::new();
    let mut failure = None;
    loop {
        let frame = socket.expect_any().await;
        match frame["event"].as_str().unwrap_or_default() {
            "tick" => replayed.push(frame),
            "sockudo:resume_failed" => {
                failure = Some(serde_json::from_str(frame["data"].as_str().unwrap()).unwrap());
            }
            "sockudo:resume_success" => {
                let data: serde_json::Value =
                    serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
                return match failure {
                    Some(failure) => (replayed, Err(failure)),
                    None => (replayed, Ok(data["recovered"][0].clone())),
                };
            }
            _ => {}
        }
    }
}

/// A legacy resume (`channel_serials`: a serial without its stream id) is served only by a
/// node that still holds the channel's stream in its buffer. A node that would have to read
/// the store answers `continuity_unverifiable`, as Sockudo does: the store's stream may have
/// started again since the client's events, its serials would then name other events, and
/// the replay would succeed with a hole.
#[tokio::test]
async fn a_legacy_serial_is_recovered_only_where_its_stream_is_held() {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "legacy:");
    let extra = recovering(&bus);
    let servers = nodes(&bus, 2, &extra).await;
    let app = TestApp::main();
    let url =
        |node: usize| format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[node].port, app.key);
    let mut live = Client::connect_raw(&url(0)).await;
    live.expect("sockudo:connection_established").await;
    live.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "news" } })).await;
    live.expect("sockudo_internal:subscription_succeeded").await;
    let api = Api::new(&servers[0].http_url(), &app);
    let mut stream = serde_json::Value::Null;
    for i in 1..=4 {
        assert_eq!(api.trigger(&["news"], "tick", &i.to_string()).await.0, 200);
        let tick = live.expect("tick").await;
        assert_eq!(tick["serial"], i);
        stream = tick["stream_id"].clone();
    }
    let legacy = json!({ "channel_serials": { "news": 2 } });

    let (replayed, outcome) = resume_with(&url(0), "news", legacy.clone()).await;
    let recovered = outcome.unwrap();
    assert_eq!((recovered["source"].as_str(), &recovered["replayed"]), (Some("hot"), &json!(2)));
    let data: Vec<&str> = replayed.iter().map(|t| t["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["3", "4"]);

    let (replayed, outcome) = resume_with(&url(1), "news", legacy).await;
    let failure = outcome.unwrap_err();
    assert_eq!(failure["code"], "continuity_unverifiable", "{failure}");
    assert_eq!(failure["reason"], "legacy_serial_only_position_cannot_use_cold_recovery");
    assert!(replayed.is_empty(), "{replayed:?}");
    // A full position is read from the store there.
    let (replayed, outcome) =
        resume_from(&url(1), "news", json!({ "stream_id": stream, "serial": 2 })).await;
    assert_eq!(outcome.unwrap()["source"], "cold");
    let data: Vec<&str> = replayed.iter().map(|t| t["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["3", "4"]);
}

/// Per-app overrides, with Sockudo's names: an app with `connection_recovery.enabled = false`
/// gets Pusher's frames without positions, its resumes answered 4301 and its history 422; an
/// app with `max_buffer_size = 3` replays at most three events per resume (a larger gap is
/// `position_expired`, never a partial replay) while the server keeps 100.
#[tokio::test]
async fn an_app_narrows_or_turns_off_recovery() {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "apps:");
    let extra = recovering(&bus);
    let servers = nodes(&bus, 1, &extra).await;

    let off = TestApp::new("unrecovered", "unrecovered-key", "unrecovered-secret");
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[0].port, off.key);
    let mut socket = Client::connect_raw(&url).await;
    socket.expect("sockudo:connection_established").await;
    socket.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "news" } })).await;
    let ack = socket.expect("sockudo_internal:subscription_succeeded").await;
    assert!(ack.get("serial").is_none() && ack.get("stream_id").is_none(), "{ack}");
    let api = Api::new(&servers[0].http_url(), &off);
    assert_eq!(api.trigger(&["news"], "tick", "plain").await.0, 200);
    let tick = socket.expect("tick").await;
    assert!(tick.get("serial").is_none() && tick.get("message_id").is_none(), "{tick}");
    let resume = json!({ "channel_positions": { "news": { "stream_id": "s", "serial": 0 } } });
    socket.send(json!({ "event": "sockudo:resume", "data": resume.to_string() })).await;
    let error = socket.expect("sockudo:error").await;
    assert_eq!(error["data"]["code"], 4301, "{error}");
    let (status, body) = api.get("/channels/news/history", &[]).await;
    assert_eq!(status, 422, "{body}");

    let narrow = TestApp::new("best-effort", "best-effort-key", "best-effort-secret");
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[0].port, narrow.key);
    let mut live = Client::connect_raw(&url).await;
    live.expect("sockudo:connection_established").await;
    live.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "news" } })).await;
    let ack = live.expect("sockudo_internal:subscription_succeeded").await;
    let stream = ack["stream_id"].as_str().unwrap().to_string();
    let api = Api::new(&servers[0].http_url(), &narrow);
    for i in 1..=5 {
        assert_eq!(api.trigger(&["news"], "tick", &i.to_string()).await.0, 200);
        assert_eq!(live.expect("tick").await["serial"], i);
    }
    let (replayed, outcome) =
        resume_from(&url, "news", json!({ "stream_id": stream, "serial": 1 })).await;
    let failure = outcome.unwrap_err();
    assert_eq!(failure["code"], "position_expired", "{failure}");
    assert!(replayed.is_empty(), "{replayed:?}");
    let (replayed, outcome) =
        resume_from(&url, "news", json!({ "stream_id": stream, "serial": 2 })).await;
    let recovered = outcome.unwrap();
    assert_eq!(recovered["replayed"], 3, "{recovered}");
    let data: Vec<&str> = replayed.iter().map(|t| t["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["3", "4", "5"]);
}

/// An app that publishes best effort keeps publishing while the history store is down (a
/// Redis of its own here, the bus on another): the event goes out without a position, every
/// node marks the channel degraded, and a resume from before it fails closed
/// (`persistence_unavailable`) on either node. When the store answers again, the publishing
/// node starts the channel's stream again and lifts the mark everywhere: a resume from the
/// old stream is told `stream_reset`, and new events carry the new stream's positions.
#[tokio::test]
async fn a_best_effort_app_publishes_through_a_store_outage_and_fails_resumes_closed() {
    let bus_redis = RedisServer::start();
    let mut store = RedisServer::start();
    let bus = Bus::redis(&bus_redis.url(), "best:");
    let history = format!(
        "[history]\nenabled = true\nbackend = \"redis\"\n[history.redis]\nurl_override = \"{}\"\n",
        store.url()
    );
    let servers =
        nodes(&bus, 2, &format!("[connection_recovery]\nenabled = true\n{history}")).await;
    let app = TestApp::new("best-effort", "best-effort-key", "best-effort-secret");
    let url = |i: usize| format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[i].port, app.key);
    let mut on_b = Client::connect_raw(&url(1)).await;
    on_b.expect("sockudo:connection_established").await;
    on_b.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "news" } })).await;
    let ack = on_b.expect("sockudo_internal:subscription_succeeded").await;
    let old_stream = ack["stream_id"].as_str().unwrap().to_string();
    let api = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api.trigger(&["news"], "tick", "kept").await.0, 200);
    assert_eq!(on_b.expect("tick").await["serial"], 1);

    store.kill();
    let (status, body) = api.trigger(&["news"], "tick", "unkept").await;
    assert_eq!(status, 200, "{body}");
    // The store's connections are the host's sockets (see `plugins/redis-drivers/src/driven.rs`).
    let driven = "sockhost_plugin_events{plugin=\"redis\",name=\"host_driven_connects\"}";
    let connects = servers[0].labelled_metric(driven).await;
    assert!(connects >= 1.0, "{connects}");
    let unkept = on_b.expect("tick").await;
    assert_eq!(unkept["data"], "unkept");
    assert!(unkept.get("serial").is_none(), "{unkept}");
    assert_eq!(servers[0].metric("sockhost_recovery_best_effort_total").await, 1.0);
    for server in &servers {
        server.wait_for_metric("sockhost_recovery_degraded_channels", |n| n == 1.0).await;
    }
    for i in 0..2 {
        let position = json!({ "stream_id": old_stream, "serial": 1 });
        let (replayed, outcome) = resume_from(&url(i), "news", position).await;
        let failure = outcome.unwrap_err();
        assert_eq!(failure["code"], "persistence_unavailable", "node {i}: {failure}");
        assert!(replayed.is_empty(), "{replayed:?}");
    }

    store.restart();
    for server in &servers {
        server.wait_for_metric("sockhost_recovery_degraded_channels", |n| n == 0.0).await;
    }
    let (_, outcome) =
        resume_from(&url(1), "news", json!({ "stream_id": old_stream, "serial": 1 })).await;
    assert_eq!(outcome.unwrap_err()["code"], "stream_reset");
    assert_eq!(api.trigger(&["news"], "tick", "new stream").await.0, 200);
    let first = on_b.expect("tick").await;
    assert_eq!((first["data"].as_str(), first["serial"].as_u64()), (Some("new stream"), Some(1)));
    assert_ne!(first["stream_id"], old_stream.as_str());
    // Made again after the restart, on the host's sockets as before.
    assert!(servers[0].labelled_metric(driven).await > connects);
}

/// With the history store on the transport's own Redis, the store publishes each event to the
/// other nodes in the step that gives it its position (no publish of the node's after it, and
/// the bus carries a channel's events in serial order), sealed or not: node B's subscriber
/// gets what went through A, in order, with the store's serials, and A counts every event as
/// published by the store. With the store on another Redis, A publishes them itself.
#[tokio::test]
async fn the_store_publishes_each_event_as_it_positions_it() {
    for (sealed, same_server) in [(true, true), (false, true), (true, false)] {
        let redis = RedisServer::start();
        let other = RedisServer::start();
        let mut bus = Bus::redis(&redis.url(), "fused:");
        if !sealed {
            bus = bus.env("ADAPTER_CLUSTER_SECRET", "");
        }
        let extra = match same_server {
            true => recovering(&bus),
            false => format!(
                "[connection_recovery]\nenabled = true\n[history]\nenabled = true\nbackend = \"redis\"\n\
                 [history.redis]\nurl_override = \"{}\"\n",
                other.url()
            ),
        };
        let servers = nodes(&bus, 2, &extra).await;
        let app = TestApp::main();
        let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[1].port, app.key);
        let mut on_b = Client::connect_v2(&url).await;
        let ack = on_b.subscribe_v2(&app, "private-news").await;
        let start = ack["serial"].as_u64().unwrap_or_else(|| panic!("{ack}"));
        let stream_id = ack["stream_id"].as_str().unwrap().to_string();
        let api_a = Api::new(&servers[0].http_url(), &app);
        for n in 1..=20u64 {
            let (status, body) = api_a.trigger(&["private-news"], "tick", &n.to_string()).await;
            assert_eq!(status, 200, "{body}");
        }
        for n in 1..=20u64 {
            let tick = on_b.expect("tick").await;
            assert_eq!(tick["serial"].as_u64(), Some(start + n), "{sealed} {same_server}: {tick}");
            assert_eq!(tick["data"], n.to_string(), "{tick}");
            assert_eq!(tick["stream_id"], stream_id.as_str(), "{tick}");
        }
        let by_store = servers[0].metric("sockhost_history_published_total").await;
        assert_eq!(by_store, if same_server { 20.0 } else { 0.0 }, "{sealed} {same_server}");
        assert_eq!(servers[1].metric("sockhost_bus_refused_total").await, 0.0);
    }
}

//! Several real `sockhost` processes over one real backend.

use crate::server::Server;

/// The transports multi-node scenarios run over.
#[derive(Debug, Clone)]
pub struct Bus {
    /// The `[adapter]` table that points a node at the backend.
    pub adapter: String,
    /// The plugin that serves it, as its metrics name it.
    pub plugin: &'static str,
    /// Environment variables every node gets.
    pub env: Vec<(String, String)>,
    /// The plugin manifest nodes load, if not the repository's `plugins.toml`.
    pub manifest: Option<std::path::PathBuf>,
    /// The `[history]` tables that keep channel history on the bus's own backend, when it can
    /// (Redis, Redis Cluster); other buses' recovery scenarios start a Redis of their own.
    pub history: Option<String>,
}

impl Bus {
    /// Redis on 127.0.0.1:`port`, given the reference's way: the shared `[database.redis]` table.
    pub fn redis_database(port: u16, prefix: &str) -> Self {
        let history = format!("[history.redis]\nprefix = \"{prefix}history:\"\n");
        Self::new(
            "redis",
            format!(
                "[adapter]\ndriver = \"redis\"\n[adapter.redis]\nprefix = \"{prefix}\"\n\
                 [database.redis]\nhost = \"127.0.0.1\"\nport = {port}\n"
            ),
        )
        .history("redis", &history)
    }

    /// Redis at `url`, channels under `prefix`.
    pub fn redis(url: &str, prefix: &str) -> Self {
        Self::new(
            "redis",
            format!(
                "[adapter]\ndriver = \"redis\"\n[adapter.redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n"
            ),
        )
        .history(
            "redis",
            &format!("[history.redis]\nurl_override = \"{url}\"\nprefix = \"{prefix}history:\"\n"),
        )
    }

    /// Redis Cluster from the seeds in `REDIS_CLUSTER_NODES`, as an operator would give them,
    /// with classic or sharded pub/sub.
    pub fn redis_cluster(seeds: &str, sharded: bool) -> Self {
        Self::new(
            "redis-cluster",
            format!(
                "[adapter]\ndriver = \"redis-cluster\"\n[adapter.cluster]\nprefix = \"test:\"\n\
                 use_sharded_pubsub = {sharded}\n"
            ),
        )
        .env("REDIS_CLUSTER_NODES", seeds)
        .history("redis-cluster", "")
    }

    /// NATS at `url`.
    pub fn nats(url: &str) -> Self {
        Self::new(
            "nats",
            format!(
                "[adapter]\ndriver = \"nats\"\n[adapter.nats]\nservers = [\"{url}\"]\nprefix = \"test:\"\n"
            ),
        )
    }

    /// Kafka-API brokers at `brokers` (`host:port`).
    pub fn kafka(brokers: &str) -> Self {
        Self::new(
            "kafka",
            format!(
                // Tansu holds a read's whole wait even when a record comes: a short one.
                "[adapter]\ndriver = \"kafka\"\n[adapter.kafka]\nbrokers = [\"{brokers}\"]\nprefix = \"test\"\nfetch_max_wait_ms = 10\n"
            ),
        )
    }

    /// An MQTT broker at `url`.
    pub fn mqtt(url: &str) -> Self {
        Self::new(
            "mqtt",
            format!(
                "[adapter]\ndriver = \"mqtt\"\n[adapter.mqtt]\nurl = \"{url}\"\nprefix = \"test\"\n"
            ),
        )
    }

    /// RabbitMQ at `url`.
    pub fn rabbitmq(url: &str) -> Self {
        Self::new(
            "rabbitmq",
            format!(
                "[adapter]\ndriver = \"rabbitmq\"\n[adapter.rabbitmq]\nurl = \"{url}\"\nprefix = \"test\"\n"
            ),
        )
    }

    /// PostgreSQL at `url`, through the out-of-tree plugin of `examples/postgres-transport`
    /// listed in `manifest`.
    pub fn postgres(url: &str, manifest: std::path::PathBuf) -> Self {
        Self {
            manifest: Some(manifest),
            ..Self::new(
                "postgres",
                format!("[adapter]\ndriver = \"postgres\"\n[adapter.postgres]\nurl = \"{url}\"\n"),
            )
        }
    }

    /// Every scenario runs on an authenticated bus, as production should.
    fn new(plugin: &'static str, adapter: String) -> Self {
        Self { adapter, plugin, env: Vec::new(), manifest: None, history: None }
            .env("ADAPTER_CLUSTER_SECRET", CLUSTER_SECRET)
    }

    /// History on the bus's backend: `backend` with its `tables`.
    fn history(mut self, backend: &str, tables: &str) -> Self {
        self.history =
            Some(format!("[history]\nenabled = true\nbackend = \"{backend}\"\n{tables}"));
        self
    }

    /// The same, with an environment variable for every node.
    #[must_use]
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The same, with more TOML in the adapter's tables (appended to the last one).
    #[must_use]
    pub fn with(mut self, toml: &str) -> Self {
        self.adapter.push_str(toml);
        self.adapter.push('\n');
        self
    }
}

/// A bus broadcast of event `event` to app-1's `channel`, as a node (or someone writing to the
/// broker) would publish it.
pub fn broadcast_body(channel: &str, event: &str) -> sockhost::peer::Body {
    let frame = serde_json::json!({ "event": event, "channel": channel, "data": "{}" });
    sockhost::peer::Body::Broadcast {
        app: "app-1".into(),
        channel: channel.into(),
        except: None,
        tags: None,
        compressible: true,
        position: None,
        frame: frame.to_string().into_bytes(),
    }
}

/// The cluster secret every test bus uses.
pub const CLUSTER_SECRET: &str = "a test cluster secret, the same on every node";

/// A backend a transport runs over, which the broker-restart scenario stops and starts again.
pub trait Broker {
    /// Stop it abruptly.
    fn kill(&mut self);
    /// Start it again where it was, with the state a restarted server has.
    fn restart(&mut self);
}

impl Broker for crate::backends::RedisServer {
    fn kill(&mut self) {
        crate::backends::RedisServer::kill(self);
    }
    fn restart(&mut self) {
        crate::backends::RedisServer::restart(self);
    }
}

impl Broker for crate::backends::RedisCluster {
    fn kill(&mut self) {
        crate::backends::RedisCluster::kill(self);
    }
    fn restart(&mut self) {
        crate::backends::RedisCluster::restart(self);
    }
}

impl Broker for crate::backends::PostgresServer {
    fn kill(&mut self) {
        crate::backends::PostgresServer::kill(self);
    }
    fn restart(&mut self) {
        crate::backends::PostgresServer::restart(self);
    }
}

impl Broker for crate::backends::TansuServer {
    fn kill(&mut self) {
        crate::backends::TansuServer::kill(self);
    }
    fn restart(&mut self) {
        crate::backends::TansuServer::restart(self);
    }
}

impl Broker for crate::backends::MosquittoServer {
    fn kill(&mut self) {
        crate::backends::MosquittoServer::kill(self);
    }
    fn restart(&mut self) {
        crate::backends::MosquittoServer::restart(self);
    }
}

impl Broker for crate::backends::RabbitServer {
    fn kill(&mut self) {
        crate::backends::RabbitServer::kill(self);
    }
    fn restart(&mut self) {
        crate::backends::RabbitServer::restart(self);
    }
}

impl Broker for crate::backends::NatsServer {
    fn kill(&mut self) {
        crate::backends::NatsServer::kill(self);
    }
    fn restart(&mut self) {
        crate::backends::NatsServer::restart(self);
    }
}

/// Every multi-node scenario as a `#[tokio::test]`, over the broker and bus `$start()` returns
/// (a fresh one per test). Each transport's test file calls this once.
#[macro_export]
macro_rules! cluster_scenarios {
    ($start:path) => {
        $crate::cluster_scenarios!(@each $start;
            delivers_across_nodes,
            presence_and_counts_are_cluster_wide,
            terminate_reaches_every_node,
            a_late_node_gets_the_presence_state,
            nodes_receive_only_channels_they_serve,
            a_killed_nodes_members_are_removed_once,
            a_graceful_shutdown_is_announced,
            occupancy_webhooks_are_cluster_wide,
            connection_quota_holds_for_the_cluster,
            a_silent_node_makes_answers_partial,
            watchlists_follow_users_across_nodes,
            tag_filters_hold_across_nodes,
            deltas_hold_across_nodes,
            a_client_resumes_on_any_node,
        );

        #[tokio::test]
        async fn nodes_recover_after_the_broker_restarts_and_local_delivery_never_stops() {
            let (mut broker, bus) = $start();
            $crate::cluster::scenarios::the_broker_restarts(&mut broker, bus).await;
        }
    };
    (@each $start:path; $($scenario:ident,)*) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let (_broker, bus) = $start();
                $crate::cluster::scenarios::$scenario(bus).await;
            }
        )*
    };
}

/// Cluster timing short enough for tests, long enough that a loaded CI machine does not take a
/// live node for dead: heartbeats every 200 ms, a node dead after 2 s.
pub const FAST_HEALTH: &str = "[cluster_health]\nheartbeat_interval_ms = 200\nnode_timeout_ms = 2000\ncleanup_interval_ms = 100\n";

/// Start one node on `bus`, with `extra` config.
pub fn node(bus: &Bus, extra: &str) -> Server {
    let mut builder = Server::builder().config(&format!("{extra}\n{FAST_HEALTH}{}", bus.adapter));
    for (name, value) in &bus.env {
        builder = builder.env(name, value);
    }
    if let Some(manifest) = &bus.manifest {
        builder = builder.manifest(manifest);
    }
    builder.start()
}

/// Run a node on `bus` that is expected not to start: its exit code and output.
pub fn refused(bus: &Bus) -> (Option<i32>, String) {
    let dir = crate::private_dir();
    let config = dir.path().join("sockhost.toml");
    std::fs::write(&config, format!("{FAST_HEALTH}{}\n{}", bus.adapter, crate::server::APPS))
        .unwrap();
    let manifest =
        bus.manifest.clone().unwrap_or_else(|| crate::workspace_root().join("plugins.toml"));
    let mut env: Vec<(&str, &str)> =
        vec![("PORT", "0"), ("METRICS_PORT", "0"), ("HOST", "127.0.0.1")];
    env.extend(bus.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    crate::server::run_to_exit(
        dir.path(),
        &["--config", config.to_str().unwrap(), "--plugins", manifest.to_str().unwrap()],
        &env,
    )
}

/// Start `count` nodes on `bus` and wait until each sees all of them.
pub async fn nodes(bus: &Bus, count: usize, extra: &str) -> Vec<Server> {
    let servers: Vec<Server> = (0..count).map(|_| node(bus, extra)).collect();
    for server in &servers {
        server.wait_for_metric("sockhost_cluster_nodes", |n| n as usize == count).await;
    }
    servers
}

/// One event published through node A (`servers[0]`) reaches a subscriber of `channel` on
/// node B (`servers[1]`).
pub async fn one_event_crosses(servers: &[Server], channel: &str) {
    use crate::pusher::{Api, Client, TestApp};
    let app = TestApp::main();
    let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
    on_b.subscribe(&app, channel).await;
    let api_a = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api_a.trigger(&[channel], "crossed", "yes").await.0, 200);
    assert_eq!(on_b.expect("crossed").await["data"], "yes");
}

/// A broker that speaks only TLS, named by `bus`: two nodes that trust the private CA `ca`
/// through `SSL_CERT_FILE` reach it (an event crosses), and a node that trusts only the
/// system's roots is refused at start, the log naming the transport `driver`.
pub async fn a_tls_broker_is_reached_through_a_private_ca(
    bus: &Bus,
    ca: &std::path::Path,
    driver: &str,
) {
    let trusting = bus.clone().env("SSL_CERT_FILE", &ca.to_string_lossy());
    one_event_crosses(&nodes(&trusting, 2, "").await, "over-tls").await;
    let (code, log) = refused(bus);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains(&format!("transport driver `{driver}`")), "{log}");
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}

/// The multi-node scenarios, written once; each transport's test file runs all of them.
pub mod scenarios {
    use serde_json::json;

    use super::{Broker, Bus, node, nodes};
    use crate::pusher::{Api, Client, TestApp};

    /// Messages written to the broker by someone without the cluster secret (`publish` writes
    /// raw bytes to a topic, as anyone with access to the broker could) are refused and
    /// counted: a forged broadcast reaches no client, a forged heartbeat (the lowest node id, a
    /// connection count of u64::MAX) makes no peer and takes no quota.
    pub async fn forged_messages_are_refused<P, F>(bus: Bus, publish: P)
    where
        P: Fn(String, Vec<u8>) -> F,
        F: std::future::Future<Output = ()>,
    {
        use sockhost::peer::{Body, Control, Envelope};
        let servers = nodes(&bus, 2, "").await;
        let app = TestApp::main();
        let mut client = Client::connect(&servers[1].ws_url(&app.key)).await;
        client.subscribe(&app, "watched").await;

        let body = super::broadcast_body("watched", "forged");
        let broadcast = Envelope { node: 1, seq: 1, body };
        publish("#broadcast:app-1:watched".into(), broadcast.encode()).await;
        let connections = [("app-1".to_string(), u64::MAX)].into();
        let heartbeat =
            Envelope { node: 1, seq: 2, body: Body::Control(Control::Heartbeat { connections }) };
        publish("#control".into(), heartbeat.encode()).await;
        servers[1]
            .wait_for_labelled_metric(
                "sockhost_bus_unauthenticated_total{reason=\"missing\"}",
                crate::pusher::PATIENCE,
                |v| v >= 2.0,
            )
            .await;

        // The next event the client gets is a real one: the forged one never came.
        let api = Api::new(&servers[0].http_url(), &app);
        assert_eq!(api.trigger(&["watched"], "real", "r").await.0, 200);
        assert_eq!(client.expect_any().await["event"], "real");
        for server in &servers {
            assert_eq!(server.metric("sockhost_cluster_nodes").await, 2.0);
        }
        Client::connect(&servers[0].ws_url(&app.key)).await;
    }

    /// The members of a presence sync written by a fake peer holding the cluster secret.
    pub const BIG_SYNC: usize = 60_000;

    /// A peer's full state of [`BIG_SYNC`] members (what a node sends a newcomer) is applied
    /// whole, and a broadcast sent after it is delivered too; its goodbye removes them all at
    /// once. `publish` writes raw bytes to a topic; the fake peer seals them with the cluster
    /// secret, as a node would.
    pub async fn a_big_presence_sync_is_applied<P, F>(bus: Bus, publish: P)
    where
        P: Fn(String, Vec<u8>) -> F,
        F: std::future::Future<Output = ()>,
    {
        use sockhost::peer::{Body, Control, Envelope, Seal};
        let seal = Seal::new(super::CLUSTER_SECRET);
        let peer = 7;
        let sealed = |seq: u64, body: Body| seal.seal(&Envelope { node: peer, seq, body }.encode());
        let servers = nodes(&bus, 1, "").await;
        let app = TestApp::main();
        let mut client = Client::connect(&servers[0].ws_url(&app.key)).await;
        client.subscribe(&app, "watched").await;
        client.join(&app, "presence-marker", "local", json!({})).await;

        let members: serde_json::Map<String, serde_json::Value> =
            (0..BIG_SYNC).map(|i| (format!("u{i}"), json!({}))).collect();
        let state = json!({ "app-1": { "presence-crowd": members } });
        let sync = Control::PresenceSync { state, occupied: Vec::new(), online: Vec::new() };
        publish("#control".into(), sealed(1, Body::Control(sync))).await;
        let broadcast = super::broadcast_body("watched", "after-sync");
        publish("#broadcast:app-1:watched".into(), sealed(2, broadcast)).await;
        // Control messages are applied in order: once the marker's join is heard, the sync
        // before it has been applied.
        let marker = Control::Presence {
            app: "app-1".into(),
            channel: "presence-marker".into(),
            user_id: "marker".into(),
            info: Some(json!({})),
        };
        publish("#control".into(), sealed(3, Body::Control(marker))).await;
        let mut heard = Vec::new();
        for _ in 0..2 {
            let event = client.expect_any().await;
            heard.push(event["event"].as_str().unwrap_or_default().to_string());
        }
        heard.sort();
        assert_eq!(heard, ["after-sync", "pusher_internal:member_added"]);

        // A heartbeat keeps the fake peer alive (the node timeout is short in these tests); the
        // member list comes from the replicated registry, without asking the peer.
        let heartbeat = Control::Heartbeat { connections: Default::default() };
        publish("#control".into(), sealed(4, Body::Control(heartbeat))).await;
        let api = Api::new(&servers[0].http_url(), &app);
        let (status, users) = api.get("/channels/presence-crowd/users", &[]).await;
        assert_eq!(status, 200, "{users}");
        assert_eq!(users["users"].as_array().map(Vec::len), Some(BIG_SYNC), "{}", servers[0].log());
        assert_eq!(servers[0].metric("sockhost_cluster_nodes").await, 2.0);

        publish("#control".into(), sealed(5, Body::Control(Control::Goodbye))).await;
        let removed = client.expect("pusher_internal:member_removed").await;
        assert!(removed["data"].as_str().unwrap().contains("\"marker\""), "{removed}");
        let (_, users) = api.get("/channels/presence-crowd/users", &[]).await;
        assert_eq!(users["users"], json!([]), "{users}");
        assert_eq!(servers[0].metric("sockhost_cluster_nodes").await, 1.0);
    }

    /// An event published with tags on one node reaches the subscribers on another only where
    /// their tag filter passes it; the tags cross the bus, the delivered frame has none.
    pub async fn tag_filters_hold_across_nodes(bus: Bus) {
        let servers = nodes(&bus, 2, "[tag_filtering]\nenabled = true\n").await;
        let app = TestApp::main();
        let mut btc = Client::connect(&servers[0].ws_url(&app.key)).await;
        let filter = json!({ "key": "sym", "cmp": "eq", "val": "BTC" });
        let answer = btc.subscribe_with(json!({ "channel": "ticker", "filter": filter })).await;
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
        let mut all = Client::connect(&servers[0].ws_url(&app.key)).await;
        all.subscribe(&app, "ticker").await;
        let api = Api::new(&servers[1].http_url(), &app);
        let post = |name: &'static str, sym: &'static str| {
            let api = &api;
            async move {
                let body = json!({ "name": name, "channel": "ticker", "data": "{}", "tags": { "sym": sym } });
                assert_eq!(api.post("/events", &body).await.0, 200);
            }
        };
        post("eth", "ETH").await;
        post("btc", "BTC").await;
        assert_eq!(all.expect_any().await["event"], "eth");
        assert_eq!(all.expect_any().await["event"], "btc");
        let got = btc.expect_any().await;
        assert_eq!(got["event"], "btc", "{got}");
        assert!(got.get("tags").is_none(), "{got}");
    }

    /// A protocol-2 client of `server` subscribed to `channel` (after sending `resume`, when
    /// given, as a reconnecting client does): the client and the acknowledgement.
    async fn v2_subscribed(
        server: &crate::server::Server,
        channel: &str,
        resume: Option<serde_json::Value>,
    ) -> (Client, serde_json::Value) {
        let app = TestApp::main();
        let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", server.port, app.key);
        let mut client = Client::connect_raw(&url).await;
        client.expect("sockudo:connection_established").await;
        if let Some(positions) = resume {
            let data = json!({ "channel_positions": positions }).to_string();
            client.send(json!({ "event": "sockudo:resume", "data": data })).await;
        }
        client.send(json!({ "event": "sockudo:subscribe", "data": { "channel": channel } })).await;
        let ack = client.expect("sockudo_internal:subscription_succeeded").await;
        (client, ack)
    }

    /// The next `count` events of `client` named `tick`: their (serial, data) pairs.
    async fn ticks(client: &mut Client, count: usize) -> Vec<(u64, String)> {
        let mut got = Vec::new();
        while got.len() < count {
            let frame = client.expect_any().await;
            if frame["event"] == "tick" {
                let serial = frame["serial"].as_u64().unwrap_or_else(|| panic!("{frame}"));
                got.push((serial, frame["data"].as_str().unwrap_or_default().to_string()));
            }
        }
        got
    }

    /// Connection recovery across nodes, with the history store giving each event its position
    /// once for the cluster: a client on A gets events published through A and B in serial
    /// order, misses some while away (published through B), resumes on C, which never heard
    /// the channel (its events come from the store), then, away again, resumes on A, which
    /// stopped hearing the channel when its last subscriber left.
    pub async fn a_client_resumes_on_any_node(bus: Bus) {
        // The store: the bus's own backend when it can be one, else a Redis of its own.
        let own_redis;
        let history = match &bus.history {
            Some(history) => history.clone(),
            None => {
                own_redis = crate::backends::RedisServer::start();
                format!(
                    "[history]\nenabled = true\nbackend = \"redis\"\n[history.redis]\nurl_override = \"{}\"\n",
                    own_redis.url()
                )
            }
        };
        let extra = format!("[connection_recovery]\nenabled = true\n{history}");
        let servers = nodes(&bus, 3, &extra).await;
        let app = TestApp::main();
        let (api_a, api_b) =
            (Api::new(&servers[0].http_url(), &app), Api::new(&servers[1].http_url(), &app));
        let tick = async |api: &Api, n: u32| {
            assert_eq!(api.trigger(&["news"], "tick", &n.to_string()).await.0, 200);
        };
        let (mut on_a, ack) = v2_subscribed(&servers[0], "news", None).await;
        let stream_id = ack["stream_id"].as_str().unwrap_or_else(|| panic!("{ack}")).to_string();
        let start = ack["serial"].as_u64().unwrap();
        for (n, api) in [(1, &api_b), (2, &api_a), (3, &api_b), (4, &api_a)] {
            tick(api, n).await;
        }
        let live = ticks(&mut on_a, 4).await;
        let expected: Vec<(u64, String)> = (1..=4).map(|n| (start + n, n.to_string())).collect();
        assert_eq!(live, expected, "events published through two nodes, out of serial order");
        drop(on_a);

        // Away: published through B.
        for n in 5..=7 {
            tick(&api_b, n).await;
        }
        let at = |serial: u64| json!({ "news": { "stream_id": stream_id, "serial": serial } });
        let (mut on_c, ack) = v2_subscribed(&servers[2], "news", Some(at(start + 4))).await;
        assert_eq!(ack["stream_id"], stream_id.as_str(), "{ack}");
        let replayed = ticks(&mut on_c, 3).await;
        let expected: Vec<(u64, String)> = (5..=7).map(|n| (start + n, n.to_string())).collect();
        assert_eq!(replayed, expected);
        let success = on_c.expect("sockudo:resume_success").await;
        let summary: serde_json::Value =
            serde_json::from_str(success["data"].as_str().unwrap()).unwrap();
        assert_eq!(summary["failed"], json!([]), "{summary}");
        assert_eq!(summary["recovered"][0]["replayed"], 3, "{summary}");
        drop(on_c);

        // Away again: published through B and C; back on A, which had let the channel go.
        tick(&api_b, 8).await;
        tick(&Api::new(&servers[2].http_url(), &app), 9).await;
        let (mut back_on_a, _) = v2_subscribed(&servers[0], "news", Some(at(start + 7))).await;
        let replayed = ticks(&mut back_on_a, 2).await;
        assert_eq!(replayed, [(start + 8, "8".to_string()), (start + 9, "9".to_string())]);
        back_on_a.expect("sockudo:resume_success").await;
        // And live from there, whichever node publishes.
        tick(&api_b, 10).await;
        assert_eq!(ticks(&mut back_on_a, 1).await, [(start + 10, "10".to_string())]);
    }

    /// Events published on one node reach delta subscribers on another as deltas of that
    /// node's streams: the first two whole, then deltas, each rebuilt to what was published;
    /// a subscriber with a tag filter as well gets whole only the events it passes.
    pub async fn deltas_hold_across_nodes(bus: Bus) {
        let extra =
            "[tag_filtering]\nenabled = true\n[delta_compression]\nconflation_key_path = \"sym\"\n";
        let servers = nodes(&bus, 2, extra).await;
        let app = TestApp::main();
        let mut client = Client::connect(&servers[0].ws_url(&app.key)).await;
        let answer =
            client.subscribe_with(json!({ "channel": "ticker", "delta": "xdelta3" })).await;
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
        let mut btc = Client::connect(&servers[0].ws_url(&app.key)).await;
        let filter = json!({ "key": "sym", "cmp": "eq", "val": "BTC" });
        let answer = btc
            .subscribe_with(json!({ "channel": "ticker", "delta": true, "filter": filter }))
            .await;
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
        let api = Api::new(&servers[1].http_url(), &app);
        let mut sent = Vec::new();
        for n in 0..8 {
            let sym = if n % 2 == 0 { "BTC" } else { "ETH" };
            let pad = "x".repeat(400);
            let data = json!({ "sym": sym, "price": 100 + n, "pad": pad }).to_string();
            let body = json!({ "name": "price", "channel": "ticker", "data": data, "tags": { "sym": sym } });
            assert_eq!(api.post("/events", &body).await.0, 200);
            sent.push((sym, data));
        }
        let all = sent.iter().map(|(_, data)| data.as_str());
        let kinds = crate::deltas::Decoder::default().read_kinds(&mut client, all).await;
        assert_eq!(kinds, "FFFFdddd");
        let only_btc = sent.iter().filter(|(sym, _)| *sym == "BTC").map(|(_, d)| d.as_str());
        let kinds = crate::deltas::Decoder::default().read_kinds(&mut btc, only_btc).await;
        assert_eq!(kinds, "FFdd");
    }

    /// A trigger through one node reaches subscribers on the others; client events cross too,
    /// never echoed; an excluded socket on another node is skipped.
    pub async fn delivers_across_nodes(bus: Bus) {
        let servers = nodes(&bus, 3, "").await;
        let app = TestApp::main();
        let mut on_a = Client::connect(&servers[0].ws_url(&app.key)).await;
        let mut on_c = Client::connect(&servers[2].ws_url(&app.key)).await;
        on_a.subscribe(&app, "private-x").await;
        on_c.subscribe(&app, "private-x").await;
        let api_b = Api::new(&servers[1].http_url(), &app);

        assert_eq!(api_b.trigger(&["private-x"], "news", "from b").await.0, 200);
        assert_eq!(on_a.expect("news").await["data"], "from b");
        assert_eq!(on_c.expect("news").await["data"], "from b");

        let body = json!({ "name": "skip", "data": "d", "channel": "private-x", "socket_id": on_a.socket_id });
        assert_eq!(api_b.post("/events", &body).await.0, 200);
        assert_eq!(on_c.expect("skip").await["event"], "skip");
        api_b.trigger(&["private-x"], "marker", "m").await;
        assert_eq!(
            on_a.expect("marker").await["event"],
            "marker",
            "the excluded socket got the event"
        );
        on_c.expect("marker").await;

        on_c.send(json!({ "event": "client-hi", "channel": "private-x", "data": { "from": "c" } }))
            .await;
        assert_eq!(on_a.expect("client-hi").await["data"], json!({ "from": "c" }));
        on_c.send(json!({ "event": "pusher:ping" })).await;
        on_c.expect("pusher:pong").await;
    }

    /// Counts and members are the cluster's, and member events happen once per user.
    pub async fn presence_and_counts_are_cluster_wide(bus: Bus) {
        let servers = nodes(&bus, 3, "").await;
        let app = TestApp::main();
        let channel = "presence-cluster";
        let mut observer = Client::connect(&servers[1].ws_url(&app.key)).await;
        observer.join(&app, channel, "observer", json!({})).await;

        let mut u1_a = Client::connect(&servers[0].ws_url(&app.key)).await;
        let members = u1_a.join(&app, channel, "u1", json!({ "n": 1 })).await;
        // Presence is replicated, not agreed: node A may learn of the observer (on node B) only
        // after u1 joined, and then tells u1 with a member_added. Either way u1 learns of it.
        if members["presence"]["count"] == 1 {
            assert_eq!(members["presence"]["ids"], json!(["u1"]), "{members}");
            let added = u1_a.expect("pusher_internal:member_added").await;
            assert!(added["data"].as_str().unwrap().contains("\"observer\""), "{added}");
        } else {
            assert_eq!(members["presence"]["count"], 2, "{members}");
            assert_eq!(members["presence"]["hash"]["observer"], json!({}));
        }
        let added = observer.expect("pusher_internal:member_added").await;
        assert!(added["data"].as_str().unwrap().contains("\"u1\""), "{added}");

        // u1 again, on another node: no second member_added.
        let mut u1_c = Client::connect(&servers[2].ws_url(&app.key)).await;
        u1_c.join(&app, channel, "u1", json!({ "n": 1 })).await;
        let api = Api::new(&servers[1].http_url(), &app);
        api.trigger(&[channel], "marker", "m").await;
        assert_eq!(
            observer.expect("marker").await["event"],
            "marker",
            "a second member_added arrived"
        );

        let (_, users) = api.get(&format!("/channels/{channel}/users"), &[]).await;
        assert_eq!(users, json!({ "users": [{ "id": "observer" }, { "id": "u1" }] }));
        let (_, info) = api
            .get(&format!("/channels/{channel}"), &[("info", "user_count,subscription_count")])
            .await;
        assert_eq!(info, json!({ "occupied": true, "user_count": 2, "subscription_count": 3 }));
        let (_, list) = Api::new(&servers[2].http_url(), &app)
            .get("/channels", &[("filter_by_prefix", "presence-"), ("info", "user_count")])
            .await;
        assert_eq!(list, json!({ "channels": { channel: { "user_count": 2 } } }));

        // u1 leaves one node: still present. Leaves the other: gone, once.
        u1_a.close().await;
        api.trigger(&[channel], "marker", "m2").await;
        assert_eq!(
            observer.expect("marker").await["data"],
            "m2",
            "u1 was removed while still on a node"
        );
        u1_c.close().await;
        let removed = observer.expect("pusher_internal:member_removed").await;
        assert!(removed["data"].as_str().unwrap().contains("\"u1\""), "{removed}");
    }

    /// Terminating a user closes their connections on every node.
    pub async fn terminate_reaches_every_node(bus: Bus) {
        let servers = nodes(&bus, 2, "").await;
        let app = TestApp::main();
        let mut clients = Vec::new();
        for server in &servers {
            let mut client = Client::connect(&server.ws_url(&app.key)).await;
            let user_data = json!({ "id": "zed" }).to_string();
            let auth = app.user_auth(&client.socket_id, &user_data);
            client.send(json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } })).await;
            client.expect("pusher:signin_success").await;
            clients.push(client);
        }
        let api = Api::new(&servers[0].http_url(), &app);
        assert_eq!(api.trigger(&["#server-to-user-zed"], "dm", "hi").await.0, 200);
        for client in &mut clients {
            assert_eq!(client.expect("dm").await["data"], "hi");
        }
        assert_eq!(api.post("/users/zed/terminate_connections", &json!({})).await.0, 200);
        for client in &mut clients {
            assert_eq!(client.expect_close().await.0, 4009);
        }
    }

    /// A node started later gets the presence state of the others.
    pub async fn a_late_node_gets_the_presence_state(bus: Bus) {
        let servers = nodes(&bus, 2, "").await;
        let app = TestApp::main();
        let channel = "presence-late";
        let mut a = Client::connect(&servers[0].ws_url(&app.key)).await;
        a.join(&app, channel, "early-a", json!({ "who": "a" })).await;
        let mut b = Client::connect(&servers[1].ws_url(&app.key)).await;
        b.join(&app, channel, "early-b", json!({ "who": "b" })).await;

        let late = node(&bus, "");
        late.wait_for_metric("sockhost_cluster_nodes", |n| n as usize == 3).await;
        let api = Api::new(&late.http_url(), &app);
        let expected = json!({ "users": [{ "id": "early-a" }, { "id": "early-b" }] });
        crate::wait::eventually("the late node gets the presence state", async || {
            let (_, users) = api.get(&format!("/channels/{channel}/users"), &[]).await;
            crate::wait::holds(users == expected, users)
        })
        .await;
        let mut c = Client::connect(&late.ws_url(&app.key)).await;
        let members = c.join(&app, channel, "late", json!({})).await;
        assert_eq!(members["presence"]["count"], 3, "{members}");
        assert_eq!(members["presence"]["hash"]["early-b"], json!({ "who": "b" }));
    }

    /// A node with no subscriber for a channel receives none of its broadcasts.
    pub async fn nodes_receive_only_channels_they_serve(bus: Bus) {
        let servers = nodes(&bus, 3, "").await;
        let app = TestApp::main();
        let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
        on_b.subscribe(&app, "only-b").await;
        let api = Api::new(&servers[0].http_url(), &app);
        for i in 0..20 {
            api.trigger(&["only-b"], "tick", &i.to_string()).await;
        }
        for i in 0..20 {
            assert_eq!(on_b.expect("tick").await["data"], i.to_string());
        }
        assert_eq!(servers[1].metric("sockhost_bus_broadcasts_received_total").await, 20.0);
        assert_eq!(servers[2].metric("sockhost_bus_broadcasts_received_total").await, 0.0);
    }

    /// A killed node's members are removed everywhere: each other subscriber hears it once,
    /// and the webhook goes out once.
    pub async fn a_killed_nodes_members_are_removed_once(bus: Bus) {
        let receiver = crate::webhook::Receiver::start().await;
        let hooks = format!(
            "[[app_manager.array.apps]]\nid = \"hooked\"\nkey = \"hooked-key\"\nsecret = \"hooked-secret\"\n\
             [[app_manager.array.apps.webhooks]]\nurl = \"{}\"\nevent_types = [\"member_removed\"]\n",
            receiver.url
        );
        let mut receiver = receiver;
        let mut servers = nodes(&bus, 3, &hooks).await;
        let app = TestApp::new("hooked", "hooked-key", "hooked-secret");
        let channel = "presence-doomed";
        let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
        on_b.join(&app, channel, "watcher-b", json!({})).await;
        let mut on_c = Client::connect(&servers[2].ws_url(&app.key)).await;
        on_c.join(&app, channel, "watcher-c", json!({})).await;
        on_b.expect("pusher_internal:member_added").await;
        let mut victim = Client::connect(&servers[0].ws_url(&app.key)).await;
        victim.join(&app, channel, "victim", json!({})).await;
        // Presence is replicated, not agreed: node C may learn of watcher-b only after c joined,
        // and then rightly tells c that watcher-b was added. Wait for the victim's.
        for client in [&mut on_b, &mut on_c] {
            loop {
                let added = client.expect("pusher_internal:member_added").await;
                if added["data"].as_str().unwrap_or_default().contains("\"victim\"") {
                    break;
                }
            }
        }

        servers[0].kill();
        for client in [&mut on_b, &mut on_c] {
            let removed = client.expect("pusher_internal:member_removed").await;
            assert!(removed["data"].as_str().unwrap().contains("\"victim\""), "{removed}");
        }
        let hook = receiver.next_event().await;
        assert_eq!(
            hook,
            json!({ "name": "member_removed", "channel": channel, "user_id": "victim" })
        );
        servers[1].wait_for_metric("sockhost_cluster_nodes", |n| n == 2.0).await;
        // Exactly once: a marker after the removal arrives next, and no second webhook follows.
        Api::new(&servers[1].http_url(), &app).trigger(&[channel], "marker", "m").await;
        assert_eq!(on_b.expect("marker").await["event"], "marker");
        assert_eq!(on_c.expect("marker").await["event"], "marker");
        receiver.expect_none_within(std::time::Duration::from_millis(500)).await;
    }

    /// A node that shuts down says goodbye: the others drop it before the node timeout.
    pub async fn a_graceful_shutdown_is_announced(bus: Bus) {
        let mut servers = nodes(&bus, 2, "").await;
        let status = servers[0].terminate();
        assert!(status.success());
        servers[1].wait_for_metric("sockhost_cluster_nodes", |n| n == 1.0).await;
        assert!(servers[1].log().contains("A node left the cluster."), "{}", servers[1].log());
    }

    /// Occupied and vacated are the cluster's: sent once, when the first node gains a
    /// subscriber and when the last loses its last.
    pub async fn occupancy_webhooks_are_cluster_wide(bus: Bus) {
        let mut receiver = crate::webhook::Receiver::start().await;
        let hooks = format!(
            "[webhooks]\nvacated_delay_ms = 200\n[queue.memory]\nconcurrency = 1\n\
             [[app_manager.array.apps]]\nid = \"hooked\"\nkey = \"hooked-key\"\nsecret = \"hooked-secret\"\n\
             [[app_manager.array.apps.webhooks]]\nurl = \"{}\"\nevent_types = [\"channel_occupied\", \"channel_vacated\"]\n",
            receiver.url
        );
        let servers = nodes(&bus, 2, &hooks).await;
        let app = TestApp::new("hooked", "hooked-key", "hooked-secret");
        let mut on_a = Client::connect(&servers[0].ws_url(&app.key)).await;
        let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
        on_a.subscribe(&app, "shared").await;
        assert_eq!(
            receiver.next_event().await,
            json!({ "name": "channel_occupied", "channel": "shared" })
        );
        on_b.subscribe(&app, "shared").await;
        on_b.subscribe(&app, "marker").await;
        // The next webhook is the marker's: the second node's subscriber occupied nothing new.
        assert_eq!(
            receiver.next_event().await,
            json!({ "name": "channel_occupied", "channel": "marker" })
        );
        on_a.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "shared" } })).await;
        on_b.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "shared" } })).await;
        assert_eq!(
            receiver.next_event().await,
            json!({ "name": "channel_vacated", "channel": "shared" })
        );
        receiver.expect_none_within(std::time::Duration::from_millis(500)).await;
    }

    /// With socket counting, an app's connection quota holds for the whole cluster.
    pub async fn connection_quota_holds_for_the_cluster(bus: Bus) {
        let servers = nodes(&bus, 2, "").await;
        let app = TestApp::limited();
        let _on_a = Client::connect(&servers[0].ws_url(&app.key)).await;
        let _on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
        // Node A learns B's count from B's next heartbeat; until then it may still admit one.
        let refusal = crate::wait::eventually("node A counts node B's connection", async || {
            let mut third = Client::connect_raw(&servers[0].ws_url(&app.key)).await;
            let first = third.expect_any().await;
            if first["event"] == "pusher:error" {
                return Ok(first);
            }
            third.close().await;
            Err(first.to_string())
        })
        .await;
        assert_eq!(refusal["data"]["code"], 4100, "{refusal}");
    }

    /// A node that does not answer in time makes counts partial, and says so.
    pub async fn a_silent_node_makes_answers_partial(bus: Bus) {
        let bus = Bus {
            adapter: bus.adapter.replacen(
                "[adapter]\n",
                "[adapter]\nrequests_timeout_ms = 300\n",
                1,
            ),
            ..bus
        };
        let servers = nodes(&bus, 2, "").await;
        let app = TestApp::main();
        let mut on_a = Client::connect(&servers[0].ws_url(&app.key)).await;
        on_a.subscribe(&app, "counted").await;
        let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
        on_b.subscribe(&app, "counted").await;
        let url = |server: &crate::server::Server| {
            let api = Api::new(&server.http_url(), &app);
            let path = "/apps/app-1/channels/counted";
            format!(
                "{}{path}?{}",
                server.http_url(),
                api.signed_query("GET", path, &[("info", "subscription_count")], b"", Api::now())
            )
        };
        // Whole: B answered (its subscriber is counted), so B is one of A's peers.
        let whole = reqwest::get(url(&servers[0])).await.unwrap();
        assert!(!whole.headers().contains_key("x-sockhost-partial"));
        let body: serde_json::Value = whole.json().await.unwrap();
        assert_eq!(body, json!({ "occupied": true, "subscription_count": 2 }));

        servers[1].pause();
        let partial = reqwest::get(url(&servers[0])).await.unwrap();
        servers[1].resume();
        assert_eq!(partial.status(), 200);
        let header = partial.headers().get("x-sockhost-partial").cloned();
        let body: serde_json::Value = partial.json().await.unwrap();
        // Both logs and the answer on failure. This once failed without the header, B having
        // answered: `kill -STOP` had returned before all of B's threads had stopped (now
        // `pause` waits for that).
        assert_eq!(
            header.as_ref().map(|v| v.to_str().unwrap_or_default()),
            Some("true"),
            "answer {body}\n== A:\n{}\n== B:\n{}",
            servers[0].log(),
            servers[1].log(),
        );
        assert_eq!(body, json!({ "occupied": true, "subscription_count": 1 }));
    }

    /// A watcher hears when a user comes online and goes offline on another node, once, however
    /// many connections the user has.
    pub async fn watchlists_follow_users_across_nodes(bus: Bus) {
        let servers = nodes(&bus, 2, "").await;
        let app = TestApp::main();
        let sign_in = async |client: &mut Client, user_data: serde_json::Value| {
            let user_data = user_data.to_string();
            let auth = app.user_auth(&client.socket_id, &user_data);
            client.send(json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } })).await;
            client.expect("pusher:signin_success").await;
        };
        let mut watcher = Client::connect(&servers[0].ws_url(&app.key)).await;
        sign_in(&mut watcher, json!({ "id": "w", "watchlist": ["roamer"] })).await;

        let mut roamer_b = Client::connect(&servers[1].ws_url(&app.key)).await;
        sign_in(&mut roamer_b, json!({ "id": "roamer" })).await;
        let online = watcher.expect("pusher_internal:watchlist_events").await;
        assert!(
            online["data"].as_str().unwrap().contains(r#"{"name":"online","user_ids":["roamer"]}"#),
            "{online}"
        );

        // A second connection of the same user, on the watcher's node: not news.
        let mut roamer_a = Client::connect(&servers[0].ws_url(&app.key)).await;
        sign_in(&mut roamer_a, json!({ "id": "roamer" })).await;
        roamer_b.close().await;
        roamer_a.close().await;
        let offline = watcher.expect("pusher_internal:watchlist_events").await;
        assert!(
            offline["data"]
                .as_str()
                .unwrap()
                .contains(r#"{"name":"offline","user_ids":["roamer"]}"#),
            "{offline}"
        );
    }

    /// The broker dies and comes back: local delivery never stops; each node notices, its
    /// plugin reconnects and subscribes again, the nodes find each other, and cross-node
    /// delivery resumes with nothing published after the recovery lost.
    pub async fn the_broker_restarts(broker: &mut impl Broker, bus: Bus) {
        let servers = nodes(&bus, 2, "").await;
        let app = TestApp::main();
        let mut on_a = Client::connect(&servers[0].ws_url(&app.key)).await;
        let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
        on_a.subscribe(&app, "resilient").await;
        on_b.subscribe(&app, "resilient").await;
        let api_a = Api::new(&servers[0].http_url(), &app);

        broker.kill();
        // Local delivery goes on without the broker.
        assert_eq!(api_a.trigger(&["resilient"], "local", "1").await.0, 200);
        assert_eq!(on_a.expect("local").await["data"], "1");
        // Each node sees the other go quiet.
        for server in &servers {
            server.wait_for_metric("sockhost_cluster_nodes", |n| n == 1.0).await;
        }

        broker.restart();
        // Each node's plugin reconnects and subscribes again (its own metric says so), and the
        // nodes hear each other's heartbeats again.
        let reconnects =
            format!("sockhost_plugin_events{{plugin=\"{}\",name=\"reconnects\"}}", bus.plugin);
        // Clients back off their reconnects (the reference's redis-cluster: up to 10 s between
        // attempts), so recovery may take that long after the broker is back.
        for server in &servers {
            server
                .wait_for_labelled_metric(&reconnects, crate::pusher::PATIENCE * 3, |n| n >= 1.0)
                .await;
            server.wait_for_metric("sockhost_cluster_nodes", |n| n == 2.0).await;
        }
        assert_eq!(api_a.trigger(&["resilient"], "again", "2").await.0, 200);
        // The event published while the broker was down may arrive late (a writer retries) or
        // not at all (it was counted as dropped); never out of order.
        let mut got = on_b.expect_any().await;
        if got["event"] == "local" {
            got = on_b.expect_any().await;
        }
        assert_eq!((got["event"].clone(), got["data"].clone()), (json!("again"), json!("2")));
        assert_eq!(on_a.expect("again").await["data"], "2");
    }
}

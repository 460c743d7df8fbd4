//! Scenarios for cache, queue and rate-limiter drivers that several nodes share (Redis, Redis
//! Cluster), written once; each backend's test file runs all of them.

use crate::{
    cluster::{Broker, Bus, node, nodes},
    pusher::{Api, Client, TestApp},
    webhook::Receiver,
};

/// A backend shared drivers run over.
pub trait Backing: Broker {
    /// The bus with transport, cache, queue and rate limiter all on this backend.
    fn bus(&self) -> Bus;
    /// Run `redis-cli` with `args` against the node that holds `key`.
    fn cli(&self, key: &str, args: &[&str]) -> Option<String>;
}

impl Backing for crate::backends::RedisServer {
    fn bus(&self) -> Bus {
        Bus::redis(&self.url(), "t:")
            .with("[cache]\ndriver = \"redis\"\n[queue]\ndriver = \"redis\"\n[rate_limiter]\ndriver = \"redis\"")
            .env("REDIS_URL", &self.url())
    }

    fn cli(&self, _key: &str, args: &[&str]) -> Option<String> {
        crate::backends::redis_cli(self.port, None, None, args)
    }
}

impl Backing for crate::backends::RedisCluster {
    fn bus(&self) -> Bus {
        Bus::redis_cluster(&self.seeds(), true).with(
            "[cache]\ndriver = \"redis-cluster\"\n[queue]\ndriver = \"redis-cluster\"\n\
             [rate_limiter]\ndriver = \"redis-cluster\"",
        )
    }

    fn cli(&self, key: &str, args: &[&str]) -> Option<String> {
        crate::backends::RedisCluster::cli(self, self.owner_of(key), args)
    }
}

/// The app these scenarios use, with a per-IP connection limit and webhooks to `receiver`;
/// the queue retries quickly and leases jobs for a second.
fn config(bus: &Bus, receiver: Option<&Receiver>) -> String {
    let driver = bus.plugin;
    let hooks = receiver
        .map(|r| format!("[[app_manager.array.apps.webhooks]]\nurl = \"{}\"\n", r.url))
        .unwrap_or_default();
    format!(
        "[webhooks]\nmax_attempts = 2\nvacated_delay_ms = 200\n\
         [queue.{driver}]\nretry_base_delay_ms = 50\nretry_max_delay_ms = 200\nlease_ms = 1000\n\
         poll_interval_ms = 50\nconcurrency = 1\n\
         [[app_manager.array.apps]]\nid = \"shared\"\nkey = \"shared-key\"\nsecret = \"shared-secret\"\n\
         max_connections_per_ip_per_minute = 3\n{hooks}"
    )
}

fn app() -> TestApp {
    TestApp::new("shared", "shared-key", "shared-secret")
}

/// The dead-letter list of the webhook queue.
const DEAD: &str = "{sockudo_queue:webhooks}:dead";
const JOBS: &str = "{sockudo_queue:webhooks}:jobs";

/// Wait until `check` holds (the backend's state has no event to wait on).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    crate::wait::eventually(what, async || crate::wait::holds(check(), "not yet")).await;
}

/// Two nodes share one limit: three new connections per IP per minute across both.
pub async fn one_rate_limit_holds_across_nodes(backing: &impl Backing) {
    let bus = backing.bus();
    let servers = nodes(&bus, 2, &config(&bus, None)).await;
    let app = app();
    let _a1 = Client::connect(&servers[0].ws_url(&app.key)).await;
    let _b1 = Client::connect(&servers[1].ws_url(&app.key)).await;
    let _a2 = Client::connect(&servers[0].ws_url(&app.key)).await;
    let mut refused = Client::connect_raw(&servers[1].ws_url(&app.key)).await;
    assert!(refused.expect_error(4100).await.contains("Too many new connections"));
}

/// A webhook whose node dies mid-delivery is delivered by another node once the lease ends.
pub async fn a_webhook_survives_the_node_that_queued_it(backing: &impl Backing) {
    let bus = backing.bus();
    let mut receiver = Receiver::start().await;
    let extra = config(&bus, Some(&receiver));
    receiver.stall();
    let mut a = node(&bus, &extra);
    let app = app();
    let mut client = Client::connect(&a.ws_url(&app.key)).await;
    client.subscribe(&app, "durable").await;
    let first = receiver.next().await;
    assert_eq!(first.names(), ["channel_occupied"]);
    a.kill();
    receiver.release();

    let _b = node(&bus, &extra);
    let again = receiver.next().await;
    assert_eq!(again.body, first.body, "another webhook arrived, not the one A was delivering");
}

/// A webhook that can never be delivered ends in the queue's dead-letter list, payload kept.
pub async fn a_poison_webhook_ends_in_the_dead_letters(backing: &impl Backing) {
    let bus = backing.bus();
    let mut receiver = Receiver::start().await;
    receiver.fail_always();
    let server = node(&bus, &config(&bus, Some(&receiver)));
    let app = app();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "poison").await;
    // max_attempts = 2: two attempts, then the host gives up and the queue sets it aside.
    receiver.next().await;
    receiver.next().await;
    until("a dead letter", || backing.cli(DEAD, &["LLEN", DEAD]).as_deref() == Some("1")).await;
    let id = backing.cli(DEAD, &["LINDEX", DEAD, "0"]).unwrap();
    let payload = backing.cli(JOBS, &["HGET", JOBS, &id]).unwrap();
    assert!(payload.contains(&receiver.url), "{payload}");
}

/// A cache channel's last event, triggered through one node, is replayed to a subscriber on
/// another.
pub async fn cache_channels_replay_across_nodes(backing: &impl Backing) {
    let bus = backing.bus();
    let servers = nodes(&bus, 2, &config(&bus, None)).await;
    let app = app();
    let api_a = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api_a.trigger(&["cache-news"], "headline", "first").await.0, 200);
    let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
    on_b.subscribe(&app, "cache-news").await;
    assert_eq!(on_b.expect("headline").await["data"], "first");
}

/// With the backend down: the rate limiter lets connections through (fail open, counted), a
/// cache channel misses, and a webhook waits and is delivered once the backend is back.
pub async fn a_backend_outage_degrades_and_recovers(backing: &mut impl Backing) {
    let bus = backing.bus();
    let mut receiver = Receiver::start().await;
    let server = node(&bus, &config(&bus, Some(&receiver)));
    let app = app();
    backing.kill();

    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    server.wait_for_metric("sockhost_rate_limiter_errors_total", |n| n >= 1.0).await;
    client.subscribe(&app, "cache-outage").await;
    client.expect("pusher:cache_miss").await;
    client.subscribe(&app, "while-down").await;
    server.wait_for_metric("sockhost_webhook_queue_errors_total", |n| n >= 1.0).await;

    backing.restart();
    // Both channels' occupied webhooks and the cache miss's, queued while the backend was down.
    let mut names = Vec::new();
    while names.len() < 3 {
        names.extend(receiver.next().await.names());
    }
    names.sort();
    assert_eq!(names, ["cache_miss", "channel_occupied", "channel_occupied"]);
}

/// Every shared-driver scenario as a `#[tokio::test]`, over the backing `$start()` returns.
#[macro_export]
macro_rules! shared_driver_scenarios {
    ($start:path) => {
        $crate::shared_driver_scenarios!(@each $start;
            one_rate_limit_holds_across_nodes,
            a_webhook_survives_the_node_that_queued_it,
            a_poison_webhook_ends_in_the_dead_letters,
            cache_channels_replay_across_nodes,
        );

        #[tokio::test]
        async fn a_backend_outage_degrades_and_recovers() {
            let mut backing = $start();
            $crate::shared_drivers::a_backend_outage_degrades_and_recovers(&mut backing).await;
        }
    };
    (@each $start:path; $($scenario:ident,)*) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let backing = $start();
                $crate::shared_drivers::$scenario(&backing).await;
            }
        )*
    };
}

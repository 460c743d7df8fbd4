//! The `redis-cluster` transport.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{
    PushInfo, PushKind, Value,
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo},
};
use sockhost_plugin_api::{
    HostContextBox, PluginError,
    abi::{RStr, RVec},
    sdk::{
        TransportDriver,
        outbox::{Outbox, Outgoing},
    },
};
use tokio::{sync::mpsc, task::JoinHandle};

use sockhost_redis_drivers::{
    bus::Carrier,
    client::{install_crypto, redact},
    connection::{ClusterDatabase, cluster_builder, cluster_identity},
};

use crate::config::TransportConfig;

/// Every instance subscribes to this topic, so `PUBSUB (SHARD)NUMSUB` on it counts the nodes.
const NODES: &str = "#nodes";
/// Messages written concurrently at most.
const BATCH: usize = 512;
/// Attempts per message before it is dropped (and counted). The cluster client already follows
/// redirections and reconnects inside one attempt.
const PUBLISH_ATTEMPTS: u32 = 3;
/// The first wait between attempts to subscribe again to a topic.
const RESUBSCRIBE_MIN_WAIT: Duration = Duration::from_millis(500);
/// Failed attempts to subscribe again after which the connections are opened anew.
const REOPEN_AFTER_FAILURES: u32 = 4;
/// The longest wait between attempts to subscribe again to a topic.
const RESUBSCRIBE_MAX_WAIT: Duration = Duration::from_secs(2);

struct Shared {
    prefix: String,
    sharded: bool,
    timeout: Duration,
    connections: RwLock<Connections>,
    spec: Spec,
    queue: Outbox,
    /// Topics we want, to subscribe again when the server drops one (a slot moved).
    topics: Mutex<HashSet<String>>,
    closed: AtomicBool,
    /// Where it publishes, for this library's history store on the same cluster (see
    /// `sockhost_redis_drivers::bus`): classic pub/sub only, which the cluster copies to every
    /// node from whichever shard a script publishes on. Given up at shutdown.
    carrier: Mutex<Option<Carrier>>,
}

impl Shared {
    fn publisher(&self) -> ClusterConnection {
        self.connections.read().unwrap_or_else(std::sync::PoisonError::into_inner).publisher.clone()
    }

    fn subscriber(&self) -> ClusterConnection {
        self.connections
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .subscriber
            .clone()
    }

    fn checker(&self) -> ClusterConnection {
        self.connections.read().unwrap_or_else(std::sync::PoisonError::into_inner).checker.clone()
    }

    /// Open all three connections afresh and put them in place of the old ones.
    async fn reopen(&self) -> Result<(), PluginError> {
        let fresh = self.spec.open().await?;
        *self.connections.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }
}

/// A transport over a Redis Cluster.
pub struct RedisClusterTransport {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisClusterTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClusterTransport")
            .field("prefix", &self.shared.prefix)
            .field("sharded", &self.shared.sharded)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> PluginError {
    PluginError::unavailable(format!("redis-cluster: {e}"))
}

fn closed() -> PluginError {
    PluginError::unavailable("the redis-cluster transport is shut down")
}

/// What the subscriber's pushes tell that needs an await.
#[derive(Debug)]
enum Resubscribe {
    /// The server dropped this topic (its slot moved, or our own unsubscribe confirmed).
    Topic(String),
    /// A connection was lost: make sure of every topic (retrying until the cluster answers),
    /// then report the reconnect.
    All,
}

type Dropped = mpsc::UnboundedSender<Resubscribe>;

/// What it takes to open the cluster connections again.
struct Spec {
    seeds: Vec<String>,
    shown: Vec<String>,
    /// Credentials and TLS (`[database.redis.cluster]`).
    database: ClusterDatabase,
    timeout: Duration,
    prefix: String,
    host: HostContextBox,
    resubscribe: Dropped,
    lost: Arc<AtomicBool>,
}

/// The three cluster connections; replaced whole when the client cannot recover by itself.
#[derive(Clone)]
struct Connections {
    /// Publishes go here; cloned per operation (it is a handle to one multiplexed pool).
    publisher: ClusterConnection,
    /// Subscriptions live here; its pushes arrive in the closure given to the client.
    subscriber: ClusterConnection,
    /// PING and NUMSUB only, so that a busy publisher never makes the node look unhealthy.
    checker: ClusterConnection,
}

impl Spec {
    fn builder(&self) -> ClusterClientBuilder {
        cluster_builder(&self.seeds, &self.database, self.timeout)
    }

    async fn open(&self) -> Result<Connections, PluginError> {
        let shown = &self.shown;
        let build = |builder: ClusterClientBuilder| {
            builder
                .build()
                .map_err(|e| PluginError::config(format!("adapter.cluster.nodes {shown:?}: {e}")))
        };
        let publisher_client = build(self.builder())?;
        let subscriber_client = build(self.builder().push_sender(pushes(
            self.prefix.clone(),
            self.host.clone(),
            self.resubscribe.clone(),
            self.lost.clone(),
        )))?;
        let wait = self.timeout * 5;
        let open = |client: redis::cluster::ClusterClient| async move {
            tokio::time::timeout(wait, client.get_async_connection())
                .await
                .map_err(|_| {
                    PluginError::timeout(format!(
                        "redis-cluster: no answer from {shown:?} within {wait:?}"
                    ))
                })?
                .map_err(|e| unavailable(format!("{e} (seeds {shown:?})")))
        };
        Ok(Connections {
            publisher: open(publisher_client.clone()).await?,
            checker: open(publisher_client).await?,
            subscriber: open(subscriber_client).await?,
        })
    }
}

impl RedisClusterTransport {
    /// Connect the three cluster connections, check what the configuration asks of the cluster,
    /// subscribe to the nodes topic and start the writer and resubscriber tasks.
    pub async fn connect(
        config: TransportConfig,
        host: HostContextBox,
    ) -> Result<Self, PluginError> {
        install_crypto();
        let seeds = config.seeds()?;
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let (resubscribe_tx, resubscribe_rx) = mpsc::unbounded_channel();
        let spec = Spec {
            shown: seeds.iter().map(|s| redact(s)).collect(),
            seeds,
            database: config.database.cluster.clone(),
            timeout,
            prefix: config.prefix.clone(),
            host: host.clone(),
            resubscribe: resubscribe_tx,
            lost: Arc::new(AtomicBool::new(false)),
        };
        let connections = spec.open().await?;
        if config.use_sharded_pubsub {
            require_sharded_pubsub(&connections.checker, timeout).await?;
        }

        let (queue, outgoing) = Outbox::new("redis-cluster", config.queue_capacity);
        let carrier = (!config.use_sharded_pubsub)
            .then(|| cluster_identity(&spec.seeds))
            .flatten()
            .map(|cluster| Carrier::register(cluster, config.prefix.clone()));
        let shared = Arc::new(Shared {
            prefix: config.prefix,
            sharded: config.use_sharded_pubsub,
            timeout,
            connections: RwLock::new(connections),
            spec,
            queue,
            topics: Mutex::default(),
            closed: AtomicBool::new(false),
            carrier: Mutex::new(carrier),
        });
        subscribe(&shared, NODES).await?;
        let tasks = vec![
            tokio::spawn(write(shared.clone(), outgoing, host.clone())),
            tokio::spawn(resubscribe(shared.clone(), resubscribe_rx, host)),
        ];
        tracing::info!(seeds = ?shared.spec.shown, sharded = shared.sharded, "Connected to Redis Cluster.");
        Ok(Self { shared, tasks: Mutex::new(tasks) })
    }

    fn check_open(&self) -> Result<(), PluginError> {
        if self.shared.closed.load(Ordering::Acquire) { Err(closed()) } else { Ok(()) }
    }
}

/// The subscriber's push handler: messages go straight to the host from the connection's own
/// task (no hop); a topic the server unsubscribed us from goes to the resubscriber.
fn pushes(
    prefix: String,
    host: HostContextBox,
    dropped: Dropped,
    lost: Arc<AtomicBool>,
) -> impl Fn(PushInfo) -> Result<(), redis::aio::SendError> + Send + Sync + 'static {
    move |push: PushInfo| {
        let channel = |value: Option<&Value>| -> Option<Vec<u8>> {
            match value? {
                Value::BulkString(bytes) => Some(bytes.clone()),
                Value::SimpleString(text) => Some(text.clone().into_bytes()),
                _ => None,
            }
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let (Some(name), Some(Value::BulkString(payload))) =
                    (channel(push.data.first()), push.data.get(1))
                else {
                    return Ok(());
                };
                let Some(topic) =
                    std::str::from_utf8(&name).ok().and_then(|n| n.strip_prefix(prefix.as_str()))
                else {
                    return Ok(());
                };
                if topic != NODES {
                    host.on_message(RStr::from_str(topic), RVec::from(payload.clone()));
                }
            }
            // Sent unasked when the slot of a sharded channel moves to another shard (and as the
            // answer to our own unsubscribes, which the resubscriber tells apart).
            PushKind::SUnsubscribe | PushKind::Unsubscribe => {
                if let Some(topic) = channel(push.data.first())
                    .and_then(|n| String::from_utf8(n).ok())
                    .and_then(|n| n.strip_prefix(prefix.as_str()).map(String::from))
                {
                    let _ = dropped.send(Resubscribe::Topic(topic));
                }
            }
            // A node connection closed (the node died, restarted, or failed over). The client
            // reconnects and restores what it can by itself; the resubscriber makes sure of
            // every topic, wherever its slot now lives. One request per burst of pushes.
            PushKind::Disconnection if !lost.swap(true, Ordering::AcqRel) => {
                host.metric(RStr::from_str("subscriber_disconnects"), 1);
                tracing::warn!("Lost a Redis Cluster subscriber connection; subscribing again.");
                let _ = dropped.send(Resubscribe::All);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Refuse sharded pub/sub unless every primary knows `SSUBSCRIBE`.
async fn require_sharded_pubsub(
    conn: &ClusterConnection,
    timeout: Duration,
) -> Result<(), PluginError> {
    let mut conn = conn.clone();
    let mut command = redis::cmd("COMMAND");
    command.arg("INFO").arg("SSUBSCRIBE");
    let answer = tokio::time::timeout(
        timeout,
        conn.route_command(
            command,
            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
        ),
    )
    .await
    .map_err(|_| PluginError::timeout("redis-cluster: COMMAND INFO timed out"))?
    .map_err(unavailable)?;
    fn lacks(value: &Value) -> bool {
        match value {
            Value::Nil => true,
            Value::Array(items) | Value::Set(items) => {
                // One node's answer is an array holding one entry per command asked about.
                items.iter().any(lacks)
            }
            Value::Map(pairs) => pairs.iter().any(|(_, v)| lacks(v)),
            _ => false,
        }
    }
    if lacks(&answer) {
        return Err(PluginError::config(
            "adapter.cluster.use_sharded_pubsub: a node of the cluster does not support sharded \
             pub/sub (SSUBSCRIBE needs Redis 7.0+)",
        ));
    }
    Ok(())
}

async fn subscribe(shared: &Shared, topic: &str) -> Result<(), PluginError> {
    let channel = format!("{}{topic}", shared.prefix);
    let mut conn = shared.subscriber();
    let call = async {
        if shared.sharded {
            conn.ssubscribe(&channel).await
        } else {
            conn.subscribe(&channel).await
        }
    };
    tokio::time::timeout(shared.timeout, call)
        .await
        .map_err(|_| PluginError::timeout("redis-cluster: SUBSCRIBE timed out"))?
        .map_err(unavailable)?;
    if let Ok(mut topics) = shared.topics.lock() {
        topics.insert(topic.to_string());
    }
    Ok(())
}

/// Subscribe again to topics the server dropped while we still want them: a sharded channel
/// whose slot moved to another shard (a reshard or a failover); the cluster client by then
/// routes the slot to its new owner. After a lost connection, subscribe again to every topic
/// (the client restores them itself, node by node; this makes sure of all of them) and only
/// then report the reconnect.
async fn resubscribe(
    shared: Arc<Shared>,
    mut requests: mpsc::UnboundedReceiver<Resubscribe>,
    host: HostContextBox,
) {
    'requests: while let Some(request) = requests.recv().await {
        let all = matches!(request, Resubscribe::All);
        let topics: Vec<String> = match request {
            Resubscribe::Topic(topic) => {
                let wanted = topic == NODES
                    || shared.topics.lock().map(|t| t.contains(&topic)).unwrap_or(false);
                if !wanted {
                    continue;
                }
                vec![topic]
            }
            Resubscribe::All => {
                // Cleared first: a connection lost during this pass asks for another one.
                shared.spec.lost.store(false, Ordering::Release);
                shared.topics.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default()
            }
        };
        let mut failures = 0u32;
        for topic in &topics {
            let mut delay = RESUBSCRIBE_MIN_WAIT;
            while let Err(error) = subscribe(&shared, topic).await {
                if shared.closed.load(Ordering::Acquire) {
                    return;
                }
                failures += 1;
                tracing::warn!(%error, topic, retry_in = ?delay, "Resubscribe failed.");
                tokio::time::sleep(delay).await;
                // Short steps: the cluster client already backs off its reconnects; this only
                // asks whether it is back.
                delay = (delay * 2).min(RESUBSCRIBE_MAX_WAIT);
                // The cluster client does not always find its way back after every node was
                // lost at once (it keeps answering "no connections"): after a few failures,
                // open new connections, and subscribe to everything again on them.
                if failures.is_multiple_of(REOPEN_AFTER_FAILURES) {
                    match shared.reopen().await {
                        Ok(()) => {
                            host.metric(RStr::from_str("reopens"), 1);
                            tracing::warn!("Opened new Redis Cluster connections.");
                            let _ = shared.spec.resubscribe.send(Resubscribe::All);
                            continue 'requests;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "Opening new Redis Cluster connections failed.")
                        }
                    }
                }
            }
        }
        if all {
            host.metric(RStr::from_str("reconnects"), 1);
            tracing::info!(
                topics = topics.len(),
                "Reconnected to Redis Cluster and subscribed again."
            );
        } else {
            host.metric(RStr::from_str("resubscribes"), 1);
            tracing::info!(
                topic = topics[0],
                "Subscribed again after the cluster dropped a topic."
            );
        }
    }
}

/// Write queued messages, a batch at a time: the batch is split by channel, each channel's
/// messages go as one pipeline (routed to the shard of the channel's slot, in order), and the
/// channels' pipelines run concurrently. A failed pipeline is retried, then dropped and counted.
async fn write(shared: Arc<Shared>, mut outgoing: mpsc::Receiver<Outgoing>, host: HostContextBox) {
    let command = if shared.sharded { "SPUBLISH" } else { "PUBLISH" };
    let shared = &shared;
    let mut batch = Vec::with_capacity(BATCH);
    while outgoing.recv_many(&mut batch, BATCH).await > 0 {
        // Messages of one channel, by their place in the batch, in order.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of = Vec::with_capacity(batch.len());
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, message) in batch.iter().enumerate() {
            let group = *index.entry(message.channel.as_str()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push(i);
            group_of.push(group);
        }
        drop(index);
        let mut pending: Vec<usize> = (0..groups.len()).collect();
        let mut failed: HashMap<usize, PluginError> = HashMap::new();
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=PUBLISH_ATTEMPTS {
            let sends = pending.iter().map(|&group| {
                let mut pipe = redis::pipe();
                for &i in &groups[group] {
                    let message = &batch[i];
                    pipe.cmd(command)
                        .arg(&message.channel)
                        .arg(message.payload.as_slice())
                        .ignore();
                }
                let mut conn = shared.publisher();
                async move {
                    let outcome =
                        tokio::time::timeout(shared.timeout, pipe.query_async::<()>(&mut conn))
                            .await;
                    match outcome {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err((group, unavailable(e))),
                        Err(_) => {
                            Err((group, PluginError::timeout("redis-cluster: a publish timed out")))
                        }
                    }
                }
            });
            failed = futures_util::future::join_all(sends)
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect();
            if failed.is_empty() || attempt == PUBLISH_ATTEMPTS {
                break;
            }
            pending = failed.keys().copied().collect();
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
        for (group, error) in &failed {
            let dropped = groups[*group].len();
            host.metric(
                RStr::from_str("publish_dropped"),
                i64::try_from(dropped).unwrap_or(i64::MAX),
            );
            tracing::warn!(%error, messages = dropped, "Redis Cluster publish failed; the messages are dropped.");
        }
        for (message, group) in batch.drain(..).zip(group_of) {
            message.settle(failed.get(&group).map_or(Ok(()), |e| Err(e.clone())));
        }
    }
}

impl TransportDriver for RedisClusterTransport {
    fn try_publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.shared.queue.try_publish(format!("{}{topic}", self.shared.prefix), payload)
    }

    async fn publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.shared.queue.publish(format!("{}{topic}", self.shared.prefix), payload).await
    }

    async fn subscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        subscribe(&self.shared, topic).await
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        // Forget it first, so the server's confirmation is not taken for a dropped topic.
        if let Ok(mut topics) = self.shared.topics.lock() {
            topics.remove(topic);
        }
        let channel = format!("{}{topic}", self.shared.prefix);
        let mut conn = self.shared.subscriber();
        let call = async {
            if self.shared.sharded {
                conn.sunsubscribe(&channel).await
            } else {
                conn.unsubscribe(&channel).await
            }
        };
        tokio::time::timeout(self.shared.timeout, call)
            .await
            .map_err(|_| PluginError::timeout("redis-cluster: UNSUBSCRIBE timed out"))?
            .map_err(unavailable)
    }

    async fn node_count_hint(&self) -> Result<Option<u64>, PluginError> {
        self.check_open()?;
        let mut conn = self.shared.checker();
        let which = if self.shared.sharded { "SHARDNUMSUB" } else { "NUMSUB" };
        let channel = format!("{}{NODES}", self.shared.prefix);
        // Asked of every node and summed: a subscription is held by exactly one of them.
        let answer: Value = tokio::time::timeout(
            self.shared.timeout,
            redis::cmd("PUBSUB").arg(which).arg(&channel).query_async(&mut conn),
        )
        .await
        .map_err(|_| PluginError::timeout("redis-cluster: PUBSUB NUMSUB timed out"))?
        .map_err(unavailable)?;
        Ok(count_in(&answer, channel.as_bytes()))
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.check_open()?;
        let mut conn = self.shared.checker();
        // Routed to every node by the client; all must answer.
        tokio::time::timeout(self.shared.timeout, redis::cmd("PING").query_async::<()>(&mut conn))
            .await
            .map_err(|_| PluginError::timeout("redis-cluster: PING timed out"))?
            .map_err(unavailable)
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Ok(mut carrier) = self.shared.carrier.lock() {
            carrier.take();
        }
        // Let the writer take what is queued, within the request timeout, then stop.
        self.shared.queue.drain(self.shared.timeout).await;
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
        tracing::info!("Redis Cluster transport shut down.");
        Ok(())
    }
}

/// The subscriber count for `channel` in a `PUBSUB NUMSUB` answer (a flat array or a map,
/// depending on the protocol and on how the client combined the nodes' answers).
fn count_in(answer: &Value, channel: &[u8]) -> Option<u64> {
    let as_u64 = |value: &Value| match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let named = |value: &Value| matches!(value, Value::BulkString(b) if b == channel);
    match answer {
        Value::Map(pairs) => pairs.iter().find(|(k, _)| named(k)).and_then(|(_, v)| as_u64(v)),
        Value::Array(items) => items
            .chunks(2)
            .find(|pair| named(&pair[0]))
            .and_then(|pair| pair.get(1).and_then(as_u64)),
        _ => None,
    }
}

impl Drop for RedisClusterTransport {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

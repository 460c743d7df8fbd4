//! The `redis` transport.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use redis::{
    AsyncCommands as _,
    aio::{PubSubSink, PubSubStream},
};
use sockhost_plugin_api::{
    HostContextBox, PluginError,
    abi::{RStr, RVec},
    sdk::{
        TransportDriver,
        outbox::{Outbox, Outgoing, settle_all},
    },
};
use tokio::{sync::mpsc, task::JoinHandle};

use sockhost_redis_drivers::{
    bus::Carrier,
    client::{redact, server_client},
    connection::{ServerConnection, server_identity},
    sentinel::{Following, Master},
};

use crate::config::TransportConfig;

/// Every instance subscribes to this topic, so `PUBSUB NUMSUB` on it counts the nodes.
const NODES: &str = "#nodes";
/// Messages written per pipeline at most.
const BATCH: usize = 512;
/// Attempts per pipeline before its messages are dropped (and counted).
const PUBLISH_ATTEMPTS: u32 = 3;

/// Where the subscriber connects: one server, or the master the sentinels name now.
enum Source {
    Fixed(Box<redis::Client>),
    Sentinel(Arc<Master>),
}

impl Source {
    fn client(&self) -> Result<redis::Client, PluginError> {
        match self {
            Self::Fixed(client) => Ok((**client).clone()),
            Self::Sentinel(master) => redis::Client::open(master.url()).map_err(unavailable),
        }
    }

    /// Hears master switches (none for a fixed server).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<String>> {
        match self {
            Self::Fixed(_) => None,
            Self::Sentinel(master) => Some(master.changes()),
        }
    }
}

struct Shared {
    prefix: String,
    timeout: Duration,
    source: Source,
    conn: ServerConnection,
    queue: Outbox,
    /// The subscriber connection's command half; `None` while reconnecting.
    sink: Mutex<Option<PubSubSink>>,
    /// Topics subscribed to, to subscribe again after a reconnect.
    topics: Mutex<HashSet<String>>,
    closed: AtomicBool,
    host: HostContextBox,
    /// Where it publishes, for this library's history store on the same server (see
    /// `sockhost_redis_drivers::bus`); given up at shutdown.
    carrier: Mutex<Option<Carrier>>,
}

/// A transport over one Redis server.
pub struct RedisTransport {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTransport")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> PluginError {
    PluginError::unavailable(format!("redis: {e}"))
}

fn closed() -> PluginError {
    PluginError::unavailable("the redis transport is shut down")
}

impl RedisTransport {
    /// Connect (publisher and subscriber) and start the reader and writer tasks on the current
    /// (plugin) runtime.
    pub async fn connect(
        config: TransportConfig,
        host: HostContextBox,
    ) -> Result<Self, PluginError> {
        let timeout = Duration::from_millis(config.requests_timeout);
        let mut server = None;
        let (source, conn, url) = match config.database.sentinel(config.url.as_deref()) {
            Some(settings) => {
                let master = Master::start(settings, timeout, Some(host.clone())).await?;
                let following = Following::open(master.clone(), timeout).await?;
                let url = master.url();
                (Source::Sentinel(master), ServerConnection::Sentinel(following), url)
            }
            None => {
                let url = config.url();
                let (client, conn) = server_client(&url, "adapter.redis.url", timeout).await?;
                server = server_identity(&url);
                (Source::Fixed(Box::new(client)), ServerConnection::Fixed(conn), url)
            }
        };
        // Listen for master switches before connecting, so a switch meanwhile is heard.
        let changes = source.changes();
        let (sink, stream) =
            subscriber(&source.client()?, &config.prefix, &HashSet::new(), timeout).await?;
        let (queue, outgoing) = Outbox::new("redis", config.queue_capacity);
        let carrier = server.map(|server| Carrier::register(server, config.prefix.clone()));
        let shared = Arc::new(Shared {
            carrier: Mutex::new(carrier),
            prefix: config.prefix,
            timeout,
            source,
            conn,
            queue,
            sink: Mutex::new(Some(sink)),
            topics: Mutex::default(),
            closed: AtomicBool::new(false),
            host,
        });
        let tasks = vec![
            tokio::spawn(read(shared.clone(), stream, changes)),
            tokio::spawn(write(shared.clone(), outgoing)),
        ];
        tracing::info!(url = %redact(&url), "Connected to Redis.");
        Ok(Self { shared, tasks: Mutex::new(tasks) })
    }

    fn check_open(&self) -> Result<(), PluginError> {
        if self.shared.closed.load(Ordering::Acquire) { Err(closed()) } else { Ok(()) }
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.shared.prefix)
    }

    fn sink(&self) -> Option<PubSubSink> {
        self.shared.sink.lock().ok().and_then(|s| s.clone())
    }
}

/// Open a subscriber connection and subscribe to the nodes topic and `topics`.
async fn subscriber(
    client: &redis::Client,
    prefix: &str,
    topics: &HashSet<String>,
    timeout: Duration,
) -> Result<(PubSubSink, PubSubStream), PluginError> {
    let open = async {
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        let mut channels: Vec<String> = topics.iter().map(|t| format!("{prefix}{t}")).collect();
        channels.push(format!("{prefix}{NODES}"));
        sink.subscribe(&channels).await?;
        Ok::<_, redis::RedisError>((sink, stream))
    };
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| PluginError::timeout("redis: the subscriber connection did not open in time"))?
        .map_err(unavailable)
}

/// Hand every message to the host; after a connection loss, reconnect with backoff and
/// subscribe again to every topic.
async fn read(
    shared: Arc<Shared>,
    mut stream: PubSubStream,
    mut changes: Option<tokio::sync::watch::Receiver<String>>,
) {
    // Behind sentinels, a new master means a new subscriber connection there: publishers move
    // with their connection, and both sides must meet on the same server.
    loop {
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let Some(topic) = message.get_channel_name().strip_prefix(&shared.prefix) else {
                        continue;
                    };
                    if topic == NODES {
                        continue;
                    }
                    shared.host.on_message(
                        RStr::from_str(topic),
                        RVec::from(message.get_payload_bytes().to_vec()),
                    );
                }
                Some(()) = async { changes.as_mut()?.changed().await.ok() } => {
                    tracing::info!("The Redis master changed; moving the subscriber to it.");
                    break;
                }
            }
        }
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut sink) = shared.sink.lock() {
            *sink = None;
        }
        shared.host.metric(RStr::from_str("subscriber_disconnects"), 1);
        tracing::warn!("Lost the Redis subscriber connection; reconnecting.");
        let mut delay = Duration::from_millis(100);
        stream = loop {
            tokio::time::sleep(delay).await;
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            let topics = shared.topics.lock().map(|t| t.clone()).unwrap_or_default();
            let opened = match shared.source.client() {
                Ok(client) => subscriber(&client, &shared.prefix, &topics, shared.timeout).await,
                Err(error) => Err(error),
            };
            match opened {
                Ok((sink, stream)) => {
                    if let Ok(mut slot) = shared.sink.lock() {
                        *slot = Some(sink);
                    }
                    shared.host.metric(RStr::from_str("reconnects"), 1);
                    tracing::info!(
                        topics = topics.len(),
                        "Reconnected to Redis and subscribed again."
                    );
                    break stream;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "Redis reconnect failed.");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
    }
}

/// Write queued messages in pipelines, in order; retry a failed pipeline, then drop and count.
async fn write(shared: Arc<Shared>, mut outgoing: mpsc::Receiver<Outgoing>) {
    let mut batch = Vec::with_capacity(BATCH);
    while outgoing.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for message in &batch {
            pipe.cmd("PUBLISH").arg(&message.channel).arg(message.payload.as_slice()).ignore();
        }
        let mut outcome = Err(PluginError::unavailable("redis: not attempted"));
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=PUBLISH_ATTEMPTS {
            let mut conn = shared.conn.clone();
            match tokio::time::timeout(shared.timeout, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => {
                    outcome = Ok(());
                    break;
                }
                Ok(Err(e)) => outcome = Err(unavailable(e)),
                Err(_) => {
                    outcome = Err(PluginError::timeout("redis: a publish pipeline timed out"))
                }
            }
            if attempt < PUBLISH_ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
        if let Err(error) = &outcome {
            shared.host.metric(
                RStr::from_str("publish_dropped"),
                i64::try_from(batch.len()).unwrap_or(i64::MAX),
            );
            tracing::warn!(%error, messages = batch.len(), "Redis publish failed; the messages are dropped.");
        }
        settle_all(&mut batch, &outcome);
    }
}

impl TransportDriver for RedisTransport {
    fn try_publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.shared.queue.try_publish(self.channel(topic), payload)
    }

    async fn publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.shared.queue.publish(self.channel(topic), payload).await
    }

    async fn subscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        if let Ok(mut topics) = self.shared.topics.lock() {
            topics.insert(topic.to_string());
        }
        // While reconnecting there is no sink; the reconnect subscribes to every topic.
        let mut sink = self
            .sink()
            .ok_or_else(|| unavailable("reconnecting; the topic is subscribed once back"))?;
        tokio::time::timeout(self.shared.timeout, sink.subscribe(self.channel(topic)))
            .await
            .map_err(|_| PluginError::timeout("redis: SUBSCRIBE timed out"))?
            .map_err(unavailable)
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        if let Ok(mut topics) = self.shared.topics.lock() {
            topics.remove(topic);
        }
        let Some(mut sink) = self.sink() else { return Ok(()) };
        tokio::time::timeout(self.shared.timeout, sink.unsubscribe(self.channel(topic)))
            .await
            .map_err(|_| PluginError::timeout("redis: UNSUBSCRIBE timed out"))?
            .map_err(unavailable)
    }

    async fn node_count_hint(&self) -> Result<Option<u64>, PluginError> {
        self.check_open()?;
        let mut conn = self.shared.conn.clone();
        let answer: Vec<(String, u64)> = tokio::time::timeout(
            self.shared.timeout,
            redis::cmd("PUBSUB").arg("NUMSUB").arg(self.channel(NODES)).query_async(&mut conn),
        )
        .await
        .map_err(|_| PluginError::timeout("redis: PUBSUB NUMSUB timed out"))?
        .map_err(unavailable)?;
        Ok(answer.first().map(|(_, n)| *n))
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.check_open()?;
        let mut conn = self.shared.conn.clone();
        let _: String = tokio::time::timeout(self.shared.timeout, conn.ping())
            .await
            .map_err(|_| PluginError::timeout("redis: PING timed out"))?
            .map_err(unavailable)?;
        Ok(())
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
        if let Ok(mut sink) = self.shared.sink.lock() {
            *sink = None;
        }
        tracing::info!("Redis transport shut down.");
        Ok(())
    }
}

impl Drop for RedisTransport {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

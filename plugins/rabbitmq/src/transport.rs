//! The `rabbitmq` transport.
//!
//! - **Interest routing.** One `direct` exchange (the prefix); the routing key is the sockhost
//!   topic. Each node has one exclusive queue per connection and binds it to each topic it
//!   serves: a node gets only the channels it has subscribers for. A subscription is confirmed
//!   when the broker answers the binding (Bind-Ok); from then on every publish reaches it.
//! - **Bounded.** The node's queue holds at most `max_queue_length` messages in the broker
//!   (`x-overflow = drop-head`): a slow node loses its oldest messages, it never fills the
//!   broker's memory. The broker sends at most `prefetch` messages before they are acknowledged.
//!   What the cap drops is dead-lettered to a queue of the node's own that nothing reads; the
//!   node empties it every second, and once more as it shuts down, and counts what it held
//!   (`dropped_slow`), so a drop is never silent.
//! - **Confirmed publishes.** The publishing channel runs in confirm mode with at most
//!   `publish_window` publishes unconfirmed; past it, and while the broker blocks the connection
//!   (its memory or disk alarm), publishing pushes back. A negative confirm is counted.
//! - **Reconnect.** When the connection ends, the plugin connects again (backing off up to 5 s),
//!   declares a new queue, binds every topic it serves again, and counts `reconnects`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt as _, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, Event,
    ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
        QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable},
};
use sha2::{Digest as _, Sha256};
use sockhost_plugin_api::sdk::config::redact_url;
use sockhost_plugin_api::{
    HostContextBox, PluginError,
    abi::{RStr, RVec},
    sdk::{
        TransportDriver,
        outbox::{Outbox, Outgoing},
    },
};
use tokio::sync::{mpsc, watch};

use crate::config::TransportConfig;

/// The longest routing key AMQP carries (a short string).
const MAX_KEY: usize = 255;
/// Routing keys of topics longer than [`MAX_KEY`] start with this, then the topic's digest.
const DIGEST: &str = "sha256:";
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Messages the publish queue holds before `try_publish` pushes back.
const OUTBOX: usize = 65_536;
/// Messages the writer takes from the queue at once.
const BATCH: usize = 256;
/// How often the node counts (and empties) the queue of what its capped queue dropped.
const DROPPED_COUNT_EVERY: Duration = Duration::from_secs(1);
/// Dropped messages held between two counts at most; beyond it the oldest go uncounted (over
/// 100,000 drops a second), so a node far behind cannot fill the broker through this queue.
const DROPPED_HELD: i64 = 100_000;

/// The routing key of `topic`: the topic itself, or a digest of it when it is too long.
pub fn routing_key(topic: &str) -> String {
    if topic.len() <= MAX_KEY {
        return topic.to_string();
    }
    let digest = Sha256::digest(topic.as_bytes());
    format!("{DIGEST}{}", hex::encode(digest))
}

/// A queue's arguments: at most `length` messages, the oldest dropped past it, and dead-lettered
/// to `exchange` with `key` when given.
fn capped(length: i64, dead_letter: Option<(&str, &str)>) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(length));
    arguments.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
    if let Some((exchange, key)) = dead_letter {
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(exchange.into()));
        let key = AMQPValue::LongString(key.into());
        arguments.insert("x-dead-letter-routing-key".into(), key);
    }
    arguments
}

fn unavailable(e: impl std::fmt::Display) -> PluginError {
    PluginError::unavailable(format!("rabbitmq: {e}"))
}

/// One connection to the broker and what was declared on it.
struct Session {
    connection: Connection,
    /// Declares, binds and unbinds.
    control: Channel,
    /// Publishes, in confirm mode.
    publish: Channel,
    /// This node's queue on this connection.
    queue: String,
    /// Where the broker dead-letters what the cap of `queue` dropped, to be counted.
    dropped: String,
}

/// What the transport's calls and its tasks share.
struct Shared {
    config: TransportConfig,
    host: HostContextBox,
    /// Names this node's queues.
    node: String,
    /// The topics this node serves, by routing key.
    topics: Mutex<HashMap<String, String>>,
    /// The live session; `None` while connecting again.
    session: watch::Sender<Option<Arc<Session>>>,
    /// The broker blocked the connection (a resource alarm): publishing pushes back.
    blocked: AtomicBool,
    closed: AtomicBool,
}

impl Shared {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    fn count(&self, name: &str) {
        self.host.metric(RStr::from_str(name), 1);
    }

    /// The live session, waiting for one up to the request timeout.
    async fn session(&self) -> Result<Arc<Session>, PluginError> {
        let mut live = self.session.subscribe();
        let found = tokio::time::timeout(self.timeout(), live.wait_for(Option::is_some)).await;
        match found {
            Ok(Ok(session)) => Ok(session.clone().expect("waited for a session")),
            _ => Err(unavailable("not connected to the broker")),
        }
    }

    /// Connect, declare the exchange and this connection's queue, bind every topic served, and
    /// start consuming and publishing.
    async fn connect(&self, epoch: u64) -> Result<(Arc<Session>, Consumer), PluginError> {
        let url = &self.config.url;
        let uri =
            self.config.uri().map_err(|e| unavailable(format!("{}: {e}", redact_url(url))))?;
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("sockhost {}", self.node).into());
        let within = Duration::from_millis(self.config.connection_timeout_ms);
        // Over TLS (`amqps://`), the broker is verified against the system's trusted
        // certificates or the bundle `SSL_CERT_FILE` names.
        let connection = tokio::time::timeout(within, Connection::connect_uri(uri, properties))
            .await
            .map_err(|_| {
                unavailable(format!("no connection to {} within {within:?}", redact_url(url)))
            })?
            .map_err(|e| unavailable(format!("cannot connect to {}: {e}", redact_url(url))))?;
        let setup = async {
            let control = connection.create_channel().await?;
            let exchange = self.config.prefix.as_str();
            let options = ExchangeDeclareOptions::default();
            control
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Direct,
                    options,
                    FieldTable::default(),
                )
                .await?;
            let queue = format!("{}.node.{}.{epoch}", self.config.prefix, self.node);
            // What the node queue's cap drops goes through this exchange, keyed by the queue's
            // name, to a queue of the node's own, where it is counted.
            let dead = format!("{exchange}.dropped");
            control
                .exchange_declare(
                    dead.as_str().into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let dropped = format!("{queue}.dropped");
            let options =
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
            let held = capped(DROPPED_HELD, None);
            control.queue_declare(dropped.as_str().into(), options, held).await?;
            control
                .queue_bind(
                    dropped.as_str().into(),
                    dead.as_str().into(),
                    queue.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let length = i64::try_from(self.config.max_queue_length).unwrap_or(i64::MAX);
            let arguments = capped(length, Some((&dead, &queue)));
            control.queue_declare(queue.as_str().into(), options, arguments).await?;
            let keys: Vec<String> =
                self.topics.lock().expect("topics lock").keys().cloned().collect();
            for key in &keys {
                let options = QueueBindOptions::default();
                control
                    .queue_bind(
                        queue.as_str().into(),
                        exchange.into(),
                        key.as_str().into(),
                        options,
                        FieldTable::default(),
                    )
                    .await?;
            }
            let consume = connection.create_channel().await?;
            consume.basic_qos(self.config.prefetch, BasicQosOptions::default()).await?;
            let consumer = consume
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let publish = connection.create_channel().await?;
            publish.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>((control, publish, queue, dropped, consumer))
        };
        let (control, publish, queue, dropped, consumer) =
            tokio::time::timeout(self.timeout(), setup)
                .await
                .map_err(|_| unavailable("the broker did not answer the set-up in time"))?
                .map_err(unavailable)?;
        Ok((Arc::new(Session { connection, control, publish, queue, dropped }), consumer))
    }

    /// Hand each delivery to the host, acknowledging them in groups, until the consumer ends
    /// (the connection was lost).
    async fn consume(&self, mut consumer: Consumer) {
        let group = u32::from(self.config.prefetch / 2).max(1);
        let mut unacknowledged = 0;
        while let Some(delivery) = consumer.next().await {
            let Ok(delivery) = delivery else { return };
            let key = delivery.routing_key.as_str();
            if key.starts_with(DIGEST) {
                let topic = self.topics.lock().expect("topics lock").get(key).cloned();
                if let Some(topic) = topic {
                    self.host.on_message(RStr::from_str(&topic), RVec::from(delivery.data));
                }
            } else {
                let topic = key.to_string();
                self.host.on_message(RStr::from_str(&topic), RVec::from(delivery.data));
            }
            unacknowledged += 1;
            if unacknowledged >= group {
                unacknowledged = 0;
                let multiple = BasicAckOptions { multiple: true };
                if delivery.acker.ack(multiple).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Every [`DROPPED_COUNT_EVERY`], count what the node queue's cap dropped. Never returns:
    /// it ends with the session's consumer.
    async fn count_dropped(&self, session: &Session) {
        loop {
            tokio::time::sleep(DROPPED_COUNT_EVERY).await;
            self.purge_dropped(session).await;
        }
    }

    /// Empty the queue of what the node queue's cap dropped, and count it.
    async fn purge_dropped(&self, session: &Session) {
        let purge = session
            .control
            .queue_purge(session.dropped.as_str().into(), QueuePurgeOptions::default());
        match tokio::time::timeout(self.timeout(), purge).await {
            Ok(Ok(dropped)) if dropped > 0 => {
                self.host.metric(RStr::from_str("dropped_slow"), i64::from(dropped));
                tracing::warn!(
                    dropped,
                    "This node fell behind its RabbitMQ queue's cap; the broker dropped its oldest messages."
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::debug!(%error, "Could not count dropped messages."),
            Err(_) => tracing::debug!("Counting dropped messages timed out."),
        }
    }

    /// Keep a session up until shutdown: when one ends, connect again with a new queue and
    /// every binding restored.
    async fn supervise(self: Arc<Self>, first: Arc<Session>, consumer: Consumer) {
        let (mut session, mut consumer) = (first, consumer);
        let mut epoch = 0;
        loop {
            self.watch_events(&session);
            self.session.send_replace(Some(session.clone()));
            // Counting stops with the session (its queue of dropped messages goes with it).
            tokio::select! {
                () = self.consume(consumer) => {}
                () = self.count_dropped(&session) => {}
            }
            self.session.send_replace(None);
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            self.count("disconnects");
            tracing::warn!("Lost the RabbitMQ connection; connecting again.");
            let mut wait = Duration::from_millis(100);
            loop {
                tokio::time::sleep(wait).await;
                if self.closed.load(Ordering::Acquire) {
                    return;
                }
                epoch += 1;
                match self.connect(epoch).await {
                    Ok(next) => {
                        (session, consumer) = next;
                        break;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "RabbitMQ is not back yet.");
                        wait = (wait * 2).min(MAX_BACKOFF);
                    }
                }
            }
            self.count("reconnects");
            let bound = self.topics.lock().expect("topics lock").len();
            tracing::info!(bound, "Connected to RabbitMQ again; every binding restored.");
        }
    }

    /// Follow the broker's blocking of the connection (its resource alarms).
    fn watch_events(self: &Arc<Self>, session: &Session) {
        let mut events = Box::pin(session.connection.events_listener());
        let shared = self.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Event::ConnectionBlocked(reason) => {
                        shared.blocked.store(true, Ordering::Release);
                        shared.count("blocked");
                        tracing::warn!(
                            reason,
                            "RabbitMQ blocked the connection; publishing pushes back."
                        );
                    }
                    Event::ConnectionUnblocked => shared.blocked.store(false, Ordering::Release),
                    Event::Error(_) => {
                        shared.blocked.store(false, Ordering::Release);
                        return;
                    }
                    _ => {}
                }
            }
        });
    }

    /// Publish what the queue holds, in order, with at most `publish_window` unconfirmed.
    async fn write(self: Arc<Self>, mut outgoing: mpsc::Receiver<Outgoing>) {
        let window = self.config.publish_window;
        let exchange = self.config.prefix.clone();
        let mut batch = Vec::with_capacity(BATCH);
        let mut confirms = FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                Some((confirmed, message)) = confirms.next(), if !confirms.is_empty() => {
                    let outcome = match confirmed {
                        Ok(Confirmation::Nack(_)) => {
                            self.count("nacks");
                            Err(unavailable("the broker refused the message"))
                        }
                        Ok(_) => Ok(()),
                        Err(e) => Err(unavailable(e)),
                    };
                    Outgoing::settle(message, outcome);
                }
                taken = outgoing.recv_many(&mut batch, BATCH), if confirms.len() < window => {
                    if taken == 0 {
                        break;
                    }
                    let session = self.session.borrow().clone();
                    for message in batch.drain(..) {
                        let Some(session) = &session else {
                            self.count("dropped_disconnected");
                            message.settle(Err(unavailable("not connected to the broker")));
                            continue;
                        };
                        let sent = session
                            .publish
                            .basic_publish(
                                exchange.as_str().into(),
                                message.channel.as_str().into(),
                                BasicPublishOptions::default(),
                                &message.payload,
                                BasicProperties::default(),
                            )
                            .await;
                        match sent {
                            Ok(confirm) => confirms.push(async move { (confirm.await, message) }),
                            Err(e) => {
                                self.count("dropped_disconnected");
                                message.settle(Err(unavailable(e)));
                            }
                        }
                    }
                }
            }
        }
        while let Some((_, message)) = confirms.next().await {
            message.settle(Ok(()));
        }
    }
}

/// A transport over RabbitMQ.
pub struct RabbitTransport {
    outbox: Outbox,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RabbitTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitTransport")
            .field("prefix", &self.shared.config.prefix)
            .finish_non_exhaustive()
    }
}

impl RabbitTransport {
    /// Connect to the broker (a start-up error if it cannot), then keep connected.
    pub async fn connect(
        config: TransportConfig,
        host: HostContextBox,
    ) -> Result<Self, PluginError> {
        // rustls picks its crypto from a process-wide default; this plugin's copy of it has none
        // until one is installed (an error only means another thread installed it first).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let node = format!("{:016x}", rand::random::<u64>());
        let shown = redact_url(&config.url);
        let shared = Arc::new(Shared {
            config,
            host,
            node,
            topics: Mutex::default(),
            session: watch::Sender::new(None),
            blocked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let (session, consumer) = shared.connect(0).await?;
        tracing::info!(url = %shown, queue = %session.queue, "Connected to RabbitMQ.");
        shared.session.send_replace(Some(session.clone()));
        tokio::spawn(shared.clone().supervise(session, consumer));
        let (outbox, outgoing) = Outbox::new("rabbitmq", OUTBOX);
        tokio::spawn(shared.clone().write(outgoing));
        Ok(Self { outbox, shared })
    }

    fn check_open(&self) -> Result<(), PluginError> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(PluginError::unavailable("the rabbitmq transport is shut down"))
        } else {
            Ok(())
        }
    }
}

impl TransportDriver for RabbitTransport {
    fn try_publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        if self.shared.blocked.load(Ordering::Acquire) {
            return Err(PluginError::backpressure("rabbitmq: the broker blocked the connection"));
        }
        self.outbox.try_publish(routing_key(topic), payload)
    }

    async fn publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        tokio::time::timeout(
            self.shared.timeout(),
            self.outbox.publish(routing_key(topic), payload),
        )
        .await
        .map_err(|_| PluginError::timeout("rabbitmq: the publish was not confirmed in time"))?
    }

    async fn subscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        let key = routing_key(topic);
        self.shared.topics.lock().expect("topics lock").insert(key.clone(), topic.to_string());
        // Bound on reconnect too (the topic is kept): a subscribe during an outage waits for
        // the next session up to the request timeout.
        let session = self.shared.session().await?;
        let exchange = self.shared.config.prefix.as_str();
        let bind = session.control.queue_bind(
            session.queue.as_str().into(),
            exchange.into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        tokio::time::timeout(self.shared.timeout(), bind)
            .await
            .map_err(|_| PluginError::timeout("rabbitmq: the binding was not confirmed in time"))?
            .map_err(unavailable)
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        let key = routing_key(topic);
        self.shared.topics.lock().expect("topics lock").remove(&key);
        let Some(session) = self.shared.session.borrow().clone() else { return Ok(()) };
        let exchange = self.shared.config.prefix.as_str();
        let unbind = session.control.queue_unbind(
            session.queue.as_str().into(),
            exchange.into(),
            key.as_str().into(),
            FieldTable::default(),
        );
        tokio::time::timeout(self.shared.timeout(), unbind)
            .await
            .map_err(|_| PluginError::timeout("rabbitmq: the unbinding was not confirmed in time"))?
            .map_err(unavailable)
    }

    async fn node_count_hint(&self) -> Result<Option<u64>, PluginError> {
        self.check_open()?;
        Ok(self.shared.config.nodes_number)
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.check_open()?;
        match self.shared.session.borrow().as_ref() {
            Some(session) if session.connection.status().connected() => Ok(()),
            _ => Err(unavailable("not connected to the broker")),
        }
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // What was accepted goes out, within the request timeout.
        self.outbox.drain(self.shared.timeout()).await;
        let session = self.shared.session.borrow().clone();
        if let Some(session) = session {
            // What the cap dropped since the last count goes with the connection's queues:
            // counted now, or never.
            self.shared.purge_dropped(&session).await;
            let closing = session.connection.close(200, "sockhost shut down".into());
            let _ = tokio::time::timeout(self.shared.timeout(), closing).await;
        }
        tracing::info!("RabbitMQ transport shut down.");
        Ok(())
    }
}

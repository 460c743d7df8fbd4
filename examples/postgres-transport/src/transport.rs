//! The `postgres` transport.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use sockhost_plugin_api::{
    HostContextBox, PluginError,
    abi::{RStr, RVec},
    sdk::{
        TransportDriver,
        outbox::{Outbox, Outgoing, settle_all},
    },
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::{
    chunks::{self, Reassembly},
    config::TransportConfig,
};

/// Messages written per statement at most.
const BATCH: usize = 256;
/// Attempts per batch before its messages are dropped (and counted).
const PUBLISH_ATTEMPTS: u32 = 3;

struct Shared {
    url: String,
    prefix: String,
    timeout: Duration,
    /// This instance's id in message ids, so ids from different nodes never meet.
    origin: u64,
    sequence: AtomicU64,
    queue: Outbox,
    /// The listening connection's client; `None` while reconnecting.
    listener: tokio::sync::Mutex<Option<Client>>,
    /// Channels listened to, with their topics: to listen again after a reconnect, and to name
    /// the topic of a notification.
    channels: Mutex<HashMap<String, String>>,
    closed: AtomicBool,
    host: HostContextBox,
}

/// A transport over one PostgreSQL server.
pub struct PostgresTransport {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for PostgresTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTransport")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> PluginError {
    PluginError::unavailable(format!("postgres: {e}"))
}

fn closed() -> PluginError {
    PluginError::unavailable("the postgres transport is shut down")
}

/// The notification channel of `topic`: an identifier PostgreSQL keeps as it is (lowercase,
/// unquoted-safe, under 63 bytes), the same on every node.
fn channel_of(prefix: &str, topic: &str) -> String {
    let digest = Sha256::digest(topic.as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

async fn open(
    url: &str,
    timeout: Duration,
) -> Result<
    (Client, tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>),
    PluginError,
> {
    tokio::time::timeout(timeout, tokio_postgres::connect(url, NoTls))
        .await
        .map_err(|_| PluginError::timeout(format!("postgres: no answer within {timeout:?}")))?
        .map_err(unavailable)
}

impl PostgresTransport {
    /// Connect (publisher and listener) and start the writer and listener tasks on the current
    /// (plugin) runtime.
    pub async fn connect(
        config: TransportConfig,
        host: HostContextBox,
    ) -> Result<Self, PluginError> {
        let url = config.url();
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let (publisher, connection) = open(&url, timeout).await?;
        let publisher_task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let (queue, outgoing) = Outbox::new("postgres", config.queue_capacity);
        let shared = Arc::new(Shared {
            url,
            prefix: config.prefix,
            timeout,
            origin: rand::random(),
            sequence: AtomicU64::new(0),
            queue,
            listener: tokio::sync::Mutex::new(None),
            channels: Mutex::default(),
            closed: AtomicBool::new(false),
            host,
        });
        let (ready, listening) = oneshot::channel();
        let tasks = vec![
            publisher_task,
            tokio::spawn(write(shared.clone(), publisher, outgoing)),
            tokio::spawn(listen(shared.clone(), Some(ready))),
        ];
        let transport = Self { shared, tasks: Mutex::new(tasks) };
        listening.await.map_err(|_| unavailable("the listener stopped"))??;
        tracing::info!("Connected to PostgreSQL.");
        Ok(transport)
    }

    fn check_open(&self) -> Result<(), PluginError> {
        if self.shared.closed.load(Ordering::Acquire) { Err(closed()) } else { Ok(()) }
    }
}

/// Keep a listening connection: connect, listen to every channel, hand notifications to the
/// host; when the connection is lost, reconnect with backoff and do it again. `ready` learns
/// how the first connection went.
async fn listen(shared: Arc<Shared>, mut ready: Option<oneshot::Sender<Result<(), PluginError>>>) {
    let mut delay = Duration::from_millis(100);
    let mut first = true;
    loop {
        let (client, mut connection) = match open(&shared.url, shared.timeout).await {
            Ok(pair) => pair,
            Err(error) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(error));
                    return;
                }
                tracing::warn!(%error, retry_in = ?delay, "PostgreSQL reconnect failed.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // The connection carries both the answers to LISTEN and the notifications: drive it
        // here, and hand notifications over as they come.
        let (notifications, mut incoming) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message {
                    let _ = notifications.send((n.channel().to_string(), n.payload().to_string()));
                }
            }
        });
        let channels: Vec<String> =
            shared.channels.lock().map(|c| c.keys().cloned().collect()).unwrap_or_default();
        let mut relisten = String::new();
        for channel in &channels {
            relisten.push_str(&format!("LISTEN \"{channel}\";"));
        }
        if !relisten.is_empty()
            && let Err(error) = client.batch_execute(&relisten).await
        {
            tracing::warn!(%error, "Listening again failed; reconnecting.");
            driver.abort();
            continue;
        }
        *shared.listener.lock().await = Some(client);
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        if !first {
            shared.host.metric(RStr::from_str("reconnects"), 1);
            tracing::info!(
                channels = channels.len(),
                "Reconnected to PostgreSQL and listening again."
            );
        }
        first = false;
        delay = Duration::from_millis(100);

        let mut reassembly = Reassembly::default();
        while let Some((channel, text)) = incoming.recv().await {
            let topic = shared.channels.lock().ok().and_then(|c| c.get(&channel).cloned());
            if let (Some(topic), Some(payload)) = (topic, reassembly.take(&channel, &text)) {
                shared.host.on_message(RStr::from_str(&topic), RVec::from(payload));
            }
        }
        *shared.listener.lock().await = None;
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        shared.host.metric(RStr::from_str("listener_disconnects"), 1);
        tracing::warn!("Lost the PostgreSQL listening connection; reconnecting.");
        tokio::time::sleep(delay).await;
    }
}

/// Write queued messages, a batch per statement (one transaction, so each message's chunks
/// arrive together and in order); reconnect when the connection is lost; retry a failed batch,
/// then drop and count it.
async fn write(shared: Arc<Shared>, mut client: Client, mut outgoing: mpsc::Receiver<Outgoing>) {
    const SEND: &str = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)";
    let mut batch = Vec::with_capacity(BATCH);
    while outgoing.recv_many(&mut batch, BATCH).await > 0 {
        let (mut channels, mut payloads) = (Vec::new(), Vec::new());
        for message in &batch {
            let id = format!(
                "{:x}-{:x}",
                shared.origin,
                shared.sequence.fetch_add(1, Ordering::Relaxed)
            );
            for part in chunks::split(&id, &message.payload) {
                channels.push(message.channel.clone());
                payloads.push(part);
            }
        }
        let mut outcome = Err(unavailable("not attempted"));
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=PUBLISH_ATTEMPTS {
            if client.is_closed() {
                match open(&shared.url, shared.timeout).await {
                    Ok((fresh, connection)) => {
                        tokio::spawn(async move {
                            let _ = connection.await;
                        });
                        client = fresh;
                    }
                    Err(error) => outcome = Err(error),
                }
            }
            if !client.is_closed() {
                let sent = tokio::time::timeout(
                    shared.timeout,
                    client.execute(SEND, &[&channels, &payloads]),
                )
                .await;
                outcome = match sent {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(unavailable(e)),
                    Err(_) => Err(PluginError::timeout("postgres: a publish timed out")),
                };
                if outcome.is_ok() {
                    break;
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
            tracing::warn!(%error, messages = batch.len(), "PostgreSQL publish failed; the messages are dropped.");
        }
        settle_all(&mut batch, &outcome);
    }
}

impl TransportDriver for PostgresTransport {
    fn try_publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.shared.queue.try_publish(channel_of(&self.shared.prefix, topic), payload)
    }

    async fn publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.shared.queue.publish(channel_of(&self.shared.prefix, topic), payload).await
    }

    async fn subscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        let channel = channel_of(&self.shared.prefix, topic);
        if let Ok(mut channels) = self.shared.channels.lock() {
            channels.insert(channel.clone(), topic.to_string());
        }
        // LISTEN completes once the server registered it: from then on every NOTIFY reaches
        // us. While reconnecting there is no client; the reconnect listens to every channel.
        let listener = self.shared.listener.lock().await;
        let client = listener
            .as_ref()
            .ok_or_else(|| unavailable("reconnecting; the topic is listened to once back"))?;
        tokio::time::timeout(
            self.shared.timeout,
            client.batch_execute(&format!("LISTEN \"{channel}\"")),
        )
        .await
        .map_err(|_| PluginError::timeout("postgres: LISTEN timed out"))?
        .map_err(unavailable)
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        let channel = channel_of(&self.shared.prefix, topic);
        if let Ok(mut channels) = self.shared.channels.lock() {
            channels.remove(&channel);
        }
        let listener = self.shared.listener.lock().await;
        let Some(client) = listener.as_ref() else { return Ok(()) };
        tokio::time::timeout(
            self.shared.timeout,
            client.batch_execute(&format!("UNLISTEN \"{channel}\"")),
        )
        .await
        .map_err(|_| PluginError::timeout("postgres: UNLISTEN timed out"))?
        .map_err(unavailable)
    }

    async fn node_count_hint(&self) -> Result<Option<u64>, PluginError> {
        self.check_open()?;
        // PostgreSQL does not say who listens; the server counts nodes by their heartbeats.
        Ok(None)
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.check_open()?;
        let listener = self.shared.listener.lock().await;
        let client = listener.as_ref().ok_or_else(|| unavailable("reconnecting"))?;
        tokio::time::timeout(self.shared.timeout, client.simple_query("SELECT 1"))
            .await
            .map_err(|_| PluginError::timeout("postgres: SELECT 1 timed out"))?
            .map(drop)
            .map_err(unavailable)
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shared.queue.drain(self.shared.timeout).await;
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
        *self.shared.listener.lock().await = None;
        tracing::info!("PostgreSQL transport shut down.");
        Ok(())
    }
}

impl Drop for PostgresTransport {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn channels_are_short_stable_identifiers() {
        let channel =
            super::channel_of("sockhost", "#broadcast:app-1:private-a.very.long.name.indeed");
        assert!(
            channel.len() < 63
                && channel
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert_eq!(
            channel,
            super::channel_of("sockhost", "#broadcast:app-1:private-a.very.long.name.indeed")
        );
    }
}

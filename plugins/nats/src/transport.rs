//! The `nats` transport.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{Client, ConnectOptions, Event, connection::State};
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};
use sockhost_plugin_api::sdk::config::redact_url;
use sockhost_plugin_api::{
    HostContextBox, PluginError,
    abi::{RStr, RVec},
    sdk::TransportDriver,
};
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{config::TransportConfig, subject};

/// Payloads that begin with this are subscription probes, never handed to the host.
const PROBE: &[u8] = b"\0sockhost-probe:";

/// A topic's subscription: the task that reads it, and how to stop it.
struct Subscription {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A transport over NATS core subjects.
pub struct NatsTransport {
    client: Client,
    prefix: String,
    timeout: Duration,
    nodes_number: Option<u64>,
    host: HostContextBox,
    subscriptions: Mutex<HashMap<String, Subscription>>,
    probes: AtomicU64,
    closed: AtomicBool,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> PluginError {
    PluginError::unavailable(format!("nats: {e}"))
}

fn closed() -> PluginError {
    PluginError::unavailable("the nats transport is shut down")
}

impl NatsTransport {
    /// Connect to the servers (the client library reconnects and resubscribes by itself after).
    pub async fn connect(
        config: TransportConfig,
        host: HostContextBox,
    ) -> Result<Self, PluginError> {
        // rustls picks its crypto from a process-wide default; this plugin's copy of it has none
        // until one is installed (an error only means another thread installed it first).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shown: Vec<String> = config.servers.iter().map(|s| redact_url(s)).collect();
        let events = host.clone();
        // The client reports its first connection as `Connected` too; only later ones count.
        let connected_before = Arc::new(AtomicBool::new(false));
        let mut options = ConnectOptions::new()
            .name("sockhost")
            .connection_timeout(Duration::from_millis(config.connection_timeout_ms))
            .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
            .subscription_capacity(config.subscription_capacity)
            .event_callback(move |event| {
                let host = events.clone();
                let again = matches!(event, Event::Connected)
                    && connected_before.swap(true, Ordering::AcqRel);
                async move { report(&host, event, again) }
            });
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if config.servers.iter().any(|s| s.starts_with("tls://")) {
            options = options.require_tls(true);
        }
        let client = options
            .connect(config.servers.as_slice())
            .await
            .map_err(|e| unavailable(format!("cannot connect to {shown:?}: {e}")))?;
        tracing::info!(servers = ?shown, "Connected to NATS.");
        Ok(Self {
            client,
            prefix: config.prefix,
            timeout: Duration::from_millis(config.request_timeout_ms),
            nodes_number: config.nodes_number,
            host,
            subscriptions: Mutex::default(),
            probes: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }

    fn check_open(&self) -> Result<(), PluginError> {
        if self.closed.load(Ordering::Acquire) { Err(closed()) } else { Ok(()) }
    }

    fn stop_all(&self) {
        if let Ok(mut subscriptions) = self.subscriptions.lock() {
            for (_, subscription) in subscriptions.drain() {
                let _ = subscription.stop.send(());
            }
        }
    }
}

/// Connection events as host metrics and logs. A slow consumer means NATS dropped messages for
/// a subscription whose buffer was full: never silent.
fn report(host: &HostContextBox, event: Event, reconnected: bool) {
    match event {
        Event::SlowConsumer(sid) => {
            host.metric(RStr::from_str("slow_consumers"), 1);
            tracing::warn!(sid, "NATS dropped messages for a slow subscription.");
        }
        Event::Disconnected => {
            host.metric(RStr::from_str("disconnects"), 1);
            tracing::warn!("Lost the NATS connection; the client reconnects.");
        }
        Event::Connected if !reconnected => {}
        Event::Connected => {
            host.metric(RStr::from_str("reconnects"), 1);
            tracing::info!("Connected to NATS again; subscriptions restored.");
        }
        Event::ServerError(error) => {
            host.metric(RStr::from_str("server_errors"), 1);
            tracing::warn!(%error, "NATS server error.");
        }
        Event::ClientError(error) => tracing::warn!(%error, "NATS client error."),
        other => tracing::info!(event = %other, "NATS event."),
    }
}

impl TransportDriver for NatsTransport {
    fn try_publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        let subject = subject::encode(&self.prefix, topic);
        // The client's publish only puts the message on its bounded command channel: when
        // there is room it completes on the first poll, here, with no task in between.
        match self.client.publish(subject, Bytes::from(payload.into_vec())).now_or_never() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(unavailable(e)),
            None => Err(PluginError::backpressure("nats: the client's send buffer is full")),
        }
    }

    async fn publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        let subject = subject::encode(&self.prefix, topic);
        tokio::time::timeout(
            self.timeout,
            self.client.publish(subject, Bytes::from(payload.into_vec())),
        )
        .await
        .map_err(|_| PluginError::timeout("nats: publish timed out"))?
        .map_err(unavailable)
    }

    async fn subscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        if self.subscriptions.lock().map(|s| s.contains_key(topic)).unwrap_or(false) {
            return Ok(());
        }
        let subject = subject::encode(&self.prefix, topic);
        let mut subscriber =
            tokio::time::timeout(self.timeout, self.client.subscribe(subject.clone()))
                .await
                .map_err(|_| PluginError::timeout("nats: SUB timed out"))?
                .map_err(unavailable)?;
        // SUB is not acknowledged by the server. A probe published after it on the same
        // connection comes back only once the server has the subscription, so when it arrives,
        // every later publish of any node reaches us.
        let mut probe = PROBE.to_vec();
        probe.extend_from_slice(&self.probes.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        let confirmed = async {
            self.client.publish(subject, Bytes::from(probe.clone())).await.map_err(unavailable)?;
            while let Some(message) = subscriber.next().await {
                if message.payload.as_ref() == probe.as_slice() {
                    return Ok(());
                }
            }
            Err(unavailable("the subscription closed before it was confirmed"))
        };
        tokio::time::timeout(self.timeout, confirmed).await.map_err(|_| {
            PluginError::timeout("nats: the subscription was not confirmed in time")
        })??;

        let (stop, mut stopped) = oneshot::channel();
        let host = self.host.clone();
        let name = topic.to_string();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = subscriber.next() => {
                        let Some(message) = message else { return };
                        if message.payload.starts_with(PROBE) {
                            continue;
                        }
                        host.on_message(RStr::from_str(&name), RVec::from(message.payload.to_vec()));
                    }
                    _ = &mut stopped => {
                        let _ = subscriber.unsubscribe().await;
                        return;
                    }
                }
            }
        });
        if let Ok(mut subscriptions) = self.subscriptions.lock()
            && let Some(previous) =
                subscriptions.insert(topic.to_string(), Subscription { stop, task })
        {
            let _ = previous.stop.send(());
        }
        Ok(())
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        let subscription = self.subscriptions.lock().ok().and_then(|mut s| s.remove(topic));
        if let Some(subscription) = subscription {
            let _ = subscription.stop.send(());
            // Wait for the UNSUB to be queued, so a quick subscribe again cannot overtake it.
            let _ = tokio::time::timeout(self.timeout, subscription.task).await;
        }
        Ok(())
    }

    async fn node_count_hint(&self) -> Result<Option<u64>, PluginError> {
        self.check_open()?;
        Ok(self.nodes_number)
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.check_open()?;
        if self.client.connection_state() != State::Connected {
            return Err(unavailable("not connected"));
        }
        tokio::time::timeout(self.timeout, self.client.flush())
            .await
            .map_err(|_| PluginError::timeout("nats: flush timed out"))?
            .map_err(unavailable)
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_all();
        // Write out what was published, within the request timeout.
        let _ = tokio::time::timeout(self.timeout, self.client.flush()).await;
        tracing::info!("NATS transport shut down.");
        Ok(())
    }
}

impl Drop for NatsTransport {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.stop_all();
    }
}

//! The `mqtt` transport, over MQTT 5.
//!
//! - **Interest routing.** Each topic is one topic name (escaped, see [`crate::topic`]); a
//!   node subscribes by exact name to the topics it serves, so the broker sends it only those.
//!   A subscription is confirmed by its SUBACK; *No Local* keeps a node's own publishes from
//!   coming back to it.
//! - **Order.** Every message goes at QoS 0 on one connection: MQTT keeps a topic's order for
//!   one client and one QoS. What is in flight when the connection drops is lost, as with the
//!   other transports.
//! - **Reconnect.** The client connects again (backing off up to 5 s) and, when the broker kept
//!   no session, subscribes again to every topic served (`reconnects`).
//! - **Size.** A message larger than `max_payload_bytes`, or than the broker's maximum packet
//!   size, is refused and counted (`too_large`) instead of breaking the connection.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use rumqttc::{
    Outgoing, TlsConfiguration, Transport,
    v5::{
        AsyncClient, ConnectionError, Event, EventLoop, MqttOptions,
        mqttbytes::{
            QoS,
            v5::{Filter, Packet},
        },
    },
};
use sockhost_plugin_api::sdk::config::redact_url;
use sockhost_plugin_api::{
    HostContextBox, PluginError,
    abi::{RStr, RVec},
    sdk::TransportDriver,
};
use tokio::sync::{oneshot, watch};

use crate::{config::TransportConfig, topic};

/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// What a PUBLISH adds to its payload at most here (header, topic, properties).
const OVERHEAD: u32 = 1024;

type Waiter = oneshot::Sender<Result<(), PluginError>>;

fn unavailable(e: impl std::fmt::Display) -> PluginError {
    PluginError::unavailable(format!("mqtt: {e}"))
}

/// Requests waiting for their acknowledgement: first for their packet id (in the order they
/// were sent), then by packet id. `None` stands for the plugin's own resubscription.
#[derive(Default)]
struct Acks {
    unnumbered: VecDeque<Option<Waiter>>,
    numbered: HashMap<u16, Waiter>,
}

/// What the transport's calls and its event loop share.
struct Shared {
    config: TransportConfig,
    host: HostContextBox,
    client: AsyncClient,
    /// The topic names this node serves.
    topics: Mutex<HashSet<String>>,
    subscribes: Mutex<Acks>,
    unsubscribes: Mutex<Acks>,
    /// Whether a connection is up.
    connected: watch::Sender<bool>,
    /// The client's event loop has stopped (after the DISCONNECT of a shutdown).
    stopped: watch::Sender<bool>,
    /// The largest payload the broker takes, 0 for no limit of its own.
    broker_limit: AtomicU32,
    closed: AtomicBool,
}

fn filter(name: &str) -> Filter {
    let mut filter = Filter::new(name, QoS::AtMostOnce);
    filter.nolocal = true;
    filter
}

impl Shared {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    fn count(&self, name: &str) {
        self.host.metric(RStr::from_str(name), 1);
    }

    /// The largest payload a publish may carry now.
    fn limit(&self) -> usize {
        let broker = self.broker_limit.load(Ordering::Acquire);
        let own = self.config.max_payload_bytes;
        let limit = if broker == 0 { own } else { own.min(broker.saturating_sub(OVERHEAD)) };
        usize::try_from(limit).unwrap_or(usize::MAX)
    }

    /// Send a SUBSCRIBE (or UNSUBSCRIBE) for `names` and wait for its acknowledgement.
    async fn acknowledged(&self, names: &[String], subscribe: bool) -> Result<(), PluginError> {
        let (answer, answered) = oneshot::channel();
        {
            // Queued and registered under one lock, so the order of the waiters is the order
            // the event loop sends the requests in.
            let acks = if subscribe { &self.subscribes } else { &self.unsubscribes };
            let mut acks = acks.lock().expect("acks lock");
            let sent = if subscribe {
                self.client.try_subscribe_many(names.iter().map(|n| filter(n)))
            } else {
                self.client.try_unsubscribe(names[0].clone())
            };
            sent.map_err(|_| PluginError::backpressure("mqtt: the request queue is full"))?;
            acks.unnumbered.push_back(Some(answer));
        }
        tokio::time::timeout(self.timeout(), answered)
            .await
            .map_err(|_| PluginError::timeout("mqtt: the broker did not acknowledge in time"))?
            .map_err(|_| unavailable("the connection ended before the acknowledgement"))?
    }

    /// Subscribe again to every topic served (the broker kept no session).
    fn resubscribe(&self) {
        let names: Vec<String> = self.topics.lock().expect("topics lock").iter().cloned().collect();
        if names.is_empty() {
            return;
        }
        let mut acks = self.subscribes.lock().expect("acks lock");
        if self.client.try_subscribe_many(names.iter().map(|n| filter(n))).is_ok() {
            acks.unnumbered.push_back(None);
        } else {
            tracing::warn!(
                "The MQTT request queue is full; the topics are subscribed again at the next connection."
            );
        }
    }

    /// A SUBACK or UNSUBACK: the request's waiter gets its outcome.
    fn acknowledge(&self, acks: &Mutex<Acks>, pkid: u16, failed: bool) {
        let waiter = acks.lock().expect("acks lock").numbered.remove(&pkid);
        let outcome = if failed {
            Err(PluginError::rejected("mqtt: the broker refused the subscription"))
        } else {
            Ok(())
        };
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(outcome);
            }
            None if failed => {
                self.count("resubscribe_failures");
                tracing::warn!("The broker refused a subscription made again after a reconnect.");
            }
            None => {}
        }
    }

    /// A request went out with packet id `pkid`: its waiter now waits for that id.
    fn numbered(acks: &Mutex<Acks>, pkid: u16) {
        let mut acks = acks.lock().expect("acks lock");
        if let Some(Some(waiter)) = acks.unnumbered.pop_front() {
            acks.numbered.insert(pkid, waiter);
        }
    }

    /// The connection ended: every request waiting for an acknowledgement fails.
    fn fail_waiting(&self) {
        for acks in [&self.subscribes, &self.unsubscribes] {
            let mut acks = acks.lock().expect("acks lock");
            acks.unnumbered.clear();
            acks.numbered.clear();
        }
    }

    /// Handle one event of the client; whether the connection is (still) up.
    fn on_event(&self, event: Event, first: &mut bool) {
        match event {
            Event::Incoming(Packet::Publish(publish)) => {
                match topic::decode(&self.config.prefix, &publish.topic) {
                    Some(topic) => {
                        let payload = RVec::from(publish.payload.to_vec());
                        self.host.on_message(RStr::from_str(&topic), payload);
                    }
                    None => self.count("foreign_topics"),
                }
            }
            Event::Incoming(Packet::ConnAck(ack)) => {
                let limit = ack.properties.and_then(|p| p.max_packet_size).unwrap_or(0);
                self.broker_limit.store(limit, Ordering::Release);
                if !*first {
                    self.count("reconnects");
                    if !ack.session_present {
                        self.resubscribe();
                    }
                    let topics = self.topics.lock().expect("topics lock").len();
                    tracing::info!(
                        topics,
                        "Connected to the MQTT broker again; subscriptions restored."
                    );
                }
                *first = false;
                self.connected.send_replace(true);
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                let failed = ack.return_codes.iter().any(|code| {
                    !matches!(code, rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_))
                });
                self.acknowledge(&self.subscribes, ack.pkid, failed);
            }
            Event::Incoming(Packet::UnsubAck(ack)) => {
                self.acknowledge(&self.unsubscribes, ack.pkid, false);
            }
            Event::Outgoing(Outgoing::Subscribe(pkid)) => Self::numbered(&self.subscribes, pkid),
            Event::Outgoing(Outgoing::Unsubscribe(pkid)) => {
                Self::numbered(&self.unsubscribes, pkid);
            }
            _ => {}
        }
    }

    /// Drive the client until shutdown, connecting again after each loss.
    async fn run(self: Arc<Self>, mut events: EventLoop) {
        let mut first = false;
        let mut wait = Duration::from_millis(100);
        loop {
            match events.poll().await {
                Ok(event) => {
                    if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                        wait = Duration::from_millis(100);
                    }
                    self.on_event(event, &mut first);
                }
                Err(error) => {
                    if self.closed.load(Ordering::Acquire) {
                        self.stopped.send_replace(true);
                        return;
                    }
                    if self.connected.send_replace(false) {
                        self.count("disconnects");
                        tracing::warn!(%error, "Lost the MQTT connection; connecting again.");
                        self.fail_waiting();
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// The client's options for `config`.
fn options(config: &TransportConfig, node: &str) -> Result<MqttOptions, PluginError> {
    let broker = config.broker()?;
    let mut options = MqttOptions::new(format!("sockhost-{node}"), broker.host, broker.port);
    options
        .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
        .set_clean_start(true)
        .set_connection_timeout(config.request_timeout_ms.div_ceil(1000))
        .set_max_packet_size(Some(config.max_payload_bytes.saturating_add(OVERHEAD)));
    if let Some((user, password)) = broker.credentials {
        options.set_credentials(user, password);
    }
    if broker.tls {
        // A private CA (SSL_CERT_FILE), else the system's trusted certificates.
        let tls = match std::env::var_os("SSL_CERT_FILE") {
            Some(file) => {
                let ca = std::fs::read(&file).map_err(|e| {
                    PluginError::config(format!("SSL_CERT_FILE {}: {e}", file.to_string_lossy()))
                })?;
                TlsConfiguration::Simple { ca, alpn: None, client_auth: None }
            }
            None => TlsConfiguration::default(),
        };
        options.set_transport(Transport::tls_with_config(tls));
    }
    Ok(options)
}

/// A transport over an MQTT 5 broker.
pub struct MqttTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MqttTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttTransport")
            .field("prefix", &self.shared.config.prefix)
            .finish_non_exhaustive()
    }
}

impl MqttTransport {
    /// Connect to the broker (a start-up error if it cannot within the request timeout), then
    /// keep connected.
    pub async fn connect(
        config: TransportConfig,
        host: HostContextBox,
    ) -> Result<Self, PluginError> {
        // rustls picks its crypto from a process-wide default; this plugin's copy of it has none
        // until one is installed (an error only means another thread installed it first).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let node = format!("{:016x}", rand::random::<u64>());
        let (client, mut events) =
            AsyncClient::new(options(&config, &node)?, config.queue_capacity);
        let shown = redact_url(&config.url);
        let within = Duration::from_millis(config.request_timeout_ms);
        // The first connection, here, so that a broker out of reach is a start-up error.
        let connected = tokio::time::timeout(within, async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => {
                        return Err(unavailable(format!(
                            "{shown} refused the connection: {code:?}"
                        )));
                    }
                    Err(e) => return Err(unavailable(format!("cannot connect to {shown}: {e}"))),
                }
            }
        })
        .await
        .map_err(|_| unavailable(format!("no connection to {shown} within {within:?}")))??;
        let limit = connected.properties.and_then(|p| p.max_packet_size).unwrap_or(0);
        tracing::info!(url = %shown, "Connected to the MQTT broker.");
        let shared = Arc::new(Shared {
            config,
            host,
            client,
            topics: Mutex::default(),
            subscribes: Mutex::default(),
            unsubscribes: Mutex::default(),
            connected: watch::Sender::new(true),
            stopped: watch::Sender::new(false),
            broker_limit: AtomicU32::new(limit),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(shared.clone().run(events));
        Ok(Self { shared })
    }

    fn check_open(&self) -> Result<(), PluginError> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(PluginError::unavailable("the mqtt transport is shut down"))
        } else {
            Ok(())
        }
    }

    fn check_size(&self, payload: &RVec<u8>) -> Result<(), PluginError> {
        let limit = self.shared.limit();
        if payload.len() > limit {
            self.shared.count("too_large");
            return Err(PluginError::rejected(format!(
                "mqtt: a message of {} bytes is larger than the {limit} the broker takes",
                payload.len()
            )));
        }
        Ok(())
    }
}

impl TransportDriver for MqttTransport {
    fn try_publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.check_size(&payload)?;
        let name = topic::encode(&self.shared.config.prefix, topic);
        self.shared
            .client
            .try_publish(name, QoS::AtMostOnce, false, payload.into_vec())
            .map_err(|_| PluginError::backpressure("mqtt: the publish queue is full"))
    }

    async fn publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.check_size(&payload)?;
        let name = topic::encode(&self.shared.config.prefix, topic);
        let queued = self.shared.client.publish(name, QoS::AtMostOnce, false, payload.into_vec());
        tokio::time::timeout(self.shared.timeout(), queued)
            .await
            .map_err(|_| PluginError::timeout("mqtt: the publish queue stayed full"))?
            .map_err(unavailable)
    }

    async fn subscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        let name = topic::encode(&self.shared.config.prefix, topic);
        // Kept first, so that a reconnect before the SUBACK subscribes it again too.
        self.shared.topics.lock().expect("topics lock").insert(name.clone());
        let mut connected = self.shared.connected.subscribe();
        let up = tokio::time::timeout(self.shared.timeout(), connected.wait_for(|up| *up))
            .await
            .is_ok_and(|up| up.is_ok());
        if !up {
            return Err(unavailable("not connected to the broker"));
        }
        self.shared.acknowledged(&[name], true).await
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        let name = topic::encode(&self.shared.config.prefix, topic);
        if !self.shared.topics.lock().expect("topics lock").remove(&name) {
            return Ok(());
        }
        if !*self.shared.connected.borrow() {
            // The broker's session is gone with the connection; nothing to undo.
            return Ok(());
        }
        self.shared.acknowledged(&[name], false).await
    }

    async fn node_count_hint(&self) -> Result<Option<u64>, PluginError> {
        self.check_open()?;
        Ok(self.shared.config.nodes_number)
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.check_open()?;
        if *self.shared.connected.borrow() {
            Ok(())
        } else {
            Err(unavailable("not connected to the broker"))
        }
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // DISCONNECT goes after what is queued, so what was accepted is written first; and the
        // event loop is waited for, since queueing it writes nothing yet (a node's goodbye was
        // lost now and then when the process went on to exit).
        let mut stopped = self.shared.stopped.subscribe();
        let disconnected = async {
            if self.shared.client.disconnect().await.is_ok() {
                let _ = stopped.wait_for(|stopped| *stopped).await;
            }
        };
        let _ = tokio::time::timeout(self.shared.timeout(), disconnected).await;
        tracing::info!("MQTT transport shut down.");
        Ok(())
    }
}

//! The `kafka` transport, over the Kafka API (a pure-Rust client, `rskafka`).
//!
//! - **One topic.** Everything goes to `<prefix>-bus`, created when missing: control and node
//!   messages on partition 0 (one order, as every transport keeps for one sender), a channel's
//!   broadcasts on the partition its name hashes to. The record key is the sockhost topic.
//! - **No consumer groups.** Each node reads every partition itself from the offset that was
//!   the latest when it started (no rebalance, no offsets committed, nothing skipped once
//!   reading) and hands the host only the records of topics it serves. A subscription is
//!   confirmed at once: the node reads from before it. A reader waits at the broker for the
//!   next record (a long poll of `fetch_max_wait_ms`); once a second, and after a failed
//!   read, it reads its last record again to check that the topic still holds it.
//! - **Reconnect.** Calls are retried with backoff within the request timeout; a topic the
//!   brokers lost (a restart of a broker that keeps no data) is created again and read from
//!   its start (`reconnects`).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rskafka::{
    BackoffConfig,
    client::{
        Client, ClientBuilder, Credentials, SaslConfig,
        error::{Error as KafkaError, ProtocolError},
        partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling},
    },
    record::Record,
};
use sockhost_plugin_api::{
    HostContextBox, PluginError,
    abi::{RStr, RVec},
    sdk::{
        TransportDriver,
        outbox::{Outbox, Outgoing, settle_all},
    },
};
use tokio::sync::mpsc;

use crate::config::TransportConfig;

/// Messages the publish queue holds before `try_publish` pushes back.
const OUTBOX: usize = 65_536;
/// Messages the writer takes at once.
const BATCH: usize = 512;
/// How much longer than its wait (`fetch_max_wait_ms`) a read may take before it is given up
/// and the reader checks its position (see [`VERIFY_EVERY`]).
const FETCH_GRACE: Duration = Duration::from_millis(250);
/// How often a reader reads its last record again to check that it is still there: a broker
/// that keeps no data, restarted, may have its topic created again and filled past the reader's
/// offset, which only the record's identity shows. Also right after a failed read.
const VERIFY_EVERY: Duration = Duration::from_secs(1);

fn unavailable(e: impl std::fmt::Display) -> PluginError {
    PluginError::unavailable(format!("kafka: {e}"))
}

fn unknown_topic(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::ServerError { protocol_error: ProtocolError::UnknownTopicOrPartition, .. }
    )
}

/// What the transport's calls and its tasks share.
struct Shared {
    config: TransportConfig,
    host: HostContextBox,
    client: Client,
    /// The sockhost topics this node serves.
    served: Mutex<HashSet<String>>,
    /// Partition clients by (Kafka topic, partition), for producing.
    partitions: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
    closed: AtomicBool,
}

impl Shared {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    fn count(&self, name: &str) {
        self.host.metric(RStr::from_str(name), 1);
    }

    /// The Kafka topic of every sockhost topic: one, so that what one node sends keeps its
    /// order for the others whatever it is (a presence snapshot sent to one node and the change
    /// announced to all after it must arrive in that order; two Kafka topics, read by two
    /// tasks, would not keep it).
    fn kafka_topic(&self) -> String {
        format!("{}-bus", self.config.prefix)
    }

    /// The partition of a record with key `topic`: control and node messages on partition 0,
    /// in one order; a channel's broadcasts on the partition of FNV-1a of its topic (the same
    /// on every node and every build; `std`'s hasher may change between compiler versions),
    /// so each channel keeps its order and channels spread.
    fn partition_of(&self, topic: &str) -> i32 {
        if !topic.starts_with("#broadcast:") {
            return 0;
        }
        let hash = topic.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        let partitions = u64::try_from(self.config.partitions).unwrap_or(1);
        i32::try_from(hash % partitions).unwrap_or(0)
    }

    /// Create the Kafka topic unless it exists.
    async fn ensure_topic(&self, name: &str) -> Result<(), PluginError> {
        let controller = self.client.controller_client().map_err(unavailable)?;
        let timeout = i32::try_from(self.config.request_timeout_ms).unwrap_or(i32::MAX);
        let created = controller
            .create_topic(name, self.config.partitions, self.config.replication_factor, timeout)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            }) => Ok(()),
            Err(e) => Err(unavailable(format!("cannot create the topic {name}: {e}"))),
        }
    }

    async fn partition(
        &self,
        name: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, PluginError> {
        let key = (name.to_string(), partition);
        if let Some(found) = self.partitions.lock().expect("partitions lock").get(&key) {
            return Ok(found.clone());
        }
        let made = self
            .client
            .partition_client(name, partition, UnknownTopicHandling::Error)
            .await
            .map_err(unavailable)?;
        let made = Arc::new(made);
        self.partitions.lock().expect("partitions lock").insert(key, made.clone());
        Ok(made)
    }

    /// Start reading the Kafka topic (created if missing) from its latest offsets (once, at
    /// start); returns once every partition's start is known.
    async fn read(self: &Arc<Self>, name: &str) -> Result<(), PluginError> {
        self.ensure_topic(name).await?;
        let mut starts = Vec::new();
        for partition in 0..self.config.partitions {
            let client = self.partition(name, partition).await?;
            let start = client.get_offset(OffsetAt::Latest).await.map_err(unavailable)?;
            starts.push((client, start));
        }
        for (client, start) in starts {
            tokio::spawn(self.clone().consume(name.to_string(), client, start));
        }
        Ok(())
    }

    /// Read one partition from `offset` until shutdown, handing the host the records of the
    /// topics this node serves.
    ///
    /// Each fetch starts at the last record read, which must come back as it was: if it does
    /// not, the brokers lost the topic's records (a broker that keeps nothing restarted, and the
    /// topic was created again) and the partition is read again from its start. Connection
    /// troubles are retried by the client, so this is how a restart shows.
    async fn consume(
        self: Arc<Self>,
        name: String,
        mut client: Arc<PartitionClient>,
        mut offset: i64,
    ) {
        let max = i32::try_from(self.config.max_message_bytes).unwrap_or(i32::MAX);
        let mut failing = false;
        // The last record read: its offset, time and size.
        let mut last: Option<(i64, i64, usize)> = None;
        let seen = |record: &rskafka::record::RecordAndOffset| {
            let size = record.record.value.as_ref().map_or(0, Vec::len);
            (record.offset, record.record.timestamp.timestamp_millis(), size)
        };
        let wait = self.config.fetch_max_wait_ms;
        let bound = Duration::from_millis(u64::from(wait)) + FETCH_GRACE;
        let wait = i32::try_from(wait).unwrap_or(i32::MAX);
        // When the reader next reads its last record again (at once after a read given up).
        let mut verify_at = tokio::time::Instant::now() + VERIFY_EVERY;
        while !self.closed.load(Ordering::Acquire) {
            // Reading from the next offset waits at the broker for new records (a long poll);
            // reading from the last one's would answer at once with it, a busy loop.
            let verify = failing || tokio::time::Instant::now() >= verify_at;
            let from = match last {
                Some((at, ..)) if verify => at,
                _ => offset,
            };
            // Bounded: a broker asked for an offset past a topic it created again may hold the
            // read until records reach it, which only the identity check notices.
            let fetch = client.fetch_records(from, 1..max, wait);
            let Ok(fetched) = tokio::time::timeout(bound, fetch).await else {
                verify_at = tokio::time::Instant::now();
                continue;
            };
            match fetched {
                Ok((records, high_watermark)) => {
                    let mut records = records.into_iter().peekable();
                    if verify {
                        verify_at = tokio::time::Instant::now() + VERIFY_EVERY;
                    }
                    if let Some(known) = last.filter(|_| verify) {
                        let same = records.peek().map(|first| seen(first) == known);
                        match same {
                            Some(true) => {
                                records.next();
                            }
                            None if high_watermark > known.0 => {}
                            _ => {
                                self.count("reconnects");
                                tracing::warn!(
                                    topic = name,
                                    "The Kafka topic lost its records; reading it from its start."
                                );
                                offset = client.get_offset(OffsetAt::Earliest).await.unwrap_or(0);
                                (last, failing) = (None, false);
                                continue;
                            }
                        }
                    }
                    if failing {
                        failing = false;
                        self.count("reconnects");
                        tracing::info!(topic = name, "Reading from Kafka again.");
                    }
                    for record in records {
                        offset = record.offset + 1;
                        last = Some(seen(&record));
                        let (Some(key), Some(value)) = (record.record.key, record.record.value)
                        else {
                            continue;
                        };
                        let Ok(topic) = String::from_utf8(key) else { continue };
                        if self.served.lock().expect("served lock").contains(&topic) {
                            self.host.on_message(RStr::from_str(&topic), RVec::from(value));
                        }
                    }
                }
                Err(error) => {
                    if !failing {
                        failing = true;
                        self.count("disconnects");
                        tracing::warn!(%error, topic = name, "Reading from Kafka failed; trying again.");
                    }
                    let lost = unknown_topic(&error)
                        || matches!(
                            &error,
                            KafkaError::ServerError {
                                protocol_error: ProtocolError::OffsetOutOfRange,
                                ..
                            }
                        );
                    if lost {
                        // Created again if the brokers lost it, and read from its start.
                        let _ = self.ensure_topic(&name).await;
                        offset = client.get_offset(OffsetAt::Earliest).await.unwrap_or(0);
                        last = None;
                    }
                    let partition = client.partition();
                    if let Ok(fresh) = self
                        .client
                        .partition_client(name.as_str(), partition, UnknownTopicHandling::Error)
                        .await
                    {
                        client = Arc::new(fresh);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Produce `records` to one partition; a topic the brokers lost is created again once.
    async fn produce(
        &self,
        name: &str,
        partition: i32,
        records: Vec<Record>,
    ) -> Result<(), PluginError> {
        let client = self.partition(name, partition).await?;
        match client.produce(records.clone(), Compression::NoCompression).await {
            Ok(_) => Ok(()),
            Err(error) if unknown_topic(&error) => {
                self.ensure_topic(name).await?;
                self.partitions
                    .lock()
                    .expect("partitions lock")
                    .remove(&(name.to_string(), partition));
                let client = self.partition(name, partition).await?;
                client
                    .produce(records, Compression::NoCompression)
                    .await
                    .map(|_| ())
                    .map_err(unavailable)
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Publish what the queue holds, in order, a batch at a time.
    async fn write(self: Arc<Self>, mut outgoing: mpsc::Receiver<Outgoing>) {
        let mut batch = Vec::with_capacity(BATCH);
        while outgoing.recv_many(&mut batch, BATCH).await > 0 {
            // Consecutive messages for one partition go as one produce, in order.
            let mut run: Vec<Outgoing> = Vec::new();
            let mut at: Option<(String, i32)> = None;
            for message in batch.drain(..) {
                let topic = message.channel.clone();
                let place = (self.kafka_topic(), self.partition_of(&topic));
                if at.as_ref().is_some_and(|at| *at != place) {
                    self.flush(at.take().expect("a place"), &mut run).await;
                }
                at = Some(place);
                run.push(message);
            }
            if let Some(place) = at {
                self.flush(place, &mut run).await;
            }
        }
    }

    async fn flush(&self, (name, partition): (String, i32), run: &mut Vec<Outgoing>) {
        let now = chrono::Utc::now();
        let records = run
            .iter()
            .map(|message| Record {
                key: Some(message.channel.clone().into_bytes()),
                value: Some(message.payload.to_vec()),
                headers: std::collections::BTreeMap::new(),
                timestamp: now,
            })
            .collect();
        let outcome =
            match tokio::time::timeout(self.timeout(), self.produce(&name, partition, records))
                .await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    Err(PluginError::timeout("kafka: the brokers did not take the records in time"))
                }
            };
        if outcome.is_err() {
            self.count("produce_errors");
        }
        settle_all(run, &outcome);
    }
}

/// A transport over the Kafka API.
pub struct KafkaTransport {
    outbox: Outbox,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("prefix", &self.shared.config.prefix)
            .finish_non_exhaustive()
    }
}

impl KafkaTransport {
    /// Connect to the brokers and start reading the bus topic (a start-up error if the
    /// brokers cannot be reached within the request timeout).
    pub async fn connect(
        config: TransportConfig,
        host: HostContextBox,
    ) -> Result<Self, PluginError> {
        // rustls picks its crypto from a process-wide default; this plugin's copy of it has none
        // until one is installed (an error only means another thread installed it first).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(timeout),
        };
        let mut builder = ClientBuilder::new(config.brokers.clone())
            .client_id("sockhost")
            .max_message_size(config.max_message_bytes.saturating_add(1 << 20))
            .backoff_config(backoff);
        if config.security_protocol.ends_with("SSL") {
            builder = builder.tls_config(Arc::new(tls()?));
        }
        if config.security_protocol.starts_with("SASL") {
            let credentials = Credentials::new(
                config.sasl_username.clone().unwrap_or_default(),
                config.sasl_password.clone().unwrap_or_default(),
            );
            builder = builder.sasl_config(match config.sasl_mechanism.as_str() {
                "SCRAM-SHA-256" => SaslConfig::ScramSha256(credentials),
                "SCRAM-SHA-512" => SaslConfig::ScramSha512(credentials),
                _ => SaslConfig::Plain(credentials),
            });
        }
        let brokers = config.brokers.join(",");
        let client = tokio::time::timeout(timeout, builder.build())
            .await
            .map_err(|_| unavailable(format!("no connection to {brokers} within {timeout:?}")))?
            .map_err(|e| unavailable(format!("cannot connect to {brokers}: {e}")))?;
        let shared = Arc::new(Shared {
            config,
            host,
            client,
            served: Mutex::default(),
            partitions: Mutex::default(),
            closed: AtomicBool::new(false),
        });
        let bus = shared.kafka_topic();
        tokio::time::timeout(timeout, shared.read(&bus))
            .await
            .map_err(|_| unavailable(format!("{brokers} did not answer within {timeout:?}")))??;
        tracing::info!(brokers, "Connected to Kafka.");
        let (outbox, outgoing) = Outbox::new("kafka", OUTBOX);
        tokio::spawn(shared.clone().write(outgoing));
        Ok(Self { outbox, shared })
    }

    fn check_open(&self) -> Result<(), PluginError> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(PluginError::unavailable("the kafka transport is shut down"))
        } else {
            Ok(())
        }
    }

    fn check_size(&self, payload: &RVec<u8>) -> Result<(), PluginError> {
        if payload.len() > self.shared.config.max_message_bytes {
            self.shared.count("too_large");
            return Err(PluginError::rejected(format!(
                "kafka: a message of {} bytes is larger than max_message_bytes",
                payload.len()
            )));
        }
        Ok(())
    }
}

/// TLS with the system's trusted certificates, or the PEM bundle `SSL_CERT_FILE` names.
fn tls() -> Result<rustls::ClientConfig, PluginError> {
    let mut roots = rustls::RootCertStore::empty();
    let file = std::env::var("SSL_CERT_FILE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
    let pem = std::fs::read(&file).map_err(|e| PluginError::config(format!("{file}: {e}")))?;
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(cert);
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

impl TransportDriver for KafkaTransport {
    fn try_publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.check_size(&payload)?;
        self.outbox.try_publish(topic.to_string(), payload)
    }

    async fn publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.check_size(&payload)?;
        self.outbox.publish(topic.to_string(), payload).await
    }

    async fn subscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        // This node reads the bus from before the subscription (since it started): the
        // subscription holds from now on.
        self.shared.served.lock().expect("served lock").insert(topic.to_string());
        Ok(())
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        self.shared.served.lock().expect("served lock").remove(topic);
        Ok(())
    }

    async fn node_count_hint(&self) -> Result<Option<u64>, PluginError> {
        self.check_open()?;
        Ok(self.shared.config.nodes_number)
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.check_open()?;
        tokio::time::timeout(self.shared.timeout(), self.shared.client.list_topics())
            .await
            .map_err(|_| PluginError::timeout("kafka: the brokers did not answer in time"))?
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // What was accepted goes out, within the request timeout.
        self.outbox.drain(self.shared.timeout()).await;
        tracing::info!("Kafka transport shut down.");
        Ok(())
    }
}

impl Drop for KafkaTransport {
    fn drop(&mut self) {
        // The readers end with the transport.
        self.shared.closed.store(true, Ordering::Release);
    }
}

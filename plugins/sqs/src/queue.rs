//! The `sqs` queue.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aws_sdk_sqs::{
    Client,
    config::{BehaviorVersion, Credentials, Region, timeout::TimeoutConfig},
    types::{MessageSystemAttributeName, QueueAttributeName},
};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use sockhost_aws::sdk_error;
use sockhost_plugin_api::{
    ErrorCode, HostContextBox, Job, PluginError, QueueHandlerBox,
    abi::{RStr, RString, RVec},
    sdk::QueueDriver,
};
use tokio::task::JoinHandle;

use crate::config::QueueConfig;

struct Shared {
    client: Client,
    config: QueueConfig,
    /// Queue URLs by queue name, asked once.
    urls: tokio::sync::Mutex<HashMap<String, String>>,
    closed: AtomicBool,
    host: HostContextBox,
}

/// Queues on Amazon SQS.
pub struct SqsQueue {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for SqsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsQueue")
            .field("prefix", &self.shared.config.prefix)
            .finish_non_exhaustive()
    }
}

impl SqsQueue {
    /// Make the client and check that SQS answers.
    pub async fn connect(config: QueueConfig, host: HostContextBox) -> Result<Self, PluginError> {
        let (key, secret, token) = config.credentials()?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut builder = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region()))
            .credentials_provider(Credentials::new(key, secret, token, None, "sockhost"))
            .http_client(http)
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(Duration::from_millis(config.request_timeout_ms))
                    .build(),
            );
        if let Some(endpoint) = config.endpoint() {
            builder = builder.endpoint_url(endpoint);
        }
        let client = Client::from_conf(builder.build());
        let shared = Arc::new(Shared {
            client,
            config,
            urls: tokio::sync::Mutex::default(),
            closed: AtomicBool::new(false),
            host,
        });
        shared
            .client
            .list_queues()
            .max_results(1)
            .send()
            .await
            .map_err(|e| sdk_error("sqs", "ListQueues", &e))?;
        tracing::info!(region = %shared.config.region(), endpoint = ?shared.config.endpoint(), "Connected to SQS.");
        Ok(Self { shared, workers: Mutex::default() })
    }
}

impl Shared {
    fn check_open(&self) -> Result<(), PluginError> {
        if self.closed.load(Ordering::Acquire) {
            Err(PluginError::unavailable("the sqs queue is shut down"))
        } else {
            Ok(())
        }
    }

    /// The URL of queue `name` (with the prefix), creating it if allowed and missing.
    async fn url(&self, name: &str) -> Result<String, PluginError> {
        let mut urls = self.urls.lock().await;
        if let Some(url) = urls.get(name) {
            return Ok(url.clone());
        }
        let full = format!("{}{name}", self.config.prefix);
        let url = if let Some(prefix) = &self.config.queue_url_prefix {
            format!("{}/{full}", prefix.trim_end_matches('/'))
        } else {
            match self.client.get_queue_url().queue_name(&full).send().await {
                Ok(found) => found.queue_url().unwrap_or_default().to_string(),
                Err(e)
                    if self.config.create_queues
                        && e.as_service_error().is_some_and(|s| s.is_queue_does_not_exist()) =>
                {
                    let created = self
                        .client
                        .create_queue()
                        .queue_name(&full)
                        .send()
                        .await
                        .map_err(|e| sdk_error("sqs", "CreateQueue", &e))?;
                    tracing::info!(queue = full, "Created the SQS queue.");
                    created.queue_url().unwrap_or_default().to_string()
                }
                Err(e) => return Err(sdk_error("sqs", "GetQueueUrl", &e)),
            }
        };
        urls.insert(name.to_string(), url.clone());
        Ok(url)
    }

    /// The delay before attempt `next_attempt` (2 for the first retry), in whole seconds.
    fn backoff_seconds(&self, next_attempt: u32) -> i32 {
        let doublings = next_attempt.saturating_sub(2).min(32);
        let ms = self
            .config
            .retry_base_delay_ms
            .saturating_mul(1 << doublings)
            .min(self.config.retry_max_delay_ms);
        i32::try_from(ms / 1000).unwrap_or(43_200).min(43_200)
    }

    async fn send(&self, name: &str, payload: &[u8]) -> Result<(), PluginError> {
        let url = self.url(name).await?;
        self.client
            .send_message()
            .queue_url(url)
            .message_body(STANDARD.encode(payload))
            .send()
            .await
            .map_err(|e| sdk_error("sqs", "SendMessage", &e))?;
        Ok(())
    }

    /// One worker: receive (long polling), run, then delete, retry later or set aside.
    async fn work(self: Arc<Self>, queue: String, handler: QueueHandlerBox) {
        let mut trouble = Duration::ZERO;
        while !self.closed.load(Ordering::Acquire) {
            match self.round(&queue, &handler).await {
                Ok(()) => trouble = Duration::ZERO,
                Err(error) => {
                    if self.closed.load(Ordering::Acquire) {
                        return;
                    }
                    trouble =
                        (trouble * 2).clamp(Duration::from_millis(500), Duration::from_secs(10));
                    self.host.metric(RStr::from_str("queue_errors"), 1);
                    tracing::warn!(%queue, %error, retry_in = ?trouble, "SQS failed; trying again.");
                    tokio::time::sleep(trouble).await;
                }
            }
        }
    }

    async fn round(&self, queue: &str, handler: &QueueHandlerBox) -> Result<(), PluginError> {
        let url = self.url(queue).await?;
        let received = self
            .client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(self.config.max_messages)
            .wait_time_seconds(self.config.wait_time_seconds)
            .visibility_timeout(self.config.visibility_timeout)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| sdk_error("sqs", "ReceiveMessage", &e))?;
        for message in received.messages() {
            let (Some(receipt), Some(body)) = (message.receipt_handle(), message.body()) else {
                continue;
            };
            let attempt: u32 = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let Ok(payload) = STANDARD.decode(body) else {
                tracing::warn!(queue, "An SQS message that is not ours; set aside.");
                self.dead(queue, &url, receipt, body.as_bytes()).await?;
                continue;
            };
            let job = Job {
                id: RString::from(message.message_id().unwrap_or_default()),
                queue: RString::from(queue),
                attempt,
                payload: RVec::from(payload.clone()),
            };
            match handler.handle(job).await.into_result() {
                Ok(()) => {
                    self.client
                        .delete_message()
                        .queue_url(&url)
                        .receipt_handle(receipt)
                        .send()
                        .await
                        .map_err(|e| sdk_error("sqs", "DeleteMessage", &e))?;
                }
                Err(error)
                    if error.code == ErrorCode::REJECTED || attempt >= self.config.max_attempts =>
                {
                    tracing::warn!(queue, attempts = attempt, %error, "Job set aside in the dead-letter queue.");
                    self.dead(queue, &url, receipt, &payload).await?;
                }
                Err(_) => {
                    // Visible again after the backoff: the next receive is the retry.
                    self.client
                        .change_message_visibility()
                        .queue_url(&url)
                        .receipt_handle(receipt)
                        .visibility_timeout(self.backoff_seconds(attempt + 1))
                        .send()
                        .await
                        .map_err(|e| sdk_error("sqs", "ChangeMessageVisibility", &e))?;
                }
            }
        }
        Ok(())
    }

    /// Move a job to `<queue>-dead`, then delete it from `queue`.
    async fn dead(
        &self,
        queue: &str,
        url: &str,
        receipt: &str,
        payload: &[u8],
    ) -> Result<(), PluginError> {
        self.send(&format!("{queue}-dead"), payload).await?;
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| sdk_error("sqs", "DeleteMessage", &e))?;
        self.host.metric(RStr::from_str("queue_dead_letters"), 1);
        Ok(())
    }
}

impl QueueDriver for SqsQueue {
    async fn push(&self, queue: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.shared.check_open()?;
        self.shared.send(queue, &payload).await
    }

    async fn consume(&self, queue: &str, handler: QueueHandlerBox) -> Result<(), PluginError> {
        self.shared.check_open()?;
        self.shared.url(queue).await?;
        let mut workers = self.workers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for _ in 0..self.shared.config.concurrency {
            workers.push(tokio::spawn(self.shared.clone().work(queue.to_owned(), handler.clone())));
        }
        Ok(())
    }

    async fn pending(&self, queue: &str) -> Result<u64, PluginError> {
        self.shared.check_open()?;
        let url = self.shared.url(queue).await?;
        let answer = self
            .shared
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| sdk_error("sqs", "GetQueueAttributes", &e))?;
        Ok(answer
            .attributes()
            .map(|a| a.values().filter_map(|n| n.parse::<u64>().ok()).sum())
            .unwrap_or(0))
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.shared.check_open()?;
        self.shared
            .client
            .list_queues()
            .max_results(1)
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk_error("sqs", "ListQueues", &e))
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // A job in the middle of its work stays invisible until its visibility timeout ends,
        // then another worker takes it.
        let mut workers = self.workers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for worker in workers.drain(..) {
            worker.abort();
        }
        Ok(())
    }
}

impl Drop for SqsQueue {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Ok(mut workers) = self.workers.lock() {
            for worker in workers.drain(..) {
                worker.abort();
            }
        }
    }
}

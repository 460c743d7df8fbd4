//! The `queue.sqs` table, with the reference's field names.

use serde::Deserialize;
use sockhost_plugin_api::{PluginError, sdk};

/// Settings of the `sqs` queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// AWS region. Default: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else "us-east-1".
    pub region: Option<String>,
    /// The queues' URL without the queue name (`https://sqs.<region>.amazonaws.com/<account>`):
    /// queue `webhooks` is `<queue_url_prefix>/<prefix>webhooks`. Default: asked of SQS by name.
    pub queue_url_prefix: Option<String>,
    /// Another endpoint than AWS's (an SQS-compatible server). Default: `AWS_ENDPOINT_URL_SQS`,
    /// else `AWS_ENDPOINT_URL`, else AWS.
    pub endpoint_url: Option<String>,
    /// Prefix of every queue name. Default: "sockhost-".
    pub prefix: String,
    /// Seconds a received job stays invisible to other workers: its lease. Default: 30.
    pub visibility_timeout: i32,
    /// Jobs asked for per receive (1 to 10). Default: 10.
    pub max_messages: i32,
    /// Seconds a receive waits for jobs (long polling, 0 to 20). Default: 5.
    pub wait_time_seconds: i32,
    /// Workers per consumer. Default: 5.
    pub concurrency: usize,
    /// Attempts per job before it goes to the dead-letter queue `<name>-dead`. Default: 5.
    pub max_attempts: u32,
    /// Delay before the first retry, doubled each time (SQS counts in whole seconds).
    /// Default: 1000. Milliseconds.
    pub retry_base_delay_ms: u64,
    /// The longest delay between retries. Default: 60000. Milliseconds.
    pub retry_max_delay_ms: u64,
    /// Create a queue that does not exist yet. Default: true.
    pub create_queues: bool,
    /// Credentials, if not from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
    /// `AWS_SESSION_TOKEN`.
    pub access_key_id: Option<String>,
    /// See `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Milliseconds a request may take. Default: 30000 (longer than a long poll).
    pub request_timeout_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            region: None,
            queue_url_prefix: None,
            endpoint_url: None,
            prefix: "sockhost-".into(),
            visibility_timeout: 30,
            max_messages: 10,
            wait_time_seconds: 5,
            concurrency: 5,
            max_attempts: 5,
            retry_base_delay_ms: 1000,
            retry_max_delay_ms: 60_000,
            create_queues: true,
            access_key_id: None,
            secret_access_key: None,
            request_timeout_ms: 30_000,
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl QueueConfig {
    /// Parse the table (empty text: defaults), naming the field in any error.
    pub fn parse(text: &str) -> Result<Self, PluginError> {
        let config: Self = sdk::config::parse("queue.sqs", text)?;
        let field =
            |name: &str, why: &str| Err(PluginError::config(format!("queue.sqs.{name}: {why}")));
        if !(1..=10).contains(&config.max_messages) {
            return field("max_messages", "must be 1 to 10");
        }
        if !(0..=20).contains(&config.wait_time_seconds) {
            return field("wait_time_seconds", "must be 0 to 20");
        }
        if !(0..=43_200).contains(&config.visibility_timeout) {
            return field("visibility_timeout", "must be 0 to 43200 seconds");
        }
        if config.concurrency == 0 || config.max_attempts == 0 || config.request_timeout_ms == 0 {
            return field(
                "concurrency",
                "concurrency, max_attempts and request_timeout_ms must be at least 1",
            );
        }
        if config.retry_max_delay_ms < config.retry_base_delay_ms {
            return field("retry_max_delay_ms", "must not be below retry_base_delay_ms");
        }
        if config.access_key_id.is_some() != config.secret_access_key.is_some() {
            return field("access_key_id", "access_key_id and secret_access_key go together");
        }
        Ok(config)
    }

    /// The region: the table's, else the environment's, else us-east-1.
    pub fn region(&self) -> String {
        self.region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into())
    }

    /// The endpoint, if not AWS's own.
    pub fn endpoint(&self) -> Option<String> {
        self.endpoint_url
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_SQS"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
    }

    /// Access key, secret and session token: the table's, else the usual environment variables.
    pub fn credentials(&self) -> Result<(String, String, Option<String>), PluginError> {
        if let (Some(key), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            return Ok((key.clone(), secret.clone(), None));
        }
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(key), Some(secret)) => Ok((key, secret, env("AWS_SESSION_TOKEN"))),
            _ => Err(PluginError::config(
                "queue.sqs: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                 access_key_id and secret_access_key)",
            )),
        }
    }
}

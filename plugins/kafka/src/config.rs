//! The `adapter.kafka` table, with Sockudo's names.

use serde::Deserialize;
use sockhost_plugin_api::{PluginError, sdk};

/// Settings of the `kafka` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Bootstrap brokers, `host:port`. Default: `["localhost:9092"]`; `KAFKA_BROKERS`
    /// (comma-separated) overrides.
    pub brokers: Vec<String>,
    /// Start of the topics' names. Default: `sockudo_adapter`; `KAFKA_PREFIX` overrides.
    pub prefix: String,
    /// Milliseconds a call to the brokers may take, retries included. Default: 5000;
    /// `KAFKA_REQUEST_TIMEOUT_MS` overrides.
    pub request_timeout_ms: u64,
    /// `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`
    /// (`KAFKA_SECURITY_PROTOCOL`).
    pub security_protocol: String,
    /// `PLAIN` (default), `SCRAM-SHA-256` or `SCRAM-SHA-512` (`KAFKA_SASL_MECHANISM`).
    pub sasl_mechanism: String,
    /// SASL user and password (`KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`).
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
    /// Partitions of a topic the transport creates. Default: 1 (the record key is the
    /// sockhost topic, so a topic's order holds with more).
    pub partitions: i32,
    /// Replication factor of a topic the transport creates. Default: 1.
    pub replication_factor: i16,
    /// The largest record, in bytes. Default: 16 MiB.
    pub max_message_bytes: usize,
    /// Milliseconds a read waits at the broker for the next record. Default: 500, Kafka's own
    /// (`fetch.max.wait.ms`): a broker answers as soon as a record comes. Lower it for a broker
    /// that holds the whole wait (Tansu): the wait is then a delivery's added latency.
    pub fetch_max_wait_ms: u32,
    /// The number of sockhost nodes, if known (`KAFKA_NODES_NUMBER`).
    pub nodes_number: Option<u64>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["localhost:9092".into()],
            prefix: "sockudo_adapter".into(),
            request_timeout_ms: 5000,
            security_protocol: "PLAINTEXT".into(),
            sasl_mechanism: "PLAIN".into(),
            sasl_username: None,
            sasl_password: None,
            partitions: 1,
            replication_factor: 1,
            max_message_bytes: 16 << 20,
            fetch_max_wait_ms: 500,
            nodes_number: None,
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl TransportConfig {
    /// Parse the table (empty text: defaults), apply the environment, and check every field,
    /// naming it in any error.
    pub fn parse(text: &str) -> Result<Self, PluginError> {
        let mut config: Self = sdk::config::parse("adapter.kafka", text)?;
        if let Some(brokers) = env("KAFKA_BROKERS") {
            config.brokers = brokers
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(String::from)
                .collect();
        }
        config.prefix = env("KAFKA_PREFIX").unwrap_or(config.prefix);
        if let Some(ms) = env("KAFKA_REQUEST_TIMEOUT_MS") {
            config.request_timeout_ms = ms.trim().parse().map_err(|_| {
                PluginError::config(format!("KAFKA_REQUEST_TIMEOUT_MS: {ms:?} is not a number"))
            })?;
        }
        config.security_protocol =
            env("KAFKA_SECURITY_PROTOCOL").unwrap_or(config.security_protocol);
        config.sasl_mechanism = env("KAFKA_SASL_MECHANISM").unwrap_or(config.sasl_mechanism);
        config.sasl_username = env("KAFKA_SASL_USERNAME").or(config.sasl_username);
        config.sasl_password = env("KAFKA_SASL_PASSWORD").or(config.sasl_password);
        if let Some(n) = env("KAFKA_NODES_NUMBER") {
            config.nodes_number = Some(n.trim().parse().map_err(|_| {
                PluginError::config(format!("KAFKA_NODES_NUMBER: {n:?} is not a number"))
            })?);
        }
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), PluginError> {
        if self.brokers.is_empty() {
            return Err(PluginError::config("adapter.kafka.brokers: no brokers"));
        }
        for broker in &self.brokers {
            let port = broker.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok());
            if broker.contains("://") || port.is_none() {
                return Err(PluginError::config(format!(
                    "adapter.kafka.brokers: {broker:?} is not host:port"
                )));
            }
        }
        // Topic names: [A-Za-z0-9._-], at most 249 characters, the node's part included.
        if self.prefix.is_empty()
            || self.prefix.len() > 200
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(PluginError::config(format!(
                "adapter.kafka.prefix: {:?} must be 1-200 of A-Z, a-z, 0-9, `.`, `_` and `-`",
                self.prefix
            )));
        }
        if !matches!(
            self.security_protocol.as_str(),
            "PLAINTEXT" | "SSL" | "SASL_PLAINTEXT" | "SASL_SSL"
        ) {
            return Err(PluginError::config(format!(
                "adapter.kafka.security_protocol: {:?} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
                self.security_protocol
            )));
        }
        if !matches!(self.sasl_mechanism.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") {
            return Err(PluginError::config(format!(
                "adapter.kafka.sasl_mechanism: {:?} is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                self.sasl_mechanism
            )));
        }
        if self.security_protocol.starts_with("SASL")
            && (self.sasl_username.is_none() || self.sasl_password.is_none())
        {
            return Err(PluginError::config(
                "adapter.kafka: SASL needs sasl_username and sasl_password",
            ));
        }
        if self.request_timeout_ms == 0
            || self.partitions < 1
            || self.replication_factor < 1
            || self.max_message_bytes == 0
        {
            return Err(PluginError::config(
                "adapter.kafka: request_timeout_ms, partitions, replication_factor and max_message_bytes must be at least 1",
            ));
        }
        if !(1..=MAX_FETCH_WAIT_MS).contains(&self.fetch_max_wait_ms) {
            return Err(PluginError::config(format!(
                "adapter.kafka.fetch_max_wait_ms: {} is not 1-{MAX_FETCH_WAIT_MS}",
                self.fetch_max_wait_ms
            )));
        }
        Ok(())
    }
}

/// The longest wait a read may ask of the broker.
const MAX_FETCH_WAIT_MS: u32 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_hold_and_bad_values_are_named() {
        let config = TransportConfig::parse("").unwrap();
        assert_eq!(config.brokers, ["localhost:9092"]);
        assert_eq!(config.fetch_max_wait_ms, 500);
        for bad in [
            "brokers = [\"kafka://x:9092\"]",
            "prefix = \"a b\"",
            "security_protocol = \"TLS\"",
            "security_protocol = \"SASL_SSL\"",
            "fetch_max_wait_ms = 0",
            "fetch_max_wait_ms = 60000",
        ] {
            let error = TransportConfig::parse(bad).unwrap_err().message;
            assert!(error.starts_with("adapter.kafka"), "{bad}: {error}");
        }
    }
}

//! The `adapter.rabbitmq` table, with Sockudo's names where it has them.

use std::net::IpAddr;

use lapin::uri::AMQPUri;
use serde::Deserialize;
use sockhost_plugin_api::{PluginError, sdk};

/// Settings of the `rabbitmq` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// The broker (`amqp://`, or `amqps://` for TLS). Default:
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`; `RABBITMQ_URL` overrides.
    pub url: String,
    /// Name of the exchange, and start of the node queues' names. Default: `sockudo_adapter`;
    /// `RABBITMQ_PREFIX` overrides.
    pub prefix: String,
    /// Milliseconds a connection attempt may take. Default: 5000;
    /// `RABBITMQ_CONNECTION_TIMEOUT_MS` overrides.
    pub connection_timeout_ms: u64,
    /// Milliseconds an awaited operation (a binding, a confirmed publish) may take.
    /// Default: 5000; `RABBITMQ_REQUEST_TIMEOUT_MS` overrides.
    pub request_timeout_ms: u64,
    /// Messages this node's queue holds in the broker at most; past it the oldest are dropped
    /// (`x-overflow = drop-head`), so a slow node never fills the broker's memory.
    /// Default: 100,000.
    pub max_queue_length: u64,
    /// Publishes the broker has not confirmed yet, at most; past it, publishing pushes back.
    /// Default: 1024.
    pub publish_window: usize,
    /// Messages the broker sends this node before it acknowledges them. Default: 1024.
    pub prefetch: u16,
    /// The number of sockhost nodes, if known (`RABBITMQ_NODES_NUMBER`).
    pub nodes_number: Option<u64>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: "sockudo_adapter".into(),
            connection_timeout_ms: 5000,
            request_timeout_ms: 5000,
            max_queue_length: 100_000,
            publish_window: 1024,
            prefetch: 1024,
            nodes_number: None,
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_number(name: &str) -> Result<Option<u64>, PluginError> {
    env(name)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| PluginError::config(format!("{name}: {v:?} is not a number")))
        })
        .transpose()
}

impl TransportConfig {
    /// Parse the table (empty text: defaults), apply the environment, and check every field,
    /// naming it in any error.
    pub fn parse(text: &str) -> Result<Self, PluginError> {
        let mut config: Self = sdk::config::parse("adapter.rabbitmq", text)?;
        config.url = env("RABBITMQ_URL").unwrap_or(config.url);
        config.prefix = env("RABBITMQ_PREFIX").unwrap_or(config.prefix);
        if let Some(ms) = env_number("RABBITMQ_CONNECTION_TIMEOUT_MS")? {
            config.connection_timeout_ms = ms;
        }
        if let Some(ms) = env_number("RABBITMQ_REQUEST_TIMEOUT_MS")? {
            config.request_timeout_ms = ms;
        }
        config.nodes_number = env_number("RABBITMQ_NODES_NUMBER")?.or(config.nodes_number);
        config.check()?;
        Ok(config)
    }

    /// The broker's address as the AMQP client takes it. Its URL parser puts `localhost` in
    /// place of an IPv6 address, so `amqp://[fd00::5]/` would reach a broker on this machine
    /// instead: the address is put back. The parser's complaint is left out when it quotes
    /// the URL, which may hold a password where it cannot be told apart.
    pub fn uri(&self) -> Result<AMQPUri, String> {
        let url = self.url.trim();
        let mut uri: AMQPUri = url.parse().map_err(|error: String| match error.contains(url) {
            true => "it does not parse".to_string(),
            false => error,
        })?;
        if let Some(address) = ip_host(url) {
            uri.authority.host = address.to_string();
        }
        Ok(uri)
    }

    fn check(&self) -> Result<(), PluginError> {
        if let Err(e) = self.uri() {
            return Err(PluginError::config(format!(
                "adapter.rabbitmq.url: {:?} is not an AMQP URL (amqp:// or amqps://): {e}",
                sdk::config::redact_url(&self.url)
            )));
        }
        // The exchange and queue names are short strings (255 bytes), the node's part included.
        if self.prefix.is_empty()
            || self.prefix.len() > 128
            || self.prefix.starts_with("amq.")
            || !self.prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(PluginError::config(format!(
                "adapter.rabbitmq.prefix: {:?} must be 1-128 visible ASCII characters, not starting with `amq.`",
                self.prefix
            )));
        }
        if self.connection_timeout_ms == 0
            || self.request_timeout_ms == 0
            || self.max_queue_length == 0
            || self.publish_window == 0
            || self.prefetch == 0
        {
            return Err(PluginError::config(
                "adapter.rabbitmq: connection_timeout_ms, request_timeout_ms, max_queue_length, publish_window and prefetch must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The host of `url` when it is an IP address (`[...]` around one of version 6).
fn ip_host(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => host_port.split(':').next()?,
    };
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_hold() {
        let config = TransportConfig::parse("").unwrap();
        assert_eq!(config.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(config.prefix, "sockudo_adapter");
        assert_eq!((config.connection_timeout_ms, config.max_queue_length), (5000, 100_000));
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let error =
            TransportConfig::parse("url = \"http://user:secret@host\"").unwrap_err().message;
        assert!(error.starts_with("adapter.rabbitmq.url:"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn zero_and_reserved_prefixes_are_refused() {
        for bad in ["prefix = \"amq.x\"", "prefix = \"\"", "max_queue_length = 0"] {
            assert!(TransportConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_url_that_does_not_parse_is_refused_without_its_password() {
        let error = TransportConfig::parse("url = \"amqps:user:secret@host/%2f\"").unwrap_err();
        assert!(error.message.contains("adapter.rabbitmq.url"), "{}", error.message);
        assert!(!error.message.contains("secret"), "{}", error.message);
    }

    #[test]
    fn an_address_in_the_url_is_the_host_connected_to() {
        let uri = |url: &str| {
            TransportConfig { url: url.into(), ..TransportConfig::default() }.uri().unwrap()
        };
        let cases = [
            ("amqp://guest:guest@10.0.0.5:5673/%2f", "10.0.0.5", 5673),
            ("amqps://u:p%40w@[::1]/%2f", "::1", 5671),
            ("amqp://broker.internal/%2f", "broker.internal", 5672),
            ("amqps://u@localhost:5671", "localhost", 5671),
            ("AMQP://u:p@w@[fd00::5]:1/v?heartbeat=5", "fd00::5", 1),
        ];
        for (url, host, port) in cases {
            let parsed = uri(url);
            assert_eq!(
                (parsed.authority.host.as_str(), parsed.authority.port),
                (host, port),
                "{url}"
            );
        }
    }
}

//! The `adapter.mqtt` table.

use serde::Deserialize;
use sockhost_plugin_api::{PluginError, sdk};

/// Settings of the `mqtt` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// The broker: `mqtt://[user:password@]host[:port]` (1883), or `mqtts://` for TLS (8883).
    /// Default: `mqtt://127.0.0.1:1883`; `MQTT_URL` overrides.
    pub url: String,
    /// First level of every topic. Default: `sockudo_adapter`; `MQTT_PREFIX` overrides.
    pub prefix: String,
    /// User name and password, if not in the URL (`MQTT_USERNAME`, `MQTT_PASSWORD`).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Milliseconds an awaited operation (a SUBACK, the first connection) may take.
    /// Default: 5000.
    pub request_timeout_ms: u64,
    /// Seconds between keep-alive pings. Default: 30.
    pub keep_alive_secs: u64,
    /// The largest message, in bytes; a larger one is refused and counted (`too_large`), and
    /// the broker's own limit (its CONNACK's maximum packet size) lowers it. Default: 16 MiB.
    pub max_payload_bytes: u32,
    /// Messages waiting to be written before publishing pushes back. Default: 65,536.
    pub queue_capacity: usize,
    /// The number of sockhost nodes, if known.
    pub nodes_number: Option<u64>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            prefix: "sockudo_adapter".into(),
            username: None,
            password: None,
            request_timeout_ms: 5000,
            keep_alive_secs: 30,
            max_payload_bytes: 16 << 20,
            queue_capacity: 65_536,
            nodes_number: None,
        }
    }
}

/// Where the broker is, from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub credentials: Option<(String, String)>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl TransportConfig {
    /// Parse the table (empty text: defaults), apply the environment, and check every field,
    /// naming it in any error.
    pub fn parse(text: &str) -> Result<Self, PluginError> {
        let mut config: Self = sdk::config::parse("adapter.mqtt", text)?;
        config.url = env("MQTT_URL").unwrap_or(config.url);
        config.prefix = env("MQTT_PREFIX").unwrap_or(config.prefix);
        config.username = env("MQTT_USERNAME").or(config.username);
        config.password = env("MQTT_PASSWORD").or(config.password);
        config.broker()?;
        if config.prefix.is_empty()
            || config.prefix.starts_with('$')
            || config.prefix.contains(['#', '+', '\0'])
        {
            return Err(PluginError::config(format!(
                "adapter.mqtt.prefix: {:?} must be a topic name (not empty, no `#`, `+` or NUL, not starting with `$`)",
                config.prefix
            )));
        }
        if config.request_timeout_ms == 0
            || config.keep_alive_secs == 0
            || config.max_payload_bytes == 0
            || config.queue_capacity == 0
        {
            return Err(PluginError::config(
                "adapter.mqtt: request_timeout_ms, keep_alive_secs, max_payload_bytes and queue_capacity must be at least 1",
            ));
        }
        if config.username.is_some() != config.password.is_some() {
            return Err(PluginError::config("adapter.mqtt: username and password go together"));
        }
        Ok(config)
    }

    /// The broker the URL names.
    pub fn broker(&self) -> Result<Broker, PluginError> {
        let bad = |why: &str| {
            PluginError::config(format!(
                "adapter.mqtt.url: {:?} {why}",
                sdk::config::redact_url(&self.url)
            ))
        };
        let (scheme, rest) = self.url.split_once("://").ok_or_else(|| bad("has no scheme"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(bad("is not an MQTT URL (mqtt:// or mqtts://)")),
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let (credentials, address) = match authority.rsplit_once('@') {
            Some((user, address)) => {
                let (name, password) = user.split_once(':').unwrap_or((user, ""));
                (Some((name.to_string(), password.to_string())), address)
            }
            None => (None, authority),
        };
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || address.starts_with('[') => {
                (host, port.parse().map_err(|_| bad("has a port that is not a number"))?)
            }
            _ => (address, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("names no host"));
        }
        let credentials = credentials.or_else(|| self.username.clone().zip(self.password.clone()));
        Ok(Broker { host: host.to_string(), port, tls, credentials })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_hold_and_urls_parse() {
        let config = TransportConfig::parse("").unwrap();
        let broker = config.broker().unwrap();
        assert_eq!((broker.host.as_str(), broker.port, broker.tls), ("127.0.0.1", 1883, false));
        let config = TransportConfig::parse("url = \"mqtts://u:p@example.org\"").unwrap();
        let broker = config.broker().unwrap();
        assert_eq!((broker.port, broker.tls), (8883, true));
        assert_eq!(broker.credentials, Some(("u".into(), "p".into())));
    }

    #[test]
    fn bad_urls_and_prefixes_are_named() {
        for bad in [
            "url = \"http://x\"",
            "url = \"mqtt://x:port\"",
            "prefix = \"$SYS\"",
            "prefix = \"a/#\"",
        ] {
            let error = TransportConfig::parse(bad).unwrap_err().message;
            assert!(error.starts_with("adapter.mqtt."), "{bad}: {error}");
        }
        let error = TransportConfig::parse("url = \"http://u:secret@x\"").unwrap_err().message;
        assert!(!error.contains("secret"), "{error}");
    }
}

//! The `adapter.nats` table, with the reference's fields, defaults and environment variables.

use std::str::FromStr as _;

use serde::Deserialize;
use sockhost_plugin_api::{PluginError, sdk};

/// Settings of the `nats` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Server URLs (`nats://`, or `tls://` for TLS). Default: `["nats://localhost:4222"]`;
    /// `NATS_SERVERS` (comma-separated) overrides.
    pub servers: Vec<String>,
    /// Prefix of every subject. Default: "sockudo_adapter:".
    pub prefix: String,
    /// Milliseconds an awaited operation may take. Default: 5000.
    pub request_timeout_ms: u64,
    /// User name (`NATS_USERNAME` overrides).
    pub username: Option<String>,
    /// Password (`NATS_PASSWORD` overrides).
    pub password: Option<String>,
    /// Token (`NATS_TOKEN` overrides).
    pub token: Option<String>,
    /// Milliseconds a connection attempt may take. Default: 5000.
    pub connection_timeout_ms: u64,
    /// The number of sockhost nodes, if known: NATS cannot count subscribers.
    pub nodes_number: Option<u64>,
    /// Messages each subscription may hold before NATS reports a slow consumer and drops.
    /// Default: 1,048,576 (memory is taken only as messages wait).
    pub subscription_capacity: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://localhost:4222".into()],
            prefix: "sockudo_adapter:".into(),
            request_timeout_ms: 5000,
            username: None,
            password: None,
            token: None,
            connection_timeout_ms: 5000,
            nodes_number: None,
            subscription_capacity: 1 << 20,
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
        let mut config: Self = sdk::config::parse("adapter.nats", text)?;
        if let Some(servers) = env("NATS_SERVERS") {
            config.servers = servers
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        config.username = env("NATS_USERNAME").or(config.username);
        config.password = env("NATS_PASSWORD").or(config.password);
        config.token = env("NATS_TOKEN").or(config.token);
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), PluginError> {
        if self.servers.is_empty() {
            return Err(PluginError::config("adapter.nats.servers: no servers"));
        }
        for server in &self.servers {
            let scheme = server.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, None | Some("nats" | "tls" | "ws" | "wss")) {
                return Err(PluginError::config(format!(
                    "adapter.nats.servers: {server:?} is not a NATS URL (nats://, tls://, ws:// or wss://)"
                )));
            }
            if let Err(e) = async_nats::ServerAddr::from_str(server) {
                return Err(PluginError::config(format!(
                    "adapter.nats.servers: {server:?} is not a NATS URL: {e}"
                )));
            }
        }
        if self.prefix.is_empty()
            || self.prefix.chars().any(|c| c.is_whitespace() || matches!(c, '*' | '>'))
            || self.prefix.starts_with(['.', '$'])
        {
            return Err(PluginError::config(format!(
                "adapter.nats.prefix: {:?} cannot begin a subject (no spaces, `*` or `>`, and not `.` or `$` first)",
                self.prefix
            )));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(PluginError::config("adapter.nats: username and password go together"));
        }
        if self.request_timeout_ms == 0
            || self.connection_timeout_ms == 0
            || self.subscription_capacity == 0
        {
            return Err(PluginError::config(
                "adapter.nats: request_timeout_ms, connection_timeout_ms and subscription_capacity must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_defaults_hold() {
        let config = TransportConfig::parse("").unwrap();
        assert_eq!(config.servers, ["nats://localhost:4222"]);
        assert_eq!(config.prefix, "sockudo_adapter:");
        assert_eq!((config.request_timeout_ms, config.connection_timeout_ms), (5000, 5000));
        assert_eq!(config.nodes_number, None);
    }

    #[test]
    fn a_url_that_does_not_parse_is_named() {
        for bad in ["http://x:4222", "nats://host:notaport", "nats://[::1"] {
            let error =
                TransportConfig::parse(&format!("servers = [{bad:?}]")).unwrap_err().message;
            assert!(error.starts_with("adapter.nats.servers:") && error.contains(bad), "{error}");
        }
    }

    #[test]
    fn a_password_needs_a_user() {
        let error = TransportConfig::parse("password = \"p\"").unwrap_err().message;
        assert!(error.contains("username and password"), "{error}");
    }
}

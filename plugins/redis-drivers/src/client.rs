//! Opening one Redis server's connection, and what every connection needs: rustls's crypto
//! provider and URLs without their passwords for logs. The lowest layer: the settings
//! ([`crate::connection`]) and the sentinels ([`crate::sentinel`]) both open servers through it.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sockhost_plugin_api::PluginError;

pub use sockhost_plugin_api::sdk::config::redact_url as redact;

/// rustls picks its crypto from a process-wide default; a plugin's copy of rustls has none
/// until one is installed (an error only means another thread installed it first).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Open a connection manager to one server (it reconnects by itself after), failing with the
/// server's own reason (a wrong password, an untrusted certificate) rather than a bare timeout.
pub async fn server(url: &str, timeout: Duration) -> Result<ConnectionManager, PluginError> {
    server_client(url, "redis URL", timeout).await.map(|(_, manager)| manager)
}

/// As [`server`], also giving the client (to open other connections, such as a subscriber's);
/// `what` names the setting the URL came from in a configuration error.
pub async fn server_client(
    url: &str,
    what: &str,
    timeout: Duration,
) -> Result<(redis::Client, ConnectionManager), PluginError> {
    install_crypto();
    let shown = redact(url);
    let client = redis::Client::open(url)
        .map_err(|e| PluginError::config(format!("{what} {shown:?}: {e}")))?;
    // One plain attempt first: the connection manager retries by itself, which would turn a
    // refusal (a wrong password, an untrusted certificate) into a bare timeout.
    crate::within(&format!("redis {shown}"), timeout, client.get_multiplexed_async_connection())
        .await?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let manager = crate::within(
        &format!("redis {shown}"),
        timeout,
        client.get_connection_manager_with_config(config),
    )
    .await?;
    Ok((client, manager))
}

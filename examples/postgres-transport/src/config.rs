//! The `adapter.postgres` table, and the shared `[database.postgres]` one.

use serde::Deserialize;
use sockhost_plugin_api::{PluginError, sdk};

/// Settings of the `postgres` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// A libpq connection string or `postgres://` URL. Default: `DATABASE_URL`, else
    /// `[database.postgres]`, else `postgres://postgres@127.0.0.1:5432/postgres`.
    pub url: Option<String>,
    /// Prefix of every notification channel (lowercase letters, digits, `_`). Default:
    /// "sockhost".
    pub prefix: String,
    /// Milliseconds an awaited operation may take. Default: 5000.
    pub request_timeout_ms: u64,
    /// Messages that may wait to be written; a `try_publish` beyond answers BACKPRESSURE.
    /// Default: 65536.
    pub queue_capacity: usize,
    /// The server's shared `[database.postgres]` table, which the host passes along.
    pub database: Database,
}

/// `[database.postgres]`, in the reference's field names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Database {
    /// Host. Default: 127.0.0.1.
    pub host: Option<String>,
    /// Port. Default: 5432.
    pub port: Option<u16>,
    /// User. Default: postgres.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Database. Default: postgres.
    pub database: Option<String>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            url: None,
            prefix: "sockhost".into(),
            request_timeout_ms: 5000,
            queue_capacity: 65_536,
            database: Database::default(),
        }
    }
}

impl TransportConfig {
    /// Parse the table (empty text: defaults), naming the field in any error.
    pub fn parse(text: &str) -> Result<Self, PluginError> {
        let config: Self = sdk::config::parse("adapter.postgres", text)?;
        let legal = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        if config.prefix.is_empty() || config.prefix.len() > 30 || !config.prefix.chars().all(legal)
        {
            return Err(PluginError::config(format!(
                "adapter.postgres.prefix: {:?} must be 1 to 30 lowercase letters, digits or `_`",
                config.prefix
            )));
        }
        if config.request_timeout_ms == 0 || config.queue_capacity == 0 {
            return Err(PluginError::config(
                "adapter.postgres: request_timeout_ms and queue_capacity must be at least 1",
            ));
        }
        Ok(config)
    }

    /// The connection string: `url`, else `DATABASE_URL`, else `[database.postgres]`.
    pub fn url(&self) -> String {
        if let Some(url) = self.url.clone().or_else(|| std::env::var("DATABASE_URL").ok()) {
            return url;
        }
        let db = &self.database;
        let mut parts = vec![
            format!("host={}", db.host.as_deref().unwrap_or("127.0.0.1")),
            format!("port={}", db.port.unwrap_or(5432)),
            format!("user={}", db.username.as_deref().unwrap_or("postgres")),
            format!("dbname={}", db.database.as_deref().unwrap_or("postgres")),
        ];
        if let Some(password) = &db.password {
            parts.push(format!(
                "password='{}'",
                password.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
        parts.join(" ")
    }
}

//! `[app_manager.postgres]` / `[app_manager.mysql]` and the shared `[database.postgres]` /
//! `[database.mysql]` (the reference's names).

use serde::Deserialize;
use sockhost_plugin_api::{PluginError, sdk};

/// A driver's table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// `[database.<backend>]`, passed along by the host.
    pub database: Database,
    /// Milliseconds to connect and for each statement. Default: 5000.
    pub timeout_ms: Option<u64>,
}

/// `[database.postgres]` or `[database.mysql]` (env `DATABASE_POSTGRES_*`,
/// `DATABASE_MYSQL_*`, applied by the host). Unset fields take the backend's defaults.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    /// Default: 127.0.0.1.
    pub host: Option<String>,
    /// Default: 5432 (PostgreSQL), 3306 (MySQL).
    pub port: Option<u16>,
    /// Default: postgres (PostgreSQL), root (MySQL).
    pub username: Option<String>,
    /// Default: none.
    pub password: Option<String>,
    /// Default: sockudo (the reference's).
    pub database: Option<String>,
    /// Default: applications.
    pub table_name: Option<String>,
    /// Connections to keep (MySQL; PostgreSQL uses one pipelined connection). Default: 4.
    pub connection_pool_size: Option<u32>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log line.
        f.debug_struct("Database")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("database", &self.database)
            .field("table_name", &self.table_name)
            .finish_non_exhaustive()
    }
}

impl SqlConfig {
    /// Parse and check the table of the `backend` driver (`postgres`, `mysql`).
    pub fn parse(backend: &str, text: &str) -> Result<Self, PluginError> {
        let config: Self = sdk::config::parse(&format!("app_manager.{backend}"), text)?;
        let table = config.table();
        let legal = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if table.is_empty() || table.len() > 63 || !table.chars().all(legal) {
            return Err(PluginError::config(format!(
                "database.{backend}.table_name: {table:?} must be 1 to 63 letters, digits or `_`"
            )));
        }
        if config.timeout_ms == Some(0) {
            return Err(PluginError::config(format!(
                "app_manager.{backend}.timeout_ms: must be at least 1"
            )));
        }
        Ok(config)
    }

    /// The table's name (checked: safe to write into a statement).
    pub fn table(&self) -> &str {
        self.database.table_name.as_deref().unwrap_or("applications")
    }

    /// How long to connect, and each statement, may take.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.unwrap_or(5000))
    }
}

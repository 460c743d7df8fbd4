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
    /// The history store's tables: `<prefix>_streams` and `<prefix>_events`. Default:
    /// sockhost_history. (History only.)
    pub table_prefix: Option<String>,
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
    /// Parse and check the table of the `backend` driver (`postgres`, `mysql`) of `kind`
    /// (`app_manager`, `history`).
    pub fn parse(kind: &str, backend: &str, text: &str) -> Result<Self, PluginError> {
        let config: Self = sdk::config::parse(&format!("{kind}.{backend}"), text)?;
        // Written into statements: letters, digits and `_` only, within PostgreSQL's 63 bytes
        // (a prefix with the suffixes added to it).
        let names = [
            (format!("database.{backend}.table_name"), config.table(), 63),
            (format!("{kind}.{backend}.table_prefix"), config.table_prefix(), 50),
        ];
        for (place, name, longest) in names {
            let legal = |c: char| c.is_ascii_alphanumeric() || c == '_';
            if name.is_empty() || name.len() > longest || !name.chars().all(legal) {
                return Err(PluginError::config(format!(
                    "{place}: {name:?} must be 1 to {longest} letters, digits or `_`"
                )));
            }
        }
        if config.timeout_ms == Some(0) {
            return Err(PluginError::config(format!(
                "{kind}.{backend}.timeout_ms: must be at least 1"
            )));
        }
        Ok(config)
    }

    /// The history tables' prefix (checked: safe to write into a statement).
    pub fn table_prefix(&self) -> &str {
        self.table_prefix.as_deref().unwrap_or("sockhost_history")
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

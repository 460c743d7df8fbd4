//! One PostgreSQL connection shared by a plugin's drivers' calls: pipelined
//! (`tokio-postgres`), reopened when it breaks, every statement bounded in time.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicBool, Ordering},
};

use sockhost_plugin_api::PluginError;
use tokio_postgres::{Client, NoTls, error::SqlState, types::ToSql};

use crate::{config::SqlConfig, record::within};

/// A connection that reopens itself.
pub(crate) struct Pg {
    config: SqlConfig,
    /// The open connection; `None` after it broke (or was closed), until the next call
    /// reopens it.
    client: RwLock<Option<Arc<Client>>>,
    /// Serialises reconnects, so a burst of calls after a break opens one connection.
    reconnect: tokio::sync::Mutex<()>,
    /// Shut down: no call reopens it.
    closed: AtomicBool,
}

/// A database error as the boundary's: trouble reaching the database, or a transient state, is
/// retryable; anything else refuses the call.
pub(crate) fn unavailable(what: &str, error: &tokio_postgres::Error) -> PluginError {
    match error.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => {
            PluginError::rejected("an app with this id or key exists")
        }
        Some(code) if transient(code.code()) => {
            PluginError::unavailable(format!("{what}: {error} ({})", code.code()))
        }
        Some(code) => PluginError::rejected(format!("{what}: {error} ({})", code.code())),
        None => PluginError::unavailable(format!("{what}: {error}")),
    }
}

/// Whether an SQLSTATE says "not now" rather than "never": the connection (08), a rolled-back
/// transaction (40: serialization failure, deadlock), resources (53), a lock not available
/// (55P03), an operator's intervention (57: a cancelled query, a shutdown) or a system error
/// (58). Those are worth retrying (503); the rest refuse the write itself (409).
fn transient(sqlstate: &str) -> bool {
    ["08", "40", "53", "57", "58"].iter().any(|class| sqlstate.starts_with(class))
        || sqlstate == "55P03"
}

impl Pg {
    /// Connect with `config`; a failure is the caller's start-up error.
    pub(crate) async fn connect(config: SqlConfig) -> Result<Self, PluginError> {
        let client = open(&config).await?;
        Ok(Self {
            config,
            client: RwLock::new(Some(Arc::new(client))),
            reconnect: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        })
    }

    /// How long a statement may take.
    pub(crate) fn timeout(&self) -> std::time::Duration {
        self.config.timeout()
    }

    /// Drop the connection for good: later calls answer `UNAVAILABLE`.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.client.write().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }

    /// The connection, reopened if it broke.
    pub(crate) async fn client(&self) -> Result<Arc<Client>, PluginError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PluginError::unavailable("the PostgreSQL driver is shut down"));
        }
        let current = || {
            let client = self.client.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            client.as_ref().filter(|c| !c.is_closed()).cloned()
        };
        if let Some(client) = current() {
            return Ok(client);
        }
        let _one = self.reconnect.lock().await;
        if let Some(client) = current() {
            return Ok(client);
        }
        let client = Arc::new(open(&self.config).await?);
        *self.client.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(client.clone());
        Ok(client)
    }

    pub(crate) async fn rows(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, PluginError> {
        let client = self.client().await?;
        within(self.config.timeout(), client.query(statement, params))
            .await?
            .map_err(|e| unavailable("query", &e))
    }

    pub(crate) async fn execute(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, PluginError> {
        let client = self.client().await?;
        within(self.config.timeout(), client.execute(statement, params))
            .await?
            .map_err(|e| unavailable("statement", &e))
    }
}

/// The connection settings.
fn connect_config(config: &SqlConfig) -> tokio_postgres::Config {
    let db = &config.database;
    let mut settings = tokio_postgres::Config::new();
    settings
        .host(db.host.as_deref().unwrap_or("127.0.0.1"))
        .port(db.port.unwrap_or(5432))
        .user(db.username.as_deref().unwrap_or("postgres"))
        .dbname(db.database.as_deref().unwrap_or("sockudo"))
        .application_name("sockhost")
        .connect_timeout(config.timeout());
    if let Some(password) = &db.password {
        settings.password(password);
    }
    settings
}

/// Open a connection and drive it on the plugin's runtime.
async fn open(config: &SqlConfig) -> Result<Client, PluginError> {
    let settings = connect_config(config);
    let (client, connection) = within(config.timeout(), settings.connect(NoTls))
        .await?
        .map_err(|e| PluginError::unavailable(format!("connecting to PostgreSQL: {e}")))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "The PostgreSQL connection broke; the next call reopens it.");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::transient;

    #[test]
    fn passing_failures_are_told_from_refusals() {
        for code in ["08006", "40001", "40P01", "53300", "55P03", "57014", "57P01", "58030"] {
            assert!(transient(code), "{code}");
        }
        for code in ["23505", "23502", "22003", "22001", "42P01", "55000"] {
            assert!(!transient(code), "{code}");
        }
    }
}

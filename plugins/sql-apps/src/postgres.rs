//! The `postgres` app manager.

use std::{
    collections::BTreeSet,
    sync::{Arc, RwLock},
};

use serde_json::{Map, Value};
use sockhost_plugin_api::{
    PluginError,
    sdk::{AppManagerDriver, UpdateOutcome, apps::record},
};
use tokio_postgres::{Client, NoTls, error::SqlState, types::ToSql};

use crate::{
    config::SqlConfig,
    record::{ROTATION_COLUMNS, VERSION_COLUMN, within, written},
};

/// Apps in a PostgreSQL table.
pub struct PostgresApps {
    config: SqlConfig,
    table: String,
    /// The open connection; `None` after it broke, until the next call reopens it.
    client: RwLock<Option<Arc<Client>>>,
    /// Serialises reconnects, so a burst of calls after a break opens one connection.
    reconnect: tokio::sync::Mutex<()>,
    /// The table's columns: only these are written.
    columns: BTreeSet<String>,
}

impl std::fmt::Debug for PostgresApps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresApps").field("table", &self.table).finish_non_exhaustive()
    }
}

fn unavailable(what: &str, error: &tokio_postgres::Error) -> PluginError {
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

impl PostgresApps {
    /// Connect, create the table if it does not exist (the reference's layout), and add the
    /// rotation columns if they are missing. Any failure is a start-up error: a server that
    /// cannot reach its apps must not start as if it had none.
    pub async fn connect(config: SqlConfig) -> Result<Self, PluginError> {
        let table = config.table().to_string();
        let client = open(&config).await?;
        let timeout = config.timeout();
        let create = format!(
            r#"CREATE TABLE IF NOT EXISTS "{table}" (
                id VARCHAR(255) PRIMARY KEY,
                key VARCHAR(255) UNIQUE NOT NULL,
                secret VARCHAR(255) NOT NULL,
                max_connections INTEGER NOT NULL DEFAULT 0,
                enable_client_messages BOOLEAN NOT NULL DEFAULT FALSE,
                enabled BOOLEAN NOT NULL DEFAULT TRUE,
                max_backend_events_per_second INTEGER,
                max_client_events_per_second INTEGER NOT NULL DEFAULT 10,
                max_read_requests_per_second INTEGER,
                max_presence_members_per_channel INTEGER,
                max_presence_member_size_in_kb INTEGER,
                max_channel_name_length INTEGER,
                max_event_channels_at_once INTEGER,
                max_event_name_length INTEGER,
                max_event_payload_in_kb INTEGER,
                max_event_batch_size INTEGER,
                enable_user_authentication BOOLEAN,
                enable_watchlist_events BOOLEAN,
                webhooks JSONB,
                allowed_origins JSONB,
                channel_delta_compression JSONB,
                created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
            )"#
        );
        // Nodes starting together would race on the catalog (`IF NOT EXISTS` is not atomic
        // in PostgreSQL): one transaction under an advisory lock per table makes them take turns.
        let mut script =
            format!("BEGIN; SELECT pg_advisory_xact_lock(hashtext('sockhost:{table}')); {create};");
        for (column, kind) in ROTATION_COLUMNS {
            script.push_str(&format!(
                r#" ALTER TABLE "{table}" ADD COLUMN IF NOT EXISTS {column} {kind};"#
            ));
        }
        script.push_str(&format!(
            r#" ALTER TABLE "{table}" ADD COLUMN IF NOT EXISTS {VERSION_COLUMN} BIGINT NOT NULL DEFAULT 0;"#
        ));
        script.push_str(" COMMIT;");
        within(timeout, client.batch_execute(&script))
            .await?
            .map_err(|e| PluginError::config(format!("preparing table {table}: {e}")))?;
        let rows = within(
            timeout,
            client.query(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_name = $1 AND table_schema = current_schema()",
                &[&table],
            ),
        )
        .await?
        .map_err(|e| unavailable("reading the table's columns", &e))?;
        let columns = rows.iter().map(|row| row.get::<_, String>(0)).collect();
        Ok(Self {
            config,
            table,
            client: RwLock::new(Some(Arc::new(client))),
            reconnect: tokio::sync::Mutex::new(()),
            columns,
        })
    }

    /// The connection, reopened if it broke.
    async fn client(&self) -> Result<Arc<Client>, PluginError> {
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

    async fn rows(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, PluginError> {
        let client = self.client().await?;
        within(self.config.timeout(), client.query(statement, params))
            .await?
            .map_err(|e| unavailable("query", &e))
    }

    async fn execute(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, PluginError> {
        let client = self.client().await?;
        within(self.config.timeout(), client.execute(statement, params))
            .await?
            .map_err(|e| unavailable("statement", &e))
    }

    async fn find(&self, column: &str, value: &str) -> Result<Option<String>, PluginError> {
        let table = &self.table;
        let statement = format!(
            r#"SELECT row_to_json(t)::text FROM "{table}" t WHERE t.{column} = $1 LIMIT 1"#
        );
        let client = self.client().await?;
        match within(self.config.timeout(), client.query(&statement, &[&value])).await? {
            Ok(rows) => Ok(rows.first().map(|row| row.get::<_, String>(0))),
            // Class 22 (data exception: a NUL byte is 22021, a bad encoding 22P05, ...) is the
            // value's fault: no row can hold it, so no app has it. Taking it for an outage
            // would let anyone raise the outage signal with one odd byte.
            Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => Ok(None),
            Err(e) => Err(unavailable("query", &e)),
        }
    }

    /// Whether a row with this id exists.
    async fn exists(&self, id: &str) -> Result<bool, PluginError> {
        let statement = format!(r#"SELECT 1 FROM "{}" WHERE id = $1"#, self.table);
        Ok(!self.rows(&statement, &[&id]).await?.is_empty())
    }

    /// `SET` assignments for `columns` from the record `r`, the version bumped, and the
    /// update time when the table keeps one.
    fn assignments(&self, columns: &[String]) -> String {
        let mut set: Vec<String> = columns.iter().map(|c| format!("{c} = r.{c}")).collect();
        if self.columns.contains(VERSION_COLUMN) {
            set.push(format!("{VERSION_COLUMN} = t.{VERSION_COLUMN} + 1"));
        }
        if self.columns.contains("updated_at") {
            set.push("updated_at = now()".into());
        }
        set.join(", ")
    }

    /// The record's fields that are columns of the table, quoted: not `id` (the key of the
    /// row), nor the timestamps the database keeps.
    fn writable(&self, record: &Map<String, Value>) -> Vec<String> {
        written(record, |k| self.columns.contains(k)).map(|(k, _)| format!(r#""{k}""#)).collect()
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

impl AppManagerDriver for PostgresApps {
    async fn find_by_id(&self, id: &str) -> Result<Option<String>, PluginError> {
        self.find("id", id).await
    }

    async fn find_by_key(&self, key: &str) -> Result<Option<String>, PluginError> {
        self.find("key", key).await
    }

    async fn list(&self, after: &str, limit: u32) -> Result<Vec<String>, PluginError> {
        let table = &self.table;
        let statement = format!(
            r#"SELECT row_to_json(t)::text FROM "{table}" t WHERE t.id > $1 ORDER BY t.id LIMIT $2"#
        );
        let rows = self.rows(&statement, &[&after, &i64::from(limit)]).await?;
        Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
    }

    async fn create(&self, app: &str) -> Result<(), PluginError> {
        let (record, _) = record(app)?;
        let mut columns = self.writable(&record);
        columns.push(r#""id""#.into());
        let columns = columns.join(", ");
        let table = &self.table;
        let statement = format!(
            r#"INSERT INTO "{table}" ({columns}) SELECT {columns} FROM json_populate_record(NULL::"{table}", $1::text::json)"#
        );
        self.execute(&statement, &[&app]).await.map(|_| ())
    }

    async fn update(&self, app: &str) -> Result<bool, PluginError> {
        let (record, id) = record(app)?;
        let columns = self.writable(&record);
        if columns.is_empty() {
            return self.exists(&id).await;
        }
        let table = &self.table;
        let set = self.assignments(&columns);
        // The version is bumped here too, so a conditional write that read the row before
        // this one does not overwrite it.
        let statement = format!(
            r#"UPDATE "{table}" AS t SET {set} FROM json_populate_record(NULL::"{table}", $1::text::json) AS r WHERE t.id = $2"#
        );
        Ok(self.execute(&statement, &[&app, &id]).await? > 0)
    }

    async fn update_if(&self, changes: &str, expected: u64) -> Result<UpdateOutcome, PluginError> {
        if !self.columns.contains(VERSION_COLUMN) {
            return Ok(UpdateOutcome::Unsupported);
        }
        let (record, id) = record(changes)?;
        let expected = i64::try_from(expected).unwrap_or(i64::MAX);
        let columns = self.writable(&record);
        let table = &self.table;
        let set = self.assignments(&columns);
        // One statement: PostgreSQL re-checks the WHERE on the row as the concurrent writer
        // left it, so of two writers that read the same version only one matches.
        let statement = format!(
            r#"UPDATE "{table}" AS t SET {set} FROM json_populate_record(NULL::"{table}", $1::text::json) AS r WHERE t.id = $2 AND t.{VERSION_COLUMN} = $3"#
        );
        if self.execute(&statement, &[&changes, &id, &expected]).await? > 0 {
            return Ok(UpdateOutcome::Updated);
        }
        Ok(if self.exists(&id).await? { UpdateOutcome::Conflict } else { UpdateOutcome::NotFound })
    }

    async fn delete(&self, id: &str) -> Result<bool, PluginError> {
        let statement = format!(r#"DELETE FROM "{}" WHERE id = $1"#, self.table);
        Ok(self.execute(&statement, &[&id]).await? > 0)
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.rows("SELECT 1", &[]).await.map(|_| ())
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        self.client.write().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        Ok(())
    }
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

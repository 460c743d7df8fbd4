//! The `postgres` app manager.

use std::collections::BTreeSet;

use crate::{
    config::SqlConfig,
    pg::{Pg, unavailable},
    record::{ROTATION_COLUMNS, VERSION_COLUMN, within, written},
};
use serde_json::{Map, Value};
use sockhost_plugin_api::{
    PluginError,
    sdk::{AppManagerDriver, UpdateOutcome, apps::record},
};

/// Apps in a PostgreSQL table.
pub struct PostgresApps {
    pg: Pg,
    table: String,
    /// The table's columns: only these are written.
    columns: BTreeSet<String>,
}

impl std::fmt::Debug for PostgresApps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresApps").field("table", &self.table).finish_non_exhaustive()
    }
}

impl PostgresApps {
    /// Connect, create the table if it does not exist (the reference's layout), and add the
    /// rotation columns if they are missing. Any failure is a start-up error: a server that
    /// cannot reach its apps must not start as if it had none.
    pub async fn connect(config: SqlConfig) -> Result<Self, PluginError> {
        let table = config.table().to_string();
        let pg = Pg::connect(config).await?;
        let client = pg.client().await?;
        let timeout = pg.timeout();
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
        Ok(Self { pg, table, columns })
    }

    async fn find(&self, column: &str, value: &str) -> Result<Option<String>, PluginError> {
        let table = &self.table;
        let statement = format!(
            r#"SELECT row_to_json(t)::text FROM "{table}" t WHERE t.{column} = $1 LIMIT 1"#
        );
        let client = self.pg.client().await?;
        match within(self.pg.timeout(), client.query(&statement, &[&value])).await? {
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
        Ok(!self.pg.rows(&statement, &[&id]).await?.is_empty())
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
        let rows = self.pg.rows(&statement, &[&after, &i64::from(limit)]).await?;
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
        self.pg.execute(&statement, &[&app]).await.map(|_| ())
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
        Ok(self.pg.execute(&statement, &[&app, &id]).await? > 0)
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
        if self.pg.execute(&statement, &[&changes, &id, &expected]).await? > 0 {
            return Ok(UpdateOutcome::Updated);
        }
        Ok(if self.exists(&id).await? { UpdateOutcome::Conflict } else { UpdateOutcome::NotFound })
    }

    async fn delete(&self, id: &str) -> Result<bool, PluginError> {
        let statement = format!(r#"DELETE FROM "{}" WHERE id = $1"#, self.table);
        Ok(self.pg.execute(&statement, &[&id]).await? > 0)
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.pg.rows("SELECT 1", &[]).await.map(|_| ())
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        self.pg.close();
        Ok(())
    }
}

//! The `mysql` app manager (MySQL and MariaDB).
//!
//! MySQL has no `row_to_json` that keeps JSON columns nested and booleans boolean, so rows are
//! converted here, by the column types read at start: `TINYINT(1)` is a boolean, `JSON` columns
//! (MariaDB stores them as `LONGTEXT`, so also the reference's JSON fields by name) are nested.

use std::collections::BTreeMap;

use mysql_async::{
    Conn, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Row, Value as Sql,
    prelude::Queryable,
};
use serde_json::{Map, Value};
use sockhost_plugin_api::{
    PluginError,
    sdk::{AppManagerDriver, UpdateOutcome, apps::record},
};

use crate::{
    config::SqlConfig,
    record::{ROTATION_COLUMNS, VERSION_COLUMN, within, written},
};

/// The reference's JSON fields: nested even where the column is text.
const JSON_FIELDS: [&str; 4] =
    ["webhooks", "allowed_origins", "channel_delta_compression", "policy"];

/// How a column's values become JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Bool,
    Json,
    Plain,
}

/// Apps in a MySQL or MariaDB table.
pub struct MysqlApps {
    pool: Pool,
    config: SqlConfig,
    table: String,
    columns: BTreeMap<String, Kind>,
}

impl std::fmt::Debug for MysqlApps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlApps").field("table", &self.table).finish_non_exhaustive()
    }
}

fn failed(what: &str, error: &mysql_async::Error) -> PluginError {
    match error {
        // ER_DUP_ENTRY
        mysql_async::Error::Server(server) if server.code == 1062 => {
            PluginError::rejected("an app with this id or key exists")
        }
        mysql_async::Error::Server(server) if transient(server.code) => {
            PluginError::unavailable(format!("{what}: {} ({})", server.message, server.code))
        }
        mysql_async::Error::Server(server) => {
            PluginError::rejected(format!("{what}: {} ({})", server.message, server.code))
        }
        other => PluginError::unavailable(format!("{what}: {other}")),
    }
}

/// Whether a server error says "not now" rather than "never": too many connections (1040),
/// shutting down (1053), a lock wait timeout (1205), a deadlock (1213), a query or connection
/// killed (1317, 1927), read-only for now (1290, 1836). Those are worth retrying (503); the
/// rest refuse the write itself (409).
fn transient(code: u16) -> bool {
    matches!(code, 1040 | 1053 | 1205 | 1213 | 1290 | 1317 | 1836 | 1927)
}

impl MysqlApps {
    /// Connect, create the table if it does not exist (the reference's layout), add the
    /// rotation columns if they are missing, and read the column types. Any failure is a
    /// start-up error.
    pub async fn connect(config: SqlConfig) -> Result<Self, PluginError> {
        let db = &config.database;
        let opts = OptsBuilder::default()
            .ip_or_hostname(db.host.clone().unwrap_or_else(|| "127.0.0.1".into()))
            .tcp_port(db.port.unwrap_or(3306))
            .user(Some(db.username.clone().unwrap_or_else(|| "root".into())))
            .pass(db.password.clone())
            .db_name(Some(db.database.clone().unwrap_or_else(|| "sockudo".into())))
            .pool_opts(
                PoolOpts::default().with_constraints(
                    PoolConstraints::new(
                        0,
                        usize::try_from(db.connection_pool_size.unwrap_or(4)).unwrap_or(4).max(1),
                    )
                    .expect("0 <= max"),
                ),
            );
        let pool = Pool::new(Opts::from(opts));
        let table = config.table().to_string();
        let timeout = config.timeout();
        let mut conn = within(timeout, pool.get_conn())
            .await?
            .map_err(|e| PluginError::config(format!("connecting to MySQL: {e}")))?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS `{table}` (
                id VARCHAR(255) PRIMARY KEY,
                `key` VARCHAR(255) UNIQUE NOT NULL,
                secret VARCHAR(255) NOT NULL,
                max_connections INT NOT NULL DEFAULT 0,
                enable_client_messages BOOLEAN NOT NULL DEFAULT FALSE,
                enabled BOOLEAN NOT NULL DEFAULT TRUE,
                max_backend_events_per_second INT NULL,
                max_client_events_per_second INT NOT NULL DEFAULT 10,
                max_read_requests_per_second INT NULL,
                max_presence_members_per_channel INT NULL,
                max_presence_member_size_in_kb INT NULL,
                max_channel_name_length INT NULL,
                max_event_channels_at_once INT NULL,
                max_event_name_length INT NULL,
                max_event_payload_in_kb INT NULL,
                max_event_batch_size INT NULL,
                enable_user_authentication BOOLEAN NULL,
                enable_watchlist_events BOOLEAN NULL,
                webhooks JSON NULL,
                allowed_origins JSON NULL,
                channel_delta_compression JSON NULL,
                created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
            )"
        );
        within(timeout, conn.query_drop(create))
            .await?
            .map_err(|e| PluginError::config(format!("preparing table {table}: {e}")))?;
        let mut columns = read_columns(&mut conn, &table, timeout).await?;
        // MySQL (unlike MariaDB) has no ADD COLUMN IF NOT EXISTS: add what the columns lack.
        let added = ROTATION_COLUMNS
            .into_iter()
            .map(|(column, kind)| {
                (column, if kind == "BIGINT" { "BIGINT NULL" } else { "VARCHAR(255) NULL" })
            })
            .chain([(VERSION_COLUMN, "BIGINT NOT NULL DEFAULT 0")]);
        for (column, kind) in added {
            if !columns.contains_key(column) {
                let added = within(
                    timeout,
                    conn.query_drop(format!("ALTER TABLE `{table}` ADD COLUMN {column} {kind}")),
                )
                .await?;
                match added {
                    // ER_DUP_FIELDNAME: a node starting at the same time added it first.
                    Err(mysql_async::Error::Server(e)) if e.code == 1060 => {}
                    other => other.map_err(|e| {
                        PluginError::config(format!("adding {column} to {table}: {e}"))
                    })?,
                }
            }
        }
        columns = read_columns(&mut conn, &table, timeout).await?;
        drop(conn);
        Ok(Self { pool, config, table, columns })
    }

    async fn conn(&self) -> Result<Conn, PluginError> {
        within(self.config.timeout(), self.pool.get_conn())
            .await?
            .map_err(|e| failed("connecting to MySQL", &e))
    }

    async fn rows(&self, statement: String, params: Vec<Sql>) -> Result<Vec<String>, PluginError> {
        let mut conn = self.conn().await?;
        let rows: Vec<Row> =
            within(self.config.timeout(), conn.exec(statement, Params::Positional(params)))
                .await?
                .map_err(|e| failed("query", &e))?;
        Ok(rows.into_iter().map(|row| self.to_json(row).to_string()).collect())
    }

    async fn execute(&self, statement: String, params: Vec<Sql>) -> Result<u64, PluginError> {
        let mut conn = self.conn().await?;
        within(self.config.timeout(), conn.exec_drop(statement, Params::Positional(params)))
            .await?
            .map_err(|e| failed("statement", &e))?;
        Ok(conn.affected_rows())
    }

    /// A row as the JSON record the host reads.
    fn to_json(&self, row: Row) -> Value {
        let names: Vec<String> =
            row.columns_ref().iter().map(|c| c.name_str().into_owned()).collect();
        let mut object = Map::new();
        for (name, value) in names.into_iter().zip(row.unwrap()) {
            let kind = self.columns.get(&name).copied().unwrap_or(Kind::Plain);
            object.insert(name, from_sql(value, kind));
        }
        Value::Object(object)
    }

    /// The record's fields that are columns (not `id` nor the timestamps), with their values.
    fn writable(&self, record: &Map<String, Value>) -> Vec<(String, Sql)> {
        written(record, |k| self.columns.contains_key(k))
            .map(|(k, v)| (format!("`{k}`"), to_sql(v)))
            .collect()
    }

    fn select(&self) -> String {
        format!("SELECT * FROM `{}`", self.table)
    }

    /// A lookup by `column`: a value the column cannot hold (MySQL's "incorrect string value",
    /// 1366, for bytes outside its character set) is no app rather than an outage, so one odd
    /// byte cannot raise the outage signal.
    async fn find(&self, column: &str, value: &str) -> Result<Option<String>, PluginError> {
        let statement = format!("{} WHERE {column} = ? LIMIT 1", self.select());
        match self.rows(statement, vec![value.into()]).await {
            Err(e) if e.message().contains("(1366)") || e.message().contains("(1267)") => Ok(None),
            found => Ok(found?.pop()),
        }
    }

    /// `SET` assignments for `columns`, the version bumped when the table has one.
    fn assignments(&self, columns: &[String]) -> String {
        let mut set: Vec<String> = columns.iter().map(|c| format!("{c} = ?")).collect();
        if self.columns.contains_key(VERSION_COLUMN) {
            set.push(format!("{VERSION_COLUMN} = {VERSION_COLUMN} + 1"));
        }
        set.join(", ")
    }

    async fn exists(&self, id: &str) -> Result<bool, PluginError> {
        let statement = format!("SELECT id FROM `{}` WHERE id = ?", self.table);
        Ok(!self.rows(statement, vec![id.into()]).await?.is_empty())
    }
}

async fn read_columns(
    conn: &mut Conn,
    table: &str,
    timeout: std::time::Duration,
) -> Result<BTreeMap<String, Kind>, PluginError> {
    let rows: Vec<(String, String, String)> = within(
        timeout,
        conn.exec(
            "SELECT COLUMN_NAME, LOWER(COLUMN_TYPE), LOWER(DATA_TYPE) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (table,),
        ),
    )
    .await?
    .map_err(|e| failed("reading the table's columns", &e))?;
    Ok(rows
        .into_iter()
        .map(|(name, column_type, data_type)| {
            let kind = if column_type.starts_with("tinyint(1)") {
                Kind::Bool
            } else if data_type == "json" || JSON_FIELDS.contains(&name.as_str()) {
                Kind::Json
            } else {
                Kind::Plain
            };
            (name, kind)
        })
        .collect())
}

fn from_sql(value: Sql, kind: Kind) -> Value {
    match (value, kind) {
        (Sql::NULL, _) => Value::Null,
        (Sql::Int(n), Kind::Bool) => Value::Bool(n != 0),
        (Sql::UInt(n), Kind::Bool) => Value::Bool(n != 0),
        (Sql::Int(n), _) => n.into(),
        (Sql::UInt(n), _) => n.into(),
        (Sql::Float(n), _) => f64::from(n).into(),
        (Sql::Double(n), _) => n.into(),
        (Sql::Bytes(bytes), Kind::Json) => serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into()),
        (Sql::Bytes(bytes), Kind::Bool) => Value::Bool(bytes.as_slice() != b"0"),
        (Sql::Bytes(bytes), Kind::Plain) => String::from_utf8_lossy(&bytes).into(),
        (date @ (Sql::Date(..) | Sql::Time(..)), _) => date.as_sql(true).trim_matches('\'').into(),
    }
}

fn to_sql(value: &Value) -> Sql {
    match value {
        Value::Null => Sql::NULL,
        Value::Bool(b) => Sql::Int(i64::from(*b)),
        Value::Number(n) => {
            n.as_i64().map_or_else(|| Sql::Double(n.as_f64().unwrap_or(0.0)), Sql::Int)
        }
        Value::String(s) => Sql::Bytes(s.clone().into_bytes()),
        other => Sql::Bytes(other.to_string().into_bytes()),
    }
}

impl AppManagerDriver for MysqlApps {
    async fn find_by_id(&self, id: &str) -> Result<Option<String>, PluginError> {
        self.find("id", id).await
    }

    async fn find_by_key(&self, key: &str) -> Result<Option<String>, PluginError> {
        self.find("`key`", key).await
    }

    async fn list(&self, after: &str, limit: u32) -> Result<Vec<String>, PluginError> {
        let statement = format!("{} WHERE id > ? ORDER BY id LIMIT ?", self.select());
        self.rows(statement, vec![after.into(), limit.into()]).await
    }

    async fn create(&self, app: &str) -> Result<(), PluginError> {
        let (record, id) = record(app)?;
        let mut fields = self.writable(&record);
        fields.push(("id".into(), id.into()));
        let (columns, values): (Vec<String>, Vec<Sql>) = fields.into_iter().unzip();
        let marks = vec!["?"; columns.len()].join(", ");
        let statement =
            format!("INSERT INTO `{}` ({}) VALUES ({marks})", self.table, columns.join(", "));
        self.execute(statement, values).await.map(|_| ())
    }

    async fn update(&self, app: &str) -> Result<bool, PluginError> {
        let (record, id) = record(app)?;
        let fields = self.writable(&record);
        if fields.is_empty() {
            return self.exists(&id).await;
        }
        let (columns, mut values): (Vec<String>, Vec<Sql>) = fields.into_iter().unzip();
        values.push(id.clone().into());
        // The version is bumped here too, so a conditional write that read the row before
        // this one does not overwrite it.
        let set = self.assignments(&columns);
        let statement = format!("UPDATE `{}` SET {set} WHERE id = ?", self.table);
        // MySQL counts only rows it changed: an update to the same values is 0 rows, not absent.
        if self.execute(statement, values).await? > 0 {
            return Ok(true);
        }
        self.exists(&id).await
    }

    async fn update_if(&self, changes: &str, expected: u64) -> Result<UpdateOutcome, PluginError> {
        if !self.columns.contains_key(VERSION_COLUMN) {
            return Ok(UpdateOutcome::Unsupported);
        }
        let (record, id) = record(changes)?;
        let (columns, mut values): (Vec<String>, Vec<Sql>) =
            self.writable(&record).into_iter().unzip();
        values.push(id.clone().into());
        values.push(expected.into());
        // InnoDB locks the row and checks the version on its latest state, so of two writers
        // that read the same version only one matches; the bump makes the count 1 even when
        // every other value is unchanged.
        let set = self.assignments(&columns);
        let statement =
            format!("UPDATE `{}` SET {set} WHERE id = ? AND {VERSION_COLUMN} = ?", self.table);
        if self.execute(statement, values).await? > 0 {
            return Ok(UpdateOutcome::Updated);
        }
        Ok(if self.exists(&id).await? { UpdateOutcome::Conflict } else { UpdateOutcome::NotFound })
    }

    async fn delete(&self, id: &str) -> Result<bool, PluginError> {
        let statement = format!("DELETE FROM `{}` WHERE id = ?", self.table);
        Ok(self.execute(statement, vec![id.into()]).await? > 0)
    }

    async fn health(&self) -> Result<(), PluginError> {
        let mut conn = self.conn().await?;
        within(self.config.timeout(), conn.query_drop("SELECT 1"))
            .await?
            .map_err(|e| failed("health", &e))
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        self.pool.clone().disconnect().await.map_err(|e| failed("closing the pool", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::transient;

    #[test]
    fn passing_failures_are_told_from_refusals() {
        for code in [1040, 1205, 1213, 1927] {
            assert!(transient(code), "{code}");
        }
        for code in [1062, 1264, 1406, 1048, 1146] {
            assert!(!transient(code), "{code}");
        }
    }
}

//! The `postgres` history store: long retention in two tables, `<prefix>_streams` (a
//! channel's stream id and last serial) and `<prefix>_events` (its events by serial).
//!
//! An append is one statement: the stream's row is created or its serial raised (the row lock
//! orders appends to one channel, on every node), and the event is inserted with the serial
//! that statement returns, so the serial and the append are one step. Bounds: reads answer no
//! more than `max_events` back from the head and nothing older than `max_age_ms`; rows past
//! either are deleted every [`TRIM_EVERY`] appends of a channel and by a sweep every minute
//! (streams unused for twice the age go whole).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use sockhost_plugin_api::{
    Appended, MAX_RECORD_BYTES, Page, PluginError, Retention, Stored,
    abi::{RString, RVec},
    sdk::{self, HistoryDriver},
};

use crate::{config::SqlConfig, pg::Pg, record::within};

/// Appends of one channel between deletions of its rows past the bounds.
const TRIM_EVERY: i64 = 32;
/// How often the sweep deletes what no stream keeps any more.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The most events one read answers, whatever the host asks.
const MAX_READ: u32 = 10_000;

/// A history store in PostgreSQL.
pub struct PostgresHistory {
    pg: Arc<Pg>,
    streams: String,
    events: String,
    /// The retention of the last call, for the sweep.
    retention: Arc<Mutex<Option<Retention>>>,
}

impl std::fmt::Debug for PostgresHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresHistory").field("streams", &self.streams).finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    int(sdk::unix_ms())
}

/// A count or time from the host as a database integer.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A serial or time read back (never negative in rows this driver wrote).
fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl PostgresHistory {
    /// Connect, create the tables if they do not exist, and start the sweep on the plugin's
    /// runtime. Any failure is a start-up error.
    pub async fn connect(config: SqlConfig) -> Result<Self, PluginError> {
        let prefix = config.table_prefix().to_string();
        let (streams, events) = (format!("{prefix}_streams"), format!("{prefix}_events"));
        let pg = Arc::new(Pg::connect(config).await?);
        let client = pg.client().await?;
        // Nodes starting together take turns (`IF NOT EXISTS` is not atomic in PostgreSQL).
        let script = format!(
            r#"BEGIN; SELECT pg_advisory_xact_lock(hashtext('sockhost:{prefix}'));
            CREATE TABLE IF NOT EXISTS "{streams}" (
                app TEXT NOT NULL, channel TEXT NOT NULL, stream_id TEXT NOT NULL,
                head BIGINT NOT NULL, used_at_ms BIGINT NOT NULL,
                PRIMARY KEY (app, channel));
            CREATE TABLE IF NOT EXISTS "{events}" (
                app TEXT NOT NULL, channel TEXT NOT NULL, stream_id TEXT NOT NULL,
                serial BIGINT NOT NULL, at_ms BIGINT NOT NULL, record BYTEA NOT NULL,
                PRIMARY KEY (app, channel, stream_id, serial));
            CREATE INDEX IF NOT EXISTS "{events}_at" ON "{events}" (at_ms);
            COMMIT;"#
        );
        within(pg.timeout(), client.batch_execute(&script)).await?.map_err(|e| {
            PluginError::config(format!("preparing tables {streams}, {events}: {e}"))
        })?;
        let history = Self { pg, streams, events, retention: Arc::default() };
        history.start_sweep();
        Ok(history)
    }

    /// Every minute, delete the events older than the last retention seen and the streams
    /// unused for twice as long, until the store is dropped.
    fn start_sweep(&self) {
        let (pg, retention) = (Arc::downgrade(&self.pg), Arc::downgrade(&self.retention));
        let (streams, events) = (self.streams.clone(), self.events.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let (Some(pg), Some(retention)) = (pg.upgrade(), retention.upgrade()) else {
                    return;
                };
                let Some(kept) = *retention.lock().unwrap_or_else(|e| e.into_inner()) else {
                    continue;
                };
                let oldest = now_ms().saturating_sub(int(kept.max_age_ms));
                let unused = now_ms().saturating_sub(int(kept.max_age_ms).saturating_mul(2));
                let statements = [
                    (format!(r#"DELETE FROM "{events}" WHERE at_ms < $1"#), oldest),
                    (format!(r#"DELETE FROM "{streams}" WHERE used_at_ms < $1"#), unused),
                ];
                for (statement, bound) in statements {
                    if let Err(error) = pg.execute(&statement, &[&bound]).await {
                        tracing::warn!(%error, "The history sweep failed; it runs again in a minute.");
                    }
                }
            }
        });
    }

    fn remember(&self, retention: Retention) {
        *self.retention.lock().unwrap_or_else(|e| e.into_inner()) = Some(retention);
    }
}

impl HistoryDriver for PostgresHistory {
    async fn append(
        &self,
        app: &str,
        channel: &str,
        records: Vec<Vec<u8>>,
        retention: Retention,
    ) -> Result<Appended, PluginError> {
        self.remember(retention);
        let (streams, events) = (&self.streams, &self.events);
        // The stream's serial raised by the batch's size, and each record inserted with its
        // place in the batch (`WITH ORDINALITY` keeps the order given).
        let statement = format!(
            r#"WITH s AS (
                INSERT INTO "{streams}" (app, channel, stream_id, head, used_at_ms)
                VALUES ($1, $2, $3, $6, $4)
                ON CONFLICT (app, channel)
                DO UPDATE SET head = "{streams}".head + $6, used_at_ms = $4
                RETURNING stream_id, head)
            INSERT INTO "{events}" (app, channel, stream_id, serial, at_ms, record)
            SELECT $1, $2, s.stream_id, s.head - $6 + r.n, $4, r.record
            FROM s, unnest($5::bytea[]) WITH ORDINALITY AS r(record, n)
            RETURNING stream_id, serial"#
        );
        let fresh = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let count = i64::try_from(records.len()).unwrap_or(i64::MAX);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&app, &channel, &fresh, &now, &records, &count];
        let rows = self.pg.rows(&statement, &params).await?;
        let serials = rows.iter().map(|row| row.get::<_, i64>(1));
        let (first, last) = (serials.clone().min(), serials.max());
        let (Some(first), Some(last)) = (first, last) else {
            return Err(PluginError::unavailable("the append answered no row"));
        };
        let stream_id: String = rows[0].get(0);
        // Trimmed when the batch crossed a multiple of TRIM_EVERY.
        if first.saturating_sub(1) / TRIM_EVERY != last / TRIM_EVERY {
            let trim = format!(
                r#"DELETE FROM "{events}" WHERE app = $1 AND channel = $2
                   AND (stream_id <> $3 OR serial <= $4 OR at_ms < $5)"#
            );
            let below = last.saturating_sub(int(retention.max_events));
            let oldest = now.saturating_sub(int(retention.max_age_ms));
            self.pg.execute(&trim, &[&app, &channel, &stream_id, &below, &oldest]).await?;
        }
        Ok(Appended { stream_id: RString::from(stream_id), serial: uint(first) })
    }

    async fn read(
        &self,
        app: &str,
        channel: &str,
        after: u64,
        limit: u32,
        retention: Retention,
    ) -> Result<Page, PluginError> {
        self.remember(retention);
        let (streams, events) = (&self.streams, &self.events);
        // Started if missing, so that its id can be handed out before its first event.
        let start = format!(
            r#"INSERT INTO "{streams}" (app, channel, stream_id, head, used_at_ms)
               VALUES ($1, $2, $3, 0, $4) ON CONFLICT (app, channel) DO NOTHING"#
        );
        let now = now_ms();
        let fresh = uuid::Uuid::new_v4().to_string();
        self.pg.execute(&start, &[&app, &channel, &fresh, &now]).await?;
        let head =
            format!(r#"SELECT stream_id, head FROM "{streams}" WHERE app = $1 AND channel = $2"#);
        let rows = self.pg.rows(&head, &[&app, &channel]).await?;
        let row = rows
            .first()
            .ok_or_else(|| PluginError::unavailable("the stream was removed meanwhile"))?;
        let (stream_id, head): (String, i64) = (row.get(0), row.get(1));
        let mut kept = RVec::new();
        let limit = limit.min(MAX_READ);
        if limit > 0 {
            let select = format!(
                r#"SELECT serial, at_ms,
                     CASE WHEN octet_length(record) <= $9::int8 THEN record ELSE ''::bytea END
                   FROM "{events}"
                   WHERE app = $1 AND channel = $2 AND stream_id = $3
                   AND serial > $4 AND serial > $5 AND serial <= $6 AND at_ms >= $7
                   ORDER BY serial LIMIT $8"#
            );
            let floor = head.saturating_sub(int(retention.max_events));
            let oldest = now.saturating_sub(int(retention.max_age_ms));
            // The largest record answered; a larger one (another writer's) comes back empty.
            let largest = i64::try_from(MAX_RECORD_BYTES).unwrap_or(i64::MAX);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
                &app,
                &channel,
                &stream_id,
                &int(after),
                &floor,
                &head,
                &oldest,
                &i64::from(limit),
                &largest,
            ];
            for row in self.pg.rows(&select, &params).await? {
                let (serial, at_ms, record): (i64, i64, Vec<u8>) =
                    (row.get(0), row.get(1), row.get(2));
                // A hole (an event deleted by age between two kept ones) ends the page.
                let expected = kept.last().map(|e: &Stored| e.serial + 1);
                if expected.is_some_and(|e| e != uint(serial)) {
                    kept.clear();
                }
                kept.push(Stored {
                    serial: uint(serial),
                    at_ms: uint(at_ms),
                    record: RVec::from(record),
                });
            }
        }
        Ok(Page { stream_id: RString::from(stream_id), head: uint(head), events: kept })
    }

    async fn reset(&self, app: &str, channel: &str) -> Result<(), PluginError> {
        for table in [&self.events, &self.streams] {
            let statement = format!(r#"DELETE FROM "{table}" WHERE app = $1 AND channel = $2"#);
            self.pg.execute(&statement, &[&app, &channel]).await?;
        }
        Ok(())
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.pg.rows("SELECT 1", &[]).await.map(|_| ())
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        self.pg.close();
        Ok(())
    }
}

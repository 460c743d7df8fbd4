//! What both SQL drivers share: the rotation columns, statement deadlines, the fields written.

use std::time::Duration;

use serde_json::{Map, Value};
use sockhost_plugin_api::PluginError;

/// The columns this server adds to the reference's table when they are missing: the previous
/// secret of a rotation and when it stops signing (Unix milliseconds).
pub const ROTATION_COLUMNS: [(&str, &str); 2] =
    [("previous_secret", "VARCHAR(255)"), ("previous_secret_expires_at", "BIGINT")];

/// The column this server adds for conditional writes: bumped by every write, compared by
/// `update_if`, so two admin requests that read the same row cannot both write it. Rows that
/// existed before the column was added start at 0.
pub const VERSION_COLUMN: &str = "version";

/// `work`, or a timeout error after `limit`.
pub async fn within<F: Future>(limit: Duration, work: F) -> Result<F::Output, PluginError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| PluginError::timeout(format!("the database did not answer within {limit:?}")))
}

/// A record's fields that are written to a table with the columns `has`: not `id` (the key of
/// the row), nor the timestamps and the version the database keeps, nor fields the table has
/// no column for.
pub fn written(
    record: &Map<String, Value>,
    has: impl Fn(&str) -> bool,
) -> impl Iterator<Item = (&String, &Value)> {
    record
        .iter()
        .filter(|(k, _)| !["id", "created_at", "updated_at", VERSION_COLUMN].contains(&k.as_str()))
        .filter(move |(k, _)| has(k))
}

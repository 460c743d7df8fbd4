//! What both SQL drivers share: the host's records, the rotation columns, statement deadlines.

use std::time::Duration;

use serde_json::{Map, Value};
use sockhost_plugin_api::PluginError;

/// The columns this server adds to the reference's table when they are missing: the previous
/// secret of a rotation and when it stops signing (Unix milliseconds).
pub const ROTATION_COLUMNS: [(&str, &str); 2] =
    [("previous_secret", "VARCHAR(255)"), ("previous_secret_expires_at", "BIGINT")];

/// `work`, or a timeout error after `limit`.
pub async fn within<F: Future>(limit: Duration, work: F) -> Result<F::Output, PluginError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| PluginError::timeout(format!("the database did not answer within {limit:?}")))
}

/// A record from the host: a JSON object with a string `id`.
pub fn record(text: &str) -> Result<(Map<String, Value>, String), PluginError> {
    let Ok(Value::Object(record)) = serde_json::from_str::<Value>(text) else {
        return Err(PluginError::rejected("an app record must be a JSON object"));
    };
    let id = record.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    if id.is_empty() {
        return Err(PluginError::rejected("an app record needs a string id"));
    }
    Ok((record, id))
}

//! What app managers share: reading the host's records.

use serde_json::{Map, Value};

use crate::PluginError;

/// A record the host hands to `create` or `update`: a JSON object with a non-empty string
/// `id`; its fields and the id. Anything else is refused (`rejected`).
///
/// # Errors
/// The text is not such an object.
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

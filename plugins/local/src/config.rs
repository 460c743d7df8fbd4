//! Parsing a driver's configuration text.

use serde::de::DeserializeOwned;
use sockhost_plugin_api::PluginError;

/// Parse `text` (a TOML table; empty means all defaults) into the driver's config struct,
/// answering a configuration error that names the offending field.
pub(crate) fn parse<T: DeserializeOwned + Default>(
    driver: &str,
    text: &str,
) -> Result<T, PluginError> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    toml::from_str(text).map_err(|e| {
        let why = e.message().trim_end_matches('.').to_string();
        PluginError::config(format!("{driver} driver configuration: {why}"))
    })
}

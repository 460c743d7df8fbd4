//! A driver's configuration table, as the host passes it to `create`.
//!
//! The host hands a driver its own table (`[adapter.redis]`, `[cache.redis]`, ...) as TOML text,
//! empty when the operator wrote none. The backend's shared connection table
//! (`[database.redis]` for `redis` and `redis-cluster`, `[database.postgres]` for `postgres`:
//! the part of the driver's name before its first `-`) goes along inside it under
//! [`SHARED_TABLE`], unless the driver's own table sets that key. So one set of connection
//! settings serves a server's transport, cache, queue and rate limiter, and a driver reads it as
//! one more field of its config struct:
//!
//! ```
//! # use sockhost_plugin_api::sdk::config;
//! #[derive(Default, serde::Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct MyConfig {
//!     prefix: String,
//!     /// `[database.mine]`, passed along by the host.
//!     database: MyDatabase,
//! }
//! #[derive(Default, serde::Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct MyDatabase {
//!     host: Option<String>,
//! }
//! let config: MyConfig = config::parse("adapter.mine", "prefix = \"p\"\n[database]\nhost = \"db\"").unwrap();
//! assert_eq!(config.database.host.as_deref(), Some("db"));
//! let refused = config::parse::<MyConfig>("adapter.mine", "prefx = 1").err().unwrap();
//! assert!(refused.message.starts_with("adapter.mine: unknown field `prefx`"));
//! ```

use serde::de::DeserializeOwned;

use crate::PluginError;

/// The key under which the host passes the backend's shared connection table.
pub const SHARED_TABLE: &str = "database";

/// A backend URL fit for logs and errors: user and password (everything between the scheme
/// and the last `@`) become `***`; in a malformed URL without `://`, everything before the
/// last `@` does (`amqp:user:secret@host` still holds the secret).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        (None, Some(at)) => format!("***{}", &url[at..]),
        _ => url.to_string(),
    }
}

/// Parse a driver's table into its config struct (empty text: the struct's defaults). An error
/// is a configuration error that begins with `place`, where the table sits in the server's
/// configuration (`adapter.redis`), and names the offending field, so the server's one-line
/// refusal at start says what to fix.
///
/// # Errors
/// The text is not TOML or does not fit `T`.
pub fn parse<T: DeserializeOwned + Default>(place: &str, text: &str) -> Result<T, PluginError> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    toml::from_str(text)
        .map_err(|e| PluginError::config(format!("{place}: {}", e.message().trim_end_matches('.'))))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_are_left_out_of_urls_well_formed_or_not() {
        let cases = [
            ("amqp://guest:secret@host:5672/%2f", "amqp://***@host:5672/%2f"),
            ("redis://:p%40ss@w@h:1/0", "redis://***@h:1/0"),
            ("amqps:user:secret@host/%2f", "***@host/%2f"),
            ("nats://host:4222", "nats://host:4222"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}

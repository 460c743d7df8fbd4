//! `[app_manager.dynamodb]` and the shared `[database.dynamodb]` (the reference's names).

use serde::Deserialize;
use sockhost_plugin_api::{PluginError, sdk};

/// The driver's table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamoConfig {
    /// `[database.dynamodb]`, passed along by the host.
    pub database: Database,
    /// Milliseconds one request may take. Default: 5000.
    pub timeout_ms: Option<u64>,
}

/// `[database.dynamodb]` (env `DATABASE_DYNAMODB_*`, applied by the host).
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    /// Default: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else us-east-1.
    pub region: Option<String>,
    /// Default: sockudo-applications.
    pub table_name: Option<String>,
    /// A DynamoDB-compatible endpoint (a local server); default: AWS's, or
    /// `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// Access key; default: `AWS_ACCESS_KEY_ID`.
    pub aws_access_key_id: Option<String>,
    /// Secret key; default: `AWS_SECRET_ACCESS_KEY`.
    pub aws_secret_access_key: Option<String>,
    /// Accepted for the reference; credentials come from the keys or the environment.
    pub aws_profile_name: Option<String>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret key never reaches a log line.
        f.debug_struct("Database")
            .field("region", &self.region)
            .field("table_name", &self.table_name)
            .field("endpoint_url", &self.endpoint_url)
            .finish_non_exhaustive()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl DynamoConfig {
    /// Parse and check the table.
    pub fn parse(text: &str) -> Result<Self, PluginError> {
        let config: Self = sdk::config::parse("app_manager.dynamodb", text)?;
        let table = config.table();
        let legal = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
        if !(3..=255).contains(&table.len()) || !table.chars().all(legal) {
            return Err(PluginError::config(format!(
                "database.dynamodb.table_name: {table:?} is not a DynamoDB table name"
            )));
        }
        if config.timeout_ms == Some(0) {
            return Err(PluginError::config("app_manager.dynamodb.timeout_ms: must be at least 1"));
        }
        let db = &config.database;
        if db.aws_access_key_id.is_some() != db.aws_secret_access_key.is_some() {
            return Err(PluginError::config(
                "database.dynamodb: aws_access_key_id and aws_secret_access_key go together",
            ));
        }
        Ok(config)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        self.database.table_name.as_deref().unwrap_or("sockudo-applications")
    }

    /// How long one request may take.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.unwrap_or(5000))
    }

    /// The region.
    pub fn region(&self) -> String {
        self.database
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into())
    }

    /// The endpoint, if not AWS's own.
    pub fn endpoint(&self) -> Option<String> {
        self.database
            .endpoint_url
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_DYNAMODB"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
    }

    /// Access key, secret and session token.
    pub fn credentials(&self) -> Result<(String, String, Option<String>), PluginError> {
        let db = &self.database;
        if let (Some(key), Some(secret)) = (&db.aws_access_key_id, &db.aws_secret_access_key) {
            return Ok((key.clone(), secret.clone(), None));
        }
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(key), Some(secret)) => Ok((key, secret, env("AWS_SESSION_TOKEN"))),
            _ => Err(PluginError::config(
                "app_manager.dynamodb: no credentials (set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, or database.dynamodb.aws_access_key_id and \
                 aws_secret_access_key)",
            )),
        }
    }
}

//! What both SQL drivers share: the rotation columns, statement deadlines.

use std::time::Duration;

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

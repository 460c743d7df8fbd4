//! What the AWS plugins (`sqs`, `dynamodb-apps`) share: one reading of an AWS SDK error as the
//! plugin boundary's, whichever service's client answered it.

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use sockhost_plugin_api::PluginError;

/// An SDK error as the boundary's: the service's refusals are REJECTED (with the service's code
/// and message), trouble reaching it is UNAVAILABLE (retried later). `service` and `what` (the
/// operation) open the message: `sqs ListQueues: ...`.
pub fn sdk_error<E, R>(service: &str, what: &str, error: &SdkError<E, R>) -> PluginError
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match error {
        SdkError::ServiceError(refusal) => {
            let e = refusal.err();
            PluginError::rejected(format!(
                "{service} {what}: {} {}",
                e.code().unwrap_or("error"),
                e.message().unwrap_or_default()
            ))
        }
        other => PluginError::unavailable(format!("{service} {what}: {other:?}")),
    }
}

//! The `sqs` plugin: the queue `sqs`, over Amazon SQS or an SQS-compatible server.
//!
//! A job is an SQS message (its payload base64, so any bytes fit); a worker's receive is its
//! lease (the visibility timeout); success deletes the message; a failure makes it visible
//! again after the backoff; after the last attempt, or when the host rejects it, the job moves
//! to the dead-letter queue `<queue>-dead`.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod config;
mod queue;

pub use queue::SqsQueue;

use sockhost_plugin_api::sdk;

sockhost_plugin_api::export_plugin! {
    name: "sqs",
    queue: ["sqs"] => |args| async move {
        let config = config::QueueConfig::parse(&args.config)?;
        let queue = SqsQueue::connect(config, args.host).await?;
        Ok(sdk::queue_box(args.runtime, queue))
    },
}

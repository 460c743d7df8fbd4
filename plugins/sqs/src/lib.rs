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

use sockhost_plugin_api::{
    DriverDecl, DriverKind, HostContextBox, PResult, PluginError, PluginInfo, PluginModule,
    PluginModule_Ref, QueueBox,
    abi::{FfiFuture, PrefixTypeTrait as _, RStr},
    sdk,
};

/// The plugin's name.
pub const PLUGIN: &str = "sqs";

const DRIVERS: &[DriverDecl] = &[DriverDecl::new(DriverKind::QUEUE, "sqs")];

/// The root module the host loads.
#[abi_stable::export_root_module]
pub fn root_module() -> PluginModule_Ref {
    PluginModule { info, transport: None, cache: None, queue: Some(new_queue), rate_limiter: None }
        .leak_into_prefix()
}

extern "C" fn info() -> PluginInfo {
    PluginInfo::new(PLUGIN, env!("CARGO_PKG_VERSION"), DRIVERS)
}

extern "C" fn new_queue(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<QueueBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| async move {
        if args.driver != "sqs" {
            return Err(PluginError::config(format!(
                "plugin sqs provides no queue `{}`",
                args.driver
            )));
        }
        let config = config::QueueConfig::parse(&args.config)?;
        let queue = SqsQueue::connect(config, args.host).await?;
        Ok(sdk::queue_box(args.runtime, queue))
    })
}

//! The `dynamodb-apps` plugin: the app manager `dynamodb`, over the reference's table layout
//! (hash key `id`, a global secondary index `KeyIndex` on `key`), so a server can be pointed
//! at the incumbent's table unchanged.
//!
//! Items keep the app's fields as attributes (strings, numbers, booleans; the JSON fields as
//! lists and maps, or as JSON text, both read). Listing pages through a scan of ids only and
//! answers the page in id order, never one unbounded scan of whole items.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod config;
mod item;
mod manager;

pub use manager::DynamoApps;

use sockhost_plugin_api::sdk;

sockhost_plugin_api::export_plugin! {
    name: "dynamodb-apps",
    app_manager: ["dynamodb"] => |args| async move {
        let config = config::DynamoConfig::parse(&args.config)?;
        let manager = DynamoApps::connect(config).await?;
        Ok(sdk::app_manager_box(args.runtime, manager))
    },
}

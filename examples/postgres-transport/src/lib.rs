//! The `postgres` transport: sockhost nodes talk through PostgreSQL's `LISTEN`/`NOTIFY`.
//!
//! A backend no peer server offers, and one many deployments already run: no broker to add.
//!
//! - Each topic is a notification channel `<prefix>_<hash>` (channel names are identifiers of
//!   at most 63 bytes; topics are longer and hold any character).
//! - Payloads are binary and NOTIFY's are text of under 8000 bytes: each message is base64 in
//!   chunks of at most 7000 characters, `<message id>:<index>/<count>:<chunk>`. A message's
//!   chunks are sent in one transaction, which PostgreSQL delivers whole and in order; the id
//!   also keeps two equal messages in one transaction from being merged into one.
//! - One connection publishes (a writer task sends each batch as one statement); another
//!   listens, and after a lost connection reconnects with backoff and listens again to every
//!   channel.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod chunks;
mod config;
mod transport;

pub use transport::PostgresTransport;

use sockhost_plugin_api::sdk;

sockhost_plugin_api::export_plugin! {
    name: "postgres",
    transport: ["postgres"] => |args| async move {
        let config = config::TransportConfig::parse(&args.config)?;
        let transport = PostgresTransport::connect(config, args.host).await?;
        Ok(sdk::transport_box(args.runtime, transport))
    },
}

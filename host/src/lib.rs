//! sockhost: a Pusher Channels (protocol v7) server whose transports and drivers are plugins.
//!
//! # Layout
//! - [`plugins`]: the plugin boundary: manifest, loader, registry, driver handles. The only
//!   module that knows about FFI types.
//! - [`server`]: the listener, the router and [`run`], the injectable entry point.
//! - [`cli`], [`inspect`], [`telemetry`]: what `main.rs` wires together.

pub mod cli;
pub mod inspect;
pub mod plugins;
pub mod server;
pub mod telemetry;

pub use server::{Settings, run};

//! sockhost: a Pusher Channels (protocol v7) server whose transports and drivers are plugins.
//!
//! # Layout
//! - [`server`]: [`run`], the injectable entry point, and the shared [`server::Ctx`].
//! - [`ws`]: the WebSocket endpoint: one task per connection.
//! - [`http_api`]: the Pusher HTTP API, health and metrics endpoints.
//! - [`protocol`]: the wire format: messages, frames, codes, channel names, signatures.
//! - [`adapter`]: channel state and delivery, local now, cluster-wide behind the same methods.
//! - [`cluster`]: the cluster layer (bus, membership, replicated state), below everything else;
//!   [`cluster_events`] is the node's side of its one interface.
//! - [`hub`]: this node's sockets and subscriptions; the only code that holds sockets.
//! - [`apps`], [`config`]: who may connect, and the validated settings.
//! - [`plugins`]: the plugin boundary; the only module that knows FFI types.
//! - [`metrics`], [`telemetry`], [`cli`], [`inspect`]: operations.

pub mod adapter;
pub mod apps;
pub mod cli;
pub mod cluster;
pub mod cluster_events;
pub mod config;
pub mod delta;
pub mod edge;
pub mod fuzzing;
pub mod http_api;
pub mod hub;
pub mod inspect;
pub mod metrics;
pub mod plugins;
pub mod protocol;
pub mod readiness;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod webhooks;
pub mod ws;

pub use config::Settings;
pub use server::run;

//! sockhost: a Pusher Channels (protocol v7) server whose transports and drivers are plugins.
//!
//! # Layout
//! Public, for the binary, the tests and the fuzz targets: [`run`] (the injectable entry
//! point), [`config`], [`plugins`] (the plugin boundary; the only module that knows FFI
//! types), [`protocol`] (the wire format), [`cluster`] (the layer below everything else),
//! [`delta`], [`cli`], [`inspect`], [`telemetry`], [`fuzzing`] and [`benchmarks`] (entry
//! points into the insides). Private to the crate: `server` (the shared `Ctx`), `ws` (one
//! task per connection), `http_api`, `adapter` (the only road to channel state), `hub` (the
//! only code that holds sockets), `cluster_events` (the node's side of the cluster layer's one
//! interface), `apps`, `admin` (the admin API), `edge`, `tls`, `readiness`, `webhooks`, `metrics`.

// Items of the crate's private modules say `pub(crate)`: what is `pub` is the crate's surface.
#![warn(unreachable_pub)]

pub(crate) mod adapter;
pub(crate) mod address_counts;
pub(crate) mod admin;
pub(crate) mod apps;
pub mod benchmarks;
pub(crate) mod beside;
pub mod cli;
pub(crate) mod cluster;
pub(crate) mod cluster_events;
pub mod config;
pub(crate) mod console;
pub(crate) mod ctx;
pub(crate) mod delta;
pub(crate) mod edge;
pub(crate) mod feed;
pub mod fuzzing;
pub(crate) mod http_api;
pub(crate) mod hub;
pub mod inspect;
pub(crate) mod listen;
pub(crate) mod metrics;
pub mod peer;
pub mod plugins;
pub mod protocol;
pub(crate) mod readiness;
pub(crate) mod server;
pub mod telemetry;
pub(crate) mod tls;
pub(crate) mod webhooks;
pub(crate) mod ws;

pub use config::Settings;
pub use server::run;

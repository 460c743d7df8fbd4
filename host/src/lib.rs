//! sockhost: a Pusher Channels (protocol v7) server whose transports and drivers are plugins.
//!
//! # Layout
//! Public, for the binary, the tests and the fuzz targets: [`run`] (the injectable entry
//! point), [`config`], [`plugins`] (the plugin boundary; the only module that knows FFI
//! types), [`protocol`] (the wire format), [`cli`], [`inspect`], [`telemetry`], and the doors
//! into the insides: [`fuzzing`] (the parsers), [`benchmarks`] and [`peer`] (the bus format, to
//! play a peer node). Everything else is private to the crate, in layers that import only
//! downwards (ARCHITECTURE.md; checked by `tests/tests/architecture.rs`): `server` and
//! `beside` (the listeners) on top; the handlers `ws`, `http_api`, `admin`, `console`; `ctx`,
//! what they share; the services `adapter`, `apps`, `webhooks`, `cluster_events`, `feed`,
//! `edge`, `listen`, `tls`, `readiness`; `metrics`; `hub`, `delta` and `cluster`; then
//! `plugins`, `telemetry`, `address_counts`, and `config` and `protocol` at the bottom.

// Items of the crate's private modules say `pub(crate)`: what is `pub` is the crate's surface.
#![warn(unreachable_pub)]

pub(crate) mod adapter;
pub(crate) mod address_counts;
pub(crate) mod admin;
pub(crate) mod allocator;
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
pub(crate) mod emit;
pub(crate) mod feed;
pub mod fuzzing;
pub(crate) mod http_api;
pub(crate) mod hub;
pub mod inspect;
pub(crate) mod listen;
pub(crate) mod metrics;
pub mod peer;
pub mod plugins;
pub(crate) mod prefetch;
pub mod protocol;
pub(crate) mod readiness;
pub(crate) mod recovery;
pub(crate) mod server;
pub mod telemetry;
pub(crate) mod tls;
pub(crate) mod webhooks;
pub(crate) mod wire;
pub(crate) mod ws;

pub use config::Settings;
pub use server::run;

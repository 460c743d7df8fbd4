//! The one door into the cluster layer for callers outside the crate: tests and benchmarks
//! that play a peer node on a real bus (a replayed, forged or oversized envelope; a peer's
//! presence flood) build its messages with the bus format and the seal, and nothing else.
//! The layer itself (`cluster`) is private to the crate, like the fuzz targets' door
//! ([`crate::fuzzing`]) keeps the parsers.

pub use crate::cluster::{
    envelope::{Body, BusPosition, Control, Envelope, Tags},
    seal::Seal,
};

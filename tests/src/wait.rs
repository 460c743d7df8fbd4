//! The one way tests wait for what has no event to await (a metric, a peer's replicated
//! state, a limit's window): [`eventually`], the conformance kit's, with the harness's
//! [`PATIENCE`]. Anything that sends an event (a frame, a webhook) is awaited as that event
//! instead.

use std::{fmt::Display, time::Duration};

use sockhost_plugin_api::conformance;
pub use sockhost_plugin_api::conformance::holds;

use crate::pusher::PATIENCE;

/// Look with `check` until it answers `Ok`, within `within`; its value. `check` answers `Err`
/// with what it saw, which the failure message shows.
///
/// # Panics
/// If `check` still answers `Err` at the deadline: with `what` and the last observation.
pub async fn eventually_within<T>(
    what: impl Display,
    within: Duration,
    check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    conformance::eventually_within(what, within, check).await
}

/// [`eventually_within`] the usual patience.
///
/// # Panics
/// As [`eventually_within`].
pub async fn eventually<T>(what: impl Display, check: impl AsyncFnMut() -> Result<T, String>) -> T {
    eventually_within(what, PATIENCE, check).await
}

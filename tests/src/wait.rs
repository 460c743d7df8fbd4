//! The one way tests wait for what has no event to await (a metric, a peer's replicated
//! state, a limit's window): [`eventually`]. Anything that sends an event (a frame, a webhook)
//! is awaited as that event instead.

use std::{fmt::Display, time::Duration};

use crate::pusher::PATIENCE;

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Look with `check` until it answers `Ok`, within `within`; its value. `check` answers `Err`
/// with what it saw, which the failure message shows.
///
/// # Panics
/// If `check` still answers `Err` at the deadline: with `what` and the last observation.
pub async fn eventually_within<T>(
    what: impl Display,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: not within {within:?}; last seen: {seen}"
                );
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually_within`] the usual patience.
///
/// # Panics
/// As [`eventually_within`].
pub async fn eventually<T>(what: impl Display, check: impl AsyncFnMut() -> Result<T, String>) -> T {
    eventually_within(what, PATIENCE, check).await
}

/// `Ok(())` if `holds`, else `Err` with `seen`: the usual shape of a check.
///
/// # Errors
/// When it does not hold.
pub fn holds(holds: bool, seen: impl Display) -> Result<(), String> {
    if holds { Ok(()) } else { Err(seen.to_string()) }
}

//! The one way a test waits for what has no event to await (a TTL's expiry, a limit's window,
//! a metric, a peer's replicated state): [`eventually`]. Anything that sends an event (a
//! delivery, a frame, a webhook) is awaited as that event instead. The server's own black-box
//! tests wait through this too, with their own patience.

use std::{fmt::Display, time::Duration};

use super::PATIENCE;

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// What a check answers: `Ok(value)` once what it waits for holds, else `Err` with what it saw
/// (which the failure message shows); or plainly whether it holds.
pub trait Outcome {
    /// What [`eventually`] gives back once the check holds.
    type Value;

    /// The value, or what was seen instead.
    ///
    /// # Errors
    /// While it does not hold.
    fn into_outcome(self) -> Result<Self::Value, String>;
}

impl<T> Outcome for Result<T, String> {
    type Value = T;

    fn into_outcome(self) -> Self {
        self
    }
}

impl Outcome for bool {
    type Value = ();

    fn into_outcome(self) -> Result<(), String> {
        holds(self, "still false")
    }
}

/// Look with `check` until it holds, within `within`; its value.
///
/// # Panics
/// If `check` still does not hold at the deadline: with `what` and the last observation.
pub async fn eventually_within<C: Outcome>(
    what: impl Display,
    within: Duration,
    mut check: impl AsyncFnMut() -> C,
) -> C::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await.into_outcome() {
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

/// [`eventually_within`] the kit's [`PATIENCE`].
///
/// # Panics
/// As [`eventually_within`].
pub async fn eventually<C: Outcome>(what: impl Display, check: impl AsyncFnMut() -> C) -> C::Value {
    eventually_within(what, PATIENCE, check).await
}

/// `Ok(())` if `holds`, else `Err` with `seen`: the usual shape of a check.
///
/// # Errors
/// When it does not hold.
pub fn holds(holds: bool, seen: impl Display) -> Result<(), String> {
    if holds { Ok(()) } else { Err(seen.to_string()) }
}

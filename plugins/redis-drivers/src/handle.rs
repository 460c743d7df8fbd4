//! What each of the cache, rate-limiter and history drivers holds: its connection, the time a
//! command may take, and whether it was shut down (after which every call is refused).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use redis::aio::ConnectionLike;
use sockhost_plugin_api::PluginError;

use crate::within;

/// A driver's connection, until it is shut down.
pub struct Handle<C> {
    conn: C,
    /// How long one command may take.
    pub timeout: Duration,
    closed: AtomicBool,
    /// The driver, as a refusal names it (`cache`, `rate limiter`, ...).
    what: &'static str,
}

impl<C> Handle<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// `conn`, whose commands may take `timeout_ms` (at least 1), for the driver `what`.
    pub fn new(conn: C, timeout_ms: u64, what: &'static str) -> Self {
        let timeout = Duration::from_millis(timeout_ms.max(1));
        Self { conn, timeout, closed: AtomicBool::new(false), what }
    }

    /// The connection for a call, unless the driver was shut down.
    ///
    /// # Errors
    /// `UNAVAILABLE` after [`Handle::close`].
    pub fn open(&self) -> Result<C, PluginError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PluginError::unavailable(format!("the redis {} is shut down", self.what)));
        }
        Ok(self.conn.clone())
    }

    /// Whether the server answers.
    ///
    /// # Errors
    /// It does not, in time, or the driver was shut down.
    pub async fn ping(&self) -> Result<(), PluginError> {
        let mut conn = self.open()?;
        within("redis PING", self.timeout, redis::cmd("PING").query_async::<()>(&mut conn)).await
    }

    /// Refuse every later call.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl<C> std::fmt::Debug for Handle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("what", &self.what).finish_non_exhaustive()
    }
}

//! A connection to one Redis server over a socket the host drives
//! ([`sockhost_plugin_api::sdk::host_io`]), for the history store, whose append the host
//! awaits once per event.
//!
//! On the plugin's runtime, every reply is heard by the plugin's reactor: it wakes a plugin
//! thread, which wakes the host's task on another. Measured on the hot-path benchmark, that
//! was about half of what recovery cost the node (`docs/recovery-cost.md`). Here the socket is
//! on the host's reactor and redis-rs's connection driver runs on the host's executor, so the
//! worker that hears a reply runs the task that waits for it.
//!
//! Only a plain TCP server named by a URL takes this path; TLS, a Unix socket, sentinels and
//! clusters keep [`crate::connection::ServerConnection`], as does every connection under a host
//! that does not offer sockets. A broken connection is made again on the next call, at most
//! one attempt at a time, each within the request timeout, and none for 250 ms after one
//! failed or was given up.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redis::{
    AsyncConnectionConfig, Cmd, Pipeline, RedisConnectionInfo, RedisError, RedisFuture,
    RedisResult, Value,
    aio::{ConnectionLike, MultiplexedConnection},
};
use sockhost_plugin_api::{HostContextBox, PluginError, abi::RStr, sdk::host_io};
use tokio::runtime::Handle;

use crate::client;

/// How long calls are refused without an attempt after a connection attempt failed.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// A server connection whose socket the host drives; cheap to clone (one connection shared).
#[derive(Clone)]
pub struct HostDriven(Arc<Inner>);

struct Inner {
    host: HostContextBox,
    runtime: &'static Handle,
    address: String,
    port: u16,
    info: RedisConnectionInfo,
    /// The URL without its password, for errors.
    shown: String,
    timeout: Duration,
    /// The connection, with the number of the attempt that made it.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Held while connecting: one attempt at a time. The last failed attempt's time.
    connecting: tokio::sync::Mutex<Option<Instant>>,
    attempts: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for HostDriven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDriven").field("server", &self.0.shown).finish_non_exhaustive()
    }
}

impl HostDriven {
    /// Connected through the host to `url`, when it names a plain TCP server and the host
    /// offers sockets; `Ok(None)` otherwise, for the caller to connect as before. The first
    /// connection is made now, so that a refusal (a wrong password, no server) is reported at
    /// start with the server's own reason.
    ///
    /// # Errors
    /// The URL does not parse, or the server cannot be reached or refuses the connection
    /// within `timeout`.
    pub async fn open(
        url: &str,
        timeout: Duration,
        host: &HostContextBox,
        runtime: &'static Handle,
    ) -> Result<Option<Self>, PluginError> {
        let shown = client::redact(url);
        let parsed = redis::Client::open(url)
            .map_err(|e| PluginError::config(format!("redis URL {shown:?}: {e}")))?;
        let info = parsed.get_connection_info();
        let redis::ConnectionAddr::Tcp(address, port) = info.addr() else { return Ok(None) };
        if !host_io::offered() {
            return Ok(None);
        }
        let inner = Inner {
            host: host.clone(),
            runtime,
            address: address.clone(),
            port: *port,
            info: info.redis_settings().clone(),
            shown: shown.clone(),
            timeout,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            attempts: std::sync::atomic::AtomicU64::new(0),
        };
        let this = Self(Arc::new(inner));
        let what = format!("redis {shown}");
        match crate::within(&what, timeout, this.0.dial()).await? {
            Some(conn) => {
                this.keep(conn);
                Ok(Some(this))
            }
            None => Ok(None),
        }
    }

    /// Make `conn` the current connection; it, with the number of the attempt that made it.
    fn keep(&self, conn: MultiplexedConnection) -> (u64, MultiplexedConnection) {
        let attempt = self.0.attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.0.current.lock().expect("connection lock") = Some((attempt, conn.clone()));
        (attempt, conn)
    }

    /// The connection, made again if the last one broke.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.0.current.lock().expect("connection lock").clone() {
            return Ok(current);
        }
        let last_failure = self.0.connecting.lock().await;
        if let Some(current) = self.0.current.lock().expect("connection lock").clone() {
            return Ok(current);
        }
        if last_failure.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return Err(unreachable(&self.0.shown, "the last attempt failed just now"));
        }
        // A failure whatever ends the attempt, unless it connects: an error, its own time
        // running out, or the caller's (which drops this future mid-attempt; the host's
        // connect is dropped with it).
        let mut attempt = Attempt { last_failure, connected: false };
        let dialled = tokio::time::timeout(self.0.timeout, self.0.dial()).await;
        match dialled {
            Ok(Ok(Some(conn))) => {
                attempt.connected = true;
                Ok(self.keep(conn))
            }
            Ok(Ok(None)) => Err(unreachable(&self.0.shown, "the host no longer offers sockets")),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(unreachable(&self.0.shown, "no connection within the timeout")),
        }
    }

    /// `answer`, having let the connection made by `attempt` go if the answer says it broke
    /// (and it is still the current one).
    fn checked<T>(&self, attempt: u64, answer: RedisResult<T>) -> RedisResult<T> {
        if let Err(error) = &answer
            && (error.is_io_error()
                || error.is_connection_dropped()
                || error.is_unrecoverable_error()
                || error.is_connection_refusal())
        {
            let mut current = self.0.current.lock().expect("connection lock");
            if current.as_ref().is_some_and(|(made_by, _)| *made_by == attempt) {
                *current = None;
            }
        }
        answer
    }
}

/// One connection attempt, holding the right to make it: when it ends without a connection
/// (dropped included), the time is kept, and calls wait [`RETRY_AFTER`] before the next.
struct Attempt<'a> {
    last_failure: tokio::sync::MutexGuard<'a, Option<Instant>>,
    connected: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        *self.last_failure = (!self.connected).then(Instant::now);
    }
}

fn unreachable(shown: &str, why: &str) -> RedisError {
    let error = std::io::Error::new(std::io::ErrorKind::NotConnected, format!("{shown}: {why}"));
    RedisError::from(error)
}

impl Inner {
    /// A new connection over a host socket, its driver running on the host's executor;
    /// `None` when the host does not offer sockets.
    async fn dial(&self) -> RedisResult<Option<MultiplexedConnection>> {
        let stream = host_io::connect(&self.address, self.port)
            .await
            .map_err(|e| unreachable(&self.shown, e.message()))?;
        let Some(stream) = stream else { return Ok(None) };
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(self.timeout));
        let (conn, driver) =
            MultiplexedConnection::new_with_config(&self.info, stream, config).await?;
        host_io::spawn(self.runtime, driver);
        // Counted, so that an operator (and a test) sees which path the store took.
        self.host.metric(RStr::from_str("host_driven_connects"), 1);
        Ok(Some(conn))
    }
}

impl ConnectionLike for HostDriven {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (attempt, mut conn) = self.connection().await?;
            self.checked(attempt, conn.req_packed_command(cmd).await)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (attempt, mut conn) = self.connection().await?;
            self.checked(attempt, conn.req_packed_commands(cmd, offset, count).await)
        })
    }

    fn get_db(&self) -> i64 {
        self.0.info.db()
    }
}

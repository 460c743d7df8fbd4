//! Redis Sentinel: find the master the sentinels watch, and follow it when they fail it over.
//!
//! [`Master`] asks the sentinels in turn for the master's address (`SENTINEL
//! get-master-addr-by-name`), then keeps a subscription to `+switch-master` on one of them, so
//! a failover is followed the moment the sentinels announce it, not only after a command fails;
//! the address is also asked for again every [`RECHECK`], in case a notice was missed while no
//! sentinel was reachable. [`Following`] is a connection that moves to the new master whenever
//! [`Master`] says so: the cache, queue and rate limiter never keep writing to a demoted master.

use std::{
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use futures_util::StreamExt as _;
use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager},
};
use serde::Deserialize;
use sockhost_plugin_api::{HostContextBox, PluginError, abi::RStr};
use tokio::sync::watch;

use crate::client;

/// How often the master's address is asked for again, besides the switch notices.
pub const RECHECK: Duration = Duration::from_secs(5);
/// The master name when none is configured.
pub const DEFAULT_NAME: &str = "mymaster";

/// One sentinel in `database.redis.sentinels`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelAddr {
    /// Host name or address.
    pub host: String,
    /// Port. Default: 26379.
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    26379
}

/// Where the sentinels are and how to reach them and the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// The sentinels.
    pub sentinels: Vec<SentinelAddr>,
    /// The master's name in the sentinels' configuration.
    pub name: String,
    /// ACL user for the sentinels.
    pub sentinel_username: Option<String>,
    /// Password for the sentinels.
    pub sentinel_password: Option<String>,
    /// ACL user for the master.
    pub username: Option<String>,
    /// Password for the master.
    pub password: Option<String>,
    /// Database number on the master.
    pub db: u32,
}

fn auth(username: Option<&str>, password: Option<&str>) -> String {
    match (username, password) {
        (Some(user), Some(password)) => format!("{user}:{password}@"),
        (None, Some(password)) => format!(":{password}@"),
        (Some(user), None) => format!("{user}@"),
        (None, None) => String::new(),
    }
}

impl SentinelSettings {
    fn sentinel_url(&self, sentinel: &SentinelAddr) -> String {
        let auth = auth(self.sentinel_username.as_deref(), self.sentinel_password.as_deref());
        format!("redis://{auth}{}:{}", sentinel.host, sentinel.port)
    }

    fn master_url(&self, host: &str, port: u16) -> String {
        let auth = auth(self.username.as_deref(), self.password.as_deref());
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
        format!("redis://{auth}{host}:{port}/{}", self.db)
    }
}

/// The master the sentinels watch, kept current.
#[derive(Debug)]
pub struct Master {
    settings: SentinelSettings,
    current: watch::Sender<String>,
}

impl Master {
    /// Ask the sentinels for the master (a refusal names every sentinel tried and why), then
    /// follow its switches on the current runtime.
    pub async fn start(
        settings: SentinelSettings,
        timeout: Duration,
        host: Option<HostContextBox>,
    ) -> Result<Arc<Self>, PluginError> {
        client::install_crypto();
        let url = resolve(&settings, timeout).await.map_err(|tried| {
            PluginError::config(format!(
                "database.redis.sentinels: no sentinel named a master `{}` ({tried})",
                settings.name
            ))
        })?;
        tracing::info!(name = %settings.name, master = %client::redact(&url), "Sentinels named the Redis master.");
        let (current, _) = watch::channel(url);
        let master = Arc::new(Self { settings, current });
        tokio::spawn(follow(Arc::downgrade(&master), timeout, host));
        Ok(master)
    }

    /// The master's URL now.
    pub fn url(&self) -> String {
        self.current.borrow().clone()
    }

    /// Hears every change of master.
    pub fn changes(&self) -> watch::Receiver<String> {
        self.current.subscribe()
    }

    fn switch(&self, url: String, why: &str, host: Option<&HostContextBox>) {
        let changed = self.current.send_if_modified(|current| {
            if *current == url {
                false
            } else {
                *current = url.clone();
                true
            }
        });
        if changed {
            tracing::warn!(name = %self.settings.name, master = %client::redact(&url), why, "The Redis master changed; following it.");
            if let Some(host) = host {
                host.metric(RStr::from_str("master_switches"), 1);
            }
        }
    }
}

/// Ask each sentinel in turn for the master's address; what each said, if none answered.
async fn resolve(settings: &SentinelSettings, timeout: Duration) -> Result<String, String> {
    let mut tried = Vec::new();
    for sentinel in &settings.sentinels {
        let ask = async {
            let client = redis::Client::open(settings.sentinel_url(sentinel))?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&settings.name)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        let shown = format!("{}:{}", sentinel.host, sentinel.port);
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(Some((host, port)))) => return Ok(settings.master_url(&host, port)),
            Ok(Ok(None)) => tried.push(format!("{shown}: does not know it")),
            Ok(Err(e)) => tried.push(format!("{shown}: {e}")),
            Err(_) => tried.push(format!("{shown}: no answer within {timeout:?}")),
        }
    }
    Err(if tried.is_empty() { "none configured".into() } else { tried.join("; ") })
}

/// Follow switches until the master is dropped: a `+switch-master` subscription on one
/// sentinel at a time, and the address asked for again every [`RECHECK`].
async fn follow(master: Weak<Master>, timeout: Duration, host: Option<HostContextBox>) {
    let mut next = 0usize;
    loop {
        let Some(settings) = master.upgrade().map(|m| m.settings.clone()) else { return };
        let sentinel = &settings.sentinels[next % settings.sentinels.len()];
        next = next.wrapping_add(1);
        let subscribed = async {
            let client = redis::Client::open(settings.sentinel_url(sentinel))?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut notices = match tokio::time::timeout(timeout, subscribed).await {
            Ok(Ok(pubsub)) => pubsub.into_on_message(),
            outcome => {
                let error = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer".into(),
                };
                tracing::warn!(sentinel = %format!("{}:{}", sentinel.host, sentinel.port), %error, "A sentinel could not be subscribed to; trying the next.");
                recheck(&master, &settings, timeout, host.as_ref()).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut ticker = tokio::time::interval(RECHECK);
        loop {
            tokio::select! {
                notice = notices.next() => {
                    let Some(notice) = notice else { break };
                    // "<name> <old-ip> <old-port> <new-ip> <new-port>"
                    let text: String = notice.get_payload().unwrap_or_default();
                    let parts: Vec<&str> = text.split_whitespace().collect();
                    if let [name, _, _, ip, port] = parts[..]
                        && name == settings.name
                        && let Ok(port) = port.parse::<u16>()
                    {
                        let Some(master) = master.upgrade() else { return };
                        master.switch(settings.master_url(ip, port), "+switch-master", host.as_ref());
                    }
                }
                _ = ticker.tick() => {
                    if !recheck(&master, &settings, timeout, host.as_ref()).await {
                        return;
                    }
                }
            }
        }
        tracing::warn!(sentinel = %format!("{}:{}", sentinel.host, sentinel.port), "Lost the sentinel subscription; trying the next sentinel.");
    }
}

/// Ask for the master again; false once the master is dropped.
async fn recheck(
    master: &Weak<Master>,
    settings: &SentinelSettings,
    timeout: Duration,
    host: Option<&HostContextBox>,
) -> bool {
    let resolved = resolve(settings, timeout).await;
    let Some(master) = master.upgrade() else { return false };
    if let Ok(url) = resolved
        && url != master.url()
        && is_master(&url, timeout).await
    {
        // A sentinel cut off from the others may still name the old master: only a server
        // that says it is the master replaces the one the switch notices named.
        master.switch(url, "asked the sentinels", host);
    }
    true
}

/// Whether the server at `url` says it is a master (`ROLE`).
async fn is_master(url: &str, timeout: Duration) -> bool {
    let ask = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("ROLE").query_async::<Vec<Value>>(&mut conn).await
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(role)) => {
            matches!(role.first(), Some(Value::BulkString(kind)) if kind.as_slice() == b"master")
        }
        _ => false,
    }
}

/// A connection to whichever server is the master: it opens a new connection when the master
/// changes, and commands go to the newest one.
#[derive(Clone)]
pub struct Following {
    current: Arc<RwLock<ConnectionManager>>,
    db: i64,
    _master: Arc<Master>,
}

impl std::fmt::Debug for Following {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Following").field("master", &self._master.url()).finish_non_exhaustive()
    }
}

impl Following {
    /// Connect to the master now, and move to each new one as it is named.
    pub async fn open(master: Arc<Master>, timeout: Duration) -> Result<Self, PluginError> {
        // Listen before connecting: a switch while this connects is then heard, not missed.
        let mut changes = master.changes();
        let url = changes.borrow_and_update().clone();
        let manager = client::server(&url, timeout).await?;
        let current = Arc::new(RwLock::new(manager));
        tokio::spawn(move_along(Arc::downgrade(&current), changes, timeout));
        Ok(Self { current, db: i64::from(master.settings.db), _master: master })
    }

    /// The master this connection follows.
    pub fn master(&self) -> &Arc<Master> {
        &self._master
    }

    fn manager(&self) -> ConnectionManager {
        self.current.read().expect("connection lock").clone()
    }
}

/// Open a connection to each new master and put it in place of the old one.
async fn move_along(
    current: Weak<RwLock<ConnectionManager>>,
    mut changes: watch::Receiver<String>,
    timeout: Duration,
) {
    while changes.changed().await.is_ok() {
        let url = changes.borrow_and_update().clone();
        loop {
            match client::server(&url, timeout).await {
                Ok(manager) => {
                    let Some(current) = current.upgrade() else { return };
                    *current.write().expect("connection lock") = manager;
                    tracing::info!(master = %client::redact(&url), "Connected to the new Redis master.");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "The new Redis master does not answer yet; retrying.");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if current.strong_count() == 0 || changes.has_changed().unwrap_or(true) {
                        break;
                    }
                }
            }
        }
    }
}

impl ConnectionLike for Following {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut manager = self.manager();
        Box::pin(async move { manager.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut manager = self.manager();
        Box::pin(async move { manager.req_packed_commands(cmd, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

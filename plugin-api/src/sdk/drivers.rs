//! Plain Rust driver traits and the adapters that make them FFI trait objects.
//!
//! The adapters are where the boundary rules are kept once for every plugin: each method
//! catches panics, awaited methods run with the plugin runtime entered, and arguments are
//! copied out of borrowed FFI strings before any future outlives the call.

use std::{future::Future, sync::Arc};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RStr, RString, RVec},
};
use async_ffi::FfiFuture;
use tokio::runtime::Handle;

use super::{enter, guard, ready, spawn};
use crate::{
    AppManager, AppManager_TO, AppManagerBox, Cache, Cache_TO, CacheBox, HostContextBox, PResult,
    PluginError, Queue, Queue_TO, QueueBox, QueueHandlerBox, RateDecision, RateLimiter,
    RateLimiter_TO, RateLimiterBox, Transport, Transport_TO, TransportBox,
};

/// Everything a constructor receives, owned.
pub struct CreateArgs {
    /// The driver name the host asked for (a plugin may provide several of one kind).
    pub driver: String,
    /// The driver's configuration as TOML text (may be empty: use defaults).
    pub config: String,
    /// The host's callbacks.
    pub host: HostContextBox,
    /// The plugin's runtime, on which the constructor runs.
    pub runtime: &'static Handle,
}

impl std::fmt::Debug for CreateArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateArgs").field("driver", &self.driver).finish_non_exhaustive()
    }
}

/// The body of a root-module constructor: installs the log bridge, then runs `build` on the
/// plugin runtime (construction usually connects, and must finish even if the host gives up
/// waiting), with panics caught.
pub fn create<T, F>(
    plugin: &'static str,
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
    build: impl FnOnce(CreateArgs) -> F,
) -> FfiFuture<PResult<T>>
where
    T: Send + 'static,
    F: Future<Output = Result<T, PluginError>> + Send + 'static,
{
    let started = guard(|| {
        super::log::install(plugin, &host);
        let runtime = super::runtime(plugin);
        let args = CreateArgs {
            driver: driver.as_str().to_owned(),
            config: config.as_str().to_owned(),
            host,
            runtime,
        };
        let _entered = runtime.enter();
        Ok((runtime, build(args)))
    });
    match started.into_result() {
        Ok((runtime, fut)) => spawn(runtime, fut),
        Err(e) => ready(Err(e)),
    }
}

/// A transport in plain Rust; see [`Transport`] for the contract of each method.
pub trait TransportDriver: Send + Sync + 'static {
    /// See [`Transport::try_publish`]. Called on a host thread: enqueue only.
    fn try_publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError>;
    /// See [`Transport::publish`].
    fn publish(
        &self,
        topic: &str,
        payload: RVec<u8>,
    ) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`Transport::subscribe`].
    fn subscribe(&self, topic: &str) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`Transport::unsubscribe`].
    fn unsubscribe(&self, topic: &str) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`Transport::node_count_hint`].
    fn node_count_hint(&self) -> impl Future<Output = Result<Option<u64>, PluginError>> + Send;
    /// See [`Transport::health`].
    fn health(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`Transport::shutdown`].
    fn shutdown(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
}

/// A cache in plain Rust; see [`Cache`].
pub trait CacheDriver: Send + Sync + 'static {
    /// See [`Cache::get`].
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<RVec<u8>>, PluginError>> + Send;
    /// See [`Cache::set`].
    fn set(
        &self,
        key: &str,
        value: RVec<u8>,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`Cache::delete`].
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, PluginError>> + Send;
    /// See [`Cache::has`].
    fn has(&self, key: &str) -> impl Future<Output = Result<bool, PluginError>> + Send;
    /// See [`Cache::health`].
    fn health(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`Cache::shutdown`].
    fn shutdown(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
}

/// A queue in plain Rust; see [`Queue`].
pub trait QueueDriver: Send + Sync + 'static {
    /// See [`Queue::push`].
    fn push(
        &self,
        queue: &str,
        payload: RVec<u8>,
    ) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`Queue::consume`].
    fn consume(
        &self,
        queue: &str,
        handler: QueueHandlerBox,
    ) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`Queue::pending`].
    fn pending(&self, queue: &str) -> impl Future<Output = Result<u64, PluginError>> + Send;
    /// See [`Queue::health`].
    fn health(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`Queue::shutdown`].
    fn shutdown(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
}

/// A rate limiter in plain Rust; see [`RateLimiter`].
pub trait RateLimiterDriver: Send + Sync + 'static {
    /// See [`RateLimiter::check`].
    fn check(
        &self,
        key: &str,
        cost: u32,
        limit: u32,
        window_ms: u64,
    ) -> impl Future<Output = Result<RateDecision, PluginError>> + Send;
    /// See [`RateLimiter::health`].
    fn health(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`RateLimiter::shutdown`].
    fn shutdown(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
}

/// A driver with the runtime its awaited calls are polled in.
pub(super) struct Adapter<T> {
    pub(super) inner: Arc<T>,
    pub(super) runtime: &'static Handle,
}

impl<T> Adapter<T> {
    pub(super) fn new(runtime: &'static Handle, driver: T) -> Self {
        Self { inner: Arc::new(driver), runtime }
    }

    /// Poll `call(driver, arg)` on the host's executor with the plugin runtime entered.
    pub(super) fn call<A, R, F>(
        &self,
        arg: A,
        call: impl FnOnce(Arc<T>, A) -> F,
    ) -> FfiFuture<PResult<R>>
    where
        R: Send + 'static,
        F: Future<Output = Result<R, PluginError>> + Send + 'static,
    {
        let inner = self.inner.clone();
        enter(self.runtime, move || call(inner, arg))
    }
}

/// The FFI transport object for `driver`.
pub fn transport_box<T: TransportDriver>(runtime: &'static Handle, driver: T) -> TransportBox {
    Transport_TO::from_value(Adapter::new(runtime, driver), TD_Opaque)
}

impl<T: TransportDriver> Transport for Adapter<T> {
    fn try_publish(&self, topic: RStr<'_>, payload: RVec<u8>) -> PResult<()> {
        guard(|| self.inner.try_publish(topic.as_str(), payload))
    }

    fn publish(&self, topic: RStr<'_>, payload: RVec<u8>) -> FfiFuture<PResult<()>> {
        self.call((topic.to_string(), payload), |t, (topic, payload)| async move {
            t.publish(&topic, payload).await
        })
    }

    fn subscribe(&self, topic: RStr<'_>) -> FfiFuture<PResult<()>> {
        self.call(topic.to_string(), |t, topic| async move { t.subscribe(&topic).await })
    }

    fn unsubscribe(&self, topic: RStr<'_>) -> FfiFuture<PResult<()>> {
        self.call(topic.to_string(), |t, topic| async move { t.unsubscribe(&topic).await })
    }

    fn node_count_hint(&self) -> FfiFuture<PResult<ROption<u64>>> {
        self.call((), |t, ()| async move { t.node_count_hint().await.map(ROption::from) })
    }

    fn health(&self) -> FfiFuture<PResult<()>> {
        self.call((), |t, ()| async move { t.health().await })
    }

    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        // Spawned, not entered: shutting down must finish even if the host stops waiting.
        let inner = self.inner.clone();
        spawn(self.runtime, async move { inner.shutdown().await })
    }
}

/// The FFI cache object for `driver`.
pub fn cache_box<T: CacheDriver>(runtime: &'static Handle, driver: T) -> CacheBox {
    Cache_TO::from_value(Adapter::new(runtime, driver), TD_Opaque)
}

impl<T: CacheDriver> Cache for Adapter<T> {
    fn get(&self, key: RStr<'_>) -> FfiFuture<PResult<ROption<RVec<u8>>>> {
        self.call(key.to_string(), |c, key| async move { c.get(&key).await.map(ROption::from) })
    }

    fn set(&self, key: RStr<'_>, value: RVec<u8>, ttl_ms: u64) -> FfiFuture<PResult<()>> {
        self.call((key.to_string(), value), move |c, (key, value)| async move {
            c.set(&key, value, ttl_ms).await
        })
    }

    fn delete(&self, key: RStr<'_>) -> FfiFuture<PResult<bool>> {
        self.call(key.to_string(), |c, key| async move { c.delete(&key).await })
    }

    fn has(&self, key: RStr<'_>) -> FfiFuture<PResult<bool>> {
        self.call(key.to_string(), |c, key| async move { c.has(&key).await })
    }

    fn health(&self) -> FfiFuture<PResult<()>> {
        self.call((), |c, ()| async move { c.health().await })
    }

    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        let inner = self.inner.clone();
        spawn(self.runtime, async move { inner.shutdown().await })
    }
}

/// The FFI queue object for `driver`.
pub fn queue_box<T: QueueDriver>(runtime: &'static Handle, driver: T) -> QueueBox {
    Queue_TO::from_value(Adapter::new(runtime, driver), TD_Opaque)
}

impl<T: QueueDriver> Queue for Adapter<T> {
    fn push(&self, queue: RStr<'_>, payload: RVec<u8>) -> FfiFuture<PResult<()>> {
        self.call((queue.to_string(), payload), |q, (queue, payload)| async move {
            q.push(&queue, payload).await
        })
    }

    fn consume(&self, queue: RStr<'_>, handler: QueueHandlerBox) -> FfiFuture<PResult<()>> {
        self.call((queue.to_string(), handler), |q, (queue, handler)| async move {
            q.consume(&queue, handler).await
        })
    }

    fn pending(&self, queue: RStr<'_>) -> FfiFuture<PResult<u64>> {
        self.call(queue.to_string(), |q, queue| async move { q.pending(&queue).await })
    }

    fn health(&self) -> FfiFuture<PResult<()>> {
        self.call((), |q, ()| async move { q.health().await })
    }

    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        let inner = self.inner.clone();
        spawn(self.runtime, async move { inner.shutdown().await })
    }
}

/// The FFI rate-limiter object for `driver`.
pub fn rate_limiter_box<T: RateLimiterDriver>(
    runtime: &'static Handle,
    driver: T,
) -> RateLimiterBox {
    RateLimiter_TO::from_value(Adapter::new(runtime, driver), TD_Opaque)
}

impl<T: RateLimiterDriver> RateLimiter for Adapter<T> {
    fn check(
        &self,
        key: RStr<'_>,
        cost: u32,
        limit: u32,
        window_ms: u64,
    ) -> FfiFuture<PResult<RateDecision>> {
        self.call(key.to_string(), move |l, key| async move {
            l.check(&key, cost, limit, window_ms).await
        })
    }

    fn health(&self) -> FfiFuture<PResult<()>> {
        self.call((), |l, ()| async move { l.health().await })
    }

    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        let inner = self.inner.clone();
        spawn(self.runtime, async move { inner.shutdown().await })
    }
}

/// An app manager in plain Rust; see [`AppManager`]. Apps are JSON objects as text.
pub trait AppManagerDriver: Send + Sync + 'static {
    /// See [`AppManager::find_by_id`].
    fn find_by_id(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<String>, PluginError>> + Send;
    /// See [`AppManager::find_by_key`].
    fn find_by_key(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>, PluginError>> + Send;
    /// See [`AppManager::list`].
    fn list(
        &self,
        after: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<String>, PluginError>> + Send;
    /// See [`AppManager::create`].
    fn create(&self, app: &str) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`AppManager::update`].
    fn update(&self, app: &str) -> impl Future<Output = Result<bool, PluginError>> + Send;
    /// See [`AppManager::delete`].
    fn delete(&self, id: &str) -> impl Future<Output = Result<bool, PluginError>> + Send;
    /// See [`AppManager::health`].
    fn health(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`AppManager::shutdown`].
    fn shutdown(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// A conditional [`update`](AppManagerDriver::update): write `app` only if the stored
    /// record is still at version `expected`, and make it `expected + 1` (see
    /// [`IF_VERSION`](crate::IF_VERSION), which the SDK takes off the record before this is
    /// called). A driver without conditional writes keeps this default, and the SDK calls
    /// `update` instead.
    fn update_if(
        &self,
        changes: &str,
        expected: u64,
    ) -> impl Future<Output = Result<UpdateOutcome, PluginError>> + Send {
        let _ = (changes, expected);
        async { Ok(UpdateOutcome::Unsupported) }
    }
}

/// What [`AppManagerDriver::update_if`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The driver has no conditional write; the SDK writes with `update`.
    Unsupported,
    /// Written.
    Updated,
    /// No app with this id.
    NotFound,
    /// The stored record is no longer at the expected version; nothing was written.
    Conflict,
}

/// A conditional `update`'s parts: the record for [`AppManagerDriver::update_if`] (the `id`
/// and the fields [`CHANGED`](crate::CHANGED) names, or the whole record without it), the
/// whole record for a plain `update`, and the version; `None` for an unconditional write.
fn conditional(app: &str) -> Option<(String, String, u64)> {
    let mut record: serde_json::Map<String, serde_json::Value> = serde_json::from_str(app).ok()?;
    let expected = record.remove(crate::IF_VERSION)?.as_u64()?;
    let changed = record.remove(crate::CHANGED);
    let whole = serde_json::Value::Object(record.clone()).to_string();
    let changes = match changed.as_ref().and_then(serde_json::Value::as_array) {
        Some(names) => {
            let names: Vec<&str> = names.iter().filter_map(serde_json::Value::as_str).collect();
            record.retain(|name, _| name == "id" || names.contains(&name.as_str()));
            serde_json::Value::Object(record).to_string()
        }
        None => whole.clone(),
    };
    Some((changes, whole, expected))
}

/// An `update` call as the driver answers it: conditional when the record asks for it.
async fn update_with<T: AppManagerDriver>(driver: &T, app: &str) -> Result<bool, PluginError> {
    let Some((changes, whole, expected)) = conditional(app) else {
        return driver.update(app).await;
    };
    match driver.update_if(&changes, expected).await? {
        UpdateOutcome::Updated => Ok(true),
        UpdateOutcome::NotFound => Ok(false),
        UpdateOutcome::Conflict => {
            Err(PluginError::conflict(format!("the app was changed since version {expected}")))
        }
        UpdateOutcome::Unsupported => driver.update(&whole).await,
    }
}

/// The FFI app-manager object for `driver`.
pub fn app_manager_box<T: AppManagerDriver>(runtime: &'static Handle, driver: T) -> AppManagerBox {
    AppManager_TO::from_value(Adapter::new(runtime, driver), TD_Opaque)
}

impl<T: AppManagerDriver> AppManager for Adapter<T> {
    fn find_by_id(&self, id: RStr<'_>) -> FfiFuture<PResult<ROption<RString>>> {
        self.call(id.to_string(), |m, id| async move {
            m.find_by_id(&id).await.map(|app| app.map(RString::from).into())
        })
    }

    fn find_by_key(&self, key: RStr<'_>) -> FfiFuture<PResult<ROption<RString>>> {
        self.call(key.to_string(), |m, key| async move {
            m.find_by_key(&key).await.map(|app| app.map(RString::from).into())
        })
    }

    fn list(&self, after: RStr<'_>, limit: u32) -> FfiFuture<PResult<RVec<RString>>> {
        self.call(after.to_string(), move |m, after| async move {
            m.list(&after, limit).await.map(|apps| apps.into_iter().map(RString::from).collect())
        })
    }

    fn create(&self, app: RStr<'_>) -> FfiFuture<PResult<()>> {
        self.call(app.to_string(), |m, app| async move { m.create(&app).await })
    }

    fn update(&self, app: RStr<'_>) -> FfiFuture<PResult<bool>> {
        self.call(app.to_string(), |m, app| async move { update_with(&*m, &app).await })
    }

    fn delete(&self, id: RStr<'_>) -> FfiFuture<PResult<bool>> {
        self.call(id.to_string(), |m, id| async move { m.delete(&id).await })
    }

    fn health(&self) -> FfiFuture<PResult<()>> {
        self.call((), |m, ()| async move { m.health().await })
    }

    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        let inner = self.inner.clone();
        spawn(self.runtime, async move { inner.shutdown().await })
    }
}

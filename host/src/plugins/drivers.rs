//! The constructed drivers, as the rest of the host uses them: plain async methods over
//! host types. This is the only module that calls through the FFI trait objects.

use std::{
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use sockhost_plugin_api::{
    AppManagerBox, CacheBox, DriverKind, ErrorCode, Job, PResult, PluginError, QueueBox,
    QueueHandler, QueueHandler_TO, RateDecision, RateLimiterBox, TransportBox,
    abi::{FfiFuture, FfiFutureExt as _, RArc, RStr, RString, RVec, TD_Opaque},
};
use tokio::sync::mpsc;

use super::{
    DriverChoice, DriverSelection, builtin,
    host_context::{INBOX_CAPACITY, Incoming, PluginCounters, PluginHost},
    registry::{Provider, Registry},
};

/// A driver that could not be built or failed a call.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No loaded plugin provides the driver the configuration names.
    #[error("no loaded plugin provides the {kind} driver `{name}` ({available}); {loaded}")]
    NotProvided {
        /// The kind asked for.
        kind: DriverKind,
        /// The name asked for.
        name: String,
        /// The drivers that are available for the kind, as a phrase.
        available: String,
        /// The loaded plugins, summarised.
        loaded: String,
    },
    /// The plugin answered an error.
    #[error("{kind} driver `{name}`: {error}")]
    Plugin {
        /// The driver's kind.
        kind: DriverKind,
        /// The driver's name.
        name: Arc<str>,
        /// What it answered.
        error: PluginError,
    },
}

impl DriverError {
    /// The plugin's error code, if the plugin answered one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Plugin { error, .. } => Some(error.code),
            Self::NotProvided { .. } => None,
        }
    }

    /// Whether the same call may succeed later (the backend is down or slow).
    pub fn is_retryable(&self) -> bool {
        self.code().is_some_and(ErrorCode::is_retryable)
    }
}

/// The constructed drivers, handed to [`crate::run`].
#[derive(Debug)]
pub struct Drivers {
    /// Moves bus messages between nodes; shared with the cluster layer.
    pub transport: Arc<Transport>,
    /// Messages the transport delivered, for the cluster layer to take and read.
    pub inbox: Option<mpsc::Receiver<Incoming>>,
    /// Key-value state with expiry.
    pub cache: Cache,
    /// Durable jobs.
    pub queue: Arc<Queue>,
    /// Token windows.
    pub rate_limiter: RateLimiter,
    /// Where apps live, when not in the configuration file.
    pub app_manager: Option<Arc<AppManager>>,
    /// Counters the plugins report.
    pub counters: Arc<PluginCounters>,
}

impl Drivers {
    /// Construct the selected drivers from the registry's plugins. Every problem is reported,
    /// not only the first.
    pub async fn build(
        registry: &Registry,
        selection: &DriverSelection,
    ) -> Result<Self, Vec<DriverError>> {
        let counters = Arc::new(PluginCounters::default());
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let mut errors = Vec::new();
        let ctx = Ctx { registry, counters: &counters };

        let transport = ctx
            .build(
                DriverKind::TRANSPORT,
                &selection.transport,
                Some(inbox_tx),
                |m| m.transport(),
                || None,
            )
            .await;
        let cache = ctx
            .build(
                DriverKind::CACHE,
                &selection.cache,
                None,
                |m| m.cache(),
                || Some(builtin::none_cache()),
            )
            .await;
        let queue = ctx
            .build(
                DriverKind::QUEUE,
                &selection.queue,
                None,
                |m| m.queue(),
                || Some(builtin::none_queue()),
            )
            .await;
        let rate_limiter = ctx
            .build(
                DriverKind::RATE_LIMITER,
                &selection.rate_limiter,
                None,
                |m| m.rate_limiter(),
                || Some(builtin::none_rate_limiter()),
            )
            .await;
        let app_manager = ctx.app_manager(selection.app_manager.as_ref()).await;
        let (transport, cache, queue, rate_limiter, app_manager) =
            match (transport, cache, queue, rate_limiter, app_manager) {
                (Ok(t), Ok(c), Ok(q), Ok(r), Ok(a)) => (t, c, q, r, a),
                (t, c, q, r, a) => {
                    errors.extend(t.err());
                    errors.extend(c.err());
                    errors.extend(q.err());
                    errors.extend(r.err());
                    errors.extend(a.err());
                    return Err(errors);
                }
            };
        Ok(Self {
            transport: Arc::new(Transport(Named::new(
                DriverKind::TRANSPORT,
                &selection.transport.name,
                transport,
            ))),
            inbox: Some(inbox),
            cache: Cache(Named::new(DriverKind::CACHE, &selection.cache.name, cache)),
            queue: Arc::new(Queue(Named::new(DriverKind::QUEUE, &selection.queue.name, queue))),
            rate_limiter: RateLimiter(Named::new(
                DriverKind::RATE_LIMITER,
                &selection.rate_limiter.name,
                rate_limiter,
            )),
            app_manager,
            counters,
        })
    }

    /// Shut every driver down, transport last so that nothing queued for it is cut off early.
    pub async fn shutdown(&self) {
        if let Some(manager) = &self.app_manager
            && let Err(error) = manager.shutdown().await
        {
            tracing::warn!(%error, "A driver did not shut down cleanly.");
        }
        let results = [
            self.rate_limiter.shutdown().await,
            self.queue.shutdown().await,
            self.cache.shutdown().await,
            self.transport.shutdown().await,
        ];
        for error in results.into_iter().filter_map(Result::err) {
            tracing::warn!(%error, "A driver did not shut down cleanly.");
        }
    }
}

struct Ctx<'a> {
    registry: &'a Registry,
    counters: &'a Arc<PluginCounters>,
}

type Ctor<T> = extern "C" fn(
    RStr<'_>,
    RStr<'_>,
    sockhost_plugin_api::HostContextBox,
) -> sockhost_plugin_api::abi::FfiFuture<PResult<T>>;

impl Ctx<'_> {
    /// The app manager, if one is chosen (`None`: the configuration file's apps).
    async fn app_manager(
        &self,
        choice: Option<&DriverChoice>,
    ) -> Result<Option<Arc<AppManager>>, DriverError> {
        let Some(choice) = choice else { return Ok(None) };
        let made =
            self.build(DriverKind::APP_MANAGER, choice, None, |m| m.app_manager(), || None).await?;
        let named = Named::new(DriverKind::APP_MANAGER, &choice.name, made);
        Ok(Some(Arc::new(AppManager(named))))
    }

    async fn build<T>(
        &self,
        kind: DriverKind,
        choice: &DriverChoice,
        inbox: Option<mpsc::Sender<Incoming>>,
        ctor_of: impl FnOnce(&sockhost_plugin_api::load::Module) -> Option<Ctor<T>>,
        builtin: impl FnOnce() -> Option<T>,
    ) -> Result<T, DriverError> {
        let not_provided = || DriverError::NotProvided {
            kind,
            name: choice.name.clone(),
            available: match self.registry.names(kind) {
                names if names.is_empty() => format!("no {kind} driver is available"),
                names => format!("available: {}", names.join(", ")),
            },
            loaded: self.registry.summary(),
        };
        match self.registry.provider(kind, &choice.name) {
            None => Err(not_provided()),
            Some(Provider::Builtin) => builtin().ok_or_else(not_provided),
            Some(Provider::Plugin(index)) => {
                let plugin = self.registry.plugin(index);
                let ctor = ctor_of(&plugin.module).ok_or_else(not_provided)?;
                let host = PluginHost::new(plugin.info.name.as_str(), inbox, self.counters.clone());
                let made = Guarded(ctor(
                    RStr::from_str(&choice.name),
                    RStr::from_str(&choice.config),
                    host.boxed(),
                ))
                .await;
                made.map_err(|error| DriverError::Plugin {
                    kind,
                    name: choice.name.as_str().into(),
                    error,
                })
            }
        }
    }
}

/// Awaits a plugin future, turning a panic that escapes it (a plugin that does not catch its
/// own) into an error instead of taking down the host's task.
struct Guarded<F>(F);

impl<T, F: Future<Output = PResult<T>> + Unpin> Future for Guarded<F> {
    type Output = Result<T, PluginError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut self.0).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(answer)) => Poll::Ready(answer.into_result()),
            Err(_) => Poll::Ready(Err(PluginError::panicked("a plugin future panicked in poll"))),
        }
    }
}

/// A driver object with its kind and name, for error messages.
struct Named<T> {
    kind: DriverKind,
    name: Arc<str>,
    inner: T,
}

impl<T> Named<T> {
    fn new(kind: DriverKind, name: &str, inner: T) -> Self {
        Self { kind, name: name.into(), inner }
    }

    fn err(&self, error: PluginError) -> DriverError {
        DriverError::Plugin { kind: self.kind, name: self.name.clone(), error }
    }

    async fn call<R, F>(&self, fut: F) -> Result<R, DriverError>
    where
        F: Future<Output = PResult<R>> + Unpin,
    {
        Guarded(fut).await.map_err(|e| self.err(e))
    }

    fn sync<R>(&self, call: impl FnOnce(&T) -> PResult<R>) -> Result<R, DriverError> {
        match catch_unwind(AssertUnwindSafe(|| call(&self.inner))) {
            Ok(answer) => answer.into_result().map_err(|e| self.err(e)),
            Err(_) => Err(self.err(PluginError::panicked("a plugin call panicked"))),
        }
    }
}

impl<T> std::fmt::Debug for Named<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.kind, self.name)
    }
}

/// The transport, as the host uses it.
#[derive(Debug)]
pub struct Transport(Named<TransportBox>);

impl Transport {
    /// A transport that publishes nowhere, for unit tests of the cluster layer.
    #[cfg(test)]
    pub(crate) fn nowhere() -> Self {
        Self(Named::new(DriverKind::TRANSPORT, "nowhere", super::builtin::nowhere_transport()))
    }

    /// The driver name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Enqueue a message without waiting; BACKPRESSURE if the plugin's queue is full.
    pub fn try_publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), DriverError> {
        self.0.sync(|t| t.try_publish(RStr::from_str(topic), RVec::from(payload)))
    }

    /// Publish and wait for the backend to accept it.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), DriverError> {
        self.0.call(self.0.inner.publish(RStr::from_str(topic), RVec::from(payload))).await
    }

    /// Subscribe and wait for the backend to confirm.
    pub async fn subscribe(&self, topic: &str) -> Result<(), DriverError> {
        self.0.call(self.0.inner.subscribe(RStr::from_str(topic))).await
    }

    /// Unsubscribe and wait for the backend to confirm.
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), DriverError> {
        self.0.call(self.0.inner.unsubscribe(RStr::from_str(topic))).await
    }

    /// The backend's count of nodes, if it can tell.
    pub async fn node_count_hint(&self) -> Result<Option<u64>, DriverError> {
        self.0.call(self.0.inner.node_count_hint()).await.map(|n| n.into_option())
    }

    /// Whether the backend answers.
    pub async fn health(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.health()).await
    }

    /// Release the backend.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.shutdown()).await
    }
}

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// Written.
    Updated,
    /// No such app.
    NotFound,
    /// Another write came first; nothing was written.
    Conflict,
}

/// The app manager, as the host uses it.
#[derive(Debug)]
pub struct AppManager(Named<AppManagerBox>);

impl AppManager {
    /// The driver name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The app with this id, as the driver's JSON record.
    pub async fn find_by_id(&self, id: &str) -> Result<Option<String>, DriverError> {
        let found = self.0.call(self.0.inner.find_by_id(RStr::from_str(id))).await?;
        Ok(found.into_option().map(RString::into_string))
    }

    /// The app with this key, as the driver's JSON record.
    pub async fn find_by_key(&self, key: &str) -> Result<Option<String>, DriverError> {
        let found = self.0.call(self.0.inner.find_by_key(RStr::from_str(key))).await?;
        Ok(found.into_option().map(RString::into_string))
    }

    /// At most `limit` records in id order after `after`.
    pub async fn list(&self, after: &str, limit: u32) -> Result<Vec<String>, DriverError> {
        let page = self.0.call(self.0.inner.list(RStr::from_str(after), limit)).await?;
        Ok(page.into_iter().map(RString::into_string).collect())
    }

    /// Add a record.
    pub async fn create(&self, app: &str) -> Result<(), DriverError> {
        self.0.call(self.0.inner.create(RStr::from_str(app))).await
    }

    /// Replace a record; whether it existed.
    pub async fn update(&self, app: &str) -> Result<bool, DriverError> {
        self.0.call(self.0.inner.update(RStr::from_str(app))).await
    }

    /// Write the fields `changed` of the whole record `app` only if the stored one is still at
    /// version `expected` (through `update` with [`IF_VERSION`](sockhost_plugin_api::IF_VERSION)
    /// and [`CHANGED`](sockhost_plugin_api::CHANGED), so a driver built before conditional
    /// writes, which replaces the record whole and unconditionally, keeps working).
    pub async fn update_if(
        &self,
        app: &str,
        changed: &[String],
        expected: u64,
    ) -> Result<Conditional, DriverError> {
        let mut record: serde_json::Map<String, serde_json::Value> = serde_json::from_str(app)
            .map_err(|e| self.0.err(PluginError::rejected(format!("not a JSON object: {e}"))))?;
        record.insert(sockhost_plugin_api::IF_VERSION.into(), expected.into());
        record.insert(sockhost_plugin_api::CHANGED.into(), changed.into());
        let record = serde_json::Value::Object(record).to_string();
        match self.0.call(self.0.inner.update(RStr::from_str(&record))).await {
            Ok(true) => Ok(Conditional::Updated),
            Ok(false) => Ok(Conditional::NotFound),
            Err(DriverError::Plugin { error, .. }) if error.code == ErrorCode::CONFLICT => {
                Ok(Conditional::Conflict)
            }
            Err(error) => Err(error),
        }
    }

    /// Remove a record; whether it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, DriverError> {
        self.0.call(self.0.inner.delete(RStr::from_str(id))).await
    }

    /// Whether the backend answers.
    pub async fn health(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.health()).await
    }

    /// Release the backend.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.shutdown()).await
    }
}

/// The cache, as the host uses it.
#[derive(Debug)]
pub struct Cache(Named<CacheBox>);

impl Cache {
    /// The driver name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The value under `key`, if present.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, DriverError> {
        let value = self.0.call(self.0.inner.get(RStr::from_str(key))).await?;
        Ok(value.into_option().map(RVec::into_vec))
    }

    /// Store `value` under `key` for `ttl_ms` (0: no expiry).
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> Result<(), DriverError> {
        self.0.call(self.0.inner.set(RStr::from_str(key), RVec::from(value), ttl_ms)).await
    }

    /// Whether `key` holds a value, without reading it.
    pub async fn has(&self, key: &str) -> Result<bool, DriverError> {
        self.0.call(self.0.inner.has(RStr::from_str(key))).await
    }

    /// Remove `key`; whether it was present.
    pub async fn delete(&self, key: &str) -> Result<bool, DriverError> {
        self.0.call(self.0.inner.delete(RStr::from_str(key))).await
    }

    /// Whether the backend answers.
    pub async fn health(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.health()).await
    }

    /// Release the backend.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.shutdown()).await
    }
}

/// The queue, as the host uses it.
#[derive(Debug)]
pub struct Queue(Named<QueueBox>);

impl Queue {
    /// The driver name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Store a job.
    pub async fn push(&self, queue: &str, payload: Vec<u8>) -> Result<(), DriverError> {
        self.0.call(self.0.inner.push(RStr::from_str(queue), RVec::from(payload))).await
    }

    /// Deliver the jobs of `queue` to `work`, on this (the host's) runtime, until shutdown.
    /// `work` answering an error fails the attempt, and the queue retries the job later.
    pub async fn consume<F>(&self, queue: &str, work: F) -> Result<(), DriverError>
    where
        F: Fn(QueuedJob) -> JobFuture + Send + Sync + 'static,
    {
        let handler =
            HostQueueHandler { runtime: tokio::runtime::Handle::current(), work: Arc::new(work) };
        let handler = QueueHandler_TO::from_ptr(RArc::new(handler), TD_Opaque);
        self.0.call(self.0.inner.consume(RStr::from_str(queue), handler)).await
    }

    /// Jobs waiting or being retried.
    pub async fn pending(&self, queue: &str) -> Result<u64, DriverError> {
        self.0.call(self.0.inner.pending(RStr::from_str(queue))).await
    }

    /// Whether the backend answers.
    pub async fn health(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.health()).await
    }

    /// Release the backend.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.shutdown()).await
    }
}

/// A job as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    /// Stable across attempts.
    pub id: String,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// What was pushed.
    pub payload: Vec<u8>,
}

/// Why a job's attempt failed, which decides what the queue does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// This attempt failed; a later one may succeed (the queue retries with backoff until its
    /// maximum of attempts, then keeps the job as a dead letter).
    Retry(String),
    /// No attempt can succeed: the queue keeps the job as a dead letter now.
    GiveUp(String),
}

/// The work a consumer does for one job.
pub type JobFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;

type Work = Arc<dyn Fn(QueuedJob) -> JobFuture + Send + Sync>;

/// The host's side of a queue consumer. The queue calls it on a plugin thread, where the host's
/// runtime is not entered: the work is spawned onto the host's runtime (captured when the
/// consumer was set up) and the plugin awaits only its outcome.
#[derive(Clone)]
struct HostQueueHandler {
    runtime: tokio::runtime::Handle,
    work: Work,
}

impl QueueHandler for HostQueueHandler {
    fn handle(&self, job: Job) -> FfiFuture<PResult<()>> {
        let job =
            QueuedJob { id: job.id.into(), attempt: job.attempt, payload: job.payload.into_vec() };
        let task = self.runtime.spawn((self.work)(job));
        async move {
            let outcome = match task.await {
                Ok(Ok(())) => Ok(()),
                // The queue's convention: REJECTED sets the job aside now, anything else retries.
                Ok(Err(JobError::Retry(why))) => Err(PluginError::unavailable(why)),
                Ok(Err(JobError::GiveUp(why))) => Err(PluginError::rejected(why)),
                Err(e) => Err(PluginError::internal(format!("the job's task failed: {e}"))),
            };
            PResult::from(outcome)
        }
        .into_ffi()
    }
}

/// The rate limiter, as the host uses it.
#[derive(Debug)]
pub struct RateLimiter(Named<RateLimiterBox>);

impl RateLimiter {
    /// The driver name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Check and consume `cost` tokens of `key` against `limit` per `window_ms`.
    pub async fn check(
        &self,
        key: &str,
        cost: u32,
        limit: u32,
        window_ms: u64,
    ) -> Result<RateDecision, DriverError> {
        self.0.call(self.0.inner.check(RStr::from_str(key), cost, limit, window_ms)).await
    }

    /// Whether the backend answers.
    pub async fn health(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.health()).await
    }

    /// Release the backend.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.shutdown()).await
    }
}

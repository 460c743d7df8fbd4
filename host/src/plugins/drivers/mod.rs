//! The constructed drivers, as the rest of the host uses them: plain async methods over
//! host types. This is the only module that calls through the FFI trait objects.

mod app_manager;
mod cache;
mod call;
mod history;
mod queue;
mod rate_limiter;
mod transport;

use std::sync::Arc;

use sockhost_plugin_api::{
    DriverKind, ErrorCode, PResult, PluginError, abi::RStr, host_tcp::TokioHostIo,
};
use tokio::sync::mpsc;

use self::call::{Guarded, Named};
pub use self::{
    app_manager::{AppManager, Conditional},
    cache::Cache,
    history::{Appended, History, StoredEvent, StreamPage},
    queue::{JobError, JobFuture, Queue, QueuedJob},
    rate_limiter::RateLimiter,
    transport::Transport,
};

use super::{
    DriverChoice, DriverSelection, builtin,
    host_context::{INBOX_CAPACITY, Incoming, PluginCounters, PluginHost},
    registry::{Provider, Registry},
};

/// A driver that could not be built or failed a call.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// Channel streams for connection recovery across nodes, when history is on.
    pub history: Option<Arc<History>>,
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
        // Lent before any constructor runs, so that a driver's first connection can use it:
        // the server's one runtime, which lives as long as the process.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            for plugin in registry.plugins() {
                if let Some(take) = plugin.module.host_io() {
                    take(TokioHostIo::on(runtime.clone()).boxed());
                }
            }
        }
        let builder = Builder { registry, counters: &counters };

        let transport = builder
            .build(
                DriverKind::TRANSPORT,
                &selection.transport,
                Some(inbox_tx),
                |m| m.transport(),
                || None,
            )
            .await;
        let cache = builder
            .build(
                DriverKind::CACHE,
                &selection.cache,
                None,
                |m| m.cache(),
                || Some(builtin::none_cache()),
            )
            .await;
        let queue = builder
            .build(
                DriverKind::QUEUE,
                &selection.queue,
                None,
                |m| m.queue(),
                || Some(builtin::none_queue()),
            )
            .await;
        let rate_limiter = builder
            .build(
                DriverKind::RATE_LIMITER,
                &selection.rate_limiter,
                None,
                |m| m.rate_limiter(),
                || Some(builtin::none_rate_limiter()),
            )
            .await;
        let app_manager = builder.app_manager(selection.app_manager.as_ref()).await;
        let history = builder.history(selection.history.as_ref()).await;
        let (transport, cache, queue, rate_limiter, app_manager, history) =
            match (transport, cache, queue, rate_limiter, app_manager, history) {
                (Ok(t), Ok(c), Ok(q), Ok(r), Ok(a), Ok(h)) => (t, c, q, r, a, h),
                (t, c, q, r, a, h) => {
                    errors.extend(t.err());
                    errors.extend(c.err());
                    errors.extend(q.err());
                    errors.extend(r.err());
                    errors.extend(a.err());
                    errors.extend(h.err());
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
            history,
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
        if let Some(history) = &self.history
            && let Err(error) = history.shutdown().await
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

/// What building each driver needs: the plugins, and the counters they report into.
struct Builder<'a> {
    registry: &'a Registry,
    counters: &'a Arc<PluginCounters>,
}

type Ctor<T> = extern "C" fn(
    RStr<'_>,
    RStr<'_>,
    sockhost_plugin_api::HostContextBox,
) -> sockhost_plugin_api::abi::FfiFuture<PResult<T>>;

impl Builder<'_> {
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

    /// The history store, if history is on.
    async fn history(
        &self,
        choice: Option<&DriverChoice>,
    ) -> Result<Option<Arc<History>>, DriverError> {
        let Some(choice) = choice else { return Ok(None) };
        let made = self.build(DriverKind::HISTORY, choice, None, |m| m.history(), || None).await?;
        // Its way onto the bus, from the same driver and configuration, when its plugin has one
        // (one built before it has none: the host then publishes every event itself).
        let bus = match self.registry.provider(DriverKind::HISTORY, &choice.name) {
            Some(Provider::Plugin(index))
                if self.registry.plugin(index).module.history_bus().is_some() =>
            {
                let bus =
                    self.build(DriverKind::HISTORY, choice, None, |m| m.history_bus(), || None);
                Some(Named::new(DriverKind::HISTORY, &choice.name, bus.await?))
            }
            _ => None,
        };
        let named = Named::new(DriverKind::HISTORY, &choice.name, made);
        Ok(Some(Arc::new(History(named, bus))))
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

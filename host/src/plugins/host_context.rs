//! The host's side of the boundary: what plugins call back into.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use sockhost_plugin_api::{
    HostContext, HostContext_TO, HostContextBox, LogLevel,
    abi::{RArc, RStr, RVec, TD_Opaque},
};
use tokio::sync::mpsc;

/// How many incoming bus messages may wait for the host before new ones are dropped (and
/// counted). Bounded so a stalled host cannot grow memory without limit.
pub(super) const INBOX_CAPACITY: usize = 65_536;

/// A message a transport delivered.
pub struct Incoming {
    /// The topic it arrived on.
    pub topic: String,
    payload: RVec<u8>,
}

impl Incoming {
    /// Its bytes, as the plugin handed them over (no copy was made).
    pub fn payload(&self) -> &[u8] {
        self.payload.as_slice()
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("topic", &self.topic)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// Counters plugins report through [`HostContext::metric`], by plugin and name.
#[derive(Debug, Default)]
pub struct PluginCounters(Mutex<BTreeMap<(String, String), i64>>);

impl PluginCounters {
    fn add(&self, plugin: &str, name: &str, delta: i64) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry((plugin.to_owned(), name.to_owned())).or_default() += delta;
        }
    }

    /// Every counter: `((plugin, name), value)`.
    pub fn snapshot(&self) -> Vec<((String, String), i64)> {
        self.0.lock().map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default()
    }
}

/// The context handed to one plugin's drivers.
#[derive(Clone)]
pub(super) struct PluginHost {
    plugin: Arc<str>,
    inbox: Option<mpsc::Sender<Incoming>>,
    counters: Arc<PluginCounters>,
    drops_logged: Arc<crate::telemetry::LogLimiter>,
}

impl PluginHost {
    /// A context for `plugin`; messages go to `inbox` (transports only).
    pub(super) fn new(
        plugin: &str,
        inbox: Option<mpsc::Sender<Incoming>>,
        counters: Arc<PluginCounters>,
    ) -> Self {
        Self { plugin: plugin.into(), inbox, counters, drops_logged: Default::default() }
    }

    /// As the FFI object constructors take.
    pub(super) fn boxed(self) -> HostContextBox {
        HostContext_TO::from_ptr(RArc::new(self), TD_Opaque)
    }
}

impl HostContext for PluginHost {
    fn on_message(&self, topic: RStr<'_>, payload: RVec<u8>) {
        let Some(inbox) = &self.inbox else { return };
        // try_send needs no runtime: this runs on a plugin thread.
        if inbox.try_send(Incoming { topic: topic.into(), payload }).is_err() {
            self.counters.add(&self.plugin, "host_inbox_dropped", 1);
            if self.drops_logged.allow() {
                tracing::warn!(
                    plugin = %self.plugin,
                    "Bus messages are being dropped: the host's inbox is full (counted in plugin_events{{name=\"host_inbox_dropped\"}})."
                );
            }
        }
    }

    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        let (plugin, module, message) = (&*self.plugin, target.as_str(), message.as_str());
        match level {
            LogLevel::ERROR => tracing::error!(target: "plugin", plugin, module, "{message}"),
            LogLevel::WARN => tracing::warn!(target: "plugin", plugin, module, "{message}"),
            LogLevel::INFO => tracing::info!(target: "plugin", plugin, module, "{message}"),
            LogLevel::DEBUG => tracing::debug!(target: "plugin", plugin, module, "{message}"),
            _ => tracing::trace!(target: "plugin", plugin, module, "{message}"),
        }
    }

    fn metric(&self, name: RStr<'_>, delta: i64) {
        self.counters.add(&self.plugin, name.as_str(), delta);
    }

    fn max_log_level(&self) -> LogLevel {
        use tracing::level_filters::LevelFilter;
        match LevelFilter::current() {
            LevelFilter::OFF => LogLevel::OFF,
            LevelFilter::ERROR => LogLevel::ERROR,
            LevelFilter::WARN => LogLevel::WARN,
            LevelFilter::INFO => LogLevel::INFO,
            LevelFilter::DEBUG => LogLevel::DEBUG,
            _ => LogLevel::TRACE,
        }
    }
}

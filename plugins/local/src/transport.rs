//! The `local` transport: an in-process bus.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use serde::Deserialize;
use sockhost_plugin_api::{
    HostContextBox, PluginError, abi::RStr, abi::RVec, sdk::TransportDriver,
};

/// The `local` transport takes no settings; the table exists so that a typo is refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalConfig {}

/// Who is attached to the bus of this process and what they listen to.
#[derive(Default)]
struct Bus {
    members: HashMap<u64, HostContextBox>,
    topics: HashMap<String, HashSet<u64>>,
}

fn bus() -> &'static RwLock<Bus> {
    static BUS: std::sync::OnceLock<RwLock<Bus>> = std::sync::OnceLock::new();
    BUS.get_or_init(RwLock::default)
}

fn unavailable() -> PluginError {
    PluginError::unavailable("the local transport is shut down")
}

/// One instance attached to the process bus.
pub struct LocalTransport {
    id: u64,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTransport").field("id", &self.id).finish_non_exhaustive()
    }
}

impl LocalTransport {
    /// Attach a new instance to this process's bus; its deliveries go to `host`.
    pub fn new(config: &str, host: HostContextBox) -> Result<Self, PluginError> {
        let LocalConfig {} = sockhost_plugin_api::sdk::config::parse("adapter.local", config)?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        write_bus()?.members.insert(id, host);
        tracing::debug!(instance = id, "Attached to the in-process bus.");
        Ok(Self { id, closed: Arc::default() })
    }

    /// Deliver to every other instance subscribed to `topic`, synchronously: the host's
    /// `on_message` only enqueues, so this never blocks and needs no queue of its own.
    fn deliver(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(unavailable());
        }
        let bus = bus().read().map_err(|_| PluginError::internal("the bus lock is poisoned"))?;
        let Some(subscribers) = bus.topics.get(topic) else {
            return Ok(());
        };
        let receivers: Vec<&HostContextBox> = subscribers
            .iter()
            .filter(|id| **id != self.id)
            .filter_map(|id| bus.members.get(id))
            .collect();
        // The last receiver takes the buffer itself; the others get copies.
        if let Some((last, others)) = receivers.split_last() {
            for host in others {
                host.on_message(RStr::from_str(topic), payload.clone());
            }
            last.on_message(RStr::from_str(topic), payload);
        }
        Ok(())
    }

    fn check_open(&self) -> Result<(), PluginError> {
        if self.closed.load(Ordering::Acquire) { Err(unavailable()) } else { Ok(()) }
    }
}

fn write_bus() -> Result<std::sync::RwLockWriteGuard<'static, Bus>, PluginError> {
    bus().write().map_err(|_| PluginError::internal("the bus lock is poisoned"))
}

impl TransportDriver for LocalTransport {
    fn try_publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.deliver(topic, payload)
    }

    async fn publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.deliver(topic, payload)
    }

    async fn subscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        write_bus()?.topics.entry(topic.to_owned()).or_default().insert(self.id);
        Ok(())
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        let mut bus = write_bus()?;
        if let Some(subscribers) = bus.topics.get_mut(topic) {
            subscribers.remove(&self.id);
            if subscribers.is_empty() {
                bus.topics.remove(topic);
            }
        }
        Ok(())
    }

    async fn node_count_hint(&self) -> Result<Option<u64>, PluginError> {
        self.check_open()?;
        let bus = bus().read().map_err(|_| PluginError::internal("the bus lock is poisoned"))?;
        Ok(Some(bus.members.len() as u64))
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.check_open()
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut bus = write_bus()?;
        bus.members.remove(&self.id);
        bus.topics.retain(|_, subscribers| {
            subscribers.remove(&self.id);
            !subscribers.is_empty()
        });
        tracing::debug!(instance = self.id, "Detached from the in-process bus.");
        Ok(())
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        // A transport dropped without shutdown must not leave its context on the bus.
        if let Ok(mut bus) = bus().write() {
            bus.members.remove(&self.id);
            bus.topics.retain(|_, subscribers| {
                subscribers.remove(&self.id);
                !subscribers.is_empty()
            });
        }
    }
}

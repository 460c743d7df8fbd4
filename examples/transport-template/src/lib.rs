//! A template transport: the smallest complete plugin, meant to be copied.
//!
//! It moves messages between the instances of one process through a shared table (what the
//! conformance kit exercises); a real transport puts its network client where `deliver` is.
//! The rest is what every transport needs, the way the server expects it:
//!
//! 1. **`export_plugin!`** writes the root module the loader checks and one constructor per
//!    kind (run on this plugin's own tokio runtime, panics caught, logs forwarded).
//! 2. **`sdk::config`** parses the driver's table (`[adapter.template]`), naming any bad field.
//! 3. **`sdk::outbox`**: the hot path (`try_publish`) enqueues and returns at once, answering
//!    BACKPRESSURE when full; one writer task sends in order, in batches.
//! 4. **`subscribe`** resolves only once every later publish reaches this instance.
//! 5. **`shutdown`** flushes what was accepted, then refuses every later call.
// `#[export_root_module]` (inside `export_plugin!`) is an exported static: the lint says unsafe.
#![allow(unsafe_code)]

use std::{
    collections::HashMap,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;
use sockhost_plugin_api::{
    HostContextBox, PluginError,
    abi::{RStr, RVec},
    sdk::{self, TransportDriver, outbox::Outbox},
};

sockhost_plugin_api::export_plugin! {
    name: "template",
    transport: ["template"] => |args| async move {
        let config: Config = sdk::config::parse("adapter.template", &args.config)?;
        Ok(sdk::transport_box(args.runtime, TemplateTransport::new(config, args.host)))
    },
}

/// `[adapter.template]`: unknown fields are refused, naming them.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Messages that may wait for the writer before `try_publish` pushes back.
    queue_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { queue_capacity: 8192 }
    }
}

/// The stand-in for a broker: who listens to which topic, in this process.
fn table() -> &'static Mutex<HashMap<String, HashMap<u64, HostContextBox>>> {
    static TABLE: OnceLock<Mutex<HashMap<String, HashMap<u64, HostContextBox>>>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// The stand-in for a network send: every other instance listening gets the message.
fn deliver(from: u64, topic: &str, payload: &RVec<u8>) {
    let Ok(table) = table().lock() else { return };
    for (_, host) in table.get(topic).into_iter().flatten().filter(|(id, _)| **id != from) {
        host.on_message(RStr::from_str(topic), payload.clone());
    }
}

/// One transport instance (the server makes one per process).
pub struct TemplateTransport {
    id: u64,
    host: HostContextBox,
    outbox: Outbox,
    closed: AtomicBool,
}

impl TemplateTransport {
    fn new(config: Config, host: HostContextBox) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let (outbox, mut outgoing) = Outbox::new("template", config.queue_capacity);
        // The writer, on this plugin's runtime (the constructor runs there). A real transport
        // writes each batch to its connection, and settles each message with the outcome.
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while outgoing.recv_many(&mut batch, 256).await > 0 {
                for message in batch.drain(..) {
                    deliver(id, &message.channel, &message.payload);
                    message.settle(Ok(()));
                }
            }
        });
        tracing::info!(instance = id, "Template transport ready.");
        Self { id, host, outbox, closed: AtomicBool::new(false) }
    }

    fn check_open(&self) -> Result<(), PluginError> {
        match self.closed.load(Ordering::Acquire) {
            true => Err(PluginError::unavailable("the template transport is shut down")),
            false => Ok(()),
        }
    }

    fn listeners(&self, topic: &str, listen: bool) {
        if let Ok(mut table) = table().lock() {
            let listeners = table.entry(topic.to_owned()).or_default();
            if listen {
                listeners.insert(self.id, self.host.clone());
            } else {
                listeners.remove(&self.id);
            }
        }
    }
}

impl TransportDriver for TemplateTransport {
    fn try_publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.outbox.try_publish(topic.to_owned(), payload)
    }

    async fn publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.outbox.publish(topic.to_owned(), payload).await
    }

    async fn subscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        // A broker's transport returns after the broker confirmed (SUBACK, Bind-Ok, ...).
        self.listeners(topic, true);
        Ok(())
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        self.listeners(topic, false);
        Ok(())
    }

    async fn node_count_hint(&self) -> Result<Option<u64>, PluginError> {
        self.check_open().map(|()| None)
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.check_open()
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.outbox.drain(Duration::from_secs(5)).await;
            let topics: Vec<String> =
                table().lock().map(|t| t.keys().cloned().collect()).unwrap_or_default();
            topics.iter().for_each(|topic| self.listeners(topic, false));
        }
        Ok(())
    }
}

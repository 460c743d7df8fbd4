//! A template transport: the smallest complete plugin, meant to be copied.
//!
//! It moves messages between the instances of one process through a shared table (which is
//! what the conformance kit exercises); a real transport puts a network client where the
//! `deliver` function is. Everything else is what every transport needs, in the shape the
//! server expects:
//!
//! 1. **The root module** (`root_module`): what the loader finds in the `.so`. It names the
//!    plugin, lists its drivers and gives one constructor per kind it provides.
//! 2. **The constructor** (`new_transport`): runs through `sdk::create`, which installs the log
//!    bridge, starts this plugin's own tokio runtime on first use, runs the body on it and
//!    catches panics. Never use the host's runtime: none crosses the boundary.
//! 3. **The hot path** (`try_publish`): called by the server for every broadcast, on its own
//!    threads, and must not block: hand the message to a bounded queue and return; a full
//!    queue answers `BACKPRESSURE` (the server counts it; it never waits).
//! 4. **Errors**: `PluginError` with a code (`config` for bad settings, naming the field;
//!    `unavailable` when the backend is down, so the server retries later).
//! 5. **Logging**: plain `tracing` macros; the SDK forwards them to the server's log, filtered
//!    at the server's level.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

use std::{
    collections::HashMap,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use sockhost_plugin_api::{
    DriverDecl, DriverKind, HostContextBox, PResult, PluginError, PluginInfo, PluginModule,
    PluginModule_Ref, TransportBox,
    abi::{FfiFuture, PrefixTypeTrait as _, RStr, RVec},
    sdk::{self, TransportDriver},
};
use tokio::sync::mpsc;

/// The plugin's name, as `sockhost plugins list` shows it.
pub const PLUGIN: &str = "template";

/// What this plugin provides: here one transport, named as operators select it
/// (`[adapter] driver = "template"`).
const DRIVERS: &[DriverDecl] = &[DriverDecl::new(DriverKind::TRANSPORT, "template")];

/// Step 1, the root module. The loader checks its layout and the plugin-api version before it
/// calls anything; kinds this plugin does not provide are `None`. (Steps 1 and 2 are written
/// out here to show them; `sockhost_plugin_api::export_plugin!` declares both in a few lines,
/// as every plugin of the sockhost repository does.)
#[abi_stable::export_root_module]
pub fn root_module() -> PluginModule_Ref {
    PluginModule {
        info,
        transport: Some(new_transport),
        cache: None,
        queue: None,
        rate_limiter: None,
        app_manager: None,
        history: None,
    }
    .leak_into_prefix()
}

extern "C" fn info() -> PluginInfo {
    PluginInfo::new(PLUGIN, env!("CARGO_PKG_VERSION"), DRIVERS)
}

/// Step 2, the constructor. `config` is the driver's own table (`[adapter.template]`) as TOML
/// text; `host` is how messages, logs and metrics reach the server.
extern "C" fn new_transport(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<TransportBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| async move {
        if !args.config.trim().is_empty() {
            // 4. A configuration error names the field, so the server's one-line refusal at
            // start-up tells the operator what to fix.
            return Err(PluginError::config("adapter.template: takes no settings"));
        }
        let transport = TemplateTransport::new(args.host);
        // `transport_box` wraps the driver so every call is guarded and awaited calls run on
        // this plugin's runtime.
        Ok(sdk::transport_box(args.runtime, transport))
    })
}

/// Messages that may wait for the writer; beyond this `try_publish` answers BACKPRESSURE.
const QUEUE: usize = 8192;

/// The stand-in for a broker: who listens to which topic, in this process.
#[derive(Default)]
struct Table {
    listeners: HashMap<String, HashMap<u64, HostContextBox>>,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// The stand-in for a network send: hand the message to every other instance listening.
/// `on_message` only enqueues on the server's side, so calling it here never blocks.
fn deliver(from: u64, topic: &str, payload: RVec<u8>) {
    let Ok(table) = table().lock() else { return };
    for (id, host) in table.listeners.get(topic).into_iter().flatten() {
        if *id != from {
            host.on_message(RStr::from_str(topic), payload.clone());
        }
    }
}

/// One transport instance (the server makes one per process).
pub struct TemplateTransport {
    id: u64,
    host: HostContextBox,
    outgoing: mpsc::Sender<(String, RVec<u8>)>,
    closed: AtomicBool,
}

impl std::fmt::Debug for TemplateTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateTransport").field("id", &self.id).finish_non_exhaustive()
    }
}

impl TemplateTransport {
    fn new(host: HostContextBox) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let (outgoing, mut queue) = mpsc::channel::<(String, RVec<u8>)>(QUEUE);
        // The writer: one task on this plugin's runtime (the constructor runs on it, so
        // `tokio::spawn` lands there). A real transport writes to its connection here, in
        // batches, and reconnects when the connection is lost.
        tokio::spawn(async move {
            while let Some((topic, payload)) = queue.recv().await {
                deliver(id, &topic, payload);
            }
        });
        // 5. Logging: the server shows this as a line from plugin `template`.
        tracing::info!(instance = id, "Template transport ready.");
        Self { id, host, outgoing, closed: AtomicBool::new(false) }
    }

    fn check_open(&self) -> Result<(), PluginError> {
        if self.closed.load(Ordering::Acquire) {
            Err(PluginError::unavailable("the template transport is shut down"))
        } else {
            Ok(())
        }
    }
}

impl TransportDriver for TemplateTransport {
    /// Step 3, the hot path: enqueue and return at once.
    fn try_publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.outgoing.try_send((topic.to_owned(), payload)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                PluginError::backpressure("template: the publish queue is full")
            }
            mpsc::error::TrySendError::Closed(_) => {
                PluginError::unavailable("template: the writer has stopped")
            }
        })
    }

    /// The awaited publish (rare messages the server must know were sent): wait for room.
    async fn publish(&self, topic: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        self.check_open()?;
        self.outgoing
            .send((topic.to_owned(), payload))
            .await
            .map_err(|_| PluginError::unavailable("template: the writer has stopped"))
    }

    /// Resolve only once messages published to `topic` from now on will arrive: the server
    /// acknowledges a client's subscription after this.
    async fn subscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        let mut table = table().lock().map_err(|_| PluginError::internal("lock poisoned"))?;
        table.listeners.entry(topic.to_owned()).or_default().insert(self.id, self.host.clone());
        Ok(())
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), PluginError> {
        self.check_open()?;
        let mut table = table().lock().map_err(|_| PluginError::internal("lock poisoned"))?;
        if let Some(listeners) = table.listeners.get_mut(topic) {
            listeners.remove(&self.id);
        }
        Ok(())
    }

    /// How many server nodes share the bus, if the backend can tell; `None` is fine (the
    /// server counts nodes by their heartbeats).
    async fn node_count_hint(&self) -> Result<Option<u64>, PluginError> {
        self.check_open()?;
        Ok(None)
    }

    /// Whether the backend answers now (the server's `/up` reports it).
    async fn health(&self) -> Result<(), PluginError> {
        self.check_open()
    }

    /// Stop: later calls answer UNAVAILABLE; a second shutdown is fine.
    async fn shutdown(&self) -> Result<(), PluginError> {
        if !self.closed.swap(true, Ordering::AcqRel)
            && let Ok(mut table) = table().lock()
        {
            for listeners in table.listeners.values_mut() {
                listeners.remove(&self.id);
            }
        }
        Ok(())
    }
}

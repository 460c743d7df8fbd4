//! Conformance suites: the behaviour every driver of a kind must show, written once and run by
//! every plugin, ours and third parties', against its own built `.so`.
//!
//! A plugin's `tests/conformance.rs` names a function that describes the driver under test (the
//! library, the driver name, its configuration, and anything that must stay alive meanwhile,
//! such as a backing server) and expands one suite per kind it provides:
//!
//! ```text
//! use sockhost_plugin_api::conformance::{self, Target};
//!
//! fn local() -> Target {
//!     Target::new(conformance::cdylib("sockhost_local"), "local", "")
//! }
//! sockhost_plugin_api::transport_suite!(local);
//! ```
//!
//! Each case is its own `#[test]`, so a failure names the behaviour that broke. Cases load the
//! library through the same checks as the host, construct drivers with a [`TestHost`] context,
//! and never assert timings: they wait for events with generous deadlines.

pub mod cache;
pub mod history;
pub mod queue;
pub mod rate_limiter;
pub mod transport;
mod wait;

pub use wait::{Outcome, eventually, eventually_within, holds};

use std::{
    any::Any,
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RStr, RVec},
};
use tokio::sync::mpsc;

use crate::{
    CacheBox, HistoryBox, HistoryBusBox, HostContext, HostContext_TO, HostContextBox, LogLevel,
    PluginError, QueueBox, RateLimiterBox, TransportBox, load,
};

/// How long a case waits for something that should happen; long, because a loaded CI machine
/// is slow, and a passing case never waits this long.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The path of the `cdylib` named `lib_name` (e.g. `sockhost_local`) in the target directory
/// this test binary was built into (`target/<profile>/lib<name>.so`).
///
/// # Panics
/// If the test binary's own path cannot be read.
pub fn cdylib(lib_name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test binary>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    profile_dir.join(format!(
        "{}{lib_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

/// The driver under test.
pub struct Target {
    /// The plugin library.
    pub library: PathBuf,
    /// The driver name to construct.
    pub driver: String,
    /// The driver's configuration (TOML text).
    pub config: String,
    keep_alive: Vec<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("library", &self.library)
            .field("driver", &self.driver)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// The driver `driver` of `library`, configured with `config`.
    pub fn new(library: PathBuf, driver: &str, config: &str) -> Self {
        Self { library, driver: driver.into(), config: config.into(), keep_alive: Vec::new() }
    }

    /// Keep `value` (a backing server, a temp dir) alive until the case ends.
    #[must_use]
    pub fn keep(mut self, value: impl Any + Send) -> Self {
        self.keep_alive.push(Box::new(value));
        self
    }

    /// Open the library with the ABI checks the host applies.
    ///
    /// # Panics
    /// If the library is refused.
    pub fn module(&self) -> load::Module {
        let module = load::open(&self.library)
            .unwrap_or_else(|e| panic!("{} was refused: {e}", self.library.display()));
        if let Some(take) = module.host_io() {
            take(lent_runtime());
        }
        module
    }

    /// Construct a transport with a fresh [`TestHost`].
    ///
    /// # Panics
    /// If the plugin provides no transports or the constructor fails.
    pub async fn transport(&self) -> (TransportBox, TestHost) {
        let ctor = self.module().transport().expect("the plugin provides no transport");
        let host = TestHost::default();
        let made = ctor(self.driver(), self.config(), host.boxed()).await.into_result();
        (made.unwrap_or_else(|e| panic!("constructing transport {}: {e}", self.driver)), host)
    }

    /// Construct a cache.
    ///
    /// # Panics
    /// If the plugin provides no caches or the constructor fails.
    pub async fn cache(&self) -> CacheBox {
        let ctor = self.module().cache().expect("the plugin provides no cache");
        let made = ctor(self.driver(), self.config(), TestHost::default().boxed()).await;
        made.into_result().unwrap_or_else(|e| panic!("constructing cache {}: {e}", self.driver))
    }

    /// Construct a queue.
    ///
    /// # Panics
    /// If the plugin provides no queues or the constructor fails.
    pub async fn queue(&self) -> QueueBox {
        let ctor = self.module().queue().expect("the plugin provides no queue");
        let made = ctor(self.driver(), self.config(), TestHost::default().boxed()).await;
        made.into_result().unwrap_or_else(|e| panic!("constructing queue {}: {e}", self.driver))
    }

    /// Construct a rate limiter.
    ///
    /// # Panics
    /// If the plugin provides no rate limiters or the constructor fails.
    pub async fn rate_limiter(&self) -> RateLimiterBox {
        let ctor = self.module().rate_limiter().expect("the plugin provides no rate limiter");
        let made = ctor(self.driver(), self.config(), TestHost::default().boxed()).await;
        made.into_result()
            .unwrap_or_else(|e| panic!("constructing rate limiter {}: {e}", self.driver))
    }

    /// Construct a history store.
    ///
    /// # Panics
    /// If the plugin provides no history stores or the constructor fails.
    pub async fn history(&self) -> HistoryBox {
        let ctor = self.module().history().expect("the plugin provides no history store");
        let made = ctor(self.driver(), self.config(), TestHost::default().boxed()).await;
        made.into_result().unwrap_or_else(|e| panic!("constructing history {}: {e}", self.driver))
    }

    /// Construct a history store's way onto the bus, from the history store's driver and
    /// configuration; `None` when the plugin has none.
    ///
    /// # Panics
    /// If the constructor fails.
    pub async fn history_bus(&self) -> Option<HistoryBusBox> {
        let ctor = self.module().history_bus()?;
        let made = ctor(self.driver(), self.config(), TestHost::default().boxed()).await;
        Some(
            made.into_result()
                .unwrap_or_else(|e| panic!("constructing history bus {}: {e}", self.driver)),
        )
    }

    fn driver(&self) -> RStr<'_> {
        RStr::from_str(&self.driver)
    }

    fn config(&self) -> RStr<'_> {
        RStr::from_str(&self.config)
    }
}

/// A message as a transport delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The topic it arrived on.
    pub topic: String,
    /// Its bytes.
    pub payload: Vec<u8>,
}

/// A host context for tests: records deliveries and metrics, prints logs to stderr.
#[derive(Clone)]
pub struct TestHost {
    deliveries_tx: mpsc::UnboundedSender<Delivery>,
    deliveries_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>>,
    metrics: Arc<Mutex<BTreeMap<String, i64>>>,
    delivered: Arc<std::sync::atomic::AtomicUsize>,
    /// While true, `on_message` waits: a host that has stopped taking messages.
    blocked: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl std::fmt::Debug for TestHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHost").finish_non_exhaustive()
    }
}

impl Default for TestHost {
    fn default() -> Self {
        let (deliveries_tx, rx) = mpsc::unbounded_channel();
        Self {
            deliveries_tx,
            deliveries_rx: Arc::new(tokio::sync::Mutex::new(rx)),
            metrics: Arc::default(),
            delivered: Arc::default(),
            blocked: Arc::default(),
        }
    }
}

impl TestHost {
    /// This context as the FFI object a constructor takes.
    pub fn boxed(&self) -> HostContextBox {
        HostContext_TO::from_ptr(RArc::new(self.clone()), TD_Opaque)
    }

    /// The next delivery, or `None` if none comes within `wait`.
    pub async fn next_within(&self, wait: Duration) -> Option<Delivery> {
        let mut rx = self.deliveries_rx.lock().await;
        tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
    }

    /// The next delivery.
    ///
    /// # Panics
    /// If none arrives within [`PATIENCE`].
    pub async fn next(&self) -> Delivery {
        self.next_within(PATIENCE).await.expect("no message was delivered within the deadline")
    }

    /// Deliveries already received and not yet taken, without waiting.
    pub async fn drain(&self) -> Vec<Delivery> {
        let mut rx = self.deliveries_rx.lock().await;
        let mut out = Vec::new();
        while let Ok(d) = rx.try_recv() {
            out.push(d);
        }
        out
    }

    /// How many messages have been delivered so far, taken or not.
    pub fn delivered(&self) -> usize {
        self.delivered.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Make every delivery wait (the thread delivering blocks) until
    /// [`TestHost::unblock_deliveries`]: a host too slow for what arrives.
    pub fn block_deliveries(&self) {
        if let Ok(mut blocked) = self.blocked.0.lock() {
            *blocked = true;
        }
    }

    /// Let deliveries through again.
    pub fn unblock_deliveries(&self) {
        if let Ok(mut blocked) = self.blocked.0.lock() {
            *blocked = false;
        }
        self.blocked.1.notify_all();
    }

    /// The plugin's counter `name` as reported through [`HostContext::metric`].
    pub fn metric(&self, name: &str) -> i64 {
        self.metrics.lock().map(|m| m.get(name).copied().unwrap_or(0)).unwrap_or(0)
    }
}

impl HostContext for TestHost {
    fn on_message(&self, topic: RStr<'_>, payload: RVec<u8>) {
        let (lock, wake) = &*self.blocked;
        if let Ok(mut blocked) = lock.lock() {
            while *blocked {
                match wake.wait(blocked) {
                    Ok(guard) => blocked = guard,
                    Err(_) => return,
                }
            }
        }
        self.delivered.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _ = self.deliveries_tx.send(Delivery { topic: topic.into(), payload: payload.into() });
    }

    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        eprintln!("[plugin {level:?} {target}] {message}");
    }

    fn metric(&self, name: RStr<'_>, delta: i64) {
        if let Ok(mut m) = self.metrics.lock() {
            *m.entry(name.into()).or_default() += delta;
        }
    }

    fn max_log_level(&self) -> LogLevel {
        // Client libraries log every message at debug level: a burst test would print 100,000
        // lines. Info and above is what a failure needs.
        LogLevel::INFO
    }
}

/// The runtime the harness lends plugins, as a host lends its own ([`crate::HostIo`]): one
/// for the process, never shut down, since a plugin keeps the first it is lent and each case
/// runs on a runtime of its own that ends with it.
fn lent_runtime() -> crate::HostIoBox {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("harness-host-io")
            .enable_all()
            .build()
            .expect("the harness's host runtime starts")
    });
    crate::host_tcp::TokioHostIo::on(runtime.handle().clone()).boxed()
}

/// Run one case on a fresh multi-thread runtime, as the host would poll the driver.
///
/// # Panics
/// If the runtime cannot start, or the case panics.
pub fn run<F: Future<Output = ()>>(case: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime")
        .block_on(case);
}

/// Unwrap a driver answer with the operation's name in the panic message.
///
/// # Panics
/// If the answer is an error.
#[track_caller]
pub fn ok<T>(what: &str, answer: crate::PResult<T>) -> T {
    answer.into_result().unwrap_or_else(|e: PluginError| panic!("{what} failed: {e}"))
}

/// Expand one `#[test]` per case of a suite module, each calling `$case(&$target())`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($module:ident, $target:path, [$($case:ident),* $(,)?]) => {
        $(
            #[test]
            fn $case() {
                let target = $target();
                $crate::conformance::run($crate::conformance::$module::$case(&target));
            }
        )*
    };
}

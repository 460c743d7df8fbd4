//! The plugin's own tokio runtime.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

/// Worker threads per plugin runtime. Two: the prototype measured twice the throughput of one
/// for spawned work, and a plugin's IO is mostly waiting.
const WORKERS: usize = 2;

/// This plugin's runtime, created on first use with threads named `<plugin>-rt`.
///
/// The static lives in the plugin's image (every `cdylib` has its own copy of this code), so
/// each plugin gets its own runtime. It is never shut down: plugins are never unloaded, and
/// dropping a runtime from inside an async context panics.
///
/// # Panics
/// If the operating system refuses to start the threads, which leaves nothing to run on.
pub fn runtime(plugin: &str) -> &'static Handle {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(WORKERS)
                .thread_name(format!("{plugin}-rt"))
                .enable_all()
                .build()
                .expect("the plugin runtime's threads could not be started")
        })
        .handle()
}

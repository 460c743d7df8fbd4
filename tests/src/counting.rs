//! A host context for benchmarks: counts deliveries and drops them, so a measurement sees the
//! boundary and the transport, not a channel behind them.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use sockhost_plugin_api::{
    HostContext, HostContext_TO, HostContextBox, LogLevel,
    abi::{RArc, RStr, RVec, TD_Opaque},
};

#[derive(Clone)]
struct Counting(Arc<AtomicU64>);

impl HostContext for Counting {
    fn on_message(&self, _topic: RStr<'_>, _payload: RVec<u8>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn log(&self, _level: LogLevel, _target: RStr<'_>, _message: RStr<'_>) {}
    fn metric(&self, _name: RStr<'_>, _delta: i64) {}
    fn max_log_level(&self) -> LogLevel {
        LogLevel::WARN
    }
}

/// A context and the counter of what it was handed.
pub fn counting_host() -> (HostContextBox, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    (HostContext_TO::from_ptr(RArc::new(Counting(count.clone())), TD_Opaque), count)
}

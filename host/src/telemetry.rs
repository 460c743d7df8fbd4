//! Logging.

use tracing_subscriber::{EnvFilter, fmt};

pub use crate::config::{LogColor, LogFormat, LogSettings};

/// Log to standard error as `settings` say, filtered by `RUST_LOG` (default: `info`, or
/// sockhost's debug lines too with `debug`). Only the first call takes effect.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(if settings.debug { "info,sockhost=debug" } else { "info" })
    });
    let _ = match settings.format {
        LogFormat::Text => fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(settings.ansi())
            .try_init(),
        LogFormat::Json => fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// Lets a log line through at most once a second, so a flood of one kind of event (refused
/// input, accept errors) is logged without flooding the log; the events are counted in
/// metrics either way.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last_ms: std::sync::atomic::AtomicU64,
}

impl LogLimiter {
    /// One that lets the next line through (for a `static`).
    pub const fn new() -> Self {
        Self { last_ms: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Whether to log now.
    pub fn allow(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

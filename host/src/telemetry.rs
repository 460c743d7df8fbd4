//! Logging.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogConfig;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object a line, with the current span's fields (the connection's socket id and
    /// app, the HTTP request's method and path).
    Json,
}

/// Whether text logs carry ANSI colour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogColor {
    /// On a terminal, unless `NO_COLOR` is set.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The validated `[log]` settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogSettings {
    /// The format.
    pub format: LogFormat,
    /// Colour, for text.
    pub color: LogColor,
    /// Debug lines from sockhost when `RUST_LOG` is unset.
    pub debug: bool,
}

impl LogSettings {
    /// From the config file's `[log]` and `debug`; a bad value names its field.
    pub fn parse(config: &LogConfig, debug: bool) -> Result<Self, (&'static str, String)> {
        let format = match config.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(("log.format", format!("`{other}` is not `text` or `json`"))),
        };
        let color = match config.color.as_str() {
            "auto" => LogColor::Auto,
            "always" => LogColor::Always,
            "never" => LogColor::Never,
            other => {
                return Err(("log.color", format!("`{other}` is not `auto`, `always` or `never`")));
            }
        };
        Ok(Self { format, color, debug })
    }

    /// Whether text lines get colour: `auto` means standard error is a terminal and `NO_COLOR`
    /// is unset or empty (<https://no-color.org>).
    pub fn ansi(&self) -> bool {
        match self.color {
            LogColor::Always => true,
            LogColor::Never => false,
            LogColor::Auto => {
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

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

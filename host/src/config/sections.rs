//! The validated sections the layers above configuration read as they are: which driver
//! serves each kind, the cluster's timing, and how logs are written. Here, at the bottom, so
//! that configuration imports nothing above it.

use std::{io::IsTerminal as _, time::Duration};

use super::LogConfig;

/// Which driver serves each kind, with its configuration text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverChoice {
    /// The driver name.
    pub name: String,
    /// Its configuration table as TOML text.
    pub config: String,
}

impl DriverChoice {
    /// `name` with default configuration.
    pub fn named(name: &str) -> Self {
        Self { name: name.to_string(), config: String::new() }
    }
}

/// The drivers the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSelection {
    /// The transport (adapter).
    pub transport: DriverChoice,
    /// The cache.
    pub cache: DriverChoice,
    /// The queue.
    pub queue: DriverChoice,
    /// The rate limiter.
    pub rate_limiter: DriverChoice,
    /// The app manager; `None` for `memory` (the configuration file's apps).
    pub app_manager: Option<DriverChoice>,
    /// The history store; `None` when history is off.
    pub history: Option<DriverChoice>,
}

impl Default for DriverSelection {
    /// The reference's defaults: a single node with in-memory drivers.
    fn default() -> Self {
        Self {
            transport: DriverChoice::named("local"),
            cache: DriverChoice::named("memory"),
            queue: DriverChoice::named("memory"),
            rate_limiter: DriverChoice::named("memory"),
            app_manager: None,
            history: None,
        }
    }
}

/// Cluster timing, from `cluster_health` and the adapter settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// How often a node says it is alive.
    pub heartbeat_interval: Duration,
    /// Silence after which a node is dead.
    pub node_timeout: Duration,
    /// How often dead nodes are looked for.
    pub cleanup_interval: Duration,
    /// How long a full request waits for answers.
    pub requests_timeout: Duration,
    /// Share connection counts, so app connection quotas hold for the whole cluster.
    pub socket_counting: bool,
    /// The cluster secret that seals every envelope; `None` sends them unauthenticated.
    pub secret: Option<String>,
}

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

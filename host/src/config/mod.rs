//! Configuration: the file's shape with its defaults ([`Config`]), how the layers are merged
//! ([`load`]), and the validated result the server runs with ([`Settings`]).
//!
//! Layers, each overriding the one before: built-in defaults, the config file (TOML, or JSON in
//! the reference's shape), environment variables (the reference's names: `HOST`, `PORT`,
//! `ADAPTER_DRIVER`, ...), then command-line flags. Unknown keys and invalid values are refused
//! at start, every problem listed at once.

mod app;
mod delta_rules;
mod file;
mod load;
mod sections;
mod settings;

pub use app::{App, AppRecovery};
pub use delta_rules::{Algorithm, ChannelRules, StreamSettings};
pub use file::{
    AppConfig, AppHistoryConfig, AppRecoveryConfig, Config, DriverSection, LogConfig,
    StoreFailurePolicy, WebhookTarget,
};
pub use load::{ConfigError, Sources, load, settings};
pub use sections::{
    ClusterSettings, DriverChoice, DriverSelection, LogColor, LogFormat, LogSettings,
};
pub use settings::{
    AdminSettings, AppRecordRules, EdgeSettings, HistoryLimits, IdempotencySettings, Limits,
    OverloadSettings, RecoverySettings, Settings, TlsSettings, WebhookSettings,
};
pub(crate) use settings::{app_of, id_problem};

//! The `delta_compression` section and the apps' `channel_delta_compression` tables, checked
//! and turned into [`StreamSettings`] and [`ChannelRules`].

use std::{sync::Arc, time::Duration};

use super::{
    ConfigError,
    file::{ChannelDeltaConfig, DeltaCompressionConfig},
};
use crate::delta::{Algorithm, ChannelRules, StreamSettings};

/// The server's stream settings, `None` when delta compression is off.
pub(super) fn server(
    config: &DeltaCompressionConfig,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<StreamSettings>> {
    let mut err = |field: &str, problem: String| {
        errors.push(ConfigError { place: format!("delta_compression.{field}"), problem });
    };
    let algorithm = Algorithm::parse(&config.algorithm).unwrap_or_else(|| {
        err("algorithm", format!("{:?} is not fossil or xdelta3", config.algorithm));
        Algorithm::Fossil
    });
    for (field, value) in [
        ("full_message_interval", u64::from(config.full_message_interval)),
        ("max_state_age_secs", config.max_state_age_secs),
        ("max_channel_states_per_socket", config.max_channel_states_per_socket as u64),
        (
            "max_conflation_states_per_channel",
            config.max_conflation_states_per_channel.map_or(1, |n| n as u64),
        ),
    ] {
        if value == 0 {
            err(field, "must be at least 1".into());
        }
    }
    let path = config.conflation_key_path.as_deref().and_then(|p| key_path(p, &mut err));
    let settings = StreamSettings {
        algorithm,
        full_message_interval: config.full_message_interval,
        min_message_size: config.min_message_size,
        max_state_age: Duration::from_secs(config.max_state_age_secs),
        // No bound is Sockudo's `null`; a channel still keeps no more than this.
        max_conflation_keys: config.max_conflation_states_per_channel.unwrap_or(10_000),
        conflation_key_path: path,
        omit_algorithm: config.omit_delta_algorithm,
    };
    config.enabled.then(|| Arc::new(settings))
}

/// A dotted path as its parts; an empty part is refused.
fn key_path(path: &str, err: &mut impl FnMut(&str, String)) -> Option<Vec<String>> {
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        err("conflation_key_path", format!("{path:?} is not a dotted path like asset or a.b"));
        return None;
    }
    Some(parts)
}

/// One app's rules over `server`; problems are reported at `place(field)`.
pub(super) fn app(
    server: Option<&Arc<StreamSettings>>,
    channels: &std::collections::BTreeMap<String, ChannelDeltaConfig>,
    place: &dyn Fn(&str) -> String,
    errors: &mut Vec<ConfigError>,
) -> ChannelRules {
    let mut rules = Vec::new();
    let base = server.map_or_else(StreamSettings::default, |s| (**s).clone());
    for (pattern, rule) in channels {
        let at = place(&format!("channel_delta_compression.{pattern:?}"));
        let mut err = |field: &str, problem: String| {
            let place = if field.is_empty() { at.clone() } else { format!("{at}.{field}") };
            errors.push(ConfigError { place, problem });
        };
        let settings = match rule {
            ChannelDeltaConfig::Simple(word) => match word.to_ascii_lowercase().as_str() {
                "inherit" => continue,
                "disabled" => None,
                name => match Algorithm::parse(name) {
                    Some(algorithm) => Some(StreamSettings { algorithm, ..base.clone() }),
                    None => {
                        let problem =
                            format!("{word:?} is not inherit, disabled, fossil or xdelta3");
                        err("", problem);
                        continue;
                    }
                },
            },
            ChannelDeltaConfig::Full(table) if !table.enabled => None,
            ChannelDeltaConfig::Full(table) => {
                let mut settings = base.clone();
                if let Some(name) = &table.algorithm {
                    match Algorithm::parse(name) {
                        Some(algorithm) => settings.algorithm = algorithm,
                        None => err("algorithm", format!("{name:?} is not fossil or xdelta3")),
                    }
                }
                if let Some(path) = &table.conflation_key {
                    settings.conflation_key_path = key_path(path, &mut |_, problem| {
                        err("conflation_key", problem);
                    });
                }
                match table.max_conflation_keys {
                    Some(0) => err("max_conflation_keys", "must be at least 1".into()),
                    Some(n) => settings.max_conflation_keys = n,
                    None => {}
                }
                Some(settings)
            }
        };
        rules.push((pattern.clone(), settings.map(Arc::new)));
    }
    ChannelRules::new(server.cloned(), rules)
}

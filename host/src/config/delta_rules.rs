//! The `delta_compression` section and the apps' `channel_delta_compression` tables, checked
//! and turned into [`StreamSettings`] and [`ChannelRules`] (the types the delta layer reads;
//! here, at the bottom, so that configuration imports nothing above it).

use std::{sync::Arc, time::Duration};

use crate::protocol::channel::ChannelKind;

use super::{
    ConfigError,
    file::{ChannelDeltaConfig, DeltaCompressionConfig},
};

/// A delta encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Fossil's delta format (the default; `fossil-delta` in JavaScript).
    Fossil,
    /// VCDIFF (RFC 3284) as xdelta3 writes it, without checksums or secondary compression
    /// (`@ably/vcdiff-decoder` in JavaScript).
    Xdelta3,
}

impl Algorithm {
    /// The name on the wire and in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fossil => "fossil",
            Self::Xdelta3 => "xdelta3",
        }
    }

    /// The algorithm a name means (`vcdiff` is xdelta3's format); case does not matter, as
    /// Sockudo's own configuration files spell them `Fossil` and `Xdelta3`.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "fossil" => Some(Self::Fossil),
            "xdelta3" | "vcdiff" => Some(Self::Xdelta3),
            _ => None,
        }
    }
}

/// How one channel's events are compressed: the server's `delta_compression` settings with
/// the app's `channel_delta_compression` entry for the channel applied.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// The algorithm for subscribers that do not name one.
    pub algorithm: Algorithm,
    /// Deltas in a row before a full frame is sent again.
    pub full_message_interval: u32,
    /// Frames shorter than this go whole.
    pub min_message_size: usize,
    /// A stream unused this long is forgotten (its next event goes whole).
    pub max_state_age: Duration,
    /// Streams (event and conflation key pairs) one channel keeps; the least recently used
    /// is forgotten beyond.
    pub max_conflation_keys: usize,
    /// Where in the event data the conflation key is (dotted path), if anywhere.
    pub conflation_key_path: Option<Vec<String>>,
    /// Leave `algorithm` out of delta frames.
    pub omit_algorithm: bool,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Fossil,
            full_message_interval: 10,
            min_message_size: 100,
            max_state_age: Duration::from_secs(300),
            max_conflation_keys: 100,
            conflation_key_path: None,
            omit_algorithm: false,
        }
    }
}

/// An app's delta settings by channel: its `channel_delta_compression` rules over the
/// server's `delta_compression`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelRules {
    /// The server's settings; `None` when delta compression is off.
    server: Option<Arc<StreamSettings>>,
    /// (name or pattern, its settings or `None` for disabled), most specific first: exact
    /// names, then patterns by length.
    rules: Vec<(String, Option<Arc<StreamSettings>>)>,
}

impl ChannelRules {
    /// `rules` over `server` (`None`: delta compression is off for every channel).
    pub fn new(
        server: Option<Arc<StreamSettings>>,
        mut rules: Vec<(String, Option<Arc<StreamSettings>>)>,
    ) -> Self {
        rules.sort_by_key(|(pattern, _)| (pattern.contains('*'), std::cmp::Reverse(pattern.len())));
        Self { server, rules }
    }

    /// The settings for `channel`, or `None` if its events never go as deltas (off, disabled
    /// for it, or an encrypted channel, whose payloads do not shrink and whose ciphertexts a
    /// delta would only tie together).
    pub fn for_channel(&self, channel: &str) -> Option<Arc<StreamSettings>> {
        self.server.as_ref()?;
        if ChannelKind::of(channel) == ChannelKind::PrivateEncrypted {
            return None;
        }
        match self.rules.iter().find(|(pattern, _)| matches_pattern(pattern, channel)) {
            Some((_, settings)) => settings.clone(),
            None => self.server.clone(),
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn matches_pattern(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else { return rest.is_empty() };
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rules_pick_the_most_specific_and_spare_encrypted_channels() {
        assert!(matches_pattern("market-*", "market-btc"));
        assert!(matches_pattern("*-btc", "market-btc"));
        assert!(matches_pattern("a*b*c", "a-b-c"));
        assert!(!matches_pattern("a*b*c", "a-c"));
        assert!(!matches_pattern("market-*", "news"));
        assert!(matches_pattern("exact", "exact") && !matches_pattern("exact", "exactly"));
        let server = Arc::new(StreamSettings { min_message_size: 0, ..StreamSettings::default() });
        let xdelta =
            Arc::new(StreamSettings { algorithm: Algorithm::Xdelta3, ..(*server).clone() });
        let rules = ChannelRules::new(
            Some(server.clone()),
            vec![("market-*".into(), Some(xdelta.clone())), ("market-quiet".into(), None)],
        );
        assert_eq!(rules.for_channel("market-btc"), Some(xdelta));
        assert_eq!(rules.for_channel("market-quiet"), None);
        assert_eq!(rules.for_channel("news"), Some(server.clone()));
        assert_eq!(rules.for_channel("private-encrypted-market-x"), None);
        assert_eq!(ChannelRules::new(None, Vec::new()).for_channel("news"), None);
    }
}

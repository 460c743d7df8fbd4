//! One app as the server runs it: its credentials, limits and settings, validated.

use std::time::{Duration, SystemTime};

use super::{ChannelRules, Limits, WebhookTarget};

/// One app.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// The id used in HTTP API paths.
    pub id: String,
    /// The public key clients connect with.
    pub key: String,
    /// The secret that signs auth strings and API requests.
    pub secret: String,
    /// Whether it accepts connections and requests.
    pub enabled: bool,
    /// Concurrent connections allowed on this node; 0 = unlimited.
    pub max_connections: u64,
    /// Whether `client-` events are allowed.
    pub enable_client_messages: bool,
    /// Whether protocol-7 sockets get recovery positions and may resume.
    pub v1_recovery_fields: bool,
    /// Its connection recovery settings, where they differ from the server's.
    pub recovery: AppRecovery,
    /// Its limits.
    pub limits: Limits,
    /// HTTP API events per second (each channel counts); 0 = unlimited.
    pub max_backend_events_per_second: u32,
    /// HTTP API read requests per second; 0 = unlimited.
    pub max_read_requests_per_second: u32,
    /// New connections per client IP per minute; 0 = unlimited.
    pub max_connections_per_ip_per_minute: u32,
    /// Whether connections must sign in.
    pub enable_user_authentication: bool,
    /// Whether subscription counts are sent to subscribers and webhooks.
    pub enable_subscription_count: bool,
    /// Webhook endpoints.
    pub webhooks: Vec<WebhookTarget>,
    /// Whether webhook events are batched.
    pub webhook_batching: bool,
    /// Delta compression by channel.
    pub deltas: ChannelRules,
    /// The secret before the last rotation, and until when it still signs.
    pub previous_secret: Option<(String, SystemTime)>,
}

/// An app's connection recovery settings (with the server's recovery on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppRecovery {
    /// Whether its events get positions and its clients may resume.
    pub enabled: bool,
    /// How long its events stay recoverable, when shorter than the server's.
    pub ttl: Option<Duration>,
    /// The most one resume replays, when fewer than the server's.
    pub max_replay: Option<usize>,
    /// Broadcast without a position when the history store cannot take an event (instead of
    /// refusing the publish with 503).
    pub best_effort: bool,
}

impl Default for AppRecovery {
    fn default() -> Self {
        Self { enabled: true, ttl: None, max_replay: None, best_effort: false }
    }
}

impl App {
    /// Whether `signed_with` holds for the app's secret, or for the previous one while its
    /// overlap lasts (a tenant rotating its secret signs with either).
    pub fn verifies(&self, signed_with: impl Fn(&str) -> bool) -> bool {
        signed_with(&self.secret)
            || self
                .previous_secret
                .as_ref()
                .is_some_and(|(old, until)| SystemTime::now() < *until && signed_with(old))
    }
}

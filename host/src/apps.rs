//! Apps: who may connect and publish, with which secret and limits.

use std::{collections::HashMap, sync::Arc};

use crate::config::{Limits, WebhookTarget};

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
    pub deltas: crate::delta::ChannelRules,
}

/// The apps, by id and by key.
#[derive(Debug, Default)]
pub(crate) struct Apps {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

impl Apps {
    /// Index `apps` (validated: ids and keys are unique).
    pub(crate) fn new(apps: impl IntoIterator<Item = App>) -> Self {
        let mut index = Self::default();
        for app in apps {
            let app = Arc::new(app);
            index.by_id.insert(app.id.clone(), app.clone());
            index.by_key.insert(app.key.clone(), app);
        }
        index
    }

    /// The app with this id.
    pub(crate) fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    /// Every app id.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }

    /// The app with this key.
    pub(crate) fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }
}

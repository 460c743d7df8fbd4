//! Apps: who may connect and publish, with which secret and limits; from the configuration
//! file, or from an app-manager plugin's database through a per-node cache.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::metrics::{counter::Counter, family::Family};
use serde::Deserialize;
use tokio::sync::Semaphore;

pub(crate) use crate::config::App;
use crate::{
    address_counts::AddressCounts,
    config::{AppConfig, AppRecordRules},
    metrics::Metrics,
    plugins::AppManager,
    telemetry::LogLimiter,
};

/// Bytes of one record from the app manager at most; a larger one is refused unread.
const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Ids and keys longer than this are never looked up (no database holds them; a client that
/// sends one is probing).
const MAX_KEY_LENGTH: usize = 255;
/// Apps one node keeps cached at most; past it, lookups still work but are not kept.
const MAX_CACHED_APPS: usize = 100_000;
/// Whether `name` can be an app's id or key: 1 to [`MAX_KEY_LENGTH`] letters, digits, `.`,
/// `_` or `-` (what the admin API accepts for new apps). Anything else is unknown without a
/// query: no database is asked about a NUL byte or a path separator.
pub(crate) fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEY_LENGTH
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// How long an id or key the database did not know is refused without asking again. Any announced
/// change clears them, so an app created on another node is found at once.
const MISS_TTL: Duration = Duration::from_secs(2);
/// Unknown ids and keys remembered at most.
const MAX_MISSES: usize = 10_000;
/// Lookups in the database at once; the rest wait (up to the lookup timeout) for a turn, so a
/// flood of unknown keys cannot become a flood of queries.
const CONCURRENT_LOOKUPS: usize = 32;
/// Lookups that reached the database and found nothing (or no answer) one client address may
/// cause per [`MISS_BUDGET_WINDOW`]: made-up ids and keys, all different, cost queries; past
/// this they cost none.
const MISS_BUDGET: u32 = 50;
/// The window of [`MISS_BUDGET`].
const MISS_BUDGET_WINDOW: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// The client address of the request or connection a lookup is made for, where one is
    /// (set around the HTTP API's handlers and a WebSocket's admission).
    pub(crate) static CLIENT: std::net::IpAddr;
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    /// The app.
    Found(Arc<App>),
    /// No such app.
    Unknown,
    /// The app manager did not answer and the app is not cached.
    Unavailable,
    /// Not asked: the client's address spent its budget of lookups that found nothing.
    Refused,
}

impl Lookup {
    /// The app, if found.
    pub(crate) fn found(self) -> Option<Arc<App>> {
        match self {
            Self::Found(app) => Some(app),
            Self::Unknown | Self::Unavailable | Self::Refused => None,
        }
    }
}

/// The apps, by id and by key: the configuration file's, or the app manager's as cached here.
#[derive(Debug, Default)]
pub(crate) struct Apps {
    fixed: Index,
    store: Option<Store>,
}

#[derive(Debug, Default)]
struct Index {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

impl Index {
    fn new(apps: impl IntoIterator<Item = App>) -> Self {
        let mut index = Self::default();
        for app in apps {
            let app = Arc::new(app);
            index.by_id.insert(app.id.clone(), app.clone());
            index.by_key.insert(app.key.clone(), app);
        }
        index
    }
}

/// The app manager with this node's cache of it.
#[derive(Debug)]
struct Store {
    manager: Arc<AppManager>,
    rules: AppRecordRules,
    cached: RwLock<Cached>,
    turns: Semaphore,
    lookups: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// The database's failures are counted each; logged at most once a second.
    failures_logged: LogLimiter,
    /// Lookups per client address that found nothing, over [`MISS_BUDGET_WINDOW`].
    spent: AddressCounts,
}

#[derive(Debug, Default)]
struct Cached {
    by_id: HashMap<String, (Arc<App>, Instant)>,
    /// Key to id.
    by_key: HashMap<String, String>,
    /// Ids and keys the database did not know, and when it said so: a flood of made-up ones
    /// costs one query each per [`MISS_TTL`], not one per request or connection.
    misses: HashMap<Miss, Instant>,
    /// Bumped by every change announced; a fetch that began before is not kept (it may have
    /// read the app as it was before the change).
    generation: u64,
}

/// How an app is looked for.
#[derive(Clone, Copy)]
enum By<'a> {
    Id(&'a str),
    Key(&'a str),
}

/// An id or a key the database did not know (an id may equal another app's key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Miss {
    Id(String),
    Key(String),
}

impl By<'_> {
    fn miss(self) -> Miss {
        match self {
            Self::Id(id) => Miss::Id(id.to_string()),
            Self::Key(key) => Miss::Key(key.to_string()),
        }
    }
}

impl Apps {
    /// The configuration file's apps (validated: ids and keys are unique).
    pub(crate) fn new(apps: impl IntoIterator<Item = App>) -> Self {
        Self { fixed: Index::new(apps), store: None }
    }

    /// The app manager's apps, cached per `rules`.
    pub(crate) fn managed(
        manager: Arc<AppManager>,
        rules: AppRecordRules,
        metrics: &Metrics,
    ) -> Self {
        let store = Store {
            manager,
            rules,
            cached: RwLock::default(),
            turns: Semaphore::new(CONCURRENT_LOOKUPS),
            lookups: metrics.app_lookups.clone(),
            failures_logged: LogLimiter::default(),
            spent: AddressCounts::new(MISS_BUDGET_WINDOW),
        };
        Self { fixed: Index::default(), store: Some(store) }
    }

    /// The app manager, when apps come from one.
    pub(crate) fn manager(&self) -> Option<&Arc<AppManager>> {
        self.store.as_ref().map(|s| &s.manager)
    }

    /// The app with this key (at connect).
    pub(crate) async fn by_key(&self, key: &str) -> Lookup {
        match &self.store {
            None => self.fixed.by_key.get(key).cloned().map_or(Lookup::Unknown, Lookup::Found),
            Some(store) => store.lookup(By::Key(key)).await,
        }
    }

    /// The app with this id (the HTTP API).
    pub(crate) async fn by_id(&self, id: &str) -> Lookup {
        match &self.store {
            None => self.fixed.by_id.get(id).cloned().map_or(Lookup::Unknown, Lookup::Found),
            Some(store) => store.lookup(By::Id(id)).await,
        }
    }

    /// The app with this id as this node knows it now, without asking the database (for
    /// messages from other nodes and for connections already open).
    pub(crate) fn known(&self, id: &str) -> Option<Arc<App>> {
        match &self.store {
            None => self.fixed.by_id.get(id).cloned(),
            Some(store) => store.read().by_id.get(id).map(|(app, _)| app.clone()),
        }
    }

    /// Every app id this node knows.
    pub(crate) fn ids(&self) -> Vec<String> {
        match &self.store {
            None => self.fixed.by_id.keys().cloned().collect(),
            Some(store) => store.read().by_id.keys().cloned().collect(),
        }
    }

    /// The app's record changed: ask the database for it now. The app as it is now
    /// (`Unknown` when it is gone, and forgotten); `Unavailable` when the database did not
    /// answer, and the cached app is kept until it does.
    pub(crate) async fn refresh(&self, id: &str) -> Lookup {
        let Some(store) = &self.store else { return self.by_id(id).await };
        let generation = store.changed();
        match store.fetch(By::Id(id)).await {
            Ok(Some(app)) => Lookup::Found(store.keep(app, generation)),
            Ok(None) => {
                store.forget(id);
                Lookup::Unknown
            }
            Err(_) => Lookup::Unavailable,
        }
    }

    /// A record (the admin API's input, or a row) checked as the configuration file's apps are.
    pub(crate) fn parse_record(&self, text: &str) -> Result<App, String> {
        let rules = self.store.as_ref().map(|s| &s.rules);
        parse_record(text, rules.ok_or("apps come from the configuration file")?)
    }
}

impl Store {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cached> {
        self.cached.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cached> {
        self.cached.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self, outcome: &'static str) {
        Metrics::count(&self.lookups, "outcome", outcome);
    }

    /// The cached app, and whether it is still fresh.
    fn cached(&self, by: By<'_>) -> Option<(Arc<App>, bool)> {
        let cached = self.read();
        let id = match by {
            By::Id(id) => id,
            By::Key(key) => cached.by_key.get(key)?.as_str(),
        };
        let (app, fetched) = cached.by_id.get(id)?;
        Some((app.clone(), fetched.elapsed() < self.rules.ttl))
    }

    async fn lookup(&self, by: By<'_>) -> Lookup {
        let cached = self.cached(by);
        if let Some((app, true)) = &cached {
            self.count("cached");
            return Lookup::Found(app.clone());
        }
        let asked = match by {
            By::Id(s) | By::Key(s) => s,
        };
        if !is_safe_name(asked) || self.missed(by) {
            self.count("unknown");
            return Lookup::Unknown;
        }
        let client = CLIENT.try_with(|ip| *ip).ok();
        if client.is_some_and(|ip| self.over_budget(ip)) {
            self.count("over_budget");
            return Lookup::Refused;
        }
        let generation = self.read().generation;
        let fetched = self.fetch(by).await;
        if let (Some(ip), Ok(None) | Err(_)) = (client, &fetched) {
            self.spent.add(ip);
        }
        match fetched {
            Ok(Some(app)) => {
                self.count("fetched");
                Lookup::Found(self.keep(app, generation))
            }
            Ok(None) => {
                if let Some((app, _)) = cached {
                    self.forget(&app.id);
                }
                self.miss(by);
                self.count("unknown");
                Lookup::Unknown
            }
            // The database is down or slow: keep serving what this node knew.
            Err(error) => match cached {
                Some((app, _)) => {
                    self.count("stale");
                    if self.failures_logged.allow() {
                        tracing::warn!(%error, app = %app.id, "The app manager did not answer; serving the cached app.");
                    }
                    Lookup::Found(app)
                }
                None => {
                    self.count("failed");
                    if self.failures_logged.allow() {
                        tracing::warn!(%error, "The app manager did not answer; refusing an app it was asked for.");
                    }
                    Lookup::Unavailable
                }
            },
        }
    }

    /// Ask the database, within the lookup timeout (waiting for a turn included).
    async fn fetch(&self, by: By<'_>) -> Result<Option<App>, String> {
        let ask = async {
            let _turn = self.turns.acquire().await.map_err(|e| e.to_string())?;
            let found = match by {
                By::Id(id) => self.manager.find_by_id(id).await,
                By::Key(key) => self.manager.find_by_key(key).await,
            };
            found.map_err(|e| e.to_string())
        };
        let record = tokio::time::timeout(self.rules.lookup_timeout, ask)
            .await
            .map_err(|_| "the lookup timed out".to_string())??;
        let Some(record) = record else { return Ok(None) };
        match parse_record(&record, &self.rules) {
            // A record that does not answer the question asked is not that app.
            Ok(app) if matches!(by, By::Id(id) if id == app.id) => Ok(Some(app)),
            Ok(app) if matches!(by, By::Key(key) if key == app.key) => Ok(Some(app)),
            Ok(_) => {
                self.count("invalid");
                Ok(None)
            }
            Err(problem) => {
                self.count("invalid");
                tracing::warn!(
                    problem,
                    "The app manager answered an app that is not valid; it is refused."
                );
                Ok(None)
            }
        }
    }

    /// Whether the database said lately that it does not know this id or key.
    /// Whether `ip` has spent its budget of lookups that found nothing.
    fn over_budget(&self, ip: std::net::IpAddr) -> bool {
        self.spent.current(ip).0 >= MISS_BUDGET
    }

    fn missed(&self, by: By<'_>) -> bool {
        self.read().misses.get(&by.miss()).is_some_and(|at| at.elapsed() < MISS_TTL)
    }

    fn miss(&self, by: By<'_>) {
        let mut cached = self.write();
        if cached.misses.len() >= MAX_MISSES {
            cached.misses.retain(|_, at| at.elapsed() < MISS_TTL);
        }
        if cached.misses.len() < MAX_MISSES {
            cached.misses.insert(by.miss(), Instant::now());
        }
    }

    /// A change was announced: fetches begun before it are not kept, and no id or key is
    /// known to be missing any more (the change may have created it). The new generation.
    fn changed(&self) -> u64 {
        let mut cached = self.write();
        cached.generation += 1;
        cached.misses.clear();
        cached.generation
    }

    /// Cache `app`, fetched in `generation`, unless a change was announced since.
    fn keep(&self, app: App, generation: u64) -> Arc<App> {
        let app = Arc::new(app);
        let mut cached = self.write();
        if cached.generation != generation {
            return app;
        }
        if let Some((old, _)) = cached.by_id.get(&app.id)
            && old.key != app.key
        {
            let old_key = old.key.clone();
            cached.by_key.remove(&old_key);
        }
        if cached.by_id.len() < MAX_CACHED_APPS || cached.by_id.contains_key(&app.id) {
            cached.by_key.insert(app.key.clone(), app.id.clone());
            cached.by_id.insert(app.id.clone(), (app.clone(), Instant::now()));
        }
        app
    }

    fn forget(&self, id: &str) {
        let mut cached = self.write();
        if let Some((app, _)) = cached.by_id.remove(id) {
            cached.by_key.remove(&app.key);
        }
    }
}

/// A record as the app manager keeps it: the configuration file's fields (others, such as the
/// reference's `created_at` or `allowed_origins`, are ignored), and the previous secret of a
/// rotation.
#[derive(Deserialize)]
struct Record {
    #[serde(flatten)]
    app: AppConfig,
    #[serde(default)]
    previous_secret: Option<String>,
    /// Unix milliseconds.
    #[serde(default)]
    previous_secret_expires_at: Option<u64>,
}

/// A record checked: bounded, every field valid.
fn parse_record(text: &str, rules: &AppRecordRules) -> Result<App, String> {
    if text.len() > MAX_RECORD_BYTES {
        return Err(format!("the record is over {MAX_RECORD_BYTES} bytes"));
    }
    let mut record: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    // A database's NULL is a field not set (the reference's limit columns are nullable).
    if let Some(fields) = record.as_object_mut() {
        fields.retain(|_, value| !value.is_null());
    }
    let record: Record = serde_json::from_value(record).map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    let place = |field: &str| field.to_string();
    let mut app = crate::config::app_of(
        &record.app,
        &rules.defaults,
        rules.delta.as_ref(),
        &place,
        &mut errors,
    );
    for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
        if value.trim().is_empty() || value.len() > MAX_KEY_LENGTH {
            errors.push(crate::config::ConfigError {
                place: field.into(),
                problem: format!("must be 1 to {MAX_KEY_LENGTH} bytes"),
            });
        }
    }
    // A row found by its key brings its own id, unchecked by the lookup.
    if let Some(problem) = crate::config::id_problem(&app.id) {
        errors.push(crate::config::ConfigError { place: "id".into(), problem: problem.into() });
    }
    if let Some(error) = errors.first() {
        return Err(error.to_string());
    }
    app.previous_secret = match (record.previous_secret, record.previous_secret_expires_at) {
        (Some(secret), Some(until)) if !secret.is_empty() => {
            Some((secret, SystemTime::UNIX_EPOCH + Duration::from_millis(until)))
        }
        _ => None,
    };
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> AppRecordRules {
        crate::config::Settings::from_config(crate::config::Config::default())
            .expect("the defaults are valid")
            .app_records
    }

    #[test]
    fn a_record_with_the_references_other_columns_is_read() {
        let record = r#"{"id":"1","key":"k","secret":"s","enabled":true,"created_at":"2026-01-01",
            "allowed_origins":["*"],"policy":null,"max_connections":5}"#;
        let app = parse_record(record, &rules()).unwrap();
        assert_eq!((app.id.as_str(), app.max_connections), ("1", 5));
    }

    #[test]
    fn a_bad_record_is_refused() {
        for bad in [
            r#"{"id":"","key":"k","secret":"s"}"#,
            r#"{"id":"1","key":"k","secret":"s","max_event_batch_size":0}"#,
            r#"{"id":"1","key":"k"}"#,
            r#"{"id":"a:idempotency:k","key":"k","secret":"s"}"#,
            r#"[1]"#,
        ] {
            assert!(parse_record(bad, &rules()).is_err(), "{bad}");
        }
        let huge = format!(r#"{{"id":"1","key":"k","secret":"{}"}}"#, "s".repeat(MAX_RECORD_BYTES));
        assert!(parse_record(&huge, &rules()).is_err());
    }

    #[test]
    fn the_previous_secret_verifies_until_it_expires() {
        let soon = SystemTime::now() + Duration::from_secs(60);
        let mut app = parse_record(r#"{"id":"1","key":"k","secret":"new"}"#, &rules()).unwrap();
        app.previous_secret = Some(("old".into(), soon));
        assert!(app.verifies(|s| s == "old") && app.verifies(|s| s == "new"));
        app.previous_secret = Some(("old".into(), SystemTime::now() - Duration::from_secs(1)));
        assert!(!app.verifies(|s| s == "old") && app.verifies(|s| s == "new"));
    }
}

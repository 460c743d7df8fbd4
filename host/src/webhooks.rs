//! Webhooks: events about channels and members, POSTed to each app's endpoints.
//!
//! Every webhook is a job on the queue driver, so it survives what the driver makes survive and
//! is retried with the driver's backoff. The body is `{time_ms, events}` signed with the app
//! secret (`X-Pusher-Key`, `X-Pusher-Signature`). `channel_vacated` waits `vacated_delay` and
//! re-checks, so a quick reconnect sends neither vacated nor occupied.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    adapter::Adapter,
    apps::{App, Apps},
    config::WebhookSettings,
    feed::{self, Entry, Feed},
    metrics::Metrics,
    plugins::{JobError, JobFuture, Queue, QueuedJob},
    protocol::{signature, webhook::Hook},
    telemetry::LogLimiter,
};

/// The queue webhooks go through.
pub(crate) const QUEUE: &str = "webhooks";

/// One webhook delivery, as stored on the queue.
#[derive(Debug, Serialize, Deserialize)]
struct Delivery {
    app_id: String,
    url: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// Webhook events waiting to be queued, at most; beyond, new ones are dropped and counted
/// rather than letting a stalled queue driver grow memory.
const OUTBOX_CAPACITY: usize = 65_536;

type Outgoing = (Arc<App>, Vec<Hook>);

/// One app's use of the webhook path on this node: its entries waiting in the outbox, and the
/// events it raised in the current one-second window.
#[derive(Debug, Default)]
struct AppBudget {
    queued: usize,
    window_started: Option<Instant>,
    raised: u64,
}

/// Webhook state: the outbox (events go to the queue driver in the order they happened),
/// batches being collected, and vacated channels waiting to be confirmed.
#[derive(Debug)]
pub(crate) struct Webhooks {
    settings: WebhookSettings,
    apps: Arc<Apps>,
    adapter: Arc<Adapter>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    feed: Arc<Feed>,
    shutdown: CancellationToken,
    outbox: mpsc::Sender<Outgoing>,
    outbox_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    batches: Mutex<HashMap<String, Vec<Hook>>>,
    pending_vacated: Mutex<HashMap<(String, String), u64>>,
    generation: AtomicU64,
    budgets: Mutex<HashMap<String, AppBudget>>,
    drops_logged: LogLimiter,
}

/// What webhooks are built from.
#[derive(Debug)]
pub(crate) struct Inputs {
    /// The `[webhooks]` settings.
    pub settings: WebhookSettings,
    /// The apps, to count deliveries of known apps only.
    pub apps: Arc<Apps>,
    /// Channel state, to confirm a vacated channel is still empty.
    pub adapter: Arc<Adapter>,
    /// The queue driver the jobs go through.
    pub queue: Arc<Queue>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The console's figures and log.
    pub feed: Arc<Feed>,
    /// Cancelled at shutdown: a queue that is down is no longer waited for.
    pub shutdown: CancellationToken,
}

impl Webhooks {
    /// Webhooks over `inputs`, with an empty outbox.
    pub(crate) fn new(inputs: Inputs) -> Arc<Self> {
        let Inputs { settings, apps, adapter, queue, metrics, feed, shutdown } = inputs;
        let (outbox, rx) = mpsc::channel(OUTBOX_CAPACITY);
        Arc::new(Self {
            settings,
            apps,
            adapter,
            queue,
            metrics,
            feed,
            shutdown,
            outbox,
            outbox_rx: Mutex::new(Some(rx)),
            batches: Mutex::default(),
            pending_vacated: Mutex::default(),
            generation: AtomicU64::new(0),
            budgets: Mutex::default(),
            drops_logged: LogLimiter::default(),
        })
    }
}

/// Move webhook events from the outbox to the queue driver, one at a time so their order holds.
/// Runs until the webhooks are dropped.
pub(crate) async fn forward(webhooks: Arc<Webhooks>) {
    let Some(mut rx) = webhooks.outbox_rx.lock().expect("webhook lock").take() else { return };
    let weak = Arc::downgrade(&webhooks);
    drop(webhooks);
    while let Some((app, events)) = rx.recv().await {
        let Some(webhooks) = weak.upgrade() else { return };
        webhooks.release_share(&app.id);
        webhooks.enqueue(&app, events).await;
    }
}

impl Webhooks {
    fn dropped(&self, app: &App, reason: &'static str, why: &str) {
        Metrics::count(&self.metrics.webhooks_dropped, "reason", reason);
        if self.drops_logged.allow() {
            tracing::warn!(app_id = %app.id, reason, "Webhook events are being dropped: {why}.");
        }
    }

    /// The app's webhook batches waiting in the outbox.
    pub(crate) fn queued(&self, app_id: &str) -> u64 {
        let budgets = self.budgets.lock().expect("webhook lock");
        budgets.get(app_id).map_or(0, |b| u64::try_from(b.queued).unwrap_or(u64::MAX))
    }

    /// An entry of the app's left the outbox.
    fn release_share(&self, app_id: &str) {
        if let Some(budget) = self.budgets.lock().expect("webhook lock").get_mut(app_id) {
            budget.queued = budget.queued.saturating_sub(1);
        }
    }

    /// Put a batch in the outbox, within the app's share of it.
    fn send(&self, app: &Arc<App>, events: Vec<Hook>) {
        let max = self.settings.max_queued_per_app;
        {
            let mut budgets = self.budgets.lock().expect("webhook lock");
            let budget = budgets.entry(app.id.clone()).or_default();
            if budget.queued >= max {
                drop(budgets);
                return self.dropped(app, "app_share", "the app's share of the outbox is full");
            }
            budget.queued += 1;
        }
        if self.outbox.try_send((app.clone(), events)).is_err() {
            self.release_share(&app.id);
            self.metrics.webhooks_failed.inc();
            self.dropped(app, "outbox", "the outbox is full");
        }
    }

    /// Count one event the app raises against its per-second allowance; whether it may go.
    fn admit(&self, app: &App) -> bool {
        let per_second = self.settings.max_events_per_second_per_app;
        let now = Instant::now();
        let allowed = {
            let mut budgets = self.budgets.lock().expect("webhook lock");
            let budget = budgets.entry(app.id.clone()).or_default();
            if budget.window_started.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                budget.window_started = Some(now);
                budget.raised = 0;
            }
            budget.raised += 1;
            budget.raised <= per_second
        };
        if !allowed {
            self.dropped(app, "app_rate", "the app raises more than its events per second");
        }
        allowed
    }

    /// Send `event` (an object with `name` and its fields) to the app's endpoints that want it,
    /// within the app's allowance of events per second.
    pub(crate) fn emit(self: &Arc<Self>, app: &Arc<App>, event: Hook) {
        if app.webhooks.is_empty() || !self.admit(app) {
            return;
        }
        self.emit_admitted(app, event);
    }

    fn emit_admitted(self: &Arc<Self>, app: &Arc<App>, event: Hook) {
        if !app.webhook_batching {
            self.send(app, vec![event]);
            return;
        }
        let first = {
            let mut batches = self.batches.lock().expect("webhook lock");
            let batch = batches.entry(app.id.clone()).or_default();
            batch.push(event);
            batch.len() == 1
        };
        if first {
            let (this, app) = (self.clone(), app.clone());
            tokio::spawn(async move {
                tokio::time::sleep(this.settings.batching_window).await;
                let events =
                    this.batches.lock().expect("webhook lock").remove(&app.id).unwrap_or_default();
                this.send(&app, events);
            });
        }
    }

    /// A channel gained its first subscriber: `channel_occupied`, unless it was vacated a moment
    /// ago (then neither is sent).
    pub(crate) fn occupied(self: &Arc<Self>, app: &Arc<App>, channel: &str) {
        let key = (app.id.clone(), channel.to_string());
        if self.pending_vacated.lock().expect("webhook lock").remove(&key).is_some() {
            return;
        }
        self.emit(app, Hook::ChannelOccupied { channel: channel.to_string() });
    }

    /// A channel lost its last subscriber: `channel_vacated` after the delay, if it is still
    /// empty then.
    pub(crate) fn vacated(self: &Arc<Self>, app: &Arc<App>, channel: &str) {
        // Admitted now, not when sent: the wait holds a task and an entry per channel, which
        // the app's allowance bounds too.
        if app.webhooks.is_empty() || !self.admit(app) {
            return;
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let key = (app.id.clone(), channel.to_string());
        self.pending_vacated.lock().expect("webhook lock").insert(key.clone(), generation);
        let (this, app) = (self.clone(), app.clone());
        tokio::spawn(async move {
            tokio::time::sleep(this.settings.vacated_delay).await;
            let still_pending = {
                let mut pending = this.pending_vacated.lock().expect("webhook lock");
                match pending.get(&key) {
                    Some(g) if *g == generation => pending.remove(&key).is_some(),
                    _ => false,
                }
            };
            if still_pending
                && this.adapter.channel_info(&app.id, &key.1).await.subscription_count == 0
            {
                this.emit_admitted(&app, Hook::ChannelVacated { channel: key.1 });
            }
        });
    }

    /// Push one job per endpoint that wants any of `events`.
    async fn enqueue(&self, app: &App, events: Vec<Hook>) {
        for target in &app.webhooks {
            let wanted: Vec<&Hook> = events
                .iter()
                .filter(|e| {
                    let name = e.kind().name();
                    target.event_types.is_empty() || target.event_types.iter().any(|t| t == name)
                })
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let body = json!({ "time_ms": crate::cluster::now_ms(), "events": wanted }).to_string();
            let mut headers: Vec<(String, String)> =
                target.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            headers.push(("X-Pusher-Key".into(), app.key.clone()));
            headers.push(("X-Pusher-Signature".into(), signature::sign(&app.secret, &body)));
            let delivery =
                Delivery { app_id: app.id.clone(), url: target.url.clone(), headers, body };
            let payload = serde_json::to_vec(&delivery).expect("a delivery serializes");
            // A queue backend that is down (Redis restarting) holds the outbox here, in order,
            // until it is back; only a refusal loses the webhook.
            let mut delay = Duration::from_millis(100);
            loop {
                match self.queue.push(QUEUE, payload.clone()).await {
                    Ok(()) => break,
                    Err(error) if error.is_retryable() && !self.shutdown.is_cancelled() => {
                        self.metrics.webhook_queue_errors.inc();
                        tracing::warn!(app_id = %app.id, %error, retry_in = ?delay, "The queue cannot take a webhook now; waiting for it.");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    Err(error) => {
                        self.metrics.webhooks_failed.inc();
                        tracing::error!(app_id = %app.id, url = %target.url, %error, "A webhook could not be queued; it is lost.");
                        break;
                    }
                }
            }
        }
    }

    /// Count a delivery's outcome in its app's figures (`delivered`: `None` while it will be
    /// retried) and show it in the app's live log. A job naming an app this node does not know
    /// is not counted: the queue's content is not trusted to pick the keys of the figures.
    fn observed(&self, delivery: &Delivery, delivered: Option<bool>, outcome: &str) {
        if let (Some(delivered), Some(_)) = (delivered, self.apps.known(&delivery.app_id)) {
            self.feed.stats.webhook(&delivery.app_id, delivered);
        }
        self.feed.tap.record(&delivery.app_id, || {
            let body: Value = serde_json::from_str(&delivery.body).unwrap_or_default();
            let names: Vec<&str> = body["events"]
                .as_array()
                .map(|events| events.iter().filter_map(|e| e["name"].as_str()).collect())
                .unwrap_or_default();
            Entry::new(feed::Kind::Webhook)
                .event(&names.join(", "))
                .detail(format!("{outcome}: {}", delivery.url))
                .data(&delivery.body)
        });
    }
}

/// The consumer of the webhook queue: POST one delivery. A failure or a non-2xx answer fails
/// the attempt (the queue retries it later) until the last attempt, which gives up.
pub(crate) fn deliver(
    webhooks: Arc<Webhooks>,
    http: reqwest::Client,
) -> impl Fn(QueuedJob) -> JobFuture {
    move |job| {
        let (this, http) = (webhooks.clone(), http.clone());
        Box::pin(async move {
            let delivery: Delivery = match serde_json::from_slice(&job.payload) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(job = %job.id, error = %e, "A queued webhook cannot be read; it is set aside as a dead letter.");
                    this.metrics.webhooks_failed.inc();
                    return Err(JobError::GiveUp(format!("unreadable webhook job: {e}")));
                }
            };
            let mut request = http.post(&delivery.url).timeout(this.settings.request_timeout);
            for (name, value) in &delivery.headers {
                request = request.header(name, value);
            }
            let outcome = match request
                .header("content-type", "application/json")
                .body(delivery.body.clone())
                .send()
                .await
            {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("answered {}", response.status())),
                Err(e) => Err(format!("failed: {e}")),
            };
            match outcome {
                Ok(()) => {
                    this.metrics.webhooks_sent.inc();
                    this.observed(&delivery, Some(true), "delivered");
                    Ok(())
                }
                Err(why) if job.attempt >= this.settings.max_attempts => {
                    this.metrics.webhooks_failed.inc();
                    this.observed(&delivery, Some(false), &format!("given up ({why})"));
                    tracing::error!(app_id = %delivery.app_id, url = %delivery.url, attempts = job.attempt, why,
                        "A webhook failed its last attempt; giving up (kept by the queue as a dead letter).");
                    Err(JobError::GiveUp(why))
                }
                Err(why) => {
                    this.metrics.webhook_retries.inc();
                    this.observed(&delivery, None, &format!("to be retried ({why})"));
                    tracing::warn!(app_id = %delivery.app_id, url = %delivery.url, attempt = job.attempt, why,
                        "A webhook attempt failed; it will be retried.");
                    Err(JobError::Retry(why))
                }
            }
        })
    }
}

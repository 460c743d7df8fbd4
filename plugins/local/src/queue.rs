//! The `memory` queue: jobs in process memory, retried with exponential backoff.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;
use sockhost_plugin_api::{
    ErrorCode, HostContextBox, Job, PluginError, QueueHandlerBox,
    abi::{RStr, RString, RVec},
    sdk::QueueDriver,
};
use tokio::sync::Notify;

/// Settings of the `memory` queue (names and defaults as the reference's queue settings).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MemoryQueueConfig {
    /// Attempts per job before it is set aside as a dead letter. Default: 5.
    max_attempts: u32,
    /// Delay before the first retry; each later retry doubles it. Default: 1000. Milliseconds.
    retry_base_delay_ms: u64,
    /// The longest delay between retries. Default: 60000. Milliseconds.
    retry_max_delay_ms: u64,
    /// Jobs handled at once per `consume` call. Default: 4.
    concurrency: usize,
    /// Jobs a queue holds at most (waiting, in flight or awaiting a retry); a push beyond it is
    /// refused with BACKPRESSURE. Default: 100000.
    capacity: usize,
}

impl Default for MemoryQueueConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            retry_base_delay_ms: 1000,
            retry_max_delay_ms: 60_000,
            concurrency: 4,
            capacity: 100_000,
        }
    }
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Job>,
    in_flight: u64,
    awaiting_retry: u64,
    dead: Vec<Job>,
    notify: Arc<Notify>,
}

impl QueueState {
    fn pending(&self) -> u64 {
        self.ready.len() as u64 + self.in_flight + self.awaiting_retry
    }
}

struct Shared {
    config: MemoryQueueConfig,
    queues: Mutex<HashMap<String, QueueState>>,
    closed: AtomicBool,
    next_id: AtomicU64,
    host: HostContextBox,
}

/// Named queues in process memory.
pub struct MemoryQueue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQueue").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl MemoryQueue {
    /// A queue configured by `config`, reporting dead letters to `host`.
    pub fn new(config: &str, host: HostContextBox) -> Result<Self, PluginError> {
        let config: MemoryQueueConfig =
            sockhost_plugin_api::sdk::config::parse("queue.memory", config)?;
        for (field, value) in [
            ("max_attempts", u64::from(config.max_attempts)),
            ("concurrency", config.concurrency as u64),
            ("capacity", config.capacity as u64),
        ] {
            if value == 0 {
                return Err(PluginError::config(format!(
                    "memory queue: {field} must be at least 1"
                )));
            }
        }
        if config.retry_max_delay_ms < config.retry_base_delay_ms {
            return Err(PluginError::config(
                "memory queue: retry_max_delay_ms must not be below retry_base_delay_ms",
            ));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                queues: Mutex::default(),
                closed: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                host,
            }),
        })
    }
}

impl Shared {
    fn queues(&self) -> Result<MutexGuard<'_, HashMap<String, QueueState>>, PluginError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PluginError::unavailable("the memory queue is shut down"));
        }
        self.queues.lock().map_err(|_| PluginError::internal("the queue lock is poisoned"))
    }

    /// The delay before attempt `next_attempt` (2 for the first retry).
    fn backoff(&self, next_attempt: u32) -> Duration {
        let doublings = next_attempt.saturating_sub(2).min(32);
        let ms = self.config.retry_base_delay_ms.saturating_mul(1 << doublings);
        Duration::from_millis(ms.min(self.config.retry_max_delay_ms))
    }

    /// Take the next ready job of `queue`, or the notifier to wait on.
    fn take(&self, queue: &str) -> Result<Result<Job, Arc<Notify>>, PluginError> {
        let mut queues = self.queues()?;
        let state = queues.entry(queue.to_owned()).or_default();
        Ok(match state.ready.pop_front() {
            Some(job) => {
                state.in_flight += 1;
                Ok(job)
            }
            None => Err(state.notify.clone()),
        })
    }

    /// Record the outcome of one attempt.
    fn settle(self: &Arc<Self>, job: Job, outcome: Result<(), PluginError>) {
        let Ok(mut queues) = self.queues.lock() else {
            return;
        };
        let state = queues.entry(job.queue.to_string()).or_default();
        state.in_flight = state.in_flight.saturating_sub(1);
        let Err(error) = outcome else { return };
        if job.attempt >= self.config.max_attempts || error.code == ErrorCode::REJECTED {
            tracing::warn!(queue = %job.queue, job = %job.id, attempts = job.attempt, %error,
                "Job failed its last attempt; it is kept as a dead letter.");
            self.host.metric(RStr::from_str("queue_dead_letters"), 1);
            state.dead.push(job);
            return;
        }
        tracing::debug!(queue = %job.queue, job = %job.id, attempt = job.attempt, %error, "Job failed; retrying.");
        state.awaiting_retry += 1;
        let delay = self.backoff(job.attempt + 1);
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Ok(mut queues) = shared.queues.lock() else {
                return;
            };
            let state = queues.entry(job.queue.to_string()).or_default();
            state.awaiting_retry = state.awaiting_retry.saturating_sub(1);
            state.ready.push_back(Job { attempt: job.attempt + 1, ..job });
            state.notify.notify_one();
        });
    }

    async fn work(self: Arc<Self>, queue: String, handler: QueueHandlerBox) {
        loop {
            let job = match self.take(&queue) {
                Err(_) => return,
                Ok(Err(notify)) => {
                    notify.notified().await;
                    continue;
                }
                Ok(Ok(job)) => job,
            };
            let outcome = handler.handle(job.clone()).await.into_result();
            self.settle(job, outcome);
        }
    }
}

impl QueueDriver for MemoryQueue {
    async fn push(&self, queue: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut queues = shared.queues()?;
        let state = queues.entry(queue.to_owned()).or_default();
        if state.pending() >= shared.config.capacity as u64 {
            return Err(PluginError::backpressure(format!(
                "memory queue `{queue}` holds its capacity of {} jobs",
                shared.config.capacity
            )));
        }
        state.ready.push_back(Job {
            id: RString::from(format!("memory-{id}")),
            queue: RString::from(queue),
            attempt: 1,
            payload,
        });
        state.notify.notify_one();
        Ok(())
    }

    async fn consume(&self, queue: &str, handler: QueueHandlerBox) -> Result<(), PluginError> {
        drop(self.shared.queues()?);
        for _ in 0..self.shared.config.concurrency {
            tokio::spawn(self.shared.clone().work(queue.to_owned(), handler.clone()));
        }
        Ok(())
    }

    async fn pending(&self, queue: &str) -> Result<u64, PluginError> {
        Ok(self.shared.queues()?.get(queue).map_or(0, QueueState::pending))
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.shared.queues().map(drop)
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Ok(queues) = self.shared.queues.lock() {
            for state in queues.values() {
                state.notify.notify_waiters();
            }
        }
        Ok(())
    }
}

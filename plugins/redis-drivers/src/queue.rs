//! The queue driver: durable jobs with leases, retries with backoff and a dead-letter list.
//!
//! A queue's keys share one hash tag, `{<prefix><queue>}`, so every script below touches one
//! slot (one shard of a cluster) and runs atomically:
//! - `:seq` numbers jobs; `:jobs` holds each job's payload and `:attempts` its attempts so far;
//! - `:ready` lists job ids waiting for a worker, oldest first;
//! - `:delayed` holds failed jobs by the time their retry is due;
//! - `:leased` holds jobs being worked on by the time their lease ends: a worker that dies
//!   mid-job leaves its job there, and once the lease ends the next take puts it back;
//! - `:dead` lists the ids of jobs set aside (their payloads stay in `:jobs` for inspection).
//!
//! Every node may consume the same queue: a job is handed to one worker at a time while its
//! lease holds (at least once overall). Times come from the Redis server's clock, so nodes'
//! clocks need not agree.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{Value, aio::ConnectionLike};
use serde::Deserialize;
use sockhost_plugin_api::{
    ErrorCode, HostContextBox, Job, PluginError, QueueHandlerBox,
    abi::{RStr, RString, RVec},
    sdk::QueueDriver,
};
use tokio::{sync::Notify, task::JoinHandle};

use crate::{connection::DriverConnection, within};

/// A queue driver's table (`[queue.redis]` / `[queue.redis-cluster]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Prefix of every queue's keys. Default: "sockudo_queue:".
    pub prefix: String,
    /// Jobs handled at once per consumer (per node). Default: 5.
    pub concurrency: usize,
    /// Attempts per job before it is set aside as a dead letter. Default: 5.
    pub max_attempts: u32,
    /// Delay before the first retry; each later retry doubles it. Default: 1000. Milliseconds.
    pub retry_base_delay_ms: u64,
    /// The longest delay between retries. Default: 60000. Milliseconds.
    pub retry_max_delay_ms: u64,
    /// How long a worker holds a job before another may take it. Default: 30000.
    /// Milliseconds. Keep it above the longest a job may take (a webhook's request timeout).
    pub lease_ms: u64,
    /// How often an idle worker looks for jobs other nodes pushed. Default: 250. Milliseconds.
    /// (A push on the same node wakes its workers at once.)
    pub poll_interval_ms: u64,
    /// Where it connects (`url_override`, `nodes`, `request_timeout_ms`, `cluster_mode`,
    /// `[database.redis]`).
    #[serde(flatten)]
    pub connection: DriverConnection,
}

impl QueueConfig {
    /// Milliseconds a command may take: the table's, else 5000.
    pub fn request_timeout_ms(&self) -> u64 {
        self.connection.timeout_ms(5000)
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            prefix: "sockudo_queue:".into(),
            concurrency: 5,
            max_attempts: 5,
            retry_base_delay_ms: 1000,
            retry_max_delay_ms: 60_000,
            lease_ms: 30_000,
            poll_interval_ms: 250,
            connection: DriverConnection::default(),
        }
    }
}

impl QueueConfig {
    /// Refuse settings that cannot work, naming the field under `place`.
    pub fn check(&self, place: &str) -> Result<(), PluginError> {
        for (field, value) in [
            ("concurrency", self.concurrency as u64),
            ("max_attempts", u64::from(self.max_attempts)),
            ("lease_ms", self.lease_ms),
            ("poll_interval_ms", self.poll_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms()),
        ] {
            if value == 0 {
                return Err(PluginError::config(format!("{place}.{field}: must be at least 1")));
            }
        }
        if self.retry_max_delay_ms < self.retry_base_delay_ms {
            return Err(PluginError::config(format!(
                "{place}.retry_max_delay_ms: must not be below retry_base_delay_ms"
            )));
        }
        Ok(())
    }
}

/// Store a job and make it ready. KEYS: seq, jobs, attempts, ready. ARGV: payload. Answers the
/// job's id.
const PUSH: &str = r"
local id = tostring(redis.call('INCR', KEYS[1]))
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('HSET', KEYS[3], id, 0)
redis.call('RPUSH', KEYS[4], id)
return id
";

/// Make due retries and jobs whose lease ended ready again, then lease the oldest ready job.
/// A job past its attempts (its workers kept dying) goes to the dead letters instead.
/// KEYS: ready, delayed, leased, jobs, attempts, dead. ARGV: lease ms, max attempts.
/// Answers {id, attempt, payload}, or nil when nothing is ready.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    redis.call('ZREM', key, id)
    redis.call('RPUSH', KEYS[1], id)
  end
end
for _ = 1, 16 do
  local id = redis.call('LPOP', KEYS[1])
  if not id then return nil end
  local payload = redis.call('HGET', KEYS[4], id)
  if payload then
    local attempt = redis.call('HINCRBY', KEYS[5], id, 1)
    if attempt > tonumber(ARGV[2]) then
      redis.call('RPUSH', KEYS[6], id)
    else
      redis.call('ZADD', KEYS[3], now + tonumber(ARGV[1]), id)
      return {id, attempt, payload}
    end
  end
end
return nil
";

/// The job is done: forget it. KEYS: leased, jobs, attempts. ARGV: id. Answers 1, or 0 if the
/// lease had ended and another worker may hold the job.
const ACK: &str = r"
local held = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return held
";

/// The attempt failed: retry after a delay, or set the job aside. KEYS: leased, delayed, dead,
/// attempts. ARGV: id, delay ms, give up now (1/0), max attempts. Answers 1 (retry), 2 (dead),
/// or 0 if the lease had ended (the job is already back in line).
const FAIL: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local attempt = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
if ARGV[3] == '1' or attempt >= tonumber(ARGV[4]) then
  redis.call('RPUSH', KEYS[3], ARGV[1])
  return 2
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return 1
";

/// The keys of one queue.
struct Keys {
    seq: String,
    jobs: String,
    attempts: String,
    ready: String,
    delayed: String,
    leased: String,
    dead: String,
}

impl Keys {
    fn new(prefix: &str, queue: &str) -> Self {
        let tag = format!("{{{prefix}{queue}}}");
        Self {
            seq: format!("{tag}:seq"),
            jobs: format!("{tag}:jobs"),
            attempts: format!("{tag}:attempts"),
            ready: format!("{tag}:ready"),
            delayed: format!("{tag}:delayed"),
            leased: format!("{tag}:leased"),
            dead: format!("{tag}:dead"),
        }
    }
}

struct Scripts {
    push: redis::Script,
    take: redis::Script,
    ack: redis::Script,
    fail: redis::Script,
}

struct Shared<C> {
    conn: C,
    config: QueueConfig,
    timeout: Duration,
    scripts: Scripts,
    /// Per queue: wakes this node's idle workers when this node pushes.
    wake: Mutex<HashMap<String, Arc<Notify>>>,
    closed: AtomicBool,
    host: HostContextBox,
}

/// Durable named queues in Redis.
pub struct RedisQueue<C> {
    shared: Arc<Shared<C>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl<C> std::fmt::Debug for RedisQueue<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.shared.config.prefix)
            .finish_non_exhaustive()
    }
}

impl<C> RedisQueue<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A queue over `conn`, reporting dead letters and backend trouble to `host`.
    pub fn new(conn: C, config: QueueConfig, host: HostContextBox) -> Self {
        Self {
            shared: Arc::new(Shared {
                conn,
                timeout: Duration::from_millis(config.request_timeout_ms()),
                config,
                scripts: Scripts {
                    push: redis::Script::new(PUSH),
                    take: redis::Script::new(TAKE),
                    ack: redis::Script::new(ACK),
                    fail: redis::Script::new(FAIL),
                },
                wake: Mutex::default(),
                closed: AtomicBool::new(false),
                host,
            }),
            workers: Mutex::default(),
        }
    }
}

impl<C> Shared<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn open(&self) -> Result<C, PluginError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PluginError::unavailable("the redis queue is shut down"));
        }
        Ok(self.conn.clone())
    }

    fn wake(&self, queue: &str) -> Arc<Notify> {
        let mut wake = self.wake.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        wake.entry(queue.to_string()).or_default().clone()
    }

    /// The delay before attempt `next_attempt` (2 for the first retry).
    fn backoff(&self, next_attempt: u32) -> u64 {
        let doublings = next_attempt.saturating_sub(2).min(32);
        self.config
            .retry_base_delay_ms
            .saturating_mul(1 << doublings)
            .min(self.config.retry_max_delay_ms)
    }

    async fn take(&self, queue: &str, keys: &Keys) -> Result<Option<Job>, PluginError> {
        let mut conn = self.open()?;
        let mut call = self.scripts.take.prepare_invoke();
        call.key(&keys.ready)
            .key(&keys.delayed)
            .key(&keys.leased)
            .key(&keys.jobs)
            .key(&keys.attempts)
            .key(&keys.dead)
            .arg(self.config.lease_ms)
            .arg(self.config.max_attempts);
        let answer: Value =
            within("redis queue take", self.timeout, call.invoke_async(&mut conn)).await?;
        let Value::Array(parts) = answer else { return Ok(None) };
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(b.clone()),
            Value::SimpleString(s) => Some(s.clone().into_bytes()),
            Value::Int(n) => Some(n.to_string().into_bytes()),
            _ => None,
        };
        let (Some(id), Some(attempt), Some(payload)) = (
            parts.first().and_then(text),
            parts.get(1).and_then(text),
            parts.get(2).and_then(text),
        ) else {
            return Err(PluginError::internal("redis queue take: an answer of the wrong shape"));
        };
        let attempt = String::from_utf8_lossy(&attempt).parse().unwrap_or(1);
        Ok(Some(Job {
            id: RString::from(String::from_utf8_lossy(&id).into_owned()),
            queue: RString::from(queue),
            attempt,
            payload: RVec::from(payload),
        }))
    }

    async fn settle(
        &self,
        keys: &Keys,
        job: &Job,
        outcome: Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        let mut conn = self.open()?;
        match outcome {
            Ok(()) => {
                let mut call = self.scripts.ack.prepare_invoke();
                call.key(&keys.leased).key(&keys.jobs).key(&keys.attempts).arg(job.id.as_str());
                let held: i64 =
                    within("redis queue ack", self.timeout, call.invoke_async(&mut conn)).await?;
                if held == 0 {
                    tracing::warn!(queue = %job.queue, job = %job.id, "A job finished after its lease ended; another worker may have run it too.");
                }
            }
            Err(error) => {
                let give_up = error.code == ErrorCode::REJECTED;
                let mut call = self.scripts.fail.prepare_invoke();
                call.key(&keys.leased)
                    .key(&keys.delayed)
                    .key(&keys.dead)
                    .key(&keys.attempts)
                    .arg(job.id.as_str())
                    .arg(self.backoff(job.attempt + 1))
                    .arg(if give_up { 1 } else { 0 })
                    .arg(self.config.max_attempts);
                let result: i64 =
                    within("redis queue fail", self.timeout, call.invoke_async(&mut conn)).await?;
                if result == 2 {
                    self.host.metric(RStr::from_str("queue_dead_letters"), 1);
                    tracing::warn!(queue = %job.queue, job = %job.id, attempts = job.attempt, %error,
                        "Job set aside in the dead-letter list.");
                }
            }
        }
        Ok(())
    }

    /// One worker: take a job, run it, record the outcome; when idle, wait for a local push or
    /// the poll interval; when Redis fails, back off and go on.
    async fn work(self: Arc<Self>, queue: String, handler: QueueHandlerBox) {
        let keys = Keys::new(&self.config.prefix, &queue);
        let wake = self.wake(&queue);
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let mut trouble = Duration::ZERO;
        while !self.closed.load(Ordering::Acquire) {
            let step = async {
                let Some(job) = self.take(&queue, &keys).await? else { return Ok(false) };
                let outcome = handler.handle(job.clone()).await.into_result();
                self.settle(&keys, &job, outcome).await?;
                Ok::<_, PluginError>(true)
            };
            match step.await {
                Ok(true) => trouble = Duration::ZERO,
                Ok(false) => {
                    trouble = Duration::ZERO;
                    let _ = tokio::time::timeout(poll, wake.notified()).await;
                }
                Err(error) => {
                    if self.closed.load(Ordering::Acquire) {
                        return;
                    }
                    trouble =
                        (trouble * 2).clamp(Duration::from_millis(500), Duration::from_secs(5));
                    self.host.metric(RStr::from_str("queue_errors"), 1);
                    tracing::warn!(%queue, %error, retry_in = ?trouble, "The redis queue failed; trying again.");
                    tokio::time::sleep(trouble).await;
                }
            }
        }
    }
}

impl<C> QueueDriver for RedisQueue<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn push(&self, queue: &str, payload: RVec<u8>) -> Result<(), PluginError> {
        let shared = &self.shared;
        let mut conn = shared.open()?;
        let keys = Keys::new(&shared.config.prefix, queue);
        let mut call = shared.scripts.push.prepare_invoke();
        call.key(&keys.seq)
            .key(&keys.jobs)
            .key(&keys.attempts)
            .key(&keys.ready)
            .arg(payload.as_slice());
        let _: Value =
            within("redis queue push", shared.timeout, call.invoke_async(&mut conn)).await?;
        shared.wake(queue).notify_one();
        Ok(())
    }

    async fn consume(&self, queue: &str, handler: QueueHandlerBox) -> Result<(), PluginError> {
        self.shared.open()?;
        let mut workers = self.workers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for _ in 0..self.shared.config.concurrency {
            workers.push(tokio::spawn(self.shared.clone().work(queue.to_owned(), handler.clone())));
        }
        Ok(())
    }

    async fn pending(&self, queue: &str) -> Result<u64, PluginError> {
        let mut conn = self.shared.open()?;
        let keys = Keys::new(&self.shared.config.prefix, queue);
        let mut pipe = redis::pipe();
        pipe.cmd("LLEN")
            .arg(&keys.ready)
            .cmd("ZCARD")
            .arg(&keys.delayed)
            .cmd("ZCARD")
            .arg(&keys.leased);
        let (ready, delayed, leased): (u64, u64, u64) =
            within("redis queue pending", self.shared.timeout, pipe.query_async(&mut conn)).await?;
        Ok(ready + delayed + leased)
    }

    async fn health(&self) -> Result<(), PluginError> {
        let mut conn = self.shared.open()?;
        within("redis PING", self.shared.timeout, redis::cmd("PING").query_async::<()>(&mut conn))
            .await
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // A job in the middle of its work keeps its lease and is taken again once it ends.
        let mut workers = self.workers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for worker in workers.drain(..) {
            worker.abort();
        }
        Ok(())
    }
}

impl<C> Drop for RedisQueue<C> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Ok(mut workers) = self.workers.lock() {
            for worker in workers.drain(..) {
                worker.abort();
            }
        }
    }
}

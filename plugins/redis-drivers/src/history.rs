//! The history store: each channel's stream in two keys that share a hash tag, `…:meta` (a
//! hash: the stream's id `e` and its last serial `s`) and `…:log` (a Redis stream whose entry
//! ids are the serials), written and read by Lua scripts so that the serial an event gets and
//! its append are one atomic step, on one server or one shard of a cluster.
//!
//! Memory is bounded per channel by the count (`MAXLEN ~` on every append: at most one node
//! of the stream, 100 entries by default, beyond it; reads answer only the last `max_events`)
//! and by age (the log expires with the retention after its last append, the meta after twice
//! that; entries older than the retention are not answered). A lost meta (expired, flushed, a
//! server restarted without persistence) starts the stream again with a new id, which
//! resumes are told.

use redis::aio::ConnectionLike;
use serde::Deserialize;
use sockhost_plugin_api::{
    Appended, MAX_RECORD_BYTES, Outgoing, Page, PluginError, Published, Retention, Stored,
    abi::{RString, RVec},
    sdk::{self, HistoryBusDriver, HistoryDriver},
};

use crate::{bus, connection::DriverConnection, handle::Handle, within};

/// A history store's table (`[history.redis]` / `[history.redis-cluster]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Prefix of every key. Default: "sockhost_history:".
    pub prefix: String,
    /// Where it connects (`url_override`, `nodes`, `request_timeout_ms`, `cluster_mode`,
    /// `[database.redis]`).
    #[serde(flatten)]
    pub connection: DriverConnection,
}

impl HistoryConfig {
    /// Milliseconds a command may take: the table's, else 2000 (a publish waits on it).
    pub fn request_timeout_ms(&self) -> u64 {
        self.connection.timeout_ms(2000)
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self { prefix: "sockhost_history:".into(), connection: DriverConnection::default() }
    }
}

/// Start the stream if its meta is gone (a new id, an empty log). KEYS: meta, log. ARGV[1]:
/// the new id, ARGV[2]: milliseconds the meta lives.
const START: &str = r"
local id = redis.call('HGET', KEYS[1], 'e')
if not id then
  id = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', id, 's', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
";

/// An append's failed `XADD` (the log key holds another type, or entries past the meta's
/// serial): the serials it and the records after it took are given back before the error is
/// raised, so that a failed append leaves no serial without its entry (a gap every subscriber
/// would see, and no repair could fill).
const UNWRITTEN: &str = r"
local function unwritten(added, left)
  if type(added) == 'table' and added.err then
    redis.call('HINCRBY', KEYS[1], 's', -left)
    error(added)
  end
end
";

/// Append: ARGV[1] new id, [2] meta lifetime, [3] max events, [4] log lifetime, [5] now (ms),
/// [6...] the records, in order. Answers {stream id, the first record's serial, 0} (0: not
/// published, as [`APPEND_PUBLISH`] answers).
const APPEND: &str = r"
local count = #ARGV - 5
local last = redis.call('HINCRBY', KEYS[1], 's', count)
for i = 1, count do
  local serial = last - count + i
  local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], serial .. '-0', 't', ARGV[5], 'r', ARGV[5 + i])
  unwritten(added, count - i + 1)
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {id, last - count + 1, 0}
";

/// Append and publish: ARGV[1]-[5] as [`APPEND`], [6] the bus channel, then each event's
/// record and bus message. Each message is published after its append, with the stream id,
/// the serial's digits and one byte each for their lengths added after it. Answers
/// {stream id, the first record's serial, 1 if published}: a user the server's ACL does not
/// let publish there (Redis 7's check; a store connecting as another user than the
/// transport's) only appends, rather than failing after the appends, and the node publishes.
const APPEND_PUBLISH: &str = r"
local count = (#ARGV - 6) / 2
local publish = (not redis.acl_check_cmd) or redis.acl_check_cmd('PUBLISH', ARGV[6], '')
local last = redis.call('HINCRBY', KEYS[1], 's', count)
for i = 1, count do
  local serial = string.format('%d', last - count + i)
  local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], serial .. '-0', 't', ARGV[5], 'r', ARGV[5 + 2 * i])
  unwritten(added, count - i + 1)
  if publish then
    redis.call('PUBLISH', ARGV[6], ARGV[6 + 2 * i] .. id .. serial .. string.char(#id, #serial))
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {id, last - count + 1, publish and 1 or 0}
";

/// Read: ARGV[1] new id, [2] meta lifetime, [3] after, [4] limit, [5] max events, [6] the
/// oldest time still kept (ms), [7] the largest record answered. Answers {stream id, head,
/// entries}. Appends trim the log by count, and roughly (`MAXLEN ~`: whole nodes of the
/// stream at a time, far cheaper than exact trimming), so a read answers only the last
/// `max events` serials, up to the head. It first steps over the entries older than the
/// retention (a channel quieter than its retention keeps them until its log expires), which
/// would otherwise take a page's places; a record larger than ARGV[7] is answered empty
/// (unreadable), not sent whole.
const READ: &str = r"
local head = tonumber(redis.call('HGET', KEYS[1], 's'))
local entries = {}
if tonumber(ARGV[4]) > 0 then
  local function entry_id(serial) return string.format('%d', serial) .. '-0' end
  local after = math.min(math.max(tonumber(ARGV[3]), head - tonumber(ARGV[5])), head)
  local last = entry_id(head)
  local oldest = tonumber(ARGV[6])
  local aged = true
  while aged and after < head do
    local batch = redis.call('XRANGE', KEYS[2], '(' .. entry_id(after), last, 'COUNT', 16)
    if #batch == 0 then break end
    for _, entry in ipairs(batch) do
      if (tonumber(entry[2][2]) or oldest) >= oldest then
        aged = false
        break
      end
      after = tonumber(string.match(entry[1], '^%d+'))
    end
  end
  entries = redis.call('XRANGE', KEYS[2], '(' .. entry_id(after), last, 'COUNT', ARGV[4])
  local largest = tonumber(ARGV[7])
  for _, entry in ipairs(entries) do
    if type(entry[2][4]) == 'string' and #entry[2][4] > largest then
      entry[2][4] = ''
    end
  end
end
return {id, head, entries}
";

/// The most events one read answers, whatever the host asks.
const MAX_READ: u32 = 10_000;

/// One log entry as `XRANGE` answers it: its id and its fields (`t`, time, `r`, record).
type Entry = (String, (String, u64, String, Vec<u8>));

/// A history store in Redis.
pub struct RedisHistory<C> {
    handle: Handle<C>,
    prefix: String,
    append: redis::Script,
    append_publish: redis::Script,
    read: redis::Script,
    /// The server or cluster it writes to (see [`crate::connection::server_identity`] and
    /// [`crate::connection::cluster_identity`]): a transport of this library publishing
    /// there lets it publish too.
    server: Option<String>,
}

impl<C> std::fmt::Debug for RedisHistory<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHistory").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl<C> RedisHistory<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store over `conn` with `config`'s prefix and timeout.
    pub fn new(conn: C, config: &HistoryConfig) -> Self {
        Self {
            handle: Handle::new(conn, config.request_timeout_ms(), "history store"),
            prefix: config.prefix.clone(),
            append: redis::Script::new(&format!("{START}{UNWRITTEN}{APPEND}")),
            append_publish: redis::Script::new(&format!("{START}{UNWRITTEN}{APPEND_PUBLISH}")),
            read: redis::Script::new(&format!("{START}{READ}")),
            server: None,
        }
    }

    /// The store writes to the one server or cluster `server` names (see
    /// [`crate::connection::server_identity`] and [`crate::connection::cluster_identity`]).
    pub fn on_server(mut self, server: Option<String>) -> Self {
        self.server = server;
        self
    }

    /// The channel's two keys, with one hash tag so that they live on one shard. Lengths
    /// first, so that no app and channel pair reads as another.
    fn keys(&self, app: &str, channel: &str) -> [String; 2] {
        let tag = format!("{{{}:{app}:{channel}}}", app.len());
        [format!("{}{tag}:meta", self.prefix), format!("{}{tag}:log", self.prefix)]
    }

    fn invocation<'a>(
        &self,
        script: &'a redis::Script,
        app: &str,
        channel: &str,
        retention: Retention,
    ) -> redis::ScriptInvocation<'a> {
        let [meta, log] = self.keys(app, channel);
        let mut invocation = script.key(meta);
        invocation.key(log);
        let lifetime = retention.max_age_ms.max(1);
        invocation.arg(uuid::Uuid::new_v4().to_string()).arg(lifetime.saturating_mul(2));
        invocation
    }

    /// An append's invocation of `script` up to ARGV[5] (see [`APPEND`]); the caller adds
    /// the events.
    fn append_invocation<'a>(
        &self,
        script: &'a redis::Script,
        app: &str,
        channel: &str,
        retention: Retention,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = self.invocation(script, app, channel, retention);
        invocation
            .arg(retention.max_events.max(1))
            .arg(retention.max_age_ms.max(1))
            .arg(sdk::unix_ms());
        invocation
    }

    /// Run an append's invocation: where the events went, and whether the script published
    /// them.
    async fn run_append(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Published, PluginError> {
        let mut conn = self.handle.open()?;
        let (stream_id, serial, published): (String, u64, u8) =
            within("redis history append", self.handle.timeout, invocation.invoke_async(&mut conn))
                .await?;
        let appended = Appended { stream_id: RString::from(stream_id), serial };
        Ok(Published { appended, published: published == 1 })
    }
}

impl<C> HistoryDriver for RedisHistory<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn append(
        &self,
        app: &str,
        channel: &str,
        records: Vec<Vec<u8>>,
        retention: Retention,
    ) -> Result<Appended, PluginError> {
        let mut invocation = self.append_invocation(&self.append, app, channel, retention);
        for record in records {
            invocation.arg(record);
        }
        Ok(self.run_append(invocation).await?.appended)
    }

    async fn read(
        &self,
        app: &str,
        channel: &str,
        after: u64,
        limit: u32,
        retention: Retention,
    ) -> Result<Page, PluginError> {
        let mut conn = self.handle.open()?;
        let mut invocation = self.invocation(&self.read, app, channel, retention);
        let oldest = sdk::unix_ms().saturating_sub(retention.max_age_ms);
        invocation
            .arg(after)
            .arg(limit.min(MAX_READ))
            .arg(retention.max_events.max(1))
            .arg(oldest)
            .arg(MAX_RECORD_BYTES);
        let (stream_id, head, entries): (String, u64, Vec<Entry>) =
            within("redis history read", self.handle.timeout, invocation.invoke_async(&mut conn))
                .await?;
        let mut events = RVec::with_capacity(entries.len());
        for (id, (_, at_ms, _, record)) in entries {
            let serial = id.split('-').next().and_then(|s| s.parse().ok()).ok_or_else(|| {
                PluginError::rejected(format!("redis history: a log entry has the id {id:?}"))
            })?;
            events.push(Stored { serial, at_ms, record: RVec::from(record) });
        }
        // Too old: dropped as if trimmed, with everything before it (nodes' clocks differ a
        // little, so times are not quite in serial order, and a page never has a hole).
        if let Some(last_old) = events.iter().rposition(|e| e.at_ms < oldest) {
            events = events.into_iter().skip(last_old + 1).collect();
        }
        Ok(Page { stream_id: RString::from(stream_id), head, events })
    }

    async fn reset(&self, app: &str, channel: &str) -> Result<(), PluginError> {
        let mut conn = self.handle.open()?;
        let [meta, log] = self.keys(app, channel);
        let del = redis::cmd("DEL").arg(meta).arg(log).to_owned();
        within("redis history reset", self.handle.timeout, del.query_async::<()>(&mut conn)).await
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.handle.ping().await
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        self.handle.close();
        Ok(())
    }
}

impl<C> HistoryBusDriver for RedisHistory<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn append_publishing(
        &self,
        app: &str,
        channel: &str,
        topic: &str,
        events: Vec<Outgoing>,
        retention: Retention,
    ) -> Result<Published, PluginError> {
        // Only where this library's transport publishes, to the channel it would use.
        let Some(prefix) = self.server.as_deref().and_then(bus::prefix_on) else {
            let records = events.into_iter().map(|e| e.record.into_vec()).collect();
            let appended = HistoryDriver::append(self, app, channel, records, retention).await?;
            return Ok(Published { appended, published: false });
        };
        let mut invocation = self.append_invocation(&self.append_publish, app, channel, retention);
        invocation.arg(format!("{prefix}{topic}"));
        for Outgoing { record, message } in events {
            invocation.arg(record.as_slice()).arg(message.as_slice());
        }
        self.run_append(invocation).await
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        self.handle.close();
        Ok(())
    }
}

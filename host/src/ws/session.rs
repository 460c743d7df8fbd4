//! What a connection's messages do: the Pusher protocol's client side, for one socket.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use serde_json::{Value, value::RawValue};

use crate::{
    address_counts::WindowCount,
    apps::App,
    ctx::Ctx,
    delta::Algorithm,
    emit,
    feed::{Entry, Kind},
    hub::{Conn, DeltaWish, Join, Subscribed, Wants},
    metrics::Metrics,
    protocol::{
        Broadcast,
        channel::{self, ChannelKind, MAX_USER_ID_LENGTH},
        codes,
        filter::{Filter, FilterError, MAX_CONNECTION_FILTER_BYTES},
        frames,
        inbound::{self, ClientMessage, DeltaRequest},
        recovery::{self, Rewind},
        signature,
        webhook::Hook,
    },
    recovery::{Acked, Recovery, With},
};

use super::resume::Resumes;

/// What a subscribe asks for beyond the channel: a tag filter, deltas, a rewind.
#[derive(Debug)]
struct Asked {
    filter: Option<Arc<Filter>>,
    delta: Option<DeltaWish>,
    rewind: Option<Rewind>,
}

/// The window of a connection's budget of subscribes and unsubscribes.
const OPERATIONS_WINDOW: Duration = Duration::from_secs(60);

/// Users one watchlist may name (the Pusher limit); the rest are ignored with 4302.
const MAX_WATCHLIST: usize = 100;

/// The fields of presence `channel_data` the server reads; ids are kept raw (see
/// [`channel::user_id`]).
#[derive(Debug, Deserialize)]
struct ChannelData<'a> {
    #[serde(borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(default)]
    user_info: Option<Value>,
}

/// The fields of sign-in `user_data` the server reads.
#[derive(Debug, Default, Deserialize)]
struct UserData<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    watchlist: Option<&'a RawValue>,
}

/// Why a subscription is refused: the error type pusher-js shows, the message, and the
/// HTTP-like status.
struct Refusal {
    kind: &'static str,
    error: String,
    status: u16,
}

impl Refusal {
    fn new(kind: &'static str, error: impl Into<String>, status: u16) -> Self {
        Self { kind, error: error.into(), status }
    }
}

/// One connection's protocol state.
pub(super) struct Session {
    ctx: Arc<Ctx>,
    app: Arc<App>,
    conn: Conn,
    /// Its client events come back to it too (protocol 2's default).
    echo: bool,
    /// Subscribed channels, with the presence user id where there is one.
    subscriptions: HashMap<String, Option<String>>,
    /// With recovery, the head each subscription was acknowledged at: a resume replays up to
    /// it (the later events came live).
    heads: HashMap<String, Acked>,
    /// Resumes, one of which may wait for its channels' subscribes.
    resumes: Resumes,
    /// The user this connection signed in as.
    user_id: Option<String>,
    /// The users this connection watches.
    watchlist: Vec<String>,
    /// Deltas on every channel (`enable_delta_compression`), in the algorithm the client
    /// named if the server has it, else each channel's.
    deltas: Option<Option<Algorithm>>,
    /// The channels this connection gets deltas on.
    delta_channels: HashSet<String>,
    /// The channels whose subscription made its own delta choice (`delta`), which the
    /// connection's choice does not override.
    delta_chosen: HashSet<String>,
    /// The tag filter of each subscription that has one (the node's shared copies), for the
    /// connection's filter budget.
    filters: HashMap<String, Arc<Filter>>,
    /// Subscribes and unsubscribes in the current window.
    operations: WindowCount,
}

impl Session {
    pub(super) fn new(ctx: Arc<Ctx>, app: Arc<App>, conn: Conn, echo: bool) -> Self {
        Self {
            ctx,
            app,
            conn,
            echo,
            subscriptions: HashMap::new(),
            heads: HashMap::new(),
            resumes: Resumes::default(),
            user_id: None,
            watchlist: Vec::new(),
            deltas: None,
            delta_channels: HashSet::new(),
            delta_chosen: HashSet::new(),
            filters: HashMap::new(),
            operations: WindowCount::default(),
        }
    }

    /// Whether the connection has signed in.
    pub(super) fn signed_in(&self) -> bool {
        self.user_id.is_some()
    }

    fn send(&self, frame: String) {
        self.conn.send(&Utf8Bytes::from(frame));
    }

    /// Connection recovery, for this connection: on, and a protocol-2 socket (positions are
    /// only on its frames).
    fn recovery(&self) -> Option<&Arc<Recovery>> {
        self.ctx.recovery.as_ref().filter(|_| self.conn.wants_positions())
    }

    /// A subscription's `rewind`, if this connection may have one: Sockudo's forms, with
    /// history on, on a socket that tracks positions; else the error to send (and the
    /// subscription is not made).
    fn rewind_for(&self, channel: &str, rewind: &Value) -> Result<Rewind, (u16, String)> {
        let Some(rewind) = Rewind::parse(rewind) else {
            let message = "Invalid message format: Invalid rewind option in subscription data";
            return Err((codes::INVALID_FORMAT, message.to_string()));
        };
        let durable = self.ctx.recovery.as_ref().is_some_and(|r| r.is_durable());
        let durable = durable && self.app.recovery.enabled;
        if durable && self.recovery().is_none() {
            let message = "Channel error: Channel rewind is only supported on protocol V2";
            return Err((codes::REWIND_REFUSED, message.to_string()));
        }
        if !durable {
            return Err((
                codes::REWIND_REFUSED,
                format!(
                    "Channel error: Channel rewind is disabled by policy for channel '{channel}'"
                ),
            ));
        }
        Ok(rewind)
    }

    /// `pusher:resume`: replay what the client missed on each channel it names, as Sockudo
    /// does; 4301 without recovery, 4302 when it names nothing.
    async fn resume(&mut self, data: &Value) {
        let Some(recovery) = self.recovery().cloned() else {
            Metrics::count(&self.ctx.metrics.resumes, "outcome", "disabled");
            return self.error(codes::RECOVERY_DISABLED, "Connection recovery is not enabled");
        };
        match recovery::parse_resume(data) {
            Ok(wanted) => {
                Metrics::count(&self.ctx.metrics.resumes, "outcome", "started");
                let mut resume = self.resumes.begin(&self.conn, wanted, self.app.recovery);
                // The channels subscribed already are replayed now, one after the other; with
                // history, what this node's buffers cannot cover is read from the store just
                // before, so at most one channel's window is held at a time. (No other
                // message of this socket is handled meanwhile: its subscriptions stay as they
                // are.) The others are replayed at their subscribe.
                for (channel, acked) in resume.subscribed(&self.heads) {
                    let Some(wanted) = resume.wanted(&channel) else { continue };
                    let fetched = recovery.fetch(&self.app.id, &channel, wanted).await;
                    let filter = self.filters.get(&channel).map(|f| &**f);
                    let (app, conn) = (&self.app.id, &self.conn);
                    resume.settle(&recovery, app, conn, &channel, acked, filter, fetched);
                }
                self.resumes.hold(&self.conn, resume);
            }
            Err(error) => {
                Metrics::count(&self.ctx.metrics.resumes, "outcome", "refused");
                let code = match error {
                    recovery::ResumeError::NoPositions => codes::NO_RECOVERY_POSITIONS,
                    recovery::ResumeError::Malformed(_) => codes::INVALID_FORMAT,
                };
                self.error(code, &error.to_string());
            }
        }
    }

    /// Send `pusher:error` with `code`.
    pub(super) fn error(&self, code: u16, message: &str) {
        self.send(frames::error(code, message));
        self.tap(|| Entry::new(Kind::Error).detail(format!("{code}: {message}")));
    }

    /// Record what `make` describes in the app's live log (if a console watches it), with this
    /// connection's socket id.
    fn tap(&self, make: impl FnOnce() -> Entry) {
        let socket_id = &self.conn.socket_id;
        self.ctx.feed.tap.record(&self.app.id, || make().socket(socket_id));
    }

    /// Handle one text message.
    pub(super) async fn handle(&mut self, text: &str) {
        match inbound::parse(text) {
            Err(e) => self.error(codes::BAD_MESSAGE, &e.to_string()),
            Ok(ClientMessage::Ping) => self.send(frames::pong()),
            Ok(ClientMessage::Pong) => {}
            Ok(ClientMessage::Subscribe { channel, auth, channel_data, filter, delta, rewind }) => {
                let rewind = match rewind.map(|r| self.rewind_for(&channel, &r)).transpose() {
                    Ok(rewind) => rewind,
                    Err((code, message)) => return self.error(code, &message),
                };
                let compiled = filter.as_ref().map(Filter::compile).transpose();
                // Off, filters are checked (a client learns of a bad one) but not applied.
                let compiled = compiled.map(|f| f.filter(|_| self.ctx.settings.tag_filtering));
                // Interned, so the same filter on many channels and sockets is held once.
                let filter = compiled.map(|f| f.map(|f| self.ctx.adapter.hub().intern(f)));
                let filter = match filter.and_then(|f| self.filter_room(&channel, f)) {
                    Ok(filter) => filter,
                    Err(error) => {
                        Metrics::count(&self.ctx.metrics.subscriptions_refused, "reason", "filter");
                        let message = format!("Invalid message format: {error}");
                        return self.error(codes::INVALID_FILTER, &message);
                    }
                };
                let chosen = delta.is_some();
                let delta = self.delta_wish(&channel, delta.as_ref());
                let asked = Asked { filter, delta, rewind };
                self.subscribe(&channel, auth.as_deref(), channel_data.as_deref(), asked).await;
                if chosen && self.subscriptions.contains_key(&channel) {
                    self.delta_chosen.insert(channel);
                } else {
                    self.delta_chosen.remove(&channel);
                }
            }
            Ok(ClientMessage::EnableDeltaCompression { algorithms }) => {
                self.enable_deltas(&algorithms);
            }
            Ok(ClientMessage::DeltaSyncError { channel }) => {
                if self.delta_channels.contains(&channel) {
                    self.ctx.metrics.delta_resyncs.inc();
                    let adapter = &self.ctx.adapter;
                    adapter.resync_deltas(&self.app.id, &channel, &self.conn.socket_id);
                }
            }
            Ok(ClientMessage::Unsubscribe { channel }) => self.client_unsubscribe(&channel).await,
            Ok(ClientMessage::Signin { auth, user_data }) => self.signin(&auth, &user_data).await,
            Ok(ClientMessage::ClientEvent { event, channel, data }) => {
                self.client_event(&event, &channel, &data).await;
            }
            Ok(ClientMessage::Resume { data }) => self.resume(&data).await,
        }
    }

    /// `filter` for a subscription to `channel`, if the connection's filters stay within
    /// [`MAX_CONNECTION_FILTER_BYTES`] with it (instead of the channel's current one). Each
    /// distinct filter counts once: equal filters are one shared copy.
    fn filter_room(
        &self,
        channel: &str,
        filter: Option<Arc<Filter>>,
    ) -> Result<Option<Arc<Filter>>, FilterError> {
        let Some(filter) = filter else { return Ok(None) };
        let others = self.filters.iter().filter(|(name, _)| name.as_str() != channel);
        let mut seen = HashSet::new();
        let held: usize = others
            .map(|(_, f)| f)
            .chain([&filter])
            .filter(|f| seen.insert(Arc::as_ptr(f)))
            .map(|f| f.cost())
            .sum();
        if held > MAX_CONNECTION_FILTER_BYTES {
            return Err(FilterError::Limit(format!(
                "this connection's tag filters would be {held} bytes; the limit is \
                 {MAX_CONNECTION_FILTER_BYTES} (a filter used on several channels counts once)"
            )));
        }
        Ok(Some(filter))
    }

    /// The deltas a subscription to `channel` gets: what it asked, or else what the connection
    /// asked, where the app grants deltas on the channel and the connection is under its
    /// channel bound. An algorithm the server lacks is the channel's.
    fn delta_wish(&self, channel: &str, asked: Option<&DeltaRequest>) -> Option<DeltaWish> {
        let algorithm = match asked {
            Some(DeltaRequest::Off) => return None,
            Some(DeltaRequest::On(name)) => name.as_deref().and_then(Algorithm::parse),
            None => self.deltas?,
        };
        let settings = self.app.deltas.for_channel(channel)?;
        let room = self.delta_channels.len() < self.ctx.settings.delta_channels_per_socket;
        (room || self.delta_channels.contains(channel)).then_some(DeltaWish { algorithm, settings })
    }

    /// `enable_delta_compression`: deltas on every channel from now on, those subscribed to
    /// without a choice of their own included, in the first algorithm the client names that
    /// the server has (else each channel's). Answered with what was granted (the server's
    /// algorithm where the client named none).
    fn enable_deltas(&mut self, algorithms: &[String]) {
        let Some(server) = self.ctx.settings.delta.as_ref() else {
            return self.send(frames::delta_compression_enabled(None));
        };
        let named = algorithms.iter().find_map(|name| Algorithm::parse(name));
        self.deltas = Some(named);
        let granted = named.unwrap_or(server.algorithm);
        let names: Vec<String> = self
            .subscriptions
            .keys()
            .filter(|name| !self.delta_chosen.contains(*name))
            .cloned()
            .collect();
        for name in names {
            if let Some(wish) = self.delta_wish(&name, None) {
                let adapter = &self.ctx.adapter;
                if adapter.enable_deltas(&self.app.id, &name, &self.conn.socket_id, wish) {
                    self.delta_channels.insert(name);
                }
            }
        }
        // Told once every channel has them: the next event after this frame is a delta.
        self.send(frames::delta_compression_enabled(Some(granted.name())));
    }

    fn subscription_error(&self, channel: &str, kind: &str, error: &str, status: u16) {
        tracing::debug!(socket_id = %self.conn.socket_id, channel, kind, error, "Subscription refused.");
        self.send(frames::subscription_error(channel, kind, error, status));
        let detail = || format!("subscription refused: {kind} ({status}) {error}");
        self.tap(|| Entry::new(Kind::Error).channel(channel).detail(detail()));
        // A resume waiting for this subscribe is answered now, not after its 30 s.
        if self.resumes.take(channel).is_some() {
            self.resumes.settled(&self.conn, Err(Resumes::not_subscribed(channel)));
        }
    }

    /// Count a subscribe or unsubscribe against the connection's rate (a window of a minute);
    /// whether it is allowed. Counted here, not by the rate-limiter driver: the budget is the
    /// connection's own, which lives on this node only, and a key per connection in the driver
    /// cost a round trip per subscribe and stayed behind for a minute after each connection.
    fn channel_operation_allowed(&mut self) -> bool {
        let limit = self.app.limits.max_subscriptions_per_minute;
        if limit == 0 || !self.ctx.settings.rate_limiter_enabled {
            return true;
        }
        if self.operations.current(OPERATIONS_WINDOW).0 >= limit {
            self.ctx.metrics.rate_limited.inc();
            return false;
        }
        self.operations.add(OPERATIONS_WINDOW);
        true
    }

    async fn subscribe(
        &mut self,
        name: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
        asked: Asked,
    ) {
        let Asked { filter, delta, rewind } = asked;
        if !self.channel_operation_allowed() {
            Metrics::count(&self.ctx.metrics.subscriptions_refused, "reason", "rate");
            let limit = self.app.limits.max_subscriptions_per_minute;
            let error = format!("Over {limit} subscribes and unsubscribes a minute; retry later");
            return self.subscription_error(name, "LimitReached", &error, 429);
        }
        // pusher-js subscribes to its user's server-to-user channel after signing in. Events on
        // it are routed by sign-in, not by subscription, so this only acknowledges it.
        if let Some(user_id) = name.strip_prefix(channel::SERVER_TO_USER_PREFIX) {
            if self.user_id.as_deref() == Some(user_id) {
                return self.send(frames::subscription_succeeded(name));
            }
            return self.subscription_error(name, "AuthError", "Sign in as this user first", 403);
        }
        let join = match self.check_subscription(name, auth, channel_data) {
            Ok(join) => join,
            Err(Refusal { kind, error, status }) => {
                return self.subscription_error(name, kind, &error, status);
            }
        };
        if let Some(previous) = self.subscriptions.get(name) {
            // Subscribing again as someone else is leaving and joining.
            let same_user = join.as_ref().map(|j| j.user_id.as_str()) == previous.as_deref();
            if !same_user {
                self.unsubscribe(name).await;
            }
        }
        let member = join.as_ref().map(|j| (j.user_id.clone(), j.user_info.clone()));
        let held = filter.clone();
        let presence = ChannelKind::of(name) == ChannelKind::Presence;
        let with_deltas = delta.is_some();
        // With recovery, the acknowledgement carries the channel's head as the subscription
        // becomes visible (the closure runs under the hub's lock on the channel), and a resume
        // waiting for this subscribe replays right after it, before any live event.
        let recovery = self.recovery().cloned();
        let stream = match &recovery {
            Some(recovery) => recovery.prepare(&self.app.id, name).await,
            None => None,
        };
        let mut resumed = recovery.as_ref().and_then(|_| self.resumes.take(name));
        // Without a stream (the history store could not be read, or the node holds as many
        // as it may), a resume waiting for this subscribe is answered now, not by its timer.
        if let (Some(recovery), None, Some(_)) = (&recovery, &stream, &resumed) {
            self.resumes.settled(&self.conn, Err(Resumes::no_stream(name, recovery.is_durable())));
            resumed = None;
        }
        // With history, what this node's buffer cannot cover is read from the store first.
        let fetched = match (&recovery, &resumed) {
            (Some(recovery), Some(wanted)) => recovery.fetch(&self.app.id, name, wanted).await,
            _ => None,
        };
        let (fetched, unreadable) = match fetched {
            Some(Err(failure)) => (None, Some(failure)),
            Some(Ok(fetched)) => (Some(fetched), None),
            None => (None, None),
        };
        let rewinding = match (&recovery, &stream, rewind) {
            (Some(recovery), Some(stream), Some(rewind)) => {
                Some(recovery.plan_rewind(&self.app.id, name, stream, rewind).await)
            }
            _ => None,
        };
        let acked = AtomicU64::new(0);
        let mut replayed = None;
        let subscribed = self
            .ctx
            .adapter
            .subscribe(&self.app.id, name, &self.conn, join, Wants { filter, delta }, |members| {
                let frame = if presence {
                    frames::presence_subscription_succeeded(name, members)
                } else {
                    frames::subscription_succeeded(name)
                };
                let (Some(recovery), Some(stream)) = (&recovery, &stream) else {
                    return vec![frame.into()];
                };
                let head = stream.head();
                let serial = head.serial();
                acked.store(serial, Ordering::Relaxed);
                let mut frames = vec![recovery::with_head(&frame, &head.stream_id, serial).into()];
                if let Some(failure) = &unreadable {
                    replayed = Some(Err(failure.clone()));
                } else if let Some(wanted) = &resumed {
                    let (fetched, filter) = (fetched.as_ref(), held.as_deref());
                    let with = With { fetched, filter, app: self.app.recovery };
                    let outcome =
                        recovery.collect(stream, &self.app.id, name, wanted, serial, with);
                    if let Ok((replay, _)) = &outcome {
                        frames.extend(replay.iter().cloned());
                    }
                    replayed = Some(outcome.map(|(_, recovered)| recovered));
                }
                if let Some(plan) = &rewinding {
                    frames.extend(recovery.rewind(stream, name, plan, serial, held.as_deref()));
                }
                frames
            })
            .await;
        if resumed.is_some() {
            let outcome = replayed.unwrap_or_else(|| Err(Resumes::not_subscribed(name)));
            self.resumes.settled(&self.conn, outcome);
        }
        match subscribed {
            Err(full) => self.subscription_error(name, "LimitReached", &full.to_string(), 403),
            Ok(outcome) => {
                match held {
                    Some(filter) => self.filters.insert(name.to_string(), filter),
                    None => self.filters.remove(name),
                };
                if let Some(stream) = &stream {
                    let acked = (stream.head().stream_id, acked.load(Ordering::Relaxed));
                    // Subscribed again on the same stream: what came after the first
                    // acknowledgement came live, and a resume replays only what is before it.
                    let known = self.heads.get(name).is_some_and(|(id, _)| *id == acked.0);
                    if !known {
                        self.heads.insert(name.to_string(), acked);
                    }
                }
                self.subscribed(name, &outcome, member, with_deltas).await;
            }
        }
    }

    /// The checks a subscription passes before it is made: a valid name, the channel's
    /// signature, presence data, the connection's channel bound. The presence join it makes.
    fn check_subscription(
        &self,
        name: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) -> Result<Option<Join>, Refusal> {
        channel::validate(name, self.app.limits.max_channel_name_length)
            .map_err(|e| Refusal::new("InvalidChannel", e.to_string(), 400))?;
        let kind = ChannelKind::of(name);
        let channel_data = if kind == ChannelKind::Presence { channel_data } else { None };
        if kind.needs_auth() {
            let needed = || Refusal::new("AuthError", "This channel needs an auth signature", 401);
            let auth = auth.ok_or_else(needed)?;
            let message = signature::channel_message(&self.conn.socket_id, name, channel_data);
            if !self.signed(&message, auth) {
                return Err(Refusal::new("AuthError", "Invalid signature", 401));
            }
        }
        let join = match kind {
            ChannelKind::Presence => Some(
                self.presence_join(channel_data)
                    .map_err(|(error, status)| Refusal::new("InvalidChannelData", error, status))?,
            ),
            _ => None,
        };
        let max = self.app.limits.max_channels_per_connection;
        if !self.subscriptions.contains_key(name) && self.subscriptions.len() >= max {
            Metrics::count(&self.ctx.metrics.subscriptions_refused, "reason", "channels");
            let error = format!("A connection may subscribe to {max} channels at most");
            return Err(Refusal::new("LimitReached", error, 403));
        }
        Ok(join)
    }

    /// A subscription was made: record it, and tell what it changed (occupancy, a member
    /// joining, the cache's last event, the subscription count).
    async fn subscribed(
        &mut self,
        name: &str,
        outcome: &Subscribed,
        member: Option<(String, Value)>,
        with_deltas: bool,
    ) {
        if outcome.new_subscriber {
            self.ctx.metrics.subscriptions.inc();
        }
        let user_id = member.as_ref().map(|(id, _)| id.clone());
        self.tap(|| {
            let entry = Entry::new(Kind::Subscribed).channel(name);
            match &user_id {
                Some(user) => entry.detail(format!("as user {user}")),
                None => entry,
            }
        });
        self.subscriptions.insert(name.to_string(), user_id);
        if with_deltas {
            self.delta_channels.insert(name.to_string());
        } else {
            self.delta_channels.remove(name);
        }
        if outcome.occupied {
            self.ctx.events.occupancy_event(&self.app.id, name, true);
        }
        if let (true, Some((user_id, user_info))) = (outcome.first_for_user, member) {
            let except = Some(&*self.conn.socket_id);
            let (ctx, app) = (&self.ctx, &self.app.id);
            ctx.events.member_event(app, name, &user_id, Some(&user_info), except);
        }
        if channel::is_cache(name) {
            self.replay_cache(name).await;
        }
        if outcome.new_subscriber && ChannelKind::of(name) != ChannelKind::Presence {
            self.subscription_count_changed(name);
        }
    }

    fn webhook(&self, event: Hook) {
        self.ctx.webhooks.emit(&self.app, event);
    }

    /// Send a cache channel's last event, or `pusher:cache_miss` (and the webhook).
    async fn replay_cache(&self, name: &str) {
        let key = crate::http_api::events::cache_key(&self.app.id, name);
        let cached = self.ctx.drivers.cache.get(&key).await.unwrap_or_else(|error| {
            tracing::warn!(%error, channel = name, "The cache failed; treating it as a miss.");
            None
        });
        match cached.map(String::from_utf8) {
            Some(Ok(frame)) => self.send(frame),
            _ => {
                self.send(frames::cache_miss(name));
                self.webhook(Hook::CacheMiss { channel: name.to_string() });
            }
        }
    }

    /// Tell the channel's subscribers (and the webhook) its new subscription count, if the app
    /// wants it. The count asks the other nodes, so it runs off the connection's task: a
    /// silent peer delays the count (up to `adapter.requests_timeout_ms`), never the
    /// connection's next message.
    fn subscription_count_changed(&self, name: &str) {
        if !self.app.enable_subscription_count {
            return;
        }
        let (ctx, app, name) = (self.ctx.clone(), self.app.clone(), name.to_string());
        tokio::spawn(async move {
            let count = ctx.adapter.channel_info(&app.id, &name).await.subscription_count;
            if count > 0 {
                let frame = Utf8Bytes::from(frames::subscription_count(&name, count));
                ctx.adapter.broadcast(&Broadcast::to(&app.id, &name), &frame);
            }
            let hook = Hook::SubscriptionCount { channel: name, subscription_count: count };
            ctx.webhooks.emit(&app, hook);
        });
    }

    /// Parse and check presence `channel_data`.
    fn presence_join(&self, channel_data: Option<&str>) -> Result<Join, (String, u16)> {
        let data = channel_data.ok_or(("Presence channels need channel_data".to_string(), 400))?;
        let value: ChannelData<'_> = serde_json::from_str(data)
            .map_err(|e| (format!("channel_data is not valid JSON: {e}"), 400))?;
        let Some(user_id) = value.user_id.and_then(channel::user_id) else {
            return Err(("channel_data needs a user_id (a string or number)".to_string(), 400));
        };
        if user_id.chars().count() > MAX_USER_ID_LENGTH {
            return Err((format!("user_id is longer than {MAX_USER_ID_LENGTH} characters"), 400));
        }
        let user_info = value.user_info.unwrap_or_else(|| Value::Object(Default::default()));
        let size = serde_json::to_string(&user_info).map_or(0, |s| s.len());
        let max = self.app.limits.max_presence_member_size_bytes;
        if size > max {
            return Err((format!("user_info is {size} bytes; the limit is {max}"), 413));
        }
        Ok(Join {
            user_id,
            user_info,
            max_members: self.app.limits.max_presence_members,
            elsewhere: Default::default(),
        })
    }

    /// Leave a channel at the client's request. It counts against the subscription rate but is
    /// never refused: each one needs a subscribe before it, and those are refused.
    async fn client_unsubscribe(&mut self, name: &str) {
        if self.subscriptions.contains_key(name) {
            let _ = self.channel_operation_allowed();
        }
        self.unsubscribe(name).await;
    }

    async fn unsubscribe(&mut self, name: &str) {
        let Some(user_id) = self.subscriptions.remove(name) else { return };
        self.heads.remove(name);
        self.filters.remove(name);
        self.delta_channels.remove(name);
        self.delta_chosen.remove(name);
        self.leave(name, user_id.as_deref()).await;
    }

    async fn leave(&self, name: &str, user_id: Option<&str>) {
        let outcome =
            self.ctx.adapter.unsubscribe(&self.app.id, name, &self.conn.socket_id, user_id);
        if outcome.was_subscribed {
            self.ctx.metrics.subscriptions.dec();
            self.tap(|| Entry::new(Kind::Unsubscribed).channel(name));
        }
        if let Some(user_id) = outcome.removed_user {
            self.ctx.events.member_event(&self.app.id, name, &user_id, None, None);
        }
        if outcome.vacated {
            self.ctx.events.occupancy_event(&self.app.id, name, false);
        } else if outcome.was_subscribed && user_id.is_none() {
            self.subscription_count_changed(name);
        }
    }

    /// Whether `auth` signs `message` with the app's secret as it is now: a connection opened
    /// before a rotation accepts the new secret (and the old one during the overlap).
    fn signed(&self, message: &str, auth: &str) -> bool {
        let app = self.ctx.apps.known(&self.app.id).unwrap_or_else(|| self.app.clone());
        app.verifies(|secret| signature::verify_auth(&app.key, secret, message, auth))
    }

    async fn signin(&mut self, auth: &str, user_data: &str) {
        let message = signature::user_message(&self.conn.socket_id, user_data);
        if !self.signed(&message, auth) {
            return self.error(codes::UNAUTHORIZED, "Invalid signin signature");
        }
        let data: UserData<'_> = serde_json::from_str(user_data).unwrap_or_default();
        let Some(id) = data.id.and_then(channel::user_id) else {
            return self.error(codes::UNAUTHORIZED, "user_data needs an id");
        };
        if id.chars().count() > MAX_USER_ID_LENGTH {
            return self.error(
                codes::UNAUTHORIZED,
                &format!("The user id is longer than {MAX_USER_ID_LENGTH} characters"),
            );
        }
        match &self.user_id {
            Some(current) if *current != id => {
                return self
                    .error(codes::UNAUTHORIZED, "This connection is signed in as another user");
            }
            Some(_) => return self.send(frames::signin_success(user_data)),
            None => {}
        }
        self.user_id = Some(id.clone());
        // Signed in before it is told so: a client that is told may at once be sent to as the
        // user.
        let online = self.ctx.adapter.sign_in(&self.app.id, &id, &self.conn);
        self.send(frames::signin_success(user_data));
        if online {
            let frame =
                Utf8Bytes::from(frames::watchlist_event("online", std::slice::from_ref(&id)));
            self.ctx.adapter.notify_watchers(&self.app.id, &id, &frame);
        }
        // Anything but an array of ids watches nobody, as before.
        let listed: Vec<&RawValue> =
            data.watchlist.and_then(|raw| serde_json::from_str(raw.get()).ok()).unwrap_or_default();
        let mut watchlist: Vec<String> = listed.into_iter().filter_map(channel::user_id).collect();
        if watchlist.len() > MAX_WATCHLIST {
            watchlist.truncate(MAX_WATCHLIST);
            self.error(
                codes::WATCHLIST_LIMIT,
                &format!(
                    "Watchlist over {MAX_WATCHLIST} users; the first {MAX_WATCHLIST} are watched"
                ),
            );
        }
        if !watchlist.is_empty() {
            self.ctx.adapter.watch(&self.app.id, &self.conn, &watchlist);
            let online = self.ctx.adapter.online(&self.app.id, &watchlist);
            if !online.is_empty() {
                self.send(frames::watchlist_event("online", &online));
            }
            self.watchlist = watchlist;
        }
    }

    async fn client_event(&mut self, event: &str, name: &str, data: &Value) {
        let reject = |message: &str| self.error(codes::CLIENT_EVENT_REJECTED, message);
        if !self.app.enable_client_messages {
            return reject("Client events are not enabled for this app");
        }
        match ChannelKind::of(name) {
            ChannelKind::Private | ChannelKind::Presence => {}
            ChannelKind::PrivateEncrypted => {
                return reject("Client events are not allowed on encrypted channels");
            }
            ChannelKind::Public => {
                return reject("Client events need a private or presence channel");
            }
        }
        let Some(user_id) = self.subscriptions.get(name) else {
            return reject(&format!("Not subscribed to {name}"));
        };
        let limits = &self.app.limits;
        if event.chars().count() > limits.max_event_name_length {
            return reject(&format!(
                "Event name longer than {} characters",
                limits.max_event_name_length
            ));
        }
        let size = serde_json::to_string(data).map_or(0, |s| s.len());
        if size > limits.max_event_payload_bytes {
            return reject(&format!(
                "Event data is {size} bytes; the limit is {}",
                limits.max_event_payload_bytes
            ));
        }
        let user_id = user_id.clone();
        let key = format!("client-events:{}", self.conn.socket_id);
        let per_second = limits.max_client_events_per_second;
        if self.ctx.rate_limit(&key, 1, per_second, 1000).await.is_some() {
            return self.error(
                codes::CLIENT_EVENT_REJECTED,
                &format!("Client event rate limit of {per_second} per second exceeded"),
            );
        }
        let frame = frames::channel_event(event, name, data, user_id.as_deref());
        let except = (!self.echo).then_some(&*self.conn.socket_id);
        // Through recovery like the HTTP API's events: on a channel with positions, a client
        // that missed a client event gets it back when it resumes, as Sockudo's protocol 2.
        let to = Broadcast::to(&self.app.id, name).except(except);
        if emit::emit(&self.ctx, &self.app, &to, frame, None).await.is_err() {
            return self.error(
                codes::CLIENT_EVENT_REJECTED,
                "Client event not sent: the history store is unavailable; send it again later",
            );
        }
        self.ctx.metrics.events_published.inc();
        self.ctx.feed.stats.published(&self.app.id, 1);
        let data = match data {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.tap(|| Entry::new(Kind::ClientEvent).channel(name).event(event).data(&data));
        self.webhook(Hook::ClientEvent {
            channel: name.to_string(),
            event: event.to_string(),
            data,
            socket_id: self.conn.socket_id.to_string(),
            user_id,
        });
    }

    /// The connection is gone: leave every channel, sign out, stop watching.
    pub(super) async fn end(&mut self) {
        for (name, user_id) in std::mem::take(&mut self.subscriptions) {
            self.leave(&name, user_id.as_deref()).await;
        }
        if !self.watchlist.is_empty() {
            self.ctx.adapter.unwatch(&self.app.id, &self.conn.socket_id, &self.watchlist);
        }
        if let Some(id) = self.user_id.take()
            && self.ctx.adapter.sign_out(&self.app.id, &id, &self.conn.socket_id)
        {
            let frame =
                Utf8Bytes::from(frames::watchlist_event("offline", std::slice::from_ref(&id)));
            self.ctx.adapter.notify_watchers(&self.app.id, &id, &frame);
        }
    }
}

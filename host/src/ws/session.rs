//! What a connection's messages do: the Pusher protocol's client side, for one socket.

use std::{collections::HashMap, sync::Arc, time::Instant};

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;

use crate::{
    apps::App,
    hub::{Conn, Join},
    protocol::{
        channel::{self, ChannelKind},
        codes, frames,
        inbound::{self, ClientMessage},
        signature,
    },
    server::Ctx,
};

/// The longest presence user id (the Pusher limit).
const MAX_USER_ID_LENGTH: usize = 128;

/// A counter of client events in the current one-second window.
#[derive(Debug)]
struct EventWindow {
    started: Instant,
    count: u32,
}

/// One connection's protocol state.
pub(super) struct Session {
    ctx: Arc<Ctx>,
    app: Arc<App>,
    conn: Conn,
    /// Subscribed channels, with the presence user id where there is one.
    subscriptions: HashMap<String, Option<String>>,
    /// The user this connection signed in as.
    user_id: Option<String>,
    client_events: EventWindow,
}

impl Session {
    pub(super) fn new(ctx: Arc<Ctx>, app: Arc<App>, conn: Conn) -> Self {
        Self {
            ctx,
            app,
            conn,
            subscriptions: HashMap::new(),
            user_id: None,
            client_events: EventWindow { started: Instant::now(), count: 0 },
        }
    }

    fn send(&self, frame: String) {
        self.conn.send(&Utf8Bytes::from(frame));
    }

    fn error(&self, code: u16, message: &str) {
        self.send(frames::error(code, message));
    }

    /// Handle one text message.
    pub(super) async fn handle(&mut self, text: &str) {
        match inbound::parse(text) {
            Err(e) => self.error(codes::BAD_MESSAGE, &e.to_string()),
            Ok(ClientMessage::Ping) => self.send(frames::pong()),
            Ok(ClientMessage::Pong) => {}
            Ok(ClientMessage::Subscribe { channel, auth, channel_data }) => {
                self.subscribe(&channel, auth.as_deref(), channel_data.as_deref());
            }
            Ok(ClientMessage::Unsubscribe { channel }) => self.unsubscribe(&channel),
            Ok(ClientMessage::Signin { auth, user_data }) => self.signin(&auth, &user_data),
            Ok(ClientMessage::ClientEvent { event, channel, data }) => {
                self.client_event(&event, &channel, &data)
            }
        }
    }

    fn subscription_error(&self, channel: &str, kind: &str, error: &str, status: u16) {
        tracing::debug!(socket_id = %self.conn.socket_id, channel, kind, error, "Subscription refused.");
        self.send(frames::subscription_error(channel, kind, error, status));
    }

    fn subscribe(&mut self, name: &str, auth: Option<&str>, channel_data: Option<&str>) {
        if let Err(e) = channel::validate(name, self.app.limits.max_channel_name_length) {
            return self.subscription_error(name, "InvalidChannel", &e.to_string(), 400);
        }
        let kind = ChannelKind::of(name);
        let channel_data = if kind == ChannelKind::Presence { channel_data } else { None };
        if kind.needs_auth() {
            let Some(auth) = auth else {
                return self.subscription_error(
                    name,
                    "AuthError",
                    "This channel needs an auth signature",
                    401,
                );
            };
            let message = signature::channel_message(&self.conn.socket_id, name, channel_data);
            if !signature::verify_auth(&self.app.key, &self.app.secret, &message, auth) {
                return self.subscription_error(name, "AuthError", "Invalid signature", 401);
            }
        }
        let join = match kind {
            ChannelKind::Presence => match self.presence_join(channel_data) {
                Ok(join) => Some(join),
                Err((error, status)) => {
                    return self.subscription_error(name, "InvalidChannelData", &error, status);
                }
            },
            _ => None,
        };
        if let Some(previous) = self.subscriptions.get(name) {
            // Subscribing again as someone else is leaving and joining.
            let same_user = join.as_ref().map(|j| j.user_id.as_str()) == previous.as_deref();
            if !same_user {
                self.unsubscribe(name);
            }
        }
        let user_id = join.as_ref().map(|j| j.user_id.clone());
        let member = join.as_ref().map(|j| (j.user_id.clone(), j.user_info.clone()));
        let presence = kind == ChannelKind::Presence;
        let subscribed =
            self.ctx.adapter.subscribe(&self.app.id, name, &self.conn, join, |members| {
                if presence {
                    frames::presence_subscription_succeeded(name, members).into()
                } else {
                    frames::subscription_succeeded(name).into()
                }
            });
        match subscribed {
            Err(full) => self.subscription_error(name, "LimitReached", &full.to_string(), 403),
            Ok(outcome) => {
                if outcome.new_subscriber {
                    self.ctx.metrics.subscriptions.inc();
                }
                self.subscriptions.insert(name.to_string(), user_id);
                if let (true, Some((user_id, user_info))) = (outcome.first_for_user, member) {
                    let frame = Utf8Bytes::from(frames::member_added(name, &user_id, &user_info));
                    self.ctx.adapter.broadcast(
                        &self.app.id,
                        name,
                        &frame,
                        Some(&self.conn.socket_id),
                    );
                }
            }
        }
    }

    /// Parse and check presence `channel_data`.
    fn presence_join(&self, channel_data: Option<&str>) -> Result<Join, (String, u16)> {
        let data = channel_data.ok_or(("Presence channels need channel_data".to_string(), 400))?;
        let value: Value = serde_json::from_str(data)
            .map_err(|e| (format!("channel_data is not valid JSON: {e}"), 400))?;
        let user_id = match value.get("user_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(("channel_data needs a user_id (a string or number)".to_string(), 400));
            }
        };
        if user_id.chars().count() > MAX_USER_ID_LENGTH {
            return Err((format!("user_id is longer than {MAX_USER_ID_LENGTH} characters"), 400));
        }
        let user_info =
            value.get("user_info").cloned().unwrap_or_else(|| Value::Object(Default::default()));
        let size = serde_json::to_string(&user_info).map_or(0, |s| s.len());
        let max = self.app.limits.max_presence_member_size_bytes;
        if size > max {
            return Err((format!("user_info is {size} bytes; the limit is {max}"), 413));
        }
        Ok(Join { user_id, user_info, max_members: self.app.limits.max_presence_members })
    }

    fn unsubscribe(&mut self, name: &str) {
        let Some(user_id) = self.subscriptions.remove(name) else { return };
        self.leave(name, user_id.as_deref());
    }

    fn leave(&self, name: &str, user_id: Option<&str>) {
        let outcome =
            self.ctx.adapter.unsubscribe(&self.app.id, name, &self.conn.socket_id, user_id);
        if outcome.was_subscribed {
            self.ctx.metrics.subscriptions.dec();
        }
        if let Some(user_id) = outcome.removed_user {
            let frame = Utf8Bytes::from(frames::member_removed(name, &user_id));
            self.ctx.adapter.broadcast(&self.app.id, name, &frame, None);
        }
    }

    fn signin(&mut self, auth: &str, user_data: &str) {
        let message = signature::user_message(&self.conn.socket_id, user_data);
        if !signature::verify_auth(&self.app.key, &self.app.secret, &message, auth) {
            return self.error(codes::UNAUTHORIZED, "Invalid signin signature");
        }
        let id = match serde_json::from_str::<Value>(user_data)
            .ok()
            .and_then(|v| v.get("id").cloned())
        {
            Some(Value::String(id)) if !id.is_empty() => id,
            Some(Value::Number(id)) => id.to_string(),
            _ => return self.error(codes::UNAUTHORIZED, "user_data needs an id"),
        };
        if self.user_id.as_ref().is_some_and(|current| *current != id) {
            return self.error(codes::UNAUTHORIZED, "This connection is signed in as another user");
        }
        self.user_id = Some(id);
        let data = serde_json::json!({ "user_data": user_data });
        self.send(
            serde_json::json!({ "event": "pusher:signin_success", "data": data.to_string() })
                .to_string(),
        );
    }

    fn client_event(&mut self, event: &str, name: &str, data: &Value) {
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
        let now = Instant::now();
        if now.duration_since(self.client_events.started).as_secs() >= 1 {
            self.client_events = EventWindow { started: now, count: 0 };
        }
        if self.client_events.count >= limits.max_client_events_per_second {
            return self.error(
                codes::CLIENT_EVENT_REJECTED,
                &format!(
                    "Client event rate limit of {} per second exceeded",
                    limits.max_client_events_per_second
                ),
            );
        }
        self.client_events.count += 1;
        let frame = Utf8Bytes::from(frames::channel_event(event, name, data, user_id.as_deref()));
        self.ctx.metrics.events_published.inc();
        self.ctx.adapter.broadcast(&self.app.id, name, &frame, Some(&self.conn.socket_id));
    }

    /// The connection is gone: leave every channel.
    pub(super) async fn end(&mut self) {
        for (name, user_id) in std::mem::take(&mut self.subscriptions) {
            self.leave(&name, user_id.as_deref());
        }
    }
}

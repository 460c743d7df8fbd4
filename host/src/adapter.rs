//! The adapter: every operation on channel state goes through here, so that the cluster layer
//! can make it cluster-wide without the protocol code or the hub changing.
//!
//! On a single node (the `local` transport, or a node that is alone) every operation is the
//! hub's; the cluster layer adds bus publishes and cross-node queries behind the same methods.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;

use crate::hub::{ChannelFull, Conn, Hub, Join, Subscribed, Unsubscribed};

/// Channel state and delivery, as the protocol and the HTTP API see them.
#[derive(Debug)]
pub struct Adapter {
    hub: Arc<Hub>,
}

/// What a channel looks like from the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelInfo {
    /// Subscribed connections.
    pub subscription_count: usize,
    /// Distinct presence users.
    pub user_count: usize,
}

impl Adapter {
    /// An adapter over this node's hub.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// This node's hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Subscribe a local connection; see [`Hub::subscribe`].
    pub fn subscribe(
        &self,
        app_id: &str,
        channel: &str,
        conn: &Conn,
        join: Option<Join>,
        ack: impl FnOnce(&mut dyn Iterator<Item = (&str, &Value)>) -> Utf8Bytes,
    ) -> Result<Subscribed, ChannelFull> {
        self.hub.subscribe(app_id, channel, conn, join, ack)
    }

    /// Unsubscribe a local connection; see [`Hub::unsubscribe`].
    pub fn unsubscribe(
        &self,
        app_id: &str,
        channel: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) -> Unsubscribed {
        self.hub.unsubscribe(app_id, channel, socket_id, user_id)
    }

    /// Deliver `frame` to the channel's subscribers except `except`; how many local sockets got it.
    pub fn broadcast(
        &self,
        app_id: &str,
        channel: &str,
        frame: &Utf8Bytes,
        except: Option<&str>,
    ) -> usize {
        self.hub.broadcast(app_id, channel, frame, except)
    }

    /// Counts for one channel.
    pub async fn channel_info(&self, app_id: &str, channel: &str) -> ChannelInfo {
        ChannelInfo {
            subscription_count: self.hub.subscription_count(app_id, channel),
            user_count: self.hub.user_ids(app_id, channel).len(),
        }
    }

    /// Occupied channels whose name starts with `prefix`, with their counts.
    pub async fn channels(&self, app_id: &str, prefix: &str) -> Vec<(String, ChannelInfo)> {
        self.hub
            .channels(app_id, prefix)
            .into_iter()
            .map(|(name, subs, users)| {
                (name, ChannelInfo { subscription_count: subs, user_count: users })
            })
            .collect()
    }

    /// The distinct users of a presence channel.
    pub async fn user_ids(&self, app_id: &str, channel: &str) -> Vec<String> {
        self.hub.user_ids(app_id, channel)
    }

    /// Deliver `frame` to every connection signed in as `user_id`.
    pub fn send_to_user(&self, app_id: &str, user_id: &str, frame: &Utf8Bytes) -> usize {
        self.hub.send_to_user(app_id, user_id, frame)
    }

    /// Close every connection signed in as `user_id` with `code`; how many.
    pub async fn terminate_user(&self, app_id: &str, user_id: &str, code: u16) -> usize {
        let conns = self.hub.user_connections(app_id, user_id);
        for conn in &conns {
            conn.close(code);
        }
        conns.len()
    }

    /// Which of `user_ids` are online.
    pub async fn online(&self, app_id: &str, user_ids: &[String]) -> Vec<String> {
        self.hub.online(app_id, user_ids)
    }

    /// Tell the watchers of `user_id` it came online or went offline.
    pub fn notify_watchers(&self, app_id: &str, user_id: &str, frame: &Utf8Bytes) {
        self.hub.send_to_watchers(app_id, user_id, frame);
    }
}

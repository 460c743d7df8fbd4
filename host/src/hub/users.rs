//! Signed-in users and the watchlists that follow them.

use axum::extract::ws::Utf8Bytes;

use super::{Conn, Hub};

impl Hub {
    /// Record that `conn` signed in as `user_id`; whether it is the user's first connection
    /// (the user came online).
    pub(crate) fn sign_in(&self, app_id: &str, user_id: &str, conn: &Conn) -> bool {
        let app = self.app(app_id);
        let mut users = app.users.write().expect("hub lock");
        let sockets = users.entry(user_id.to_string()).or_default();
        let first = sockets.is_empty();
        sockets.insert(conn.socket_id.clone(), conn.clone());
        first
    }

    /// Forget a signed-in connection; whether it was the user's last (the user went offline).
    pub(crate) fn sign_out(&self, app_id: &str, user_id: &str, socket_id: &str) -> bool {
        let Some(app) = self.existing(app_id) else { return false };
        let mut users = app.users.write().expect("hub lock");
        let Some(sockets) = users.get_mut(user_id) else { return false };
        let removed = sockets.remove(socket_id).is_some();
        let last = removed && sockets.is_empty();
        if sockets.is_empty() {
            users.remove(user_id);
        }
        last
    }

    /// The connections signed in as `user_id`.
    pub(crate) fn user_connections(&self, app_id: &str, user_id: &str) -> Vec<Conn> {
        self.existing(app_id).map_or_else(Vec::new, |app| {
            app.users
                .read()
                .expect("hub lock")
                .get(user_id)
                .map(|s| s.values().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Enqueue `frame` to every connection signed in as `user_id`; how many got it.
    pub(crate) fn send_to_user(&self, app_id: &str, user_id: &str, frame: &Utf8Bytes) -> usize {
        self.user_connections(app_id, user_id).iter().filter(|conn| conn.send(frame)).count()
    }

    /// Which of `user_ids` have a signed-in connection on this node.
    pub(crate) fn online(&self, app_id: &str, user_ids: &[String]) -> Vec<String> {
        self.existing(app_id).map_or_else(Vec::new, |app| {
            let users = app.users.read().expect("hub lock");
            user_ids.iter().filter(|id| users.contains_key(*id)).cloned().collect()
        })
    }

    /// Make `conn` a watcher of each of `user_ids`.
    pub(crate) fn watch(&self, app_id: &str, conn: &Conn, user_ids: &[String]) {
        let app = self.app(app_id);
        let mut watchers = app.watchers.write().expect("hub lock");
        for id in user_ids {
            watchers.entry(id.clone()).or_default().insert(conn.socket_id.clone(), conn.clone());
        }
    }

    /// Stop `socket_id` watching `user_ids`.
    pub(crate) fn unwatch(&self, app_id: &str, socket_id: &str, user_ids: &[String]) {
        let Some(app) = self.existing(app_id) else { return };
        let mut watchers = app.watchers.write().expect("hub lock");
        for id in user_ids {
            if let Some(set) = watchers.get_mut(id) {
                set.remove(socket_id);
                if set.is_empty() {
                    watchers.remove(id);
                }
            }
        }
    }

    /// Enqueue `frame` to every watcher of `user_id`.
    pub(crate) fn send_to_watchers(&self, app_id: &str, user_id: &str, frame: &Utf8Bytes) {
        let Some(app) = self.existing(app_id) else { return };
        let watchers: Vec<Conn> = app
            .watchers
            .read()
            .expect("hub lock")
            .get(user_id)
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        for conn in watchers {
            conn.send(frame);
        }
    }
}

//! What the cluster layer asks of this node's whole state: presence members, occupied
//! channels and signed-in users, for a newcomer and for deciding a change.

use std::sync::Arc;

use serde_json::Value;

use super::{AppHub, Hub};

impl Hub {
    /// Every app's hub, taken out of the lock.
    fn all_apps(&self) -> Vec<(String, Arc<AppHub>)> {
        self.apps
            .read()
            .expect("hub lock")
            .iter()
            .map(|(id, app)| (id.clone(), app.clone()))
            .collect()
    }

    /// Every presence member on this node: (app, channel, user, info).
    pub(crate) fn presence_members(&self) -> Vec<(String, String, String, Value)> {
        let apps = self.all_apps();
        let mut out = Vec::new();
        for (app_id, app) in apps {
            for (name, channel) in app.channels.read().expect("hub lock").iter() {
                for (user, member) in channel.members.iter().flatten() {
                    out.push((app_id.clone(), name.clone(), user.clone(), member.info.clone()));
                }
            }
        }
        out
    }

    /// Whether `user_id` is a presence member of `channel` on this node.
    pub(crate) fn has_member(&self, app_id: &str, channel: &str, user_id: &str) -> bool {
        self.existing(app_id).is_some_and(|app| {
            app.channels
                .read()
                .expect("hub lock")
                .get(channel)
                .and_then(|c| c.members.as_ref())
                .is_some_and(|m| m.contains_key(user_id))
        })
    }

    /// Every channel with a subscriber on this node, as (app, channel).
    pub(crate) fn occupied_channels(&self) -> Vec<(String, String)> {
        let apps = self.all_apps();
        let mut out = Vec::new();
        for (app_id, app) in apps {
            for (name, channel) in app.channels.read().expect("hub lock").iter() {
                if !channel.subscribers.is_empty() {
                    out.push((app_id.clone(), name.clone()));
                }
            }
        }
        out
    }

    /// Every signed-in user on this node, as (app, user).
    pub(crate) fn signed_in_users(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (app_id, app) in self.all_apps() {
            for user in app.users.read().expect("hub lock").keys() {
                out.push((app_id.clone(), user.clone()));
            }
        }
        out
    }
}

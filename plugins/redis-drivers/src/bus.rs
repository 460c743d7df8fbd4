//! Which Redis servers (or clusters) carry this plugin's bus: the transport says where it
//! publishes, so that a history store of the same plugin writing to the same server or
//! cluster can publish each event itself in the script that positions it
//! (`HistoryBus::append_publishing`).
//!
//! Within one plugin library only: this never crosses the plugin boundary. A server carrying
//! more than one transport prefix (several transports in one process, as in tests) is
//! ambiguous, and the store then leaves publishing to the host.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex, MutexGuard, PoisonError},
};

/// Channel prefixes by server, with how many of this library's transports use each.
type Carriers = HashMap<String, HashMap<String, usize>>;

static CARRIERS: LazyLock<Mutex<Carriers>> = LazyLock::new(Mutex::default);

fn carriers() -> MutexGuard<'static, Carriers> {
    CARRIERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A transport's entry: removed when dropped.
#[derive(Debug)]
pub struct Carrier {
    server: String,
    prefix: String,
}

impl Carrier {
    /// A transport publishes on `server` (see [`crate::connection::server_identity`] and
    /// [`crate::connection::cluster_identity`]) to channels named `prefix` followed by the
    /// topic.
    pub fn register(server: String, prefix: String) -> Self {
        let mut carriers = carriers();
        *carriers.entry(server.clone()).or_default().entry(prefix.clone()).or_default() += 1;
        Self { server, prefix }
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        let mut servers = carriers();
        if let Some(prefixes) = servers.get_mut(&self.server) {
            if let Some(count) = prefixes.get_mut(&self.prefix) {
                *count -= 1;
                if *count == 0 {
                    prefixes.remove(&self.prefix);
                }
            }
            if prefixes.is_empty() {
                servers.remove(&self.server);
            }
        }
    }
}

/// The channel prefix of this library's transports that publish on `server`, if they all
/// use the same one.
pub fn prefix_on(server: &str) -> Option<String> {
    let carriers = carriers();
    let prefixes = carriers.get(server)?;
    let mut names = prefixes.keys();
    match (names.next(), names.next()) {
        (Some(prefix), None) => Some(prefix.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_prefix_per_server_is_known_and_forgotten_with_its_transports() {
        let server = "carriers-test:1/0";
        assert_eq!(prefix_on(server), None);
        let first = Carrier::register(server.into(), "a:".into());
        let second = Carrier::register(server.into(), "a:".into());
        assert_eq!(prefix_on(server).as_deref(), Some("a:"));
        let other = Carrier::register(server.into(), "b:".into());
        assert_eq!(prefix_on(server), None, "two prefixes on one server are ambiguous");
        drop(other);
        drop(first);
        assert_eq!(prefix_on(server).as_deref(), Some("a:"));
        drop(second);
        assert_eq!(prefix_on(server), None);
    }
}

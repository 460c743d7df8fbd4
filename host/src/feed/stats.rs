//! Per-app figures for the console: events published, webhooks delivered and failed, and a
//! history of connections and events sampled every [`SAMPLE_EVERY`] over the last
//! [`HISTORY`] samples, on this node. The console adds up every node's.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// How often the history is sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept per app: ten minutes.
pub(crate) const HISTORY: usize = 120;

/// One sample: at `t` (milliseconds since the epoch, a multiple of [`SAMPLE_EVERY`], so every
/// node's samples line up), the app's connections and the events published since the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sample {
    /// When.
    pub t: u64,
    /// Open connections.
    pub connections: u64,
    /// Events published in the interval before.
    pub events: u64,
}

#[derive(Default)]
struct AppStats {
    events: AtomicU64,
    webhooks_sent: AtomicU64,
    webhooks_failed: AtomicU64,
    /// The events counter at the last sample, and the samples.
    history: Mutex<(u64, VecDeque<Sample>)>,
}

/// One node's figures for an app, as the console shows them and as nodes send them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeFigures {
    /// The node's label.
    pub node: String,
    /// Open connections.
    pub connections: u64,
    /// Events published since the node started.
    pub events: u64,
    /// Webhook batches waiting for the queue.
    pub webhooks_queued: u64,
    /// Webhooks delivered by the node.
    pub webhooks_sent: u64,
    /// Webhooks the node gave up on.
    pub webhooks_failed: u64,
    /// The samples, oldest first.
    pub history: Vec<Sample>,
}

/// The figures of every app seen on this node.
#[derive(Default)]
pub(crate) struct Stats {
    apps: RwLock<HashMap<String, Arc<AppStats>>>,
}

impl Stats {
    fn app(&self, app: &str) -> Arc<AppStats> {
        if let Some(stats) = self.apps.read().expect("stats lock").get(app) {
            return stats.clone();
        }
        self.apps.write().expect("stats lock").entry(app.to_string()).or_default().clone()
    }

    /// An event was published to one channel of the app (`count` channels at once).
    pub(crate) fn published(&self, app: &str, count: u64) {
        self.app(app).events.fetch_add(count, Ordering::Relaxed);
    }

    /// A webhook of the app was delivered (`true`) or given up (`false`).
    pub(crate) fn webhook(&self, app: &str, delivered: bool) {
        let stats = self.app(app);
        let counter = if delivered { &stats.webhooks_sent } else { &stats.webhooks_failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sample every app at `t`, with `connections` the open connections per app. An app with
    /// nothing in its whole history is forgotten, so the map holds only apps in use.
    pub(crate) fn sample(&self, t: u64, connections: &HashMap<String, u64>) {
        for app in connections.keys() {
            if !self.apps.read().expect("stats lock").contains_key(app) {
                self.app(app);
            }
        }
        self.apps.write().expect("stats lock").retain(|app, stats| {
            let events = stats.events.load(Ordering::Relaxed);
            let mut history = stats.history.lock().expect("stats lock");
            let (last, samples) = &mut *history;
            let sample = Sample {
                t,
                connections: connections.get(app).copied().unwrap_or(0),
                events: events.saturating_sub(*last),
            };
            *last = events;
            if samples.len() == HISTORY {
                samples.pop_front();
            }
            samples.push_back(sample);
            samples.iter().any(|s| s.connections > 0 || s.events > 0)
        });
    }

    /// This node's figures for `app`.
    pub(crate) fn figures(
        &self,
        app: &str,
        node: &str,
        connections: u64,
        queued: u64,
    ) -> NodeFigures {
        let stats = self.apps.read().expect("stats lock").get(app).cloned();
        let Some(stats) = stats else {
            return NodeFigures {
                node: node.into(),
                connections,
                webhooks_queued: queued,
                ..NodeFigures::default()
            };
        };
        let history = stats.history.lock().expect("stats lock").1.iter().copied().collect();
        NodeFigures {
            node: node.into(),
            connections,
            events: stats.events.load(Ordering::Relaxed),
            webhooks_queued: queued,
            webhooks_sent: stats.webhooks_sent.load(Ordering::Relaxed),
            webhooks_failed: stats.webhooks_failed.load(Ordering::Relaxed),
            history,
        }
    }
}

/// Every node's samples added up by time, oldest first (at most [`HISTORY`]; a node's samples
/// past that are ignored, as are those of a node that sent more than it should).
pub(crate) fn merge(nodes: &[NodeFigures]) -> Vec<Sample> {
    let mut by_time: std::collections::BTreeMap<u64, Sample> = Default::default();
    for node in nodes {
        for sample in node.history.iter().rev().take(HISTORY) {
            let sum = by_time.entry(sample.t).or_insert(Sample {
                t: sample.t,
                connections: 0,
                events: 0,
            });
            sum.connections = sum.connections.saturating_add(sample.connections);
            sum.events = sum.events.saturating_add(sample.events);
        }
    }
    let skip = by_time.len().saturating_sub(HISTORY);
    by_time.into_values().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_count_the_events_of_each_interval_and_idle_apps_are_forgotten() {
        let stats = Stats::default();
        stats.published("a", 3);
        stats.sample(5_000, &HashMap::from([("b".to_string(), 2)]));
        stats.published("a", 1);
        stats.sample(10_000, &HashMap::new());
        let a = stats.figures("a", "n", 0, 0);
        let events: Vec<u64> = a.history.iter().map(|s| s.events).collect();
        assert_eq!((a.events, events), (4, vec![3, 1]));
        let b = stats.figures("b", "n", 0, 0);
        assert_eq!(b.history.iter().map(|s| s.connections).collect::<Vec<_>>(), [2, 0]);
        for i in 0..HISTORY as u64 {
            stats.sample(15_000 + i * 5_000, &HashMap::new());
        }
        assert!(stats.apps.read().expect("stats lock").is_empty());
    }

    #[test]
    fn nodes_samples_add_up_by_time() {
        let sample = |t, connections, events| Sample { t, connections, events };
        let one =
            NodeFigures { history: vec![sample(5, 1, 2), sample(10, 1, 0)], ..Default::default() };
        let two = NodeFigures { history: vec![sample(10, 3, 4)], ..Default::default() };
        assert_eq!(merge(&[one, two]), [sample(5, 1, 2), sample(10, 4, 4)]);
    }
}

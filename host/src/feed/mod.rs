//! What the debug console shows, kept on every node whether or not a console is open here
//! (another node's console may watch this one):
//!
//! - `tap`: what the live log records, off while nobody watches; other nodes' entries arrive on
//!   the bus (`ConsoleWatch` / `ConsoleEntries`).
//! - `stats`: per-app counters and ten minutes of history for the plots.
//!
//! The pages that show them are `console/`, above the handlers' shared state; this is a service
//! below it, so the webhooks, the cluster events and the handlers can all record into it.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

pub(crate) mod stats;
pub(crate) mod tap;

pub(crate) use tap::{Entry, Kind};

use crate::{
    adapter::Adapter,
    cluster::{CONTROL, envelope::Control, node_topic},
    metrics::Metrics,
};

/// How often the tap sends its batches to the other nodes.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// How the console names a node (its id on the bus).
pub(crate) fn node_label(node: u64) -> String {
    format!("{node:016x}")
}

/// The console's state on this node.
pub(crate) struct Feed {
    /// The live log's tap.
    pub tap: tap::Tap,
    /// Per-app figures.
    pub stats: stats::Stats,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("node", &self.tap.node()).finish_non_exhaustive()
    }
}

impl Feed {
    /// The feed of node `node` (its id on the bus), counting in `metrics`.
    pub(crate) fn new(node: u64, metrics: &Metrics) -> Self {
        let tap = tap::Tap::new(
            node_label(node),
            metrics.console_viewers.clone(),
            metrics.console_viewers_dropped.clone(),
            metrics.console_watches_refused.clone(),
        );
        Self { tap, stats: stats::Stats::default() }
    }

    /// Until `shutdown`: send the tap's batches and watch renewals on the bus, and sample the
    /// figures' history.
    pub(crate) async fn run(self: Arc<Self>, adapter: Arc<Adapter>, shutdown: CancellationToken) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = stats::SAMPLE_EVERY.as_millis();
        let mut last_sample = 0;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = flush.tick() => {}
            }
            let out = self.tap.tick();
            let cluster = adapter.cluster();
            for app in out.renew {
                cluster.send_control(CONTROL, Control::ConsoleWatch { app });
            }
            for (app, nodes, entries) in out.batches {
                let entries: Vec<serde_json::Value> =
                    entries.iter().filter_map(|e| serde_json::to_value(e).ok()).collect();
                for node in nodes {
                    let control =
                        Control::ConsoleEntries { app: app.clone(), entries: entries.clone() };
                    cluster.send_control(&node_topic(node), control);
                }
            }
            // Samples fall on multiples of the interval, so every node's line up.
            let now = u128::from(crate::cluster::now_ms());
            let slot = now - now % every;
            if slot != last_sample {
                last_sample = slot;
                let connections = adapter.hub().connection_counts();
                self.stats.sample(u64::try_from(slot).unwrap_or(u64::MAX), &connections);
            }
        }
    }
}

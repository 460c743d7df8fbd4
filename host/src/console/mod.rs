//! The debug console: a web page on the admin listener (the same token) showing an app's
//! figures and live log from every node, and a form that sends an event.
//!
//! - `pages`: the page, script and style (built into the binary) and the sign-in that trades
//!   the token for a cookie (`session`).
//! - `live`: the figures, the log (server-sent events) and the form's publish.
//! - `tap`: what the log records, off while nobody watches; other nodes' entries arrive on the
//!   bus (`ConsoleWatch` / `ConsoleEntries`).
//! - `stats`: per-app counters and ten minutes of history for the plots.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    routing::{get, post},
};

pub(crate) mod live;
mod pages;
pub(crate) mod session;
pub(crate) mod stats;
pub(crate) mod tap;

pub(crate) use tap::{Entry, Kind};

use crate::{
    cluster::{CONTROL, envelope::Control, node_topic},
    metrics::Metrics,
    server::Ctx,
};

/// How often the tap sends its batches to the other nodes.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// How the console names a node (its id on the bus).
pub(crate) fn node_label(node: u64) -> String {
    format!("{node:016x}")
}

/// The console's state on this node.
pub(crate) struct Console {
    /// The live log's tap.
    pub tap: tap::Tap,
    /// Per-app figures.
    pub stats: stats::Stats,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("node", &self.tap.node()).finish_non_exhaustive()
    }
}

impl Console {
    /// The console of node `node` (its id on the bus), counting in `metrics`.
    pub(crate) fn new(node: u64, metrics: &Metrics) -> Self {
        let tap = tap::Tap::new(
            node_label(node),
            metrics.console_viewers.clone(),
            metrics.console_viewers_dropped.clone(),
            metrics.console_watches_refused.clone(),
        );
        Self { tap, stats: stats::Stats::default() }
    }
}

/// The console's routes that need no sign-in (they show the sign-in form).
pub(crate) fn public() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/", get(pages::root))
        .route("/console", get(pages::console))
        .route("/console/sign-in", post(pages::sign_in_with))
        .route("/console/sign-out", post(pages::sign_out))
        // The style holds no data; the sign-in form needs it.
        .route("/console/console.css", get(pages::style))
}

/// The console's routes behind the token or its cookie.
pub(crate) fn signed(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    router
        .route("/console/console.js", get(pages::script))
        .route("/apps/{id}/figures", get(live::figures))
        .route("/apps/{id}/log", get(live::log))
        .route("/apps/{id}/events", post(live::send))
}

/// Until shutdown: send the tap's batches and watch renewals on the bus, and sample the
/// figures' history.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = stats::SAMPLE_EVERY.as_millis();
    let mut last_sample = 0;
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = flush.tick() => {}
        }
        let out = ctx.console.tap.tick();
        let cluster = ctx.adapter.cluster();
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
            let connections = ctx.adapter.hub().connection_counts();
            ctx.console.stats.sample(u64::try_from(slot).unwrap_or(u64::MAX), &connections);
        }
    }
}

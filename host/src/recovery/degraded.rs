//! Best effort, for an app that asks for it: an event the history store could not take goes
//! out without a position, and the channel is *degraded* on every node: a resume of it fails
//! closed (`persistence_unavailable`), since the store cannot vouch for what a client missed.
//! The publishing node starts the channel's stream again once the store answers (a resume
//! from before is then told `stream_reset`, on any node) and lifts the mark cluster-wide. A
//! mark whose lift never comes (its node died) lapses after the store's retention, past which
//! no position from before it could be resumed anyway.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::metrics::gauge::Gauge;

use super::Recovery;

/// The first wait before the stream is started again, doubled after each failure up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(4);
/// Channels a node keeps degraded at most; past it, the oldest mark is lifted early (the
/// store's reset, under way, still fails those channels' old positions closed).
const MAX_MARKS: usize = 100_000;
/// Channels whose streams a node tries to start again at once, at most: each retries until the
/// store answers, so during an outage they are what it asks of the store. Past it a degraded
/// channel waits for its mark to lapse (its old positions are past the retention by then).
const MAX_RESETS: usize = 1000;

/// The degraded channels a node knows of, and since when.
#[derive(Debug)]
pub(crate) struct Degraded {
    marks: Mutex<HashMap<(String, String), Instant>>,
    /// How many there are.
    count: Gauge,
    /// The channels whose streams are being started again (one task each, whether or not
    /// their marks still hold).
    resetting: Mutex<HashSet<(String, String)>>,
}

impl Degraded {
    /// None yet; their number shown in `count`.
    pub(crate) fn new(count: Gauge) -> Self {
        Self { marks: Mutex::default(), count, resetting: Mutex::default() }
    }

    fn counted(&self, marks: &HashMap<(String, String), Instant>) {
        self.count.set(i64::try_from(marks.len()).unwrap_or(i64::MAX));
    }

    /// Mark the channel degraded.
    pub(crate) fn mark(&self, app: &str, channel: &str) {
        let mut marks = self.marks.lock().expect("degraded lock");
        if marks.len() >= MAX_MARKS
            && let Some(oldest) = marks.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone())
        {
            marks.remove(&oldest);
        }
        marks.insert((app.to_string(), channel.to_string()), Instant::now());
        self.counted(&marks);
    }

    /// Lift the channel's mark.
    pub(crate) fn lift(&self, app: &str, channel: &str) {
        let mut marks = self.marks.lock().expect("degraded lock");
        marks.remove(&(app.to_string(), channel.to_string()));
        self.counted(&marks);
    }

    /// Whether a task may start the channel's stream again: none does yet, and fewer than
    /// [`MAX_RESETS`] channels' do.
    fn start_reset(&self, app: &str, channel: &str) -> bool {
        let mut resetting = self.resetting.lock().expect("degraded lock");
        resetting.len() < MAX_RESETS && resetting.insert((app.to_string(), channel.to_string()))
    }

    /// The channel's stream was started again.
    fn reset_done(&self, app: &str, channel: &str) {
        self.resetting
            .lock()
            .expect("degraded lock")
            .remove(&(app.to_string(), channel.to_string()));
    }

    /// Whether the channel is degraded; a mark older than `lapse` is dropped.
    pub(crate) fn holds(&self, app: &str, channel: &str, lapse: Duration) -> bool {
        let mut marks = self.marks.lock().expect("degraded lock");
        if marks.is_empty() {
            return false;
        }
        let key = (app.to_string(), channel.to_string());
        match marks.get(&key) {
            Some(at) if at.elapsed() < lapse => true,
            Some(_) => {
                marks.remove(&key);
                self.counted(&marks);
                false
            }
            None => false,
        }
    }
}

impl Recovery {
    /// An event of the channel went out without a position (the store did not take it): mark
    /// the channel degraded here, and start its stream again in the store as soon as the store
    /// answers; then lift the mark here and call `lifted` (which tells the other nodes).
    /// `marked` tells the other nodes of the mark, when the channel was not degraded already.
    pub(crate) fn degrade(
        self: &Arc<Self>,
        app: &str,
        channel: &str,
        marked: impl FnOnce(),
        lifted: impl FnOnce() + Send + 'static,
    ) {
        let first = !self.degraded.holds(app, channel, self.degraded_lapse());
        self.degraded.mark(app, channel);
        if !first {
            // A reset is on its way already (this node's or the node that marked it).
            return;
        }
        marked();
        if !self.degraded.start_reset(app, channel) {
            // This node's is on its way still (the mark lapsed or was lifted early: not a
            // second task), or too many are.
            return;
        }
        let (this, app, channel) = (self.clone(), app.to_string(), channel.to_string());
        tokio::spawn(async move {
            let Some(store) = this.durable.as_ref() else { return };
            let mut wait = FIRST_RETRY;
            loop {
                tokio::time::sleep(wait).await;
                match store.history.reset(&app, &channel).await {
                    Ok(()) => break,
                    Err(error) => {
                        store.counters.store_errors.inc();
                        tracing::debug!(%error, channel, "The degraded channel's stream could not be started again yet.");
                        wait = (wait * 2).min(MAX_RETRY);
                    }
                }
            }
            tracing::info!(
                channel,
                "The history store answers again: the degraded channel's stream was started again."
            );
            this.degraded.reset_done(&app, &channel);
            this.degraded.lift(&app, &channel);
            lifted();
        });
    }

    /// How long a degraded mark holds without its lift: the store's retention.
    pub(crate) fn degraded_lapse(&self) -> Duration {
        self.settings.history.map_or(self.settings.ttl, |h| h.max_age.max(self.settings.ttl))
    }
}

//! Rewind: a subscription that asks for its channel's last events (`rewind` in the subscribe
//! data, Sockudo's forms) gets them right after its acknowledgement, oldest first, then
//! `pusher:rewind_complete`, then live events. The events come from this node's buffer and,
//! for what it no longer holds, from the history store, read before the subscription is made;
//! the replay is made as the subscription becomes visible, so no live event comes before it
//! or is sent twice.

use axum::extract::ws::Utf8Bytes;

use super::{Fetched, Recovery, Stream, gather};
use crate::{
    cluster::now_ms,
    protocol::{
        filter::Filter,
        recovery::{Rewind, Rewound, rewind_complete},
    },
};

/// Events one rewind sends at most (Sockudo's `max_page_size`).
const MAX_REWIND: u64 = 100;
/// Events read beyond the node's head, for those published while the read is under way.
const SLACK: u64 = 64;

/// A rewind, with what the store answered for it.
#[derive(Debug)]
pub(crate) struct RewindPlan {
    rewind: Rewind,
    fetched: Option<Fetched>,
}

impl Recovery {
    /// Read what `rewind` may need from the store, before the subscription is made; without
    /// the store (off, or not answering) the rewind is served from this node's buffer.
    pub(crate) async fn plan_rewind(
        &self,
        app: &str,
        channel: &str,
        stream: &Stream,
        rewind: Rewind,
    ) -> RewindPlan {
        if !self.is_durable() {
            return RewindPlan { rewind, fetched: None };
        }
        let head = stream.published.load(std::sync::atomic::Ordering::Acquire);
        let limit = u32::try_from(MAX_REWIND + SLACK).unwrap_or(u32::MAX);
        let fetched =
            self.read_fetched(app, channel, head.saturating_sub(MAX_REWIND), limit).await.ok();
        RewindPlan { rewind, fetched }
    }

    /// The rewind's frames, up to `upto` (the head the subscription was acknowledged at), only
    /// the events the subscription's tag `filter` passes, then `pusher:rewind_complete`.
    pub(crate) fn rewind(
        &self,
        stream: &Stream,
        channel: &str,
        plan: &RewindPlan,
        upto: u64,
        filter: Option<&Filter>,
    ) -> Vec<Utf8Bytes> {
        let buffer = stream.buffer.lock().expect("recovery lock");
        let fetched = plan.fetched.as_ref().filter(|f| *f.stream_id == *stream.stream_id);
        let floor = upto.saturating_sub(MAX_REWIND);
        let found = gather(&buffer, fetched, floor, upto, None);
        // Where the asked-for events start, and whether more were asked for than one sends.
        let (wanted_after, truncated_by_limit) = match plan.rewind {
            Rewind::Count(n) => (upto.saturating_sub(n.min(MAX_REWIND)), n > MAX_REWIND),
            Rewind::Seconds(seconds) => {
                let since = now_ms().saturating_sub(seconds.saturating_mul(1000));
                // The oldest read event in the window; what the read did not see is newer.
                let first = fetched.and_then(|f| {
                    let newest_read = f.events.last().map_or(f.head, |e| e.serial);
                    f.events
                        .iter()
                        .find(|e| e.at_ms >= since)
                        .map(|e| e.serial)
                        .or(Some(newest_read + 1))
                });
                let after = first.map_or(upto, |first| first - 1);
                (after.max(floor), after < floor)
            }
        };
        // The events held without a hole, back from the head.
        let mut held_after = upto;
        while held_after > wanted_after && found.contains_key(&held_after) {
            held_after -= 1;
        }
        let truncated_by_retention = held_after > wanted_after;
        let mut frames: Vec<Utf8Bytes> = found
            .range(held_after + 1..=upto)
            .map(|(_, event)| event)
            .filter(|event| event.passes(filter))
            .map(|event| event.frame.clone())
            .collect();
        let rewound = Rewound {
            historical_count: frames.len(),
            live_count: 0,
            complete: !truncated_by_retention && !truncated_by_limit,
            truncated_by_retention,
            truncated_by_limit,
        };
        frames.push(rewind_complete(channel, &rewound).into());
        frames
    }
}

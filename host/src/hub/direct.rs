//! When broadcasts write to idle sockets themselves (see `conn.rs`), decided from what the node
//! measures every interval.
//!
//! A direct write saves the connection's task its wake-up and poll, but it is one system call
//! per frame, on the broadcasting thread. The queue is better in two cases: when the tasks,
//! woken late, find several frames and write them in one call (a busy channel), and when one
//! worker cannot write to every socket of a broadcast in time while the others could share the
//! work. So writing directly is chosen while the tasks write about one frame per call and no
//! worker is nearly always busy; and since, while writing directly, no task shows what it would
//! batch, the queue is tried again now and then to look.

use std::time::{Duration, Instant};

/// The tasks' writes over one interval, and the busiest worker's share of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// The share of the interval the busiest worker was busy (0 to 1).
    pub busiest: f64,
    /// Frames the connections' tasks wrote in the interval.
    pub frames: u64,
    /// Their writes (each one or more frames, then a flush).
    pub writes: u64,
}

/// Writing directly only while the tasks write at most this many frames per write on average.
const MAX_FRAMES_PER_WRITE: f64 = 1.25;
/// Fewer writes than this in an interval say nothing about batching: the node is quiet.
const FEW_WRITES: u64 = 50;
/// Writing directly only while the busiest worker is busy less than this share.
const START_BELOW: f64 = 0.5;
/// Writing directly stops once the busiest worker is busy more than this share.
const STOP_ABOVE: f64 = 0.75;
/// How often the queue is tried again while writing directly.
const LOOK_AGAIN: Duration = Duration::from_millis(500);

/// The choice, interval by interval.
#[derive(Debug)]
pub(crate) struct Chooser {
    direct: bool,
    /// When writing directly began, or the queue was last tried.
    since: Instant,
}

impl Chooser {
    /// Queue first: the first interval shows what the tasks batch.
    pub(crate) fn new(now: Instant) -> Self {
        Self { direct: false, since: now }
    }

    /// Whether broadcasts write directly in the next interval, after `sample` of the last.
    pub(crate) fn next(&mut self, sample: Sample) -> bool {
        if self.direct {
            if sample.busiest > STOP_ABOVE || sample.at.duration_since(self.since) >= LOOK_AGAIN {
                self.direct = false;
                self.since = sample.at;
            }
        } else {
            let quiet = sample.writes < FEW_WRITES;
            // Precision is not needed here: the counts of one interval are far below 2^52.
            #[allow(clippy::cast_precision_loss)]
            let one_by_one =
                quiet || sample.frames as f64 <= MAX_FRAMES_PER_WRITE * sample.writes as f64;
            if one_by_one && sample.busiest < START_BELOW {
                self.direct = true;
                self.since = sample.at;
            }
        }
        self.direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, busiest: f64, frames: u64, writes: u64) -> Sample {
        Sample { at, busiest, frames, writes }
    }

    #[test]
    fn one_frame_per_write_on_a_node_with_room_writes_directly_and_looks_again() {
        let start = Instant::now();
        let mut chooser = Chooser::new(start);
        let tick = |n: u32| start + Duration::from_millis(25) * n;
        assert!(chooser.next(sample(tick(1), 0.3, 2_500, 2_450)));
        // While writing directly the tasks write little, whatever the load.
        assert!(chooser.next(sample(tick(2), 0.4, 10, 10)));
        assert!(!chooser.next(sample(tick(21), 0.4, 10, 10)), "the queue is tried again");
        assert!(chooser.next(sample(tick(22), 0.3, 2_500, 2_480)), "and it still batches nothing");
    }

    #[test]
    fn batching_tasks_or_a_busy_worker_keep_the_queue() {
        let start = Instant::now();
        let mut chooser = Chooser::new(start);
        let tick = |n: u32| start + Duration::from_millis(25) * n;
        assert!(!chooser.next(sample(tick(1), 0.3, 9_000, 3_000)), "three frames per write");
        assert!(!chooser.next(sample(tick(2), 0.9, 2_000, 2_000)), "one worker always busy");
        assert!(chooser.next(sample(tick(3), 0.2, 2_000, 2_000)));
        assert!(!chooser.next(sample(tick(4), 0.8, 0, 0)), "writing directly filled a worker");
    }

    #[test]
    fn a_quiet_node_writes_directly() {
        let start = Instant::now();
        let mut chooser = Chooser::new(start);
        assert!(chooser.next(sample(start + Duration::from_millis(25), 0.01, 3, 1)));
    }
}

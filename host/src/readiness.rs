//! Readiness: whether this node wants new traffic. A load balancer asks `/ready` (apart from
//! `/up`, which says whether the node works at all): not ready while it drains at shutdown, or
//! while its resident memory is above the configured threshold, when new WebSocket connections
//! are refused with 4100 too, so traffic moves elsewhere before the node runs out of memory.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

/// How often the resident size is read: a node's memory grows with its connections, over
/// seconds, and reading `/proc` per connection would cost more than it tells.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why the node is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotReady {
    /// Shutting down.
    Draining,
    /// Resident memory above the threshold.
    Memory,
}

impl NotReady {
    /// A short label, for metrics and answers.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::Memory => "memory",
        }
    }
}

/// The node's readiness, kept up to date by [`Readiness::watch`].
#[derive(Debug)]
pub(crate) struct Readiness {
    /// Resident bytes above which the node is not ready; `None`: memory is not watched.
    threshold: Option<u64>,
    over_memory: AtomicBool,
}

impl Readiness {
    /// Readiness with the lower of the two thresholds (a share of the memory limit, a size).
    pub(crate) fn new(max_percent: Option<u8>, max_bytes: Option<u64>) -> Self {
        let share =
            max_percent.and_then(|p| memory_limit().map(|limit| limit / 100 * u64::from(p)));
        let threshold = match (share, max_bytes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Self { threshold, over_memory: AtomicBool::new(false) }
    }

    /// The resident size above which the node is not ready.
    pub(crate) fn threshold(&self) -> Option<u64> {
        self.threshold
    }

    /// Whether new connections should be refused for memory.
    pub(crate) fn over_memory(&self) -> bool {
        self.over_memory.load(Ordering::Relaxed)
    }

    /// Why the node is not ready, if it is not.
    pub(crate) fn check(&self, shutdown: &CancellationToken) -> Option<NotReady> {
        if shutdown.is_cancelled() {
            Some(NotReady::Draining)
        } else if self.over_memory() {
            Some(NotReady::Memory)
        } else {
            None
        }
    }

    /// Read the resident size every second until `shutdown`; `changed` hears each crossing of
    /// the threshold (with the size), for a log line and a metric.
    pub(crate) async fn watch(&self, shutdown: CancellationToken, changed: impl Fn(bool, u64)) {
        let Some(threshold) = self.threshold else { return };
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(resident) = resident_bytes() else { continue };
            let over = resident > threshold;
            if self.over_memory.swap(over, Ordering::Relaxed) != over {
                changed(over, resident);
            }
        }
    }
}

/// This process's resident size (`VmRSS` in `/proc/self/status`).
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")
}

/// The memory this process may use: its cgroup's `memory.max` when one is set, else the
/// machine's memory.
fn memory_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    cgroup.or_else(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        kib_field(&meminfo, "MemTotal:")
    })
}

/// A `Name:   123 kB` line's value in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_from_proc_lines() {
        let status = "Name:\tsockhost\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(12345 * 1024));
        assert_eq!(kib_field(status, "VmSwap:"), None);
        assert_eq!(kib_field("VmRSS: lots kB", "VmRSS:"), None);
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn the_lower_threshold_counts() {
        let bytes = Readiness::new(None, Some(5 << 20));
        assert_eq!(bytes.threshold(), Some(5 << 20));
        assert_eq!(Readiness::new(None, None).threshold(), None);
        let both = Readiness::new(Some(100), Some(1));
        assert_eq!(both.threshold(), Some(1));
        let shutdown = CancellationToken::new();
        assert_eq!(bytes.check(&shutdown), None);
        shutdown.cancel();
        assert_eq!(bytes.check(&shutdown), Some(NotReady::Draining));
    }
}

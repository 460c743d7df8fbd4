//! How often each client address did something lately: a count per address over a window that
//! starts at its first event, for the per-address budgets that need no shared state between
//! nodes (TLS handshakes, wrong admin tokens, lookups of apps that do not exist), and the one
//! window count they are made of.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// Addresses tracked at most; a flood from more is bounded below.
const MAX_ADDRESSES: usize = 10_000;

/// A count over a window that starts at its first event (and again at the first after it
/// ended): one address's here, one connection's subscribes in its session.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WindowCount(Option<(Instant, u32)>);

impl WindowCount {
    /// The count in the current window, and the time left in it (none counted: 0 and no time).
    pub(crate) fn current(&self, window: Duration) -> (u32, Duration) {
        self.0
            .and_then(|(began, n)| Some((n, window.checked_sub(began.elapsed())?)))
            .unwrap_or_default()
    }

    /// Count one more; the count in the current window.
    pub(crate) fn add(&mut self, window: Duration) -> u32 {
        let (began, n) = match self.0 {
            Some((began, n)) if began.elapsed() < window => (began, n),
            _ => (Instant::now(), 0),
        };
        let n = n.saturating_add(1);
        self.0 = Some((began, n));
        n
    }

    /// Whether its window is still open.
    fn open(&self, window: Duration) -> bool {
        self.0.is_some_and(|(began, _)| began.elapsed() < window)
    }
}

/// Counts per address, each over its own `window`.
#[derive(Debug)]
pub(crate) struct AddressCounts {
    window: Duration,
    counts: Mutex<HashMap<IpAddr, WindowCount>>,
}

impl AddressCounts {
    /// Counts over `window`.
    pub(crate) fn new(window: Duration) -> Self {
        Self { window, counts: Mutex::default() }
    }

    /// `ip`'s count in its current window, and the time left in that window (none counted:
    /// 0 and no time).
    pub(crate) fn current(&self, ip: IpAddr) -> (u32, Duration) {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&ip).map(|count| count.current(self.window)).unwrap_or_default()
    }

    /// Count one more for `ip`; its count in the current window.
    pub(crate) fn add(&self, ip: IpAddr) -> u32 {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= MAX_ADDRESSES && !counts.contains_key(&ip) {
            counts.retain(|_, count| count.open(self.window));
            if counts.len() >= MAX_ADDRESSES {
                // Every slot is a live window: start again with the newcomer rather than grow
                // or let it through uncounted.
                counts.clear();
            }
        }
        counts.entry(ip).or_default().add(self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_counts_apart_within_its_window() {
        let counts = AddressCounts::new(Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert_eq!(counts.current(a), (0, Duration::ZERO));
        assert_eq!((counts.add(a), counts.add(a), counts.add(b)), (1, 2, 1));
        let (n, left) = counts.current(a);
        assert_eq!(n, 2);
        assert!(left > Duration::from_secs(59));
        let expired = AddressCounts::new(Duration::ZERO);
        expired.add(a);
        assert_eq!(expired.current(a).0, 0);
        assert_eq!(expired.add(a), 1, "a window that ended starts again");
    }
}
